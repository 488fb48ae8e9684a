//! Reverse mode: nodes the daemon cannot reach dial in with stock OpenSSH (`ssh -N -R PORT`,
//! a dynamic reverse forward) and their connections join the same pool as dialled ones.
//!
//! - `authorized`: which public key names which node (`--reverse-authorized`); a node named
//!   there is a reverse node. `revoked`: keys, CAs and certificate ids that may not dial in
//!   (`--reverse-revoked`). `live`: those files, re-read when they change.
//! - `server`: the SSH listener (`--reverse-listen`): authenticates a node by its key, accepts
//!   only `tcpip-forward` (and its cancel), refuses everything else, and hands the session to
//!   the registry. `refusals`: rate limits for its refusal log lines. `sessions`: its book of live sessions (cut when their credential is
//!   revoked), and `cuttable`, the connection it can cut under a session. `limits`: sessions per node, unauthenticated connections, the login grace.
//! - `registry`: sessions that arrived and wait to be taken by the pool.
//! - `link`: a node's session as a pool `Link`: dials open `forwarded-tcpip` channels and ask
//!   the node's ssh for the destination with SOCKS5 (`socks`).
//! - `config`: the listener's russh settings (ciphers, window, rekeys left to the node).
//! - `connector`: the pool's `Connector`: waits for a reverse node's session, dials others.

pub mod authorized;
pub mod config;
pub mod connector;
mod cuttable;
pub mod limits;
pub mod link;
pub mod live;
mod refusals;
pub mod registry;
pub mod revoked;
pub mod server;
mod sessions;
pub mod socks;

pub use authorized::AuthorizedNodes;
pub use connector::ReverseConnector;
pub use limits::Limits;
pub use live::{LiveAuthorized, LiveRevoked};
pub use registry::Registry;
pub use revoked::RevokedKeys;
pub use server::{ReverseError, ReverseServer, ServerSettings};
