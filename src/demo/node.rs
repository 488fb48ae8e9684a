//! An in-process SSH node for the demo: a russh server on its own loopback address with its
//! own generated host key, accepting only the demo's client key, serving `direct-tcpip`
//! channels to the node's kubelet, its pods and the cluster's services the way a node's
//! sshd restricted by PermitOpen would. Production nodes run OpenSSH; this exists so the
//! demo needs nothing installed beyond Rust.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::stub::{self, Service};

/// What a demo node serves and whom it lets in.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    /// The loopback address the node listens on (its "node IP").
    pub ip: IpAddr,
    /// The kubelet port on that address.
    pub kubelet_port: u16,
    /// The node's pod CIDR: any port on an IP inside it is a pod.
    pub pod_cidr: IpNet,
    /// The cluster's service CIDR: any port on an IP inside it is a service.
    pub service_cidr: IpNet,
}

/// A running demo node; stops (and drops every connection) when dropped.
pub struct DemoNode {
    pub spec: NodeSpec,
    /// Where its SSH server listens.
    pub addr: SocketAddr,
    /// Its host key, for the known_hosts the demo writes.
    pub host_key: PublicKey,
    tasks: JoinSet<()>,
}

/// Counts SSH handshakes in progress across nodes (accepted, not yet authenticated) and the
/// most seen at once: what a client's handshake limit looks like from the servers' side.
#[derive(Debug, Default)]
pub struct Handshakes {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Handshakes {
    /// Handshakes in progress now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// The most in progress at once so far.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    fn begin(self: &Arc<Self>) -> HandshakeGuard {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(now, Ordering::Relaxed);
        HandshakeGuard(self.clone())
    }
}

/// One handshake in progress; ends when authentication succeeds or the connection goes.
struct HandshakeGuard(Arc<Handshakes>);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DemoNode {
    /// Binds `spec.ip:port` (0 for any free port) and serves SSH for `client` only.
    pub async fn start(spec: NodeSpec, port: u16, client: PublicKey) -> std::io::Result<DemoNode> {
        DemoNode::start_counted(spec, port, client, None).await
    }

    /// Like `start`, counting handshakes in `handshakes` (shared by many nodes).
    pub async fn start_counted(
        spec: NodeSpec,
        port: u16,
        client: PublicKey,
        handshakes: Option<Arc<Handshakes>>,
    ) -> std::io::Result<DemoNode> {
        let listener = TcpListener::bind((spec.ip, port)).await?;
        let addr = listener.local_addr()?;
        let host = crate::ssh::keys::generate_ed25519(&format!("{} host key", spec.name))?;
        let host_key = host.public_key().clone();
        let config = Arc::new(russh::server::Config {
            keys: vec![host],
            nodelay: true,
            auth_rejection_time: Duration::from_millis(200),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        });
        let mut tasks = JoinSet::new();
        let shared = Arc::new((spec.clone(), client));
        tasks.spawn(async move {
            // Each connection runs in its own task, all aborted when the accept loop is.
            let mut sessions = JoinSet::new();
            loop {
                let (socket, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                while sessions.try_join_next().is_some() {}
                let handler = NodeHandler {
                    shared: shared.clone(),
                    handshake: handshakes.as_ref().map(|h| h.begin()),
                };
                let config = config.clone();
                sessions.spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, socket, handler).await {
                        let _ = session.await;
                    }
                });
            }
        });
        Ok(DemoNode {
            spec,
            addr,
            host_key,
            tasks,
        })
    }

    /// Its known_hosts line (`[IP]:PORT KEY`).
    pub fn known_hosts_line(&self) -> Result<String, russh::keys::ssh_key::Error> {
        Ok(format!(
            "[{}]:{} {}",
            self.spec.ip,
            self.addr.port(),
            self.host_key.to_openssh()?
        ))
    }

    /// Its entry in a TOML node file (`--nodes`).
    pub fn node_file_entry(&self) -> String {
        format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\npod_cidrs = [\"{}\"]\n",
            self.spec.name,
            self.spec.ip,
            self.addr.port(),
            self.spec.pod_cidr
        )
    }

    /// Stops the node: its listener and every connection.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        self.stop();
    }
}

struct NodeHandler {
    shared: Arc<(NodeSpec, PublicKey)>,
    /// Held until the client authenticates.
    handshake: Option<HandshakeGuard>,
}

impl NodeHandler {
    /// Only the demo's own client key gets in.
    fn admit(&mut self, key: &PublicKey) -> Auth {
        if key.key_data() == self.shared.1.key_data() {
            self.handshake = None;
            Auth::Accept
        } else {
            Auth::reject()
        }
    }

    /// What `host:port` reaches on this node, or None when the node's policy refuses it
    /// (as PermitOpen would).
    fn route(&self, host: &str, port: u32) -> Option<Service> {
        let spec = &self.shared.0;
        let ip: IpAddr = host.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
        if ip == spec.ip && port == u32::from(spec.kubelet_port) {
            Some(Service::Kubelet)
        } else if spec.pod_cidr.contains(&ip) {
            Some(Service::Pod(ip.to_string()))
        } else if spec.service_cidr.contains(&ip) {
            Some(Service::Service(ip.to_string()))
        } else {
            None
        }
    }
}

impl russh::server::Handler for NodeHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.admit(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.admit(key.public_key))
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.route(host_to_connect, port_to_connect) {
            Some(service) => {
                reply.accept().await;
                let node = self.shared.0.name.clone();
                // The channel is served in its own task: nothing slow runs in the callback.
                tokio::spawn(async move {
                    stub::serve(channel.into_stream(), &node, &service).await;
                });
            }
            None => {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
        Ok(())
    }
}
