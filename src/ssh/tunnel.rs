//! `NodeTunnel`: one SSH connection to one node (the supervised one, or an extra one of
//! `pool::overflow`). It connects (TCP, handshake, host key,
//! public-key auth, all under one timeout) and opens `direct-tcpip` channels on it, many at a
//! time. Reconnection and health belong to the pool's supervisor, not here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::Handle;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::channel_count::{ChannelCount, NoPlace, OpenGuard};
use super::congestion::Congestion;
use super::host_key_trust::HostKeyTrust;
use super::known_hosts::Verdict;
use super::opening::Opening;
use super::settings::SshSettings;
use super::socket::QuickAckStream;
use super::stream::{ChannelCounters, LinkStats, TunnelStream};
use super::verifier::{AnnotationRefusal, HostKeyReport, NodeHandler};
use crate::error::{ConnectError, OpenError};
use crate::node::Node;
use crate::nodes::host_key_annotations;

/// One authenticated SSH connection to a node; cheap to share (`Arc`), every method `&self`.
pub struct NodeTunnel {
    node: Node,
    name: Arc<str>,
    handle: Arc<Handle<NodeHandler>>,
    closed: CancellationToken,
    host_key: String,
    host_key_trust: HostKeyTrust,
    client_key: String,
    open_channels: Arc<ChannelCount>,
    link: LinkStats,
    congestion: Arc<Congestion>,
    disconnect_reason: Arc<Mutex<Option<String>>>,
    settings: Arc<SshSettings>,
}

impl std::fmt::Debug for NodeTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTunnel")
            .field("node", &self.node.name)
            .field("address", &self.node.address)
            .field("host_key", &self.host_key)
            .field("host_key_trust", &self.host_key_trust)
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

impl NodeTunnel {
    /// Connects to `node` and authenticates, within `settings.connect_timeout`.
    pub async fn connect(
        node: &Node,
        settings: Arc<SshSettings>,
    ) -> Result<NodeTunnel, ConnectError> {
        Self::connect_with(node, settings, LinkStats::default()).await
    }

    /// Like `connect`, with the node's counters (kept across reconnects by the pool).
    pub async fn connect_with(
        node: &Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> Result<NodeTunnel, ConnectError> {
        let limit = settings.connect_timeout;
        let stage = Arc::new(Mutex::new("TCP connect"));
        match tokio::time::timeout(
            limit,
            Self::connect_inner(node, settings, stage.clone(), link),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                node: node.name.clone(),
                stage: stage.lock().map(|s| *s).unwrap_or("connect"),
                after: limit,
            }),
        }
    }

    async fn connect_inner(
        node: &Node,
        settings: Arc<SshSettings>,
        stage: Arc<Mutex<&'static str>>,
        link: LinkStats,
    ) -> Result<NodeTunnel, ConnectError> {
        let set_stage = |s: &'static str| {
            if let Ok(mut g) = stage.lock() {
                *g = s;
            }
        };
        if settings.identity.is_none() && settings.agent.is_none() {
            return Err(ConnectError::AuthRejected {
                node: node.name.clone(),
                user: settings.user.clone(),
                key: "(no key or agent configured)".into(),
            });
        }
        let addr = match node.ip() {
            Some(ip) => std::net::SocketAddr::new(ip, node.ssh_port),
            None => {
                let mut addrs = tokio::net::lookup_host((node.address.as_str(), node.ssh_port))
                    .await
                    .map_err(|e| ConnectError::Resolve {
                        node: node.name.clone(),
                        address: node.address.clone(),
                        reason: e.to_string(),
                    })?;
                addrs.next().ok_or_else(|| ConnectError::Resolve {
                    node: node.name.clone(),
                    address: node.address.clone(),
                    reason: "no addresses".into(),
                })?
            }
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Tcp {
                node: node.name.clone(),
                addr: addr.to_string(),
                source: e,
            })?;
        let stream = QuickAckStream::new(tcp).map_err(|e| ConnectError::Tcp {
            node: node.name.clone(),
            addr: addr.to_string(),
            source: e,
        })?;

        set_stage("SSH handshake");
        let closed = CancellationToken::new();
        let report = Arc::new(Mutex::new(HostKeyReport::default()));
        let disconnect_reason = Arc::new(Mutex::new(None));
        // One snapshot of the trusted keys for this handshake: a reload swaps the set for
        // the next one, never under this one.
        let trusted = settings.known_hosts.current();
        let handler = NodeHandler {
            address: node.address.clone(),
            port: node.ssh_port,
            aliases: vec![node.name.clone()],
            known_hosts: trusted.clone(),
            learned: settings.learned.clone(),
            policy: settings.host_key_policy,
            annotated: (settings.host_keys_from_nodes && !node.host_keys.is_empty())
                .then(|| host_key_annotations::parse(&node.host_keys)),
            report: report.clone(),
            closed: closed.clone(),
            disconnect_reason: disconnect_reason.clone(),
        };
        let config = Arc::new(settings.russh_config_for(&trusted));
        let connected = russh::client::connect_stream(config, stream, handler).await;
        let host_report = report.lock().map(|r| r.clone()).unwrap_or_default();
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                return Err(
                    host_key_error(node, &settings, &host_report).unwrap_or_else(|| {
                        ConnectError::Handshake {
                            node: node.name.clone(),
                            reason: e.to_string(),
                        }
                    }),
                );
            }
        };

        set_stage("authentication");
        let client_key = authenticate(&mut handle, node, &settings).await?;
        if let (Some(key), Some(learned)) = (&host_report.learn, &settings.learned) {
            match learned.record(&node.address, node.ssh_port, key) {
                Ok(()) => tracing::warn!(
                    node = %node.name,
                    host_key = %host_report.offered.clone().unwrap_or_default(),
                    file = %learned.path().display(),
                    "accept-new: trusting this node's host key from now on"
                ),
                // Another connection learned a different key for this node meanwhile: this
                // one cannot be trusted.
                Err(super::learned::LearnError::Conflict { file, line, .. }) => {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        handle.disconnect(russh::Disconnect::HostKeyNotVerifiable, "", "en"),
                    )
                    .await;
                    return Err(ConnectError::HostKeyMismatch {
                        node: node.name.clone(),
                        offered: host_report.offered.clone().unwrap_or_default(),
                        expected: "the key learned for it meanwhile".into(),
                        file,
                        line,
                    });
                }
                Err(e) => {
                    tracing::error!(node = %node.name, error = %e, "accept-new: could not record the host key; it is trusted for this connection only")
                }
            }
        }
        let host_key = host_report.offered.unwrap_or_default();
        // The handler accepted the key, so it said how; "insecure" is the safe thing to show
        // should it ever not have.
        let host_key_trust = host_report.trust.unwrap_or(HostKeyTrust::Insecure);
        tracing::debug!(node = %node.name, %addr, %host_key, "SSH connection ready");
        let name: Arc<str> = Arc::from(node.name.as_str());
        Ok(NodeTunnel {
            congestion: Arc::new(Congestion::new(name.clone(), closed.clone(), link.clone())),
            name,
            node: node.clone(),
            handle: Arc::new(handle),
            closed,
            host_key,
            host_key_trust,
            client_key,
            open_channels: Arc::new(ChannelCount::default()),
            link,
            disconnect_reason,
            settings,
        })
    }

    /// The node this tunnel goes to.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// `ALG SHA256:…` of the node's verified host key.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// How the node's host key was trusted on this connection.
    pub fn host_key_trust(&self) -> HostKeyTrust {
        self.host_key_trust
    }

    /// The client key this connection authenticated with: `ALG SHA256:…`, followed by
    /// `(certificate 'ID')` or `(agent)` when it was one of those. The key file is read
    /// again for every connection, so after a key rotation this shows which connections
    /// already use the new key.
    pub fn client_key(&self) -> &str {
        &self.client_key
    }

    /// Channels open or being opened on this connection.
    pub fn open_channels(&self) -> usize {
        self.open_channels.open()
    }

    /// The connection's channel count and gate (see `ssh::channel_count`).
    pub fn channel_count(&self) -> &ChannelCount {
        &self.open_channels
    }

    /// True while a new channel here would wait behind a slow reader or bulk data (see
    /// `ssh::congestion`); the pool then prefers another connection of the node.
    pub fn is_congested(&self) -> bool {
        self.congestion.is_congested()
    }

    /// True while a reader holds up this connection's session (see `Congestion::is_held_up`).
    pub fn is_held_up(&self) -> bool {
        self.congestion.is_held_up()
    }

    /// Channels closed because their reader stalled past the limit (see `ssh::stream`).
    pub fn stalled_channels(&self) -> u64 {
        self.link.stalled.get()
    }

    /// Sends an SSH ping (keepalive with reply) and returns its round trip, if answered in time.
    pub async fn ping(&self, limit: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        let r = tokio::time::timeout(limit, self.handle.send_ping()).await;
        (matches!(r, Ok(Ok(()))) && !self.is_closed()).then(|| start.elapsed())
    }

    /// Why the connection ended, once it has.
    pub fn disconnect_reason(&self) -> Option<String> {
        self.disconnect_reason.lock().ok().and_then(|r| r.clone())
    }

    /// True once the connection has ended (error, disconnect, keepalive timeout).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.handle.is_closed()
    }

    /// Resolves when the connection ends.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Opens a `direct-tcpip` channel to `host:port` as seen from the node, within the open
    /// timeout. Fails at once if the connection is or becomes closed meanwhile. If the caller
    /// stops waiting (timeout, dropped future), a channel that opens later is closed.
    pub async fn open(&self, host: &str, port: u16) -> Result<TunnelStream, OpenError> {
        self.open_limited(host, port, usize::MAX).await
    }

    /// Like `open`, but only while fewer than `limit` channels are open or opening on this
    /// connection (`AtCapacity` otherwise): the pool keeps each connection under sshd's
    /// channel ceiling this way and opens another connection to the node instead.
    pub async fn open_limited(
        &self,
        host: &str,
        port: u16,
        limit: usize,
    ) -> Result<TunnelStream, OpenError> {
        if self.is_closed() {
            return Err(OpenError::ConnectionLost);
        }
        let place = OpenGuard::reserve(&self.open_channels, limit).map_err(|e| match e {
            NoPlace::Full => OpenError::AtCapacity { limit },
            // Retiring: the dial goes to another connection, or waits for the next one.
            NoPlace::Closed => OpenError::ConnectionLost,
        })?;
        let counters = ChannelCounters {
            open: place,
            link: self.link.clone(),
            congestion: self.congestion.clone(),
        };
        let destination: Arc<str> = Arc::from(crate::destination::join_host_port(host, port));
        // The open is polled right here (no task and no hand-off in the common case); if the
        // caller stops waiting before it ends (timeout, dropped future, lost connection), the
        // rest of it runs in a task of its own, which closes a channel that sshd confirms
        // afterwards (`Opening`'s drop).
        let handle = self.handle.clone();
        let host_owned = host.to_string();
        let opening = Opening::start(
            async move {
                handle
                    .channel_open_direct_tcpip(host_owned, u32::from(port), "127.0.0.1", 0)
                    .await
            },
            self.closed.clone(),
            counters,
        );
        let opened = opening.into_stream(
            self.name.clone(),
            destination,
            self.settings.channel.clone(),
        );
        let limit = self.settings.open_timeout;
        tokio::select! {
            r = tokio::time::timeout(limit, opened) => match r {
                Err(_) => Err(OpenError::Timeout { after: limit }),
                Ok(r) => r,
            },
            _ = self.closed.cancelled() => Err(OpenError::ConnectionLost),
        }
    }

    /// Sends SSH_MSG_DISCONNECT and ends the connection.
    pub async fn disconnect(&self) {
        if let Ok(mut r) = self.disconnect_reason.lock() {
            r.get_or_insert_with(|| "closed by kube-ssh-tunnel".to_string());
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.handle.disconnect(
                russh::Disconnect::ByApplication,
                "kube-ssh-tunnel closing",
                "en",
            ),
        )
        .await;
        self.closed.cancel();
    }
}

/// Authenticates: with the ssh-agent's identities first (if configured), then with the key
/// file (with its user certificate, when there is one). Returns the key that was accepted
/// (see `NodeTunnel::client_key`).
async fn authenticate(
    handle: &mut Handle<NodeHandler>,
    node: &Node,
    settings: &SshSettings,
) -> Result<String, ConnectError> {
    let hs = |e: russh::Error| ConnectError::Handshake {
        node: node.name.clone(),
        reason: format!("during authentication: {e}"),
    };
    let mut tried = Vec::new();
    if let Some(sock) = &settings.agent {
        let agent_err = |reason: String| ConnectError::Agent {
            node: node.name.clone(),
            reason,
        };
        let mut agent = russh::keys::agent::client::AgentClient::connect_uds(sock)
            .await
            .map_err(|e| agent_err(format!("cannot reach the agent at {}: {e}", sock.display())))?;
        let ids = agent
            .request_identities()
            .await
            .map_err(|e| agent_err(format!("cannot list its keys: {e}")))?;
        if ids.is_empty() && settings.identity.is_none() {
            return Err(agent_err(format!(
                "the agent at {} holds no keys (ssh-add one)",
                sock.display()
            )));
        }
        for id in ids {
            let used = match &id {
                russh::keys::agent::AgentIdentity::PublicKey { key, .. } => format!(
                    "{} {} (agent)",
                    key.algorithm(),
                    key.fingerprint(HashAlg::Sha256)
                ),
                russh::keys::agent::AgentIdentity::Certificate { certificate, .. } => format!(
                    "{} {} (agent certificate '{}')",
                    certificate.algorithm(),
                    certificate.public_key().fingerprint(HashAlg::Sha256),
                    certificate.key_id()
                ),
            };
            let r = match &id {
                russh::keys::agent::AgentIdentity::PublicKey { key, .. } => {
                    tried.push(format!(
                        "agent {} {}",
                        key.algorithm(),
                        key.fingerprint(HashAlg::Sha256)
                    ));
                    let is_rsa = matches!(key.algorithm(), russh::keys::Algorithm::Rsa { .. });
                    let hash = rsa_hash(handle, is_rsa).await.map_err(hs)?;
                    handle
                        .authenticate_publickey_with(
                            settings.user.clone(),
                            key.clone(),
                            hash,
                            &mut agent,
                        )
                        .await
                }
                russh::keys::agent::AgentIdentity::Certificate { certificate, .. } => {
                    tried.push(format!("agent certificate '{}'", certificate.key_id()));
                    handle
                        .authenticate_certificate_with(
                            settings.user.clone(),
                            certificate.clone(),
                            None,
                            &mut agent,
                        )
                        .await
                }
            };
            match r {
                Ok(a) if a.success() => return Ok(used),
                Ok(_) => {}
                Err(e) => tracing::debug!(node = %node.name, error = %e, "agent signature failed"),
            }
        }
    }
    if let Some(source) = &settings.identity {
        let identity = source.current();
        let used = match &identity.certificate {
            Some(cert) => format!(
                "{} {} (certificate '{}')",
                identity.algorithm,
                identity.fingerprint,
                cert.key_id()
            ),
            None => format!("{} {}", identity.algorithm, identity.fingerprint),
        };
        let auth = match &identity.certificate {
            Some(cert) => {
                tried.push(format!(
                    "certificate '{}' for {} {}",
                    cert.key_id(),
                    identity.algorithm,
                    identity.fingerprint
                ));
                handle
                    .authenticate_openssh_cert(
                        settings.user.clone(),
                        identity.key.clone(),
                        cert.clone(),
                    )
                    .await
                    .map_err(hs)?
            }
            None => {
                tried.push(format!("{} {}", identity.algorithm, identity.fingerprint));
                let hash = rsa_hash(handle, identity.is_rsa()).await.map_err(hs)?;
                handle
                    .authenticate_publickey(
                        settings.user.clone(),
                        PrivateKeyWithHashAlg::new(identity.key.clone(), hash),
                    )
                    .await
                    .map_err(hs)?
            }
        };
        if auth.success() {
            return Ok(used);
        }
    }
    Err(ConnectError::AuthRejected {
        node: node.name.clone(),
        user: settings.user.clone(),
        key: tried.join(", "),
    })
}

/// The signature hash for an RSA key: the best rsa-sha2 the server offers (None: ssh-rsa, or
/// not an RSA key).
async fn rsa_hash(
    handle: &Handle<NodeHandler>,
    is_rsa: bool,
) -> Result<Option<HashAlg>, russh::Error> {
    if !is_rsa {
        return Ok(None);
    }
    Ok(handle.best_supported_rsa_hash().await?.flatten())
}

fn host_key_error(node: &Node, settings: &SshSettings, r: &HostKeyReport) -> Option<ConnectError> {
    let offered = r.offered.clone()?;
    let plain_key_for_certified_host =
        r.certificate_error.is_some() && !matches!(r.verdict, Some(Verdict::Trusted { .. }));
    if r.certificate || plain_key_for_certified_host {
        return Some(ConnectError::HostCertificateRejected {
            node: node.name.clone(),
            certificate: offered,
            reason: r
                .certificate_error
                .clone()
                .unwrap_or_else(|| "not trusted".into()),
        });
    }
    match (&r.annotation_refusal, &r.verdict) {
        (_, Some(Verdict::Trusted { .. })) => return None,
        (
            Some(AnnotationRefusal::Mismatch {
                annotations,
                expected,
            }),
            _,
        ) => {
            return Some(ConnectError::HostKeyAnnotationMismatch {
                node: node.name.clone(),
                offered,
                annotations: annotations.clone(),
                expected: expected.clone(),
            });
        }
        (Some(AnnotationRefusal::Malformed(e)), _) => {
            return Some(ConnectError::HostKeyAnnotationMalformed {
                node: node.name.clone(),
                annotation: e.annotation.clone(),
                reason: e.to_string(),
            });
        }
        (None, _) => {}
    }
    match r.verdict.clone()? {
        Verdict::Trusted { .. } => None,
        Verdict::Mismatch {
            file,
            line,
            expected,
        } => Some(ConnectError::HostKeyMismatch {
            node: node.name.clone(),
            offered,
            expected,
            file,
            line,
        }),
        Verdict::Revoked { file, line } => Some(ConnectError::HostKeyRevoked {
            node: node.name.clone(),
            offered,
            file,
            line,
        }),
        Verdict::Unknown => Some(ConnectError::HostKeyUnknown {
            node: node.name.clone(),
            offered,
            files: settings.known_hosts.current().files_display(),
            address: node.address.clone(),
            port: node.ssh_port,
        }),
    }
}
