//! The HTTP CONNECT front that kube-apiserver's EgressSelectorConfiguration (`HTTPConnect`
//! over a Unix socket, or over TCP with mutual TLS) sends its `cluster` traffic to.

pub mod front;
pub mod handshakes;
pub mod listen;
pub mod relay;
pub mod request;
pub mod response;

pub use front::{ConnectFront, FrontLimits};
