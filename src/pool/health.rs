//! Health probes through the tunnel. SSH keepalives prove the SSH server answers; a probe
//! proves the node can still reach what we dial (by default: a channel to the node's kubelet
//! port). An HTTP(S) probe GETs a URL as seen from the node (e.g. the kubelet's own
//! `http://127.0.0.1:10248/healthz`, which the key line permits with `keygen --loopback-port
//! 10248`) and wants a 2xx. An https probe sends no client certificate, so do not use
//! `https://{address}:10250/healthz` on kubeadm nodes (401 without a client certificate).
//! Every probe runs under a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::state::HealthResult;
use super::transport::Link;
use crate::error::{ConfigError, ProbeError};
use crate::node::Node;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No probe: keepalives only.
    None,
    /// Open (and close) a channel to the node's address on this port.
    Tcp { port: u16 },
    /// `GET path` on host:port as seen from the node; `host` None = the node's address.
    /// With `tls`, over TLS checked by `HealthConfig::tls`.
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        tls: bool,
    },
}

impl Probe {
    /// Parses `http(s)://HOST[:PORT]/PATH`; HOST may be `{address}` for the node's address.
    pub fn parse_url(url: &str) -> Result<Probe, ConfigError> {
        let err = |reason: &str| {
            ConfigError::Invalid(format!(
                "invalid health probe URL '{url}': {reason}; expected http(s)://HOST[:PORT]/PATH, HOST may be {{address}}"
            ))
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(err("it must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = crate::destination::split_host_port(authority).map_err(|r| err(&r))?;
        let host = if host == "{address}" {
            None
        } else {
            crate::destination::validate_host(&host).map_err(|r| err(&r))?;
            Some(host)
        };
        if path.contains(char::is_whitespace) {
            return Err(err("the path contains whitespace"));
        }
        Ok(Probe::Http {
            host,
            port: port.unwrap_or(if tls { 443 } else { 80 }),
            path: path.to_string(),
            tls,
        })
    }
}

/// Probe timing and thresholds.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before the connection is replaced (the first failure already
    /// marks the node `degraded`).
    pub reconnect_after: u32,
    /// TLS client settings for `https` probes (see `crate::tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe: Probe::Tcp { port: 10250 },
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            reconnect_after: 3,
            tls: None,
        }
    }
}

/// Runs one probe through `tunnel` within the configured timeout.
pub async fn probe(tunnel: &dyn Link, node: &Node, cfg: &HealthConfig) -> HealthResult {
    let start = Instant::now();
    let mut answered = false;
    let outcome =
        match tokio::time::timeout(cfg.timeout, run(tunnel, node, cfg, &mut answered)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout { after: cfg.timeout }),
        };
    HealthResult {
        ok: outcome.is_ok(),
        at: SystemTime::now(),
        latency: start.elapsed(),
        error: outcome.err(),
        link_answered: answered,
    }
}

/// Opens the probe's channel; `answered` becomes true once sshd has answered the open
/// (confirmed it, or refused it: that answer proves the link). `Refused` is only ever sshd's
/// own SSH_MSG_CHANNEL_OPEN_FAILURE (`ssh::open_outcome`): an open cut by a disconnect is
/// `ConnectionLost`, no answer.
async fn open_probe(
    tunnel: &dyn Link,
    host: &str,
    port: u16,
    answered: &mut bool,
) -> Result<crate::ssh::TunnelStream, crate::error::OpenError> {
    let r = tunnel.open(host, port).await;
    *answered = matches!(r, Ok(_) | Err(crate::error::OpenError::Refused { .. }));
    r
}

async fn run(
    tunnel: &dyn Link,
    node: &Node,
    cfg: &HealthConfig,
    answered: &mut bool,
) -> Result<(), ProbeError> {
    match &cfg.probe {
        Probe::None => Ok(()),
        Probe::Tcp { port } => {
            let mut s = open_probe(tunnel, &node.address, *port, answered)
                .await
                .map_err(|source| ProbeError::Open {
                    target: format!("{}:{port}", node.address),
                    source,
                })?;
            let _ = s.shutdown().await;
            Ok(())
        }
        Probe::Http {
            host,
            port,
            path,
            tls,
        } => {
            let host = host.as_deref().unwrap_or(&node.address);
            let url = format!(
                "{}://{host}:{port}{path}",
                if *tls { "https" } else { "http" }
            );
            let stream = open_probe(tunnel, host, *port, answered)
                .await
                .map_err(|source| ProbeError::Open {
                    target: url.clone(),
                    source,
                })?;
            if !*tls {
                return get(stream, host, path, &url).await;
            }
            let config = cfg
                .tls
                .clone()
                .ok_or_else(|| ProbeError::NoTlsSettings { url: url.clone() })?;
            let name = crate::tls::server_name(host).map_err(ProbeError::ServerName)?;
            let tls_stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| ProbeError::Tls {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            get(tls_stream, host, path, &url).await
        }
    }
}

/// Sends a GET over `s` and wants a 2xx status line.
async fn get<S>(mut s: S, host: &str, path: &str, url: &str) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-ssh-tunnel\r\nConnection: close\r\n\r\n"
    );
    let io = |e: std::io::Error| ProbeError::Io {
        url: url.to_string(),
        reason: e.to_string(),
    };
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let _ = s.shutdown().await;
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status.len() == 3 && status.starts_with('2') {
        Ok(())
    } else {
        let first = line.lines().next().unwrap_or("(no response)");
        Err(ProbeError::Status {
            url: url.to_string(),
            status_line: first.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_urls() {
        assert_eq!(
            Probe::parse_url("http://127.0.0.1:10248/healthz").unwrap(),
            Probe::Http {
                host: Some("127.0.0.1".into()),
                port: 10248,
                path: "/healthz".into(),
                tls: false
            }
        );
        assert_eq!(
            Probe::parse_url("https://{address}:10250").unwrap(),
            Probe::Http {
                host: None,
                port: 10250,
                path: "/".into(),
                tls: true
            }
        );
        assert!(Probe::parse_url("ftp://x/").is_err());
        assert!(Probe::parse_url("http://bad host/").is_err());
    }
}
