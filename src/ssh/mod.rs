//! Everything about one SSH connection to one node: keys, known_hosts, the russh handler,
//! the socket tuning, the connection (`NodeTunnel`) and the per-dial stream (`TunnelStream`).

pub mod authorized;
pub mod budget;
pub mod channel_count;
pub mod congestion;
pub mod host_key_trust;
pub mod keys;
pub mod known_hosts;
pub mod learned;
pub(crate) mod open_outcome;
pub(crate) mod opening;
pub mod settings;
pub mod socket;
mod spill;
pub mod stream;
pub mod trust_files;
pub mod tunnel;
pub mod verifier;

pub use budget::BufferBudget;
pub use congestion::Congestion;
pub use host_key_trust::HostKeyTrust;
pub use keys::{Identity, IdentitySource};
pub use known_hosts::KnownHosts;
pub use learned::LearnedHosts;
pub use settings::{ChannelLimits, HostKeyPolicy, SshSettings};
pub use stream::TunnelStream;
pub use trust_files::LiveKnownHosts;
pub use tunnel::NodeTunnel;
