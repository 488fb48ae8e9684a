//! The SOCKS client side of a dial through a node's dynamic reverse forward: the node's ssh
//! (OpenSSH ≥ 7.6, `ssh -R PORT` without a destination) reads a SOCKS request at the start
//! of each `forwarded-tcpip` channel and connects where it says.
//!
//! - An IPv4 destination goes as SOCKS4 CONNECT: one request, one reply, so an open takes one
//!   round trip after the channel (OpenSSH's `channel_decode_socks4`, in every version with
//!   dynamic reverse forwards).
//! - An IPv6 address or a host name goes as SOCKS5 (method NOAUTH, command CONNECT). We wait
//!   for the method reply before sending CONNECT (OpenSSH before 10.3 does not parse a request
//!   sent ahead): two round trips.
//!
//! What the reply proves, either way: OpenSSH answers "granted" *before* it connects, so a
//! granted reply says only that the node's ssh took the request; a destination it cannot reach
//! shows as the channel closing afterwards (the stream ends without a byte).

use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why the SOCKS exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("the channel failed during the exchange: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the node's ssh does not speak SOCKS5 here (reply {0:02x?}); is its -R forward dynamic (no destination)?"
    )]
    NotSocks5(Vec<u8>),
    #[error("the node's ssh refused the CONNECT (SOCKS5 reply code {0})")]
    Refused(u8),
    #[error(
        "the node's ssh does not speak SOCKS4 here (reply {0:02x?}); is its -R forward dynamic (no destination)?"
    )]
    NotSocks4(Vec<u8>),
    #[error("the node's ssh refused the CONNECT (SOCKS4 reply code {0})")]
    Refused4(u8),
    #[error("host name longer than 255 bytes")]
    NameTooLong,
}

/// The CONNECT request for `host:port` (an IP literal as such, anything else as a name).
pub fn connect_request(host: &str, port: u16) -> Result<Vec<u8>, SocksError> {
    let mut r = vec![5, 1, 0];
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            r.push(1);
            r.extend_from_slice(&a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            r.push(4);
            r.extend_from_slice(&a.octets());
        }
        Err(_) => {
            let len = u8::try_from(host.len()).map_err(|_| SocksError::NameTooLong)?;
            r.push(3);
            r.push(len);
            r.extend_from_slice(host.as_bytes());
        }
    }
    r.extend_from_slice(&port.to_be_bytes());
    Ok(r)
}

/// The SOCKS4 CONNECT request for an IPv4 address (empty user id).
pub fn connect4_request(addr: std::net::Ipv4Addr, port: u16) -> Vec<u8> {
    let mut r = vec![4, 1];
    r.extend_from_slice(&port.to_be_bytes());
    r.extend_from_slice(&addr.octets());
    r.push(0);
    r
}

/// Asks for `host:port` on a fresh channel; returns once the node's ssh granted it. SOCKS4
/// (one round trip) for an IPv4 address, SOCKS5 (two) for anything else.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    port: u16,
) -> Result<(), SocksError> {
    if let Ok(IpAddr::V4(a)) = host.parse::<IpAddr>() {
        return connect4(s, a, port).await;
    }
    connect5(s, host, port).await
}

async fn connect4<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    addr: std::net::Ipv4Addr,
    port: u16,
) -> Result<(), SocksError> {
    s.write_all(&connect4_request(addr, port)).await?;
    s.flush().await?;
    // VN 0, CD, DSTPORT, DSTIP.
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).await?;
    if reply[0] != 0 {
        return Err(SocksError::NotSocks4(reply.to_vec()));
    }
    if reply[1] != 90 {
        return Err(SocksError::Refused4(reply[1]));
    }
    Ok(())
}

async fn connect5<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    port: u16,
) -> Result<(), SocksError> {
    let request = connect_request(host, port)?;
    s.write_all(&[5, 1, 0]).await?;
    s.flush().await?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await?;
    if method != [5, 0] {
        return Err(SocksError::NotSocks5(method.to_vec()));
    }
    s.write_all(&request).await?;
    s.flush().await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(SocksError::NotSocks5(head.to_vec()));
    }
    if head[1] != 0 {
        return Err(SocksError::Refused(head[1]));
    }
    // The bound address, which we do not use.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        _ => return Err(SocksError::NotSocks5(head.to_vec())),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_address_type() {
        assert_eq!(
            connect_request("10.1.2.3", 10250).unwrap(),
            [5, 1, 0, 1, 10, 1, 2, 3, 0x28, 0x0a]
        );
        let v6 = connect_request("[::1]", 80).unwrap();
        assert_eq!((v6[3], v6.len()), (4, 4 + 16 + 2));
        assert_eq!(
            connect_request("kubelet", 1).unwrap(),
            [
                5, 1, 0, 3, 7, b'k', b'u', b'b', b'e', b'l', b'e', b't', 0, 1
            ]
        );
    }

    /// A SOCKS server as OpenSSH's dynamic forward answers: it replies only once a whole
    /// message has arrived. Returns the round trips it served (replies it sent) and the
    /// destination asked for; then echoes one byte so the client can check the stream.
    async fn openssh_like_peer(mut b: tokio::io::DuplexStream) -> (usize, Vec<u8>) {
        let mut trips = 0;
        let mut vn = [0u8; 1];
        b.read_exact(&mut vn).await.unwrap();
        let dest = if vn[0] == 4 {
            let mut head = [0u8; 7];
            b.read_exact(&mut head).await.unwrap();
            let mut user = [0u8; 1];
            loop {
                b.read_exact(&mut user).await.unwrap();
                if user[0] == 0 {
                    break;
                }
            }
            b.write_all(&[0, 90, 0, 0, 0, 0, 0, 0]).await.unwrap();
            trips += 1;
            head[1..].to_vec()
        } else {
            let mut m = [0u8; 2];
            b.read_exact(&mut m).await.unwrap();
            let mut methods = vec![0u8; usize::from(m[1])];
            b.read_exact(&mut methods).await.unwrap();
            b.write_all(&[5, 0]).await.unwrap();
            trips += 1;
            let mut head = [0u8; 4];
            b.read_exact(&mut head).await.unwrap();
            let len = match head[3] {
                1 => 4,
                4 => 16,
                _ => {
                    let mut l = [0u8; 1];
                    b.read_exact(&mut l).await.unwrap();
                    usize::from(l[0])
                }
            };
            let mut rest = vec![0u8; len + 2];
            b.read_exact(&mut rest).await.unwrap();
            b.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
            trips += 1;
            rest
        };
        b.write_all(b"x").await.unwrap();
        (trips, dest)
    }

    /// The exchange, bounded: a client and a peer waiting for each other fail the test.
    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("the exchange ends within 10 s")
    }

    async fn round_trips(host: &str, port: u16) -> (usize, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(1024);
        let peer = tokio::spawn(openssh_like_peer(b));
        bounded(connect(&mut a, host, port)).await.unwrap();
        let mut x = [0u8; 1];
        bounded(a.read_exact(&mut x)).await.unwrap();
        assert_eq!(&x, b"x", "the byte after the reply is the stream's");
        bounded(peer).await.unwrap()
    }

    #[tokio::test]
    async fn an_ipv4_open_takes_one_round_trip_and_names_take_two() {
        let (trips, dest) = round_trips("10.1.2.3", 10250).await;
        assert_eq!(trips, 1, "SOCKS4 for an IPv4 address");
        assert_eq!(dest, [0x28, 0x0a, 10, 1, 2, 3], "port, then the address");
        assert_eq!(round_trips("[::1]", 80).await.0, 2, "SOCKS5 for IPv6");
        assert_eq!(round_trips("kubelet", 1).await.0, 2, "SOCKS5 for a name");
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_in_both_versions() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut r = [0u8; 9];
            b.read_exact(&mut r).await.unwrap();
            b.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]).await.unwrap();
        });
        assert!(matches!(
            bounded(connect(&mut a, "10.0.0.1", 80)).await,
            Err(SocksError::Refused4(91))
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut m = [0u8; 3];
            b.read_exact(&mut m).await.unwrap();
            b.write_all(&[5, 0]).await.unwrap();
            let mut r = [0u8; 4 + 1 + 7 + 2];
            b.read_exact(&mut r).await.unwrap();
            b.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
        });
        assert!(matches!(
            bounded(connect(&mut a, "kubelet", 80)).await,
            Err(SocksError::Refused(5))
        ));
    }
}
