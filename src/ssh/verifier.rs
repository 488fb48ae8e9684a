//! The russh client `Handler` of a node connection. Its one job that matters is deciding
//! whether the server's host key is trusted; it records the verdict so that a refusal can be
//! reported with the node, the offered fingerprint and the known_hosts line. It also notices
//! when the connection ends. Nothing here awaits slow work (russh calls it inline).

use std::sync::{Arc, Mutex};

use russh::keys::PublicKeyOrCertificate;
use tokio_util::sync::CancellationToken;

use super::host_key_trust::HostKeyTrust;
use super::known_hosts::{KnownHosts, Verdict, describe_key};
use super::learned::LearnedHosts;
use super::settings::HostKeyPolicy;
use crate::nodes::host_key_annotations::{AnnotatedKey, MalformedAnnotation};

/// What the handler saw of the server's key.
#[derive(Debug, Clone, Default)]
pub struct HostKeyReport {
    /// `ALG SHA256:…` of the offered key.
    pub offered: Option<String>,
    /// The verdict against known_hosts (`None` for a certificate or when skipped).
    pub verdict: Option<Verdict>,
    /// The server offered a host certificate.
    pub certificate: bool,
    /// Why the certificate was refused.
    pub certificate_error: Option<String>,
    /// `accept-new`: the key to record once the connection is authenticated.
    pub learn: Option<russh::keys::PublicKey>,
    /// How the key was accepted (`None` when it was refused).
    pub trust: Option<HostKeyTrust>,
    /// Why the node's own host key annotations refused the key (no known_hosts line named
    /// the host, and `--host-key-source nodes`).
    pub annotation_refusal: Option<AnnotationRefusal>,
}

/// How a node's host key annotations refused its key.
#[derive(Debug, Clone)]
pub enum AnnotationRefusal {
    /// The annotations hold other keys: `annotations` names them, `expected` is the first
    /// one's `ALG SHA256:…`.
    Mismatch {
        annotations: String,
        expected: String,
    },
    /// An annotation cannot be parsed: the node is refused until it is fixed.
    Malformed(MalformedAnnotation),
}

/// Host key check and disconnect notice for one node connection.
pub struct NodeHandler {
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) aliases: Vec<String>,
    pub(crate) known_hosts: Arc<KnownHosts>,
    pub(crate) learned: Option<Arc<LearnedHosts>>,
    pub(crate) policy: HostKeyPolicy,
    /// The node's own host key annotations (`--host-key-source nodes`); None when that source
    /// is off or the node has none. Only this node's: a node's annotation can never vouch for
    /// another node's connection.
    pub(crate) annotated: Option<Result<Vec<AnnotatedKey>, MalformedAnnotation>>,
    pub(crate) report: Arc<Mutex<HostKeyReport>>,
    pub(crate) closed: CancellationToken,
    pub(crate) disconnect_reason: Arc<Mutex<Option<String>>>,
}

/// The session owns the handler and drops it when it ends, however it ends: the connection
/// counts as closed from then on, also when russh ended it without calling `disconnected`.
/// (`NodeTunnel::closed` resolves without polling.)
impl Drop for NodeHandler {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl russh::client::Handler for NodeHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let mut report = HostKeyReport::default();
        let accept = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                report.offered = Some(describe_key(key));
                let aliases: Vec<&str> = self.aliases.iter().map(String::as_str).collect();
                let mut verdict = self
                    .known_hosts
                    .check(&self.address, self.port, &aliases, key);
                // A host an @cert-authority line covers must present a certificate: learning a
                // plain key for it would downgrade to trust-on-first-use.
                let certified_host =
                    self.known_hosts
                        .has_cert_authority_for(&self.address, self.port, &aliases);
                if certified_host && verdict == Verdict::Unknown {
                    report.certificate_error = Some(
                        "an @cert-authority line covers this host, but it offered a plain key; not learning it".into(),
                    );
                }
                let mut trust = HostKeyTrust::KnownHostsLine;
                // Any known_hosts line for the host (a key, another key, a CA, a revocation)
                // decides alone; only a host it does not know is checked against the node's
                // own annotations.
                if verdict == Verdict::Unknown
                    && !certified_host
                    && let Some(annotated) = &self.annotated
                {
                    match check_annotated(annotated, key) {
                        Ok(annotation) => {
                            trust = HostKeyTrust::Annotation;
                            verdict = Verdict::Trusted {
                                file: format!("Node annotation {annotation}"),
                                line: 0,
                            };
                        }
                        Err(refusal) => report.annotation_refusal = Some(refusal),
                    }
                }
                if self.policy == HostKeyPolicy::AcceptNew
                    && report.annotation_refusal.is_none()
                    && verdict == Verdict::Unknown
                    && !certified_host
                    && let Some(learned) = &self.learned
                {
                    trust = HostKeyTrust::Learned;
                    verdict = learned.check(&self.address, self.port, key);
                    if verdict == Verdict::Unknown {
                        // Trust on first use; recorded after authentication succeeds.
                        report.learn = Some(key.clone());
                        verdict = Verdict::Trusted {
                            file: learned.path().display().to_string(),
                            line: 0,
                        };
                    }
                }
                let trusted = matches!(verdict, Verdict::Trusted { .. });
                let ok = trusted
                    || (self.policy == HostKeyPolicy::InsecureSkip
                        && !matches!(verdict, Verdict::Revoked { .. }));
                if ok {
                    report.trust = Some(if trusted {
                        trust
                    } else {
                        HostKeyTrust::Insecure
                    });
                }
                report.verdict = Some(verdict);
                ok
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                report.certificate = true;
                report.offered = Some(format!(
                    "'{}' ({} {})",
                    cert.key_id(),
                    cert.algorithm(),
                    cert.public_key().fingerprint(russh::keys::HashAlg::Sha256)
                ));
                let aliases: Vec<&str> = self.aliases.iter().map(String::as_str).collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                match self.known_hosts.check_certificate(
                    &self.address,
                    self.port,
                    &aliases,
                    cert,
                    now,
                ) {
                    Ok(_) => {
                        report.trust = Some(HostKeyTrust::HostCertificate);
                        true
                    }
                    Err(reason) => {
                        report.certificate_error = Some(reason);
                        let insecure = self.policy == HostKeyPolicy::InsecureSkip;
                        if insecure {
                            report.trust = Some(HostKeyTrust::Insecure);
                        }
                        insecure
                    }
                }
            }
        };
        if let Ok(mut r) = self.report.lock() {
            *r = report;
        }
        Ok(accept)
    }

    async fn disconnected(
        &mut self,
        reason: russh::client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the node closed the connection ({info:?})")
            }
            russh::client::DisconnectReason::Error(russh::Error::KeepaliveTimeout) => {
                "SSH keepalive timeout (the node stopped answering)".to_string()
            }
            russh::client::DisconnectReason::Error(e) => format!("connection lost: {e}"),
        };
        if let Ok(mut r) = self.disconnect_reason.lock() {
            r.get_or_insert(text);
        }
        self.closed.cancel();
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            russh::client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// The annotation that holds `key`, or why the annotations refuse it.
fn check_annotated(
    annotated: &Result<Vec<AnnotatedKey>, MalformedAnnotation>,
    key: &russh::keys::PublicKey,
) -> Result<String, AnnotationRefusal> {
    let keys = annotated
        .as_ref()
        .map_err(|e| AnnotationRefusal::Malformed(e.clone()))?;
    if let Some(k) = keys.iter().find(|k| k.key.key_data() == key.key_data()) {
        return Ok(k.annotation.clone());
    }
    Err(AnnotationRefusal::Mismatch {
        annotations: keys
            .iter()
            .map(|k| k.annotation.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        expected: keys
            .first()
            .map(|k| describe_key(&k.key))
            .unwrap_or_default(),
    })
}
