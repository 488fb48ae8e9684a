//! The embedded default behind `kube-ssh-tunnel demo`: in-process SSH nodes and the services
//! behind them, so the real pool, CONNECT front and admin API can be seen working with
//! nothing installed. Not used by `run`.

pub mod node;
pub mod pki;
pub mod stub;

pub use node::{DemoNode, Handshakes, NodeSpec};
