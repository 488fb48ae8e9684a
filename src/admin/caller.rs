//! `Caller`: who sent an admin request, as the listener knows it (the Unix socket's peer uid,
//! or the TCP peer's address). It exists so that a drain can record who asked for it
//! (`drained_by` in `/status`).

use std::fmt;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

/// The peer of one admin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The Unix socket; the peer's uid when the kernel says.
    Socket(Option<u32>),
    /// TCP, from this address.
    Tcp(std::net::SocketAddr),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Socket(Some(uid)) => write!(f, "admin socket (uid {uid})"),
            Caller::Socket(None) => f.write_str("admin socket"),
            Caller::Tcp(a) => write!(f, "admin API over TCP ({a})"),
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Caller::Socket(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller::Tcp(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_read_as_drained_by() {
        assert_eq!(Caller::Socket(Some(0)).to_string(), "admin socket (uid 0)");
        assert_eq!(
            Caller::Tcp("127.0.0.1:9000".parse().unwrap()).to_string(),
            "admin API over TCP (127.0.0.1:9000)"
        );
    }
}
