//! What a failed `direct-tcpip` open means, decided from what russh returned and nothing
//! else. The class matters twice: a refusal is sshd's answer (the health probe counts it as
//! proof the link works, a dial answers 502), while a lost connection is no answer at all (the
//! probe failed, a dial waits for the supervisor's reconnect). Asking "is the connection closed
//! yet?" instead, as before, depends on the order in which russh marks the handle closed and
//! fails the pending opens; in 0.65.1 the handle happens to read as closed first, so that rule
//! worked by the luck of an order russh does not promise.

use crate::error::OpenError;

/// The class of a channel open that russh failed: only `ChannelOpenFailure` (sshd's
/// SSH_MSG_CHANNEL_OPEN_FAILURE) is a refusal.
///
/// Everything else is `ConnectionLost`. In russh 0.65 `channel_open_direct_tcpip` returns, apart
/// from `ChannelOpenFailure`, only `SendError` (the session task is gone) and `Disconnect` (the
/// session dropped the pending open); `RecvError`, `HUP`, IO, keepalive/inactivity timeouts and
/// the transport's protocol errors (kex, MAC, decryption) all mean the same if a later russh
/// returns them here. Any other variant is decided the same way, on purpose: it did not come
/// from sshd's answer to this open, so calling it a refusal would count a dead link as
/// answered; a dial that gets `ConnectionLost` retries within its own deadline, so a misclassified
/// local error costs a bounded retry, not a wrong verdict on the node.
pub fn classify(error: russh::Error) -> OpenError {
    match error {
        russh::Error::ChannelOpenFailure(reason) => OpenError::Refused {
            reason: open_failure_text(&reason),
        },
        _ => OpenError::ConnectionLost,
    }
}

/// sshd's reason for refusing an open, with what to check for the common ones.
fn open_failure_text(reason: &russh::ChannelOpenFailure) -> String {
    match reason {
        russh::ChannelOpenFailure::AdministrativelyProhibited => {
            "administratively prohibited (the node's sshd forbids forwarding to it: check \
             AllowTcpForwarding/PermitOpen or the key's permitopen=)"
                .into()
        }
        russh::ChannelOpenFailure::ConnectFailed => {
            "connect failed (nothing reachable at that address and port from the node)".into()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::ChannelOpenFailure as F;

    fn refused(e: &OpenError) -> bool {
        matches!(e, OpenError::Refused { .. })
    }

    #[test]
    fn only_sshds_open_failure_is_a_refusal_everything_else_is_a_lost_connection() {
        // (what russh returned, is it a refusal?) — the first three are every error russh
        // 0.65's channel_open_direct_tcpip can return; the rest are transport failures.
        let table: Vec<(russh::Error, bool)> = vec![
            (russh::Error::ChannelOpenFailure(F::ConnectFailed), true),
            (
                russh::Error::ChannelOpenFailure(F::AdministrativelyProhibited),
                true,
            ),
            (
                russh::Error::ChannelOpenFailure(F::UnknownChannelType),
                true,
            ),
            (russh::Error::ChannelOpenFailure(F::ResourceShortage), true),
            (russh::Error::Disconnect, false),
            (russh::Error::SendError, false),
            (russh::Error::RecvError, false),
            (russh::Error::HUP, false),
            (russh::Error::KeepaliveTimeout, false),
            (russh::Error::InactivityTimeout, false),
            (russh::Error::ConnectionTimeout, false),
            (russh::Error::DecryptionError, false),
            (russh::Error::PacketAuth, false),
            (russh::Error::Kex, false),
            (russh::Error::Inconsistent, false),
            (russh::Error::WrongChannel, false),
            (russh::Error::Pending, false),
            (
                russh::Error::IO(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
                false,
            ),
            (
                russh::Error::IO(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
                false,
            ),
        ];
        let mut wrong = Vec::new();
        for (error, want_refused) in table {
            let shown = format!("{error:?}");
            let class = classify(error);
            if refused(&class) != want_refused {
                wrong.push(format!("{shown} -> {class:?}"));
            }
            if !want_refused {
                assert_eq!(class, OpenError::ConnectionLost, "{shown}");
            }
        }
        assert!(wrong.is_empty(), "misclassified: {wrong:?}");
    }

    #[test]
    fn a_refusal_keeps_sshds_reason_and_what_to_check() {
        let OpenError::Refused { reason } = classify(russh::Error::ChannelOpenFailure(
            F::AdministrativelyProhibited,
        )) else {
            panic!("not a refusal")
        };
        assert!(reason.contains("AllowTcpForwarding"), "{reason}");
        let OpenError::Refused { reason } =
            classify(russh::Error::ChannelOpenFailure(F::ConnectFailed))
        else {
            panic!("not a refusal")
        };
        assert!(reason.starts_with("connect failed"), "{reason}");
    }
}
