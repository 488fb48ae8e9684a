//! kube-ssh-tunnel: Kubernetes' legacy SSH tunnel mode as a library.
//!
//! The control plane keeps **one supervised, multiplexed SSH connection per node**
//! ([`NodeTunnel`]; extra ones past the per-connection channel limit or beside a congested
//! connection) and opens one `direct-tcpip` channel per dial ([`TunnelStream`]). A [`Pool`]
//! holds the tunnels keyed by node name and routes a [`Destination`] to the node that owns it.
//! Host keys are verified against known_hosts ([`ssh::KnownHosts`]) unless the caller turns
//! verification off explicitly; the original kube-apiserver tunneler never verified them.
//!
//! Two ways in:
//! - [`Daemon`]: the whole daemon `run` starts — pool, CONNECT front, admin API, node source —
//!   from a typed [`DaemonConfig`], stopped with [`DaemonHandle::shutdown`].
//! - [`Pool`] on its own, for dials from your code:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use kube_ssh_tunnel::{Destination, Node, Pool, SshSettings};
//! let settings = SshSettings::builder("root")
//!     .key_file("keys/id_ed25519", None)?
//!     .known_hosts_file("keys/known_hosts")?
//!     .build();
//! let pool = Pool::new(settings, vec![Node::parse_spec("node-1=192.0.2.10")?])?;
//! let stream = pool.dial(&"192.0.2.10:10250".parse::<Destination>()?).await?;
//! # drop(stream); Ok(()) }
//! ```
//!
//! Layout (docs/architecture.md has the code map and the invariants): `proxy` (the CONNECT
//! front) → `policy` → `pool` (routing, supervision, node lifecycle) → `ssh` (connections and
//! channels); `nodes` (node sources), `admin` (the admin API), `daemon` (assembly), `tasks`
//! (one owner for every task). The binary's modules (`cli`) live beside `main.rs`, behind the
//! `cli` feature; `demo` is behind the `demo` feature.

pub mod admin;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod destination;
pub mod error;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod reverse;
pub mod special;
pub mod ssh;
pub mod tasks;
pub mod tls;
pub mod tunnel_state;

pub use daemon::{Daemon, DaemonConfig, DaemonHandle};
pub use destination::Destination;
pub use error::{ConfigError, ConnectError, DialError, OpenError};
pub use node::Node;
pub use pool::Pool;
pub use ssh::{NodeTunnel, SshSettings, TunnelStream};

/// The version reported by the CLI and by the admin API (`/status`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
