//! The SOCKS5 client side of a dial through a node's dynamic reverse forward: the node's ssh
//! (OpenSSH ≥ 7.6, `ssh -R PORT` without a destination) reads a SOCKS request at the start
//! of each `forwarded-tcpip` channel and connects where it says. Method NOAUTH, command
//! CONNECT only. We wait for the method reply before sending CONNECT (OpenSSH before 10.3
//! does not parse a request sent ahead), so an open takes two round trips after the channel.
//!
//! What the reply proves: OpenSSH answers "granted" *before* it connects, so a granted reply
//! says only that the node's ssh took the request; a destination it cannot reach shows as the
//! channel closing afterwards (the stream ends without a byte).

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

/// Asks for `host:port` on a fresh channel; returns once the node's ssh granted it.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
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

    #[tokio::test]
    async fn a_granted_reply_is_read_whole_and_a_refusal_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let peer = tokio::spawn(async move {
            let mut m = [0u8; 3];
            b.read_exact(&mut m).await.unwrap();
            b.write_all(&[5, 0]).await.unwrap();
            let mut r = [0u8; 10];
            b.read_exact(&mut r).await.unwrap();
            b.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0, b'x'])
                .await
                .unwrap();
            b
        });
        connect(&mut a, "10.0.0.1", 80).await.unwrap();
        let _b = peer.await.unwrap();
        let mut x = [0u8; 1];
        a.read_exact(&mut x).await.unwrap();
        assert_eq!(&x, b"x", "the byte after the reply is the stream's");

        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut m = [0u8; 3];
            b.read_exact(&mut m).await.unwrap();
            b.write_all(&[5, 0]).await.unwrap();
            let mut r = [0u8; 10];
            b.read_exact(&mut r).await.unwrap();
            b.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
        });
        assert!(matches!(
            connect(&mut a, "10.0.0.1", 80).await,
            Err(SocksError::Refused(5))
        ));
    }
}
