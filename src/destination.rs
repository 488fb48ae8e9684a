//! A dial target, `HOST:PORT`. It exists as its own type because IPv6 literals (`[::1]:10250`)
//! broke the original tunneler, and every layer (CLI, CONNECT front, router) must parse the
//! same way.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::ConfigError;

/// Where a dial should end up: the host (an IP literal or a name) and a TCP port, as the SSH
/// server on the node will see them in the `direct-tcpip` request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Host without brackets: `10.0.0.1`, `::1`, `node-1`.
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl Destination {
    /// Builds a destination from parts; `host` must not be empty and `port` not 0.
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self, ConfigError> {
        let host = host.into();
        let text = format!("{host}:{port}");
        if host.is_empty() || port == 0 {
            return Err(ConfigError::InvalidDestination {
                input: text,
                reason: "expected HOST:PORT with a non-empty host and a port from 1 to 65535"
                    .into(),
            });
        }
        Ok(Self { host, port })
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Splits `HOST:PORT` / `[V6]:PORT`; `None` port when absent. Shared with node specs.
pub(crate) fn split_host_port(input: &str) -> Result<(String, Option<u16>), String> {
    if let Some(rest) = input.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 literal opened with '[' has no closing ']'".to_string())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{host}' inside [...] is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host.to_string(), None)),
            p if p.starts_with(':') => Ok((host.to_string(), Some(parse_port(&p[1..])?))),
            other => Err(format!("unexpected '{other}' after ']'")),
        };
    }
    // A bare IPv6 literal (several colons) has no port.
    if input.matches(':').count() > 1 {
        if input.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok((input.to_string(), None));
        }
        return Err("an IPv6 address with a port must be written [ADDR]:PORT".into());
    }
    match input.split_once(':') {
        Some((host, port)) => Ok((host.to_string(), Some(parse_port(port)?))),
        None => Ok((input.to_string(), None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{p}' is not a TCP port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// Checks that `host` is an IP literal or a plausible DNS name (RFC 1123 labels).
pub(crate) fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.len() > 253 {
        return Err("a DNS name is at most 253 characters".into());
    }
    let all_numeric = host
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()));
    if all_numeric {
        return Err(format!(
            "'{host}' looks like an IPv4 address but is not a valid one"
        ));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "'{host}' is neither an IP address nor a valid DNS name"
            ));
        }
    }
    Ok(())
}

impl FromStr for Destination {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ConfigError::InvalidDestination {
            input: s.to_string(),
            reason,
        };
        let (host, port) = split_host_port(s).map_err(err)?;
        let port = port.ok_or_else(|| err("the port is missing: write HOST:PORT".into()))?;
        validate_host(&host).map_err(err)?;
        Destination::new(host, port)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join_host_port(&self.host, self.port))
    }
}

/// `HOST:PORT`, with an IPv6 host in brackets.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_and_names() {
        let d: Destination = "10.0.0.1:10250".parse().unwrap();
        assert_eq!((d.host.as_str(), d.port), ("10.0.0.1", 10250));
        let d: Destination = "[fd00::1]:10250".parse().unwrap();
        assert_eq!((d.host.as_str(), d.port), ("fd00::1", 10250));
        assert_eq!(d.to_string(), "[fd00::1]:10250");
        let d: Destination = "node-1:22".parse().unwrap();
        assert_eq!(d.host, "node-1");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "host",
            "host:0",
            "host:99999",
            "fd00::1:80",
            "[fd00::1",
            "[x]:1",
            "a b:1",
            "300.1.1.1:5",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad} should fail");
        }
    }
}
