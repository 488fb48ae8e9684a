//! Reverse mode: nodes the daemon cannot reach dial in with stock OpenSSH (`ssh -N -R PORT`,
//! a dynamic reverse forward) and their connections join the same pool as dialled ones.
//!
//! - `authorized`: which public key names which node (`--reverse-authorized`); a node named
//!   there is a reverse node. `live`: that file, re-read when it changes.
//! - `server`: the SSH listener (`--reverse-listen`): authenticates a node by its key, accepts
//!   only `tcpip-forward` (and its cancel), refuses everything else, and hands the session to
//!   the registry.
//! - `registry`: sessions that arrived and wait to be taken by the pool.
//! - `link`: a node's session as a pool `Link`: dials open `forwarded-tcpip` channels and ask
//!   the node's ssh for the destination with SOCKS5 (`socks`).
//! - `config`: the listener's russh settings (ciphers, window, rekeys left to the node).
//! - `connector`: the pool's `Connector`: waits for a reverse node's session, dials others.

pub mod authorized;
pub mod config;
pub mod connector;
pub mod link;
pub mod live;
pub mod registry;
pub mod server;
pub mod socks;

pub use authorized::AuthorizedNodes;
pub use connector::ReverseConnector;
pub use live::LiveAuthorized;
pub use registry::Registry;
pub use server::{ReverseError, ReverseServer, ServerSettings};
