//! `HostKeyTrust`: how a connection's host key came to be trusted. `status` shows it per
//! node so that an operator can watch a host-CA rotation (or a node moving off `accept-new`)
//! progress node by node. The names are part of the public interface (`/status`).

use std::fmt;

/// How the host key of a live connection was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyTrust {
    /// A plain (or hashed) known_hosts line names this host and key.
    KnownHostsLine,
    /// A host certificate signed by a CA of an `@cert-authority` line.
    HostCertificate,
    /// `--host-key-policy accept-new`: learned on first use (or on an earlier connection).
    Learned,
    /// A host key annotation on the node's own Node object (`--host-key-source nodes`; no
    /// known_hosts line named the host).
    Annotation,
    /// Not verified (`--insecure-skip-host-key-verification`).
    Insecure,
    /// No host key of the node's: the node dialled in (reverse mode) and authenticated with
    /// its own key, which names it (see `reverse`).
    NodeDialledIn,
    /// A name this build does not know (a newer daemon); shown, never a parse failure.
    #[serde(other)]
    Unknown,
}

impl HostKeyTrust {
    /// What `status -o wide` shows.
    pub fn describe(self) -> &'static str {
        match self {
            HostKeyTrust::KnownHostsLine => "known_hosts line",
            HostKeyTrust::HostCertificate => "host certificate (CA)",
            HostKeyTrust::Learned => "learned (accept-new)",
            HostKeyTrust::Annotation => "Node annotation",
            HostKeyTrust::Insecure => "insecure (not verified)",
            HostKeyTrust::NodeDialledIn => "reverse (the node dialled in; its client key named it)",
            HostKeyTrust::Unknown => "unknown",
        }
    }
}

impl fmt::Display for HostKeyTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kebab_case_and_unknown_names_parse() {
        let s = serde_json::to_string(&HostKeyTrust::KnownHostsLine).unwrap();
        assert_eq!(s, "\"known-hosts-line\"");
        let s = serde_json::to_string(&HostKeyTrust::HostCertificate).unwrap();
        assert_eq!(s, "\"host-certificate\"");
        let s = serde_json::to_string(&HostKeyTrust::Annotation).unwrap();
        assert_eq!(s, "\"annotation\"");
        let t: HostKeyTrust = serde_json::from_str("\"from-the-future\"").unwrap();
        assert_eq!(t, HostKeyTrust::Unknown);
    }
}
