//! The reverse listener (`--reverse-listen`): an SSH server for nodes' own `ssh -N -R`.
//!
//! A node authenticates with a key that `--reverse-authorized` maps to its name, and must log
//! in as that name (so a node's key cannot be used to stand in for another node, and a key
//! serves only the node it names). A node that is not in the daemon's node set is told so
//! (SSH disconnect with the reason) and logged. The session may ask for one `tcpip-forward`
//! (and cancel it); everything else is refused: session channels (so no shell, exec,
//! subsystem, pty, agent or X11), `direct-tcpip` (no way from a node into the control plane),
//! streamlocal and X11 channels. Once its forward is accepted the session is registered for
//! the pool (`registry`), which uses it as the node's connection (`link`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::HashAlg;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session as ServerSession, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::link::Session;
use super::live::LiveAuthorized;
use super::registry::Registry;

/// A client that has not finished the SSH version exchange by then is dropped.
const ID_EXCHANGE_LIMIT: Duration = Duration::from_secs(30);
/// The "allocated" ports handed to nodes that ask for port 0 (nothing listens: the port
/// only names the forward in our `forwarded-tcpip` opens, which must echo it).
static NEXT_PORT: AtomicU32 = AtomicU32::new(20000);

/// Why reverse mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    #[error("--reverse-authorized {file}:{line}: {reason}")]
    Authorized {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("--reverse-host-key {file}: {reason}")]
    HostKey { file: String, reason: String },
    #[error("--reverse-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub host_key: PathBuf,
    pub authorized: Arc<LiveAuthorized>,
    /// Keepalives we send to each node (None: off) and how many may go unanswered.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_max: usize,
    /// `--reverse-user-ca`: CAs whose user certificates name nodes (principal = node name).
    pub user_cas: Vec<russh::keys::ssh_key::PublicKey>,
}

/// Whether a node name is in the daemon's node set now.
pub type Membership = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A bound reverse listener, not yet serving.
pub struct ReverseServer {
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    authorized: Arc<LiveAuthorized>,
    registry: Arc<Registry>,
    user_cas: Arc<Vec<russh::keys::ssh_key::Fingerprint>>,
}

impl ReverseServer {
    /// Loads the host key and binds the address.
    pub async fn bind(
        settings: ServerSettings,
        registry: Arc<Registry>,
    ) -> Result<ReverseServer, ReverseError> {
        let key = russh::keys::load_secret_key(&settings.host_key, None).map_err(|e| {
            ReverseError::HostKey {
                file: settings.host_key.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let config =
            super::config::server_config(key, settings.keepalive_interval, settings.keepalive_max);
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|e| ReverseError::Bind {
                    addr: settings.listen,
                    source: e,
                })?;
        Ok(ReverseServer {
            listener,
            config: Arc::new(config),
            authorized: settings.authorized,
            registry,
            user_cas: Arc::new(
                settings
                    .user_cas
                    .iter()
                    .map(|k| k.fingerprint(HashAlg::Sha256))
                    .collect(),
            ),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, membership: Membership, stop: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "reverse listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let handler = NodeSession {
                authorized: self.authorized.clone(),
                registry: self.registry.clone(),
                user_cas: self.user_cas.clone(),
                membership: membership.clone(),
                peer,
                node: None,
                refused: None,
                client_key: String::new(),
                forwarded: false,
                closed: CancellationToken::new(),
                reason: Arc::new(Mutex::new(None)),
            };
            let closed = handler.closed.clone();
            let reason = handler.reason.clone();
            let config = self.config.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let ended = async {
                    match tokio::time::timeout(
                        ID_EXCHANGE_LIMIT,
                        russh::server::run_stream(config, tcp, handler),
                    )
                    .await
                    {
                        Ok(Ok(running)) => running.await.err().map(|e| e.to_string()),
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some("no SSH version exchange in time".into()),
                    }
                };
                let why = tokio::select! {
                    w = ended => w.unwrap_or_else(|| "the node closed the connection".into()),
                    _ = stop.cancelled() => "the daemon is stopping".into(),
                };
                if let Ok(mut r) = reason.lock() {
                    r.get_or_insert(why.clone());
                }
                tracing::debug!(%peer, reason = %why, "reverse session ended");
                closed.cancel();
            });
        }
    }
}

/// One node's session (russh's server handler).
struct NodeSession {
    authorized: Arc<LiveAuthorized>,
    registry: Arc<Registry>,
    user_cas: Arc<Vec<russh::keys::ssh_key::Fingerprint>>,
    membership: Membership,
    peer: SocketAddr,
    /// The node this session serves, once authenticated.
    node: Option<String>,
    /// Authenticated, but refused (told at `auth_succeeded`).
    refused: Option<String>,
    client_key: String,
    forwarded: bool,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl NodeSession {
    /// An authenticated node: served if it is in the node set, else told why at
    /// `auth_succeeded`.
    fn admit(&mut self, node: &str, client_key: String) {
        if !(self.membership)(node) {
            tracing::warn!(peer = %self.peer, key = %client_key, node, "reverse session refused: node {node} is not in this daemon's node set");
            self.refused = Some(format!(
                "node {node} is not in this daemon's node set (kube-ssh-tunnel)"
            ));
        }
        self.node = Some(node.to_string());
        self.client_key = client_key;
    }
}

fn prohibited(what: &str, node: &Option<String>, peer: SocketAddr) {
    tracing::warn!(node = node.as_deref().unwrap_or("-"), %peer, "reverse session: refused a {what} (only tcpip-forward is allowed)");
}

impl russh::server::Handler for NodeSession {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = format!(
            "{} {}",
            key.public_key.algorithm(),
            key.public_key.fingerprint(HashAlg::Sha256)
        );
        let authorized = self.authorized.current();
        let Some(node) = authorized.node_of(key.public_key) else {
            tracing::warn!(peer = %self.peer, user, key = %fp, "reverse session refused: the key is not in --reverse-authorized");
            return Ok(Auth::reject());
        };
        if node != user {
            tracing::warn!(peer = %self.peer, user, key = %fp, node, "reverse session refused: this key belongs to node {node}, not to '{user}' (log in as the node's name)");
            return Ok(Auth::reject());
        }
        self.admit(node, format!("{fp} (node dialled in)"));
        Ok(Auth::Accept)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let id = cert.key_id().to_string();
        let refuse = |why: &str| {
            tracing::warn!(peer = %self.peer, user, certificate = %id, "reverse session refused: certificate {why}");
            Ok(Auth::reject())
        };
        if self.user_cas.is_empty() {
            return refuse("offered, but no --reverse-user-ca is set");
        }
        if cert.validate(self.user_cas.iter()).is_err() {
            return refuse("not signed by --reverse-user-ca, or outside its validity");
        }
        if cert.cert_type() != russh::keys::ssh_key::certificate::CertType::User {
            return refuse("is not a user certificate");
        }
        if !cert.critical_options().is_empty() {
            return refuse("carries critical options (not supported here)");
        }
        if !cert.valid_principals().iter().any(|p| p == user) {
            return refuse(&format!(
                "does not name '{user}' as a principal (principal = node name)"
            ));
        }
        if !self.authorized.current().is_reverse(user) {
            return refuse(&format!(
                "names '{user}', which --reverse-authorized does not list as a reverse node"
            ));
        }
        let fp = format!(
            "{} {} (certificate '{id}', node dialled in)",
            cert.algorithm(),
            cert.public_key().fingerprint(HashAlg::Sha256)
        );
        self.admit(user, fp);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut ServerSession) -> Result<(), Self::Error> {
        if let Some(why) = &self.refused {
            session.disconnect(russh::Disconnect::ByApplication, why, "en")?;
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut ServerSession,
    ) -> Result<bool, Self::Error> {
        let Some(node) = self.node.clone() else {
            return Ok(false);
        };
        if self.refused.is_some() || self.forwarded || !(self.membership)(&node) {
            tracing::warn!(%node, peer = %self.peer, "reverse session: refused a second or unexpected tcpip-forward (one per session)");
            return Ok(false);
        }
        if *port == 0 {
            *port = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 40000 + 20000;
        }
        self.forwarded = true;
        tracing::info!(%node, peer = %self.peer, listen = %address, port = *port, "reverse session ready");
        self.registry.register(Session {
            node,
            handle: session.handle(),
            listen_address: address.to_string(),
            listen_port: *port,
            client_key: self.client_key.clone(),
            closed: self.closed.clone(),
            disconnect_reason: self.reason.clone(),
        });
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        _port: u32,
        session: &mut ServerSession,
    ) -> Result<bool, Self::Error> {
        // The node gave up its forward: the session can carry nothing more.
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| "the node cancelled its forward".into());
        }
        self.closed.cancel();
        session.disconnect(russh::Disconnect::ByApplication, "forward cancelled", "en")?;
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        prohibited(
            "session channel (shell, exec, subsystem)",
            &self.node,
            self.peer,
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _orig: &str,
        _orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        prohibited("direct-tcpip channel", &self.node, self.peer);
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _orig: &str,
        _orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        prohibited("X11 channel", &self.node, self.peer);
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _path: &str,
        reply: ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        prohibited("streamlocal channel", &self.node, self.peer);
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}
