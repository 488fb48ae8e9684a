//! The admin API: what the daemon reports (`/status`, `/metrics`, `/healthz`, `/readyz`), the
//! actions an operator takes (reconnect, drain), and the client the CLI uses to reach it.

pub mod caller;
pub mod client;
pub mod document;
pub mod server;
pub mod token;
