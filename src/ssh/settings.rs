//! Everything a node connection needs that is the same for every node: the user, the key,
//! the trusted host keys, timeouts, and the russh tuning that our measurements call for.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::{Limits, Preferred, cipher, kex};

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};

use super::budget::BufferBudget;
use super::keys::IdentitySource;
use super::known_hosts::KnownHosts;
use super::learned::LearnedHosts;
use super::trust_files::LiveKnownHosts;
use crate::error::ConfigError;

/// What to do with a host key that known_hosts does not vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse unknown and changed keys (default).
    #[default]
    Strict,
    /// Trust a node's key on first use, record it in our learned-hosts file, refuse a later
    /// change.
    AcceptNew,
    /// Accept any key except a revoked one. Only with an explicit insecure flag.
    InsecureSkip,
}

/// Receive-side limits of one channel (see `ssh::stream`), and the pool-wide budget they
/// draw on.
#[derive(Debug, Clone)]
pub struct ChannelLimits {
    /// Most bytes one channel holds in memory for its reader (within the budget).
    pub recv_buffer_max: usize,
    /// Most unread bytes one channel holds in its spill file past that (0: no spilling).
    /// A reader behind by both holds up its connection until it reads again.
    pub spill_max: u64,
    /// How long a reader behind by both may go without reading at all before its channel is
    /// closed (logged and counted). A reader that reads, however slowly, is never cut.
    pub stall_timeout: Duration,
    /// The pool-wide memory and spill budget every channel draws on.
    pub budget: Arc<BufferBudget>,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        Self {
            recv_buffer_max: DEFAULT_CHANNEL_BUFFER,
            spill_max: DEFAULT_CHANNEL_SPILL,
            stall_timeout: Duration::from_secs(30),
            budget: Arc::new(BufferBudget::default()),
        }
    }
}

/// Default memory share of one channel.
pub const DEFAULT_CHANNEL_BUFFER: usize = 4 << 20;
/// Default spill share of one channel.
pub const DEFAULT_CHANNEL_SPILL: u64 = 1 << 30;

/// Shared connection settings for all nodes.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// SSH user on the nodes.
    pub user: String,
    /// Client key (reloaded when its file changes); None when only the agent is used.
    pub identity: Option<Arc<IdentitySource>>,
    /// ssh-agent socket to authenticate with (tried before the key file).
    pub agent: Option<PathBuf>,
    /// Where `accept-new` records learned host keys.
    pub learned: Option<Arc<LearnedHosts>>,
    /// Trusted host keys: the known_hosts files, re-read while running (`reload`); each
    /// handshake reads the set in use once.
    pub known_hosts: Arc<LiveKnownHosts>,
    /// Host key policy.
    pub host_key_policy: HostKeyPolicy,
    /// `--host-key-source nodes`: a host no known_hosts line names is checked against the
    /// host key annotations of its own Node object (`Node::host_keys`).
    pub host_keys_from_nodes: bool,
    /// TCP connect + SSH handshake + authentication, all together.
    pub connect_timeout: Duration,
    /// Opening one channel (until sshd confirms or refuses it).
    pub open_timeout: Duration,
    /// SSH keepalive interval (None = off).
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalives before the connection is declared dead.
    pub keepalive_max: usize,
    /// Per-channel receive limits.
    pub channel: ChannelLimits,
}

impl SshSettings {
    /// Starts settings for `user` with the design defaults (15 s connect, 10 s open,
    /// keepalive 15 s × 3, strict host keys).
    pub fn builder(user: impl Into<String>) -> SshSettingsBuilder {
        SshSettingsBuilder {
            settings: SshSettings {
                user: user.into(),
                identity: None,
                agent: None,
                learned: None,
                known_hosts: Arc::new(LiveKnownHosts::default()),
                host_key_policy: HostKeyPolicy::Strict,
                host_keys_from_nodes: false,
                connect_timeout: Duration::from_secs(15),
                open_timeout: Duration::from_secs(10),
                keepalive_interval: Some(Duration::from_secs(15)),
                keepalive_max: 3,
                channel: ChannelLimits::default(),
            },
        }
    }

    /// The russh client configuration for a handshake that trusts `trusted` (one snapshot of
    /// the known_hosts in use, read once per handshake).
    pub(crate) fn russh_config_for(&self, trusted: &KnownHosts) -> russh::client::Config {
        russh::client::Config {
            // Measured: 2 MiB is best on LAN/loopback; larger windows hurt.
            window_size: 2 << 20,
            maximum_packet_size: 32768,
            channel_buffer_size: 100,
            nodelay: true,
            keepalive_interval: self.keepalive_interval,
            keepalive_max: self.keepalive_max,
            inactivity_timeout: None,
            // A client-initiated rekey drops the connection under parallel downloads in
            // russh 0.65 (Error::Pending); let sshd start rekeys instead.
            limits: Limits {
                rekey_write_limit: 1 << 50,
                rekey_read_limit: 1 << 50,
                rekey_time_limit: Duration::from_secs(100 * 365 * 24 * 3600),
            },
            preferred: Preferred {
                // Ask for host certificates only when some CA is trusted for them.
                host_key_certificates: if trusted.has_cert_authorities() {
                    Cow::Owned(vec![
                        Algorithm::Ed25519,
                        Algorithm::Ecdsa {
                            curve: EcdsaCurve::NistP256,
                        },
                        Algorithm::Ecdsa {
                            curve: EcdsaCurve::NistP384,
                        },
                        Algorithm::Ecdsa {
                            curve: EcdsaCurve::NistP521,
                        },
                        Algorithm::Rsa {
                            hash: Some(HashAlg::Sha512),
                        },
                        Algorithm::Rsa {
                            hash: Some(HashAlg::Sha256),
                        },
                    ])
                } else {
                    Cow::Borrowed(&[])
                },
                kex: Cow::Owned(vec![
                    kex::CURVE25519,
                    kex::CURVE25519_PRE_RFC_8731,
                    kex::MLKEM768X25519_SHA256,
                    kex::EXTENSION_SUPPORT_AS_CLIENT,
                    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
                ]),
                cipher: Cow::Owned(vec![
                    cipher::AES_128_GCM,
                    cipher::AES_256_GCM,
                    cipher::CHACHA20_POLY1305,
                ]),
                ..Preferred::default()
            },
            ..Default::default()
        }
    }
}

/// Builder for [`SshSettings`]; loading steps validate as they go.
#[derive(Debug)]
pub struct SshSettingsBuilder {
    settings: SshSettings,
}

impl SshSettingsBuilder {
    /// Loads the client key (see [`crate::ssh::Identity::load`]); a `<key>-cert.pub` next to
    /// it is used as its user certificate.
    pub fn key_file(
        mut self,
        path: impl AsRef<Path>,
        passphrase_file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        self.settings.identity = Some(Arc::new(IdentitySource::open(
            path.as_ref(),
            passphrase_file,
            None,
        )?));
        Ok(self)
    }

    /// Loads the client key with an explicit user certificate.
    pub fn key_file_with_certificate(
        mut self,
        path: impl AsRef<Path>,
        passphrase_file: Option<&Path>,
        certificate: &Path,
    ) -> Result<Self, ConfigError> {
        self.settings.identity = Some(Arc::new(IdentitySource::open(
            path.as_ref(),
            passphrase_file,
            Some(certificate),
        )?));
        Ok(self)
    }

    /// Authenticates with the ssh-agent at `socket` (before any key file).
    pub fn agent(mut self, socket: impl Into<PathBuf>) -> Self {
        self.settings.agent = Some(socket.into());
        self
    }

    /// Records keys learned under `accept-new` in `path` (created if missing).
    pub fn learned_hosts(mut self, path: &Path) -> Result<Self, ConfigError> {
        self.settings.learned = Some(Arc::new(LearnedHosts::open(path)?));
        Ok(self)
    }

    /// Loads one known_hosts file (adds to any loaded before).
    pub fn known_hosts_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        self.known_hosts_files(&[path.as_ref().to_path_buf()])
    }

    /// Loads several known_hosts files.
    pub fn known_hosts_files(mut self, paths: &[PathBuf]) -> Result<Self, ConfigError> {
        self.settings.known_hosts = Arc::new(LiveKnownHosts::load(paths)?);
        Ok(self)
    }

    /// Trusts these lines (no file behind them; never reloaded).
    pub fn known_hosts(mut self, kh: KnownHosts) -> Self {
        self.settings.known_hosts = Arc::new(LiveKnownHosts::fixed(kh));
        self
    }

    /// Sets the host key policy.
    pub fn host_key_policy(mut self, p: HostKeyPolicy) -> Self {
        self.settings.host_key_policy = p;
        self
    }

    /// Also trusts host keys from the node's own Node annotations when no known_hosts line
    /// names the host (see `SshSettings::host_keys_from_nodes`).
    pub fn host_keys_from_nodes(mut self, on: bool) -> Self {
        self.settings.host_keys_from_nodes = on;
        self
    }

    /// Sets the connect (TCP + handshake + auth) timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.settings.connect_timeout = d;
        self
    }

    /// Sets the channel open timeout.
    pub fn open_timeout(mut self, d: Duration) -> Self {
        self.settings.open_timeout = d;
        self
    }

    /// Sets keepalive interval and count (`None` turns keepalives off).
    pub fn keepalive(mut self, interval: Option<Duration>, max: usize) -> Self {
        self.settings.keepalive_interval = interval;
        self.settings.keepalive_max = max;
        self
    }

    /// Sets per-channel receive limits.
    pub fn channel_limits(mut self, l: ChannelLimits) -> Self {
        self.settings.channel = l;
        self
    }

    /// Finishes the settings.
    pub fn build(self) -> SshSettings {
        self.settings
    }
}
