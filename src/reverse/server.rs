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
//!
//! A key or certificate listed in `--reverse-revoked` is refused (`revoked`). The listener
//! keeps a book of live authenticated sessions (`sessions`); when the authorized or the
//! revoked file changes, a ticker cuts every live session whose credential is no longer good,
//! with a reason the node's ssh prints. Limits key on identity, not on the source address
//! (`limits`).

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

use super::cuttable::Cuttable;
use super::limits::{Limits, PreAuthSlot, Unauthenticated};
use super::link::Session;
use super::live::{LiveAuthorized, LiveRevoked};
use super::refusals::{RefusalLog, held_back};
use super::registry::Registry;
use super::sessions::{Book, Credential, LiveSession};

/// How often the listener checks its live sessions against the authorized and revoked files.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a cut session's disconnect may take to be handed to its session task, and how
/// long the session then has to send it before its connection is cut under it.
const CUT_LIMIT: Duration = Duration::from_secs(5);
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
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
    #[error("--reverse-revoked {file}:{line}: {reason}")]
    Revoked {
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
    /// `--reverse-revoked`: keys, CAs and certificate key ids that may not dial in.
    pub revoked: Option<Arc<LiveRevoked>>,
    pub limits: Limits,
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
    revoked: Option<Arc<LiveRevoked>>,
    limits: Limits,
    book: Arc<Book>,
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
            revoked: settings.revoked,
            limits: settings.limits,
            book: Arc::new(Book::default()),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, membership: Membership, stop: CancellationToken) {
        tokio::spawn(recheck_live_sessions(
            Recheck {
                book: self.book.clone(),
                authorized: self.authorized.clone(),
                revoked: self.revoked.clone(),
                registry: self.registry.clone(),
                membership: membership.clone(),
            },
            stop.clone(),
        ));
        let unauthenticated = Unauthenticated::new(
            self.limits.max_unauthenticated,
            self.limits.max_unauthenticated_per_source,
        );
        let refusals = Arc::new(RefusalLog::default());
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
            // At the pre-auth cap: closed at once (dropped), logged at most once per interval.
            let Some(slot) = unauthenticated.enter(peer) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let cut = CancellationToken::new();
            let tcp = Cuttable::new(tcp, cut.clone());
            let id = self.book.next_id();
            let handler = NodeSession {
                authorized: self.authorized.clone(),
                revoked: self.revoked.clone(),
                registry: self.registry.clone(),
                user_cas: self.user_cas.clone(),
                membership: membership.clone(),
                peer,
                node: None,
                refused: None,
                client_key: String::new(),
                credential: None,
                forwarded: false,
                closed: CancellationToken::new(),
                reason: Arc::new(Mutex::new(None)),
                id,
                book: self.book.clone(),
                max_sessions_per_node: self.limits.max_sessions_per_node,
                slot: slot.clone(),
                authenticated: CancellationToken::new(),
                cut: cut.clone(),
                refusals: refusals.clone(),
            };
            let closed = handler.closed.clone();
            let reason = handler.reason.clone();
            let authenticated = handler.authenticated.clone();
            let config = self.config.clone();
            let stop = stop.clone();
            let book = self.book.clone();
            let grace = self.limits.login_grace;
            tokio::spawn(async move {
                let ends = Ends {
                    authenticated,
                    stop,
                    closed: closed.clone(),
                    reason: reason.clone(),
                    cut,
                };
                let why = serve_connection(config, tcp, handler, grace, peer, ends).await;
                drop(slot);
                book.remove(id);
                if let Ok(mut r) = reason.lock() {
                    r.get_or_insert(why.clone());
                }
                tracing::debug!(%peer, reason = %why, "reverse session ended");
                closed.cancel();
            });
        }
    }
}

/// What can end a connection besides the node: its authentication (which stops the login
/// grace), the daemon stopping, the daemon closing it (`closed`: a refusal, the pool's
/// disconnect, a cancelled forward; `reason` says why), and the cut under the session.
struct Ends {
    authenticated: CancellationToken,
    stop: CancellationToken,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    cut: CancellationToken,
}

/// Runs one connection until it ends; returns why it ended. A connection that has not
/// authenticated within `grace` of its arrival (version exchange included) is disconnected.
/// A connection the daemon closes is closed for good: its disconnect is sent (bounded), and if
/// the node does not close its side soon after, the connection is cut under the session (a
/// russh session that sent a disconnect otherwise waits for the peer forever, since we set no
/// inactivity timeout).
async fn serve_connection(
    config: Arc<russh::server::Config>,
    tcp: Cuttable,
    handler: NodeSession,
    grace: Duration,
    peer: SocketAddr,
    ends: Ends,
) -> String {
    let Ends {
        authenticated,
        stop,
        closed,
        reason,
        cut,
    } = ends;
    let deadline = tokio::time::Instant::now() + grace;
    let late = || {
        let why = format!("no authentication within --reverse-login-grace ({grace:?})");
        tracing::warn!(%peer, "reverse listener: disconnected {peer}: {why}");
        why
    };
    let running = tokio::select! {
        r = tokio::time::timeout_at(deadline, russh::server::run_stream(config, tcp, handler)) => match r {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return late(),
        },
        _ = stop.cancelled() => return "the daemon is stopping".into(),
    };
    let handle = running.handle();
    tokio::pin!(running);
    let grace_over = async {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => (),
            _ = authenticated.cancelled() => std::future::pending::<()>().await,
        }
    };
    let ended = |r: Result<(), russh::Error>| {
        r.err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "the node closed the connection".into())
    };
    let why = tokio::select! {
        r = &mut running => return ended(r),
        _ = stop.cancelled() => "the daemon is stopping".to_string(),
        _ = grace_over => late(),
        _ = closed.cancelled() => reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "closed by the daemon".into()),
    };
    // The session task ends once it has sent the disconnect; wait for that, bounded, then
    // cut the connection under it (a session in key exchange does not act on a disconnect).
    let _ = tokio::time::timeout(
        CUT_LIMIT,
        handle.disconnect(
            russh::Disconnect::ByApplication,
            format!("{why} (kube-ssh-tunnel)"),
            "en".into(),
        ),
    )
    .await;
    if tokio::time::timeout(DISCONNECT_GRACE, &mut running)
        .await
        .is_err()
    {
        cut.cancel();
        let _ = tokio::time::timeout(CUT_LIMIT, &mut running).await;
    }
    why
}

/// What the listener checks its sessions against.
struct Recheck {
    book: Arc<Book>,
    authorized: Arc<LiveAuthorized>,
    revoked: Option<Arc<LiveRevoked>>,
    registry: Arc<Registry>,
    membership: Membership,
}

/// Every `RECHECK_INTERVAL`: closes the waiting sessions (not yet taken by the pool) of nodes
/// that left the node set; and if the authorized or the revoked file changed (or sessions
/// were admitted since the last check, which may have authenticated against the older
/// version), cuts the live sessions whose credential is no longer good (with the reason,
/// which the node's ssh prints). The pool drains and closes the sessions it took when their
/// node leaves.
async fn recheck_live_sessions(r: Recheck, stop: CancellationToken) {
    let Recheck {
        book,
        authorized,
        revoked,
        registry,
        membership,
    } = r;
    let mut seen = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => (),
            _ = stop.cancelled() => return,
        }
        for session in registry.take_non_members(|node| membership(node)) {
            let why = format!("node {} left this daemon's node set", session.node);
            tracing::warn!(node = %session.node, "reverse session closed: {why}");
            if let Ok(mut r) = session.disconnect_reason.lock() {
                r.get_or_insert(why);
            }
            // Its connection task sends the disconnect with the reason, then cuts the
            // connection if the node does not close it.
            session.closed.cancel();
        }
        // Read before the files: a session admitted after this makes the next tick check.
        let admitted = book.admitted();
        let (auth, ga) = authorized.current_with_generation();
        let (rev, gr) = match &revoked {
            Some(r) => {
                let (v, g) = r.current_with_generation();
                (Some(v), g)
            }
            None => (None, 0),
        };
        if (ga, gr, admitted) == seen {
            continue;
        }
        let changed = (ga, gr) != (seen.0, seen.1);
        seen = (ga, gr, admitted);
        if !changed && ga == 0 && gr == 0 {
            // Nothing was ever reloaded: every session authenticated against these files.
            continue;
        }
        let cuts = book.take_disallowed(|node, cred| {
            not_allowed(node, cred, &auth, rev.as_deref()).map(|why| format!("node {node}: {why}"))
        });
        for (session, why) in cuts {
            tracing::warn!(node = %session.node, reason = %why, "reverse session cut: {why}");
            if let Ok(mut r) = session.reason.lock() {
                r.get_or_insert(why.clone());
            }
            // Each in a task of its own: a session whose queue is stuck behind a closed
            // window must not hold up the cuts of the others.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    CUT_LIMIT,
                    session.handle.disconnect(
                        russh::Disconnect::ByApplication,
                        format!("{why} (kube-ssh-tunnel)"),
                        "en".into(),
                    ),
                )
                .await;
                tokio::time::sleep(DISCONNECT_GRACE).await;
                session.cut.cancel();
            });
        }
    }
}

/// Why a credential may no longer serve `node`, if it may not.
fn not_allowed(
    node: &str,
    credential: &Credential,
    authorized: &super::AuthorizedNodes,
    revoked: Option<&super::revoked::RevokedKeys>,
) -> Option<String> {
    match credential {
        Credential::Key(key) => {
            if revoked.is_some_and(|r| r.key(key.key_data())) {
                return Some("its key is listed in --reverse-revoked".into());
            }
            if authorized.node_of(key) != Some(node) {
                return Some(format!(
                    "its key is no longer listed for {node} in --reverse-authorized"
                ));
            }
        }
        Credential::Certificate(cert) => {
            if let Some(why) = revoked.and_then(|r| r.certificate(cert)) {
                return Some(format!("certificate '{}': {why}", cert.key_id()));
            }
            if !authorized.is_reverse(node) {
                return Some(format!(
                    "{node} is no longer listed in --reverse-authorized"
                ));
            }
        }
    }
    None
}

/// One node's session (russh's server handler).
struct NodeSession {
    authorized: Arc<LiveAuthorized>,
    revoked: Option<Arc<LiveRevoked>>,
    registry: Arc<Registry>,
    user_cas: Arc<Vec<russh::keys::ssh_key::Fingerprint>>,
    membership: Membership,
    peer: SocketAddr,
    /// The node this session serves, once authenticated.
    node: Option<String>,
    /// Authenticated, but refused (told at `auth_succeeded`).
    refused: Option<String>,
    client_key: String,
    /// What it authenticated with (for the book).
    credential: Option<Credential>,
    forwarded: bool,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    /// This connection's id in the book of live sessions.
    id: u64,
    book: Arc<Book>,
    max_sessions_per_node: usize,
    /// Its place under the pre-auth cap, given back at `auth_succeeded`.
    slot: Arc<PreAuthSlot>,
    /// Cancelled at `auth_succeeded` (ends the login grace).
    authenticated: CancellationToken,
    /// Cuts the connection under the session (`Cuttable`).
    cut: CancellationToken,
    /// Rate limits for the refusal lines, shared by the listener's sessions.
    refusals: Arc<RefusalLog>,
}

impl NodeSession {
    /// An authenticated node: served if it is in the node set, else told why at
    /// `auth_succeeded`.
    fn admit(&mut self, node: &str, client_key: String, credential: Credential) {
        if !(self.membership)(node) {
            if let Some(held) = self.refusals.admit("not in the node set", node) {
                let more = held_back(held);
                tracing::warn!(peer = %self.peer, key = %client_key, node, held, "reverse session refused: node {node} is not in this daemon's node set{more}");
            }
            self.refused = Some(format!(
                "node {node} is not in this daemon's node set (kube-ssh-tunnel)"
            ));
        }
        self.node = Some(node.to_string());
        self.client_key = client_key;
        self.credential = Some(credential);
    }

    /// The current revoked set, if `--reverse-revoked` is given.
    fn revoked(&self) -> Option<Arc<super::revoked::RevokedKeys>> {
        self.revoked.as_ref().map(|r| r.current())
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
        if self
            .revoked()
            .is_some_and(|r| r.key(key.public_key.key_data()))
        {
            if let Some(held) = self.refusals.admit("revoked key", &fp) {
                let more = held_back(held);
                tracing::warn!(peer = %self.peer, user, key = %fp, held, "reverse session refused: the key is listed in --reverse-revoked{more}");
            }
            return Ok(Auth::reject());
        }
        let authorized = self.authorized.current();
        let Some(node) = authorized.node_of(key.public_key) else {
            if let Some(held) = self.refusals.admit("unknown key", &fp) {
                let more = held_back(held);
                tracing::warn!(peer = %self.peer, user, key = %fp, held, "reverse session refused: the key is not in --reverse-authorized{more}");
            }
            return Ok(Auth::reject());
        };
        if node != user {
            if let Some(held) = self
                .refusals
                .admit("another node's key", &format!("{fp} {user}"))
            {
                let more = held_back(held);
                tracing::warn!(peer = %self.peer, user, key = %fp, node, held, "reverse session refused: this key belongs to node {node}, not to '{user}' (log in as the node's name){more}");
            }
            return Ok(Auth::reject());
        }
        self.admit(
            node,
            format!("{fp} (node dialled in)"),
            Credential::Key(key.public_key.clone()),
        );
        Ok(Auth::Accept)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let id = cert.key_id().to_string();
        let refuse = |why: &str| {
            if let Some(held) = self.refusals.admit("certificate", &format!("{id} {why}")) {
                let more = held_back(held);
                tracing::warn!(peer = %self.peer, user, certificate = %id, held, "reverse session refused: certificate {why}{more}");
            }
            Ok(Auth::reject())
        };
        if self.user_cas.is_empty() {
            return refuse("offered, but no --reverse-user-ca is set");
        }
        if cert.validate(self.user_cas.iter()).is_err() {
            return refuse("not signed by --reverse-user-ca, or outside its validity");
        }
        if let Some(why) = self.revoked().and_then(|r| r.certificate(cert)) {
            return refuse(why);
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
        self.admit(user, fp, Credential::Certificate(Box::new(cert.clone())));
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut ServerSession) -> Result<(), Self::Error> {
        self.slot.release();
        self.authenticated.cancel();
        if self.refused.is_none()
            && let (Some(node), Some(credential)) = (&self.node, self.credential.take())
            && let Err(live) = self.book.admit(
                self.id,
                LiveSession {
                    node: node.clone(),
                    credential,
                    handle: session.handle(),
                    cut: self.cut.clone(),
                    reason: self.reason.clone(),
                },
                self.max_sessions_per_node,
            )
        {
            if let Some(held) = self.refusals.admit("sessions per node", node) {
                let more = held_back(held);
                tracing::warn!(peer = %self.peer, key = %self.client_key, %node, held, "reverse session refused: node {node} already has {live} live sessions, the most --reverse-max-sessions-per-node allows{more}");
            }
            self.refused = Some(format!(
                "node {node} already has {live} live sessions, the most --reverse-max-sessions-per-node allows (kube-ssh-tunnel)"
            ));
        }
        if let Some(why) = &self.refused {
            if let Ok(mut r) = self.reason.lock() {
                r.get_or_insert(why.clone());
            }
            session.disconnect(russh::Disconnect::ByApplication, why, "en")?;
            // Closed for good even if the node never closes its side (`serve_connection`).
            self.closed.cancel();
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
