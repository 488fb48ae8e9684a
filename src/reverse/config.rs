//! The russh server settings of the reverse listener, kept beside the client's
//! (`ssh::settings`) so that a reverse node's connection behaves like a dialled one:
//! - the same ciphers first (aes128-gcm, as the forward side prefers: cheapest on these
//!   machines), the same 2 MiB window, 32 KiB packets and channel buffer;
//! - rekeys left to the node's OpenSSH client. russh 0.65.1 ends a session with
//!   `Error::Pending` when it started a rekey and the peer had more than two windows of
//!   channel data in flight (several busy channels do); the server side has the same check
//!   as the client (see docs/architecture.md). OpenSSH rekeys on its own after 1–4 GB
//!   (`RekeyLimit`), which russh answers without that check;
//! - no inactivity timeout: liveness is the keepalives' job (`--keepalive-interval`), and a
//!   quiet node is not a dead one.

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::{Limits, Preferred, cipher};

/// The listener's russh configuration.
pub fn server_config(
    key: PrivateKey,
    keepalive_interval: Option<Duration>,
    keepalive_max: usize,
) -> russh::server::Config {
    russh::server::Config {
        keys: vec![key],
        keepalive_interval,
        keepalive_max,
        inactivity_timeout: None,
        nodelay: true,
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        window_size: 2 << 20,
        maximum_packet_size: 32768,
        channel_buffer_size: 100,
        limits: Limits {
            rekey_write_limit: 1 << 50,
            rekey_read_limit: 1 << 50,
            rekey_time_limit: Duration::from_secs(100 * 365 * 24 * 3600),
        },
        preferred: Preferred {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_starts_rekeys_and_aes128_gcm_comes_first() {
        let key = crate::ssh::keys::generate_ed25519("test").unwrap();
        let c = server_config(key, Some(Duration::from_secs(5)), 3);
        assert!(c.limits.rekey_read_limit >= 1 << 40 && c.limits.rekey_write_limit >= 1 << 40);
        assert!(c.limits.rekey_time_limit >= Duration::from_secs(365 * 24 * 3600));
        assert_eq!(c.preferred.cipher.first(), Some(&cipher::AES_128_GCM));
        assert_eq!(c.inactivity_timeout, None);
        assert_eq!(c.keepalive_interval, Some(Duration::from_secs(5)));
    }
}
