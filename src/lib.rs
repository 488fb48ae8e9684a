//! kube-ssh-tunnel: Kubernetes' legacy SSH tunnel mode as a library.
//!
//! The control plane keeps **one multiplexed SSH connection per node** ([`NodeTunnel`]) and
//! opens one `direct-tcpip` channel per dial ([`TunnelStream`]). A [`Pool`] holds the
//! tunnels keyed by node name and routes a [`Destination`] to the node that owns it.
//! Host keys are always verified against known_hosts ([`ssh::KnownHosts`]); the original
//! kube-apiserver tunneler never did that.
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

pub mod admin;
pub mod demo;
pub mod destination;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod ssh;
pub mod status;
pub mod tls;
pub mod tunnel_state;

pub use destination::Destination;
pub use error::{ConfigError, ConnectError, DialError, OpenError};
pub use node::Node;
pub use pool::Pool;
pub use ssh::{NodeTunnel, SshSettings, TunnelStream};

/// The version reported by the CLI and (later) the admin API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
