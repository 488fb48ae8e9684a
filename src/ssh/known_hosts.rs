//! Host key verification against OpenSSH known_hosts files. The original tunneler accepted
//! any host key; we refuse unknown and changed keys. This module parses the files itself
//! (russh's helper knows no patterns, markers or line numbers) so that a bad line is reported
//! with its file and line, and a mismatch names the line that holds the expected key.
//!
//! Supported: plain host lists with `*`, `?` and `!negation`, `[host]:port`, hashed `|1|`
//! names, `@revoked` (refused even if trusted elsewhere), and `@cert-authority`: when such a
//! line exists, host certificates are asked for (`ssh::settings`) and checked here
//! (`check_certificate`: type, validity, CA, principals, critical options, revocation).

use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Certificate, HashAlg, PublicKey};

pub use crate::error::KnownHostsError;

#[derive(Debug, Clone)]
struct Line {
    file: usize,
    number: usize,
    entry: Entry,
}

/// Every line of one or more known_hosts files: trusted host keys, `@revoked` keys and
/// `@cert-authority` CAs.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    files: Vec<PathBuf>,
    lines: Vec<Line>,
}

/// The outcome of checking an offered host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host holds exactly this key.
    Trusted { file: String, line: usize },
    /// Lines for this host exist but hold other keys (`expected`: the first one's fingerprint).
    Mismatch {
        file: String,
        line: usize,
        expected: String,
    },
    /// The key is listed as `@revoked`.
    Revoked { file: String, line: usize },
    /// No plain key line names this host (an `@cert-authority` line may: see
    /// `has_cert_authority_for`).
    Unknown,
}

impl KnownHosts {
    /// Parses every file; a missing file or a malformed line is an error.
    pub fn load(paths: &[PathBuf]) -> Result<KnownHosts, KnownHostsError> {
        let mut kh = KnownHosts::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|e| KnownHostsError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            kh.add_text(path, &text)?;
        }
        Ok(kh)
    }

    /// Parses known_hosts text as if read from `path`.
    pub fn add_text(&mut self, path: &Path, text: &str) -> Result<(), KnownHostsError> {
        let file = self.files.len();
        self.files.push(path.to_path_buf());
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let normalized = trimmed.split_whitespace().collect::<Vec<_>>().join(" ");
            let entry: Entry = normalized.parse().map_err(|e| KnownHostsError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!("{e}"),
            })?;
            self.lines.push(Line {
                file,
                number: i + 1,
                entry,
            });
        }
        Ok(())
    }

    /// The files this set was read from, for messages.
    pub fn files_display(&self) -> String {
        if self.files.is_empty() {
            return "no known_hosts file".into();
        }
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Number of lines loaded (plain keys, `@revoked` and `@cert-authority` lines).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when no line was loaded.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Checks `key` offered by the server reached as `host` on `port`. `aliases` are further
    /// names of the same node (e.g. its Kubernetes name) that a line may use instead.
    pub fn check(&self, host: &str, port: u16, aliases: &[&str], key: &PublicKey) -> Verdict {
        let lookups = lookups(host, port, aliases);
        let mut mismatch = None;
        let mut trusted = None;
        for l in &self.lines {
            let matches_host = lookups
                .iter()
                .any(|n| host_matches(l.entry.host_patterns(), n));
            let same_key = l.entry.public_key().key_data() == key.key_data();
            match l.entry.marker() {
                Some(Marker::Revoked) if same_key => {
                    // Revocation applies whatever the host patterns say (as in OpenSSH).
                    return Verdict::Revoked {
                        file: self.files[l.file].display().to_string(),
                        line: l.number,
                    };
                }
                Some(_) => continue,
                None if !matches_host => continue,
                None if same_key => {
                    trusted.get_or_insert((l.file, l.number));
                }
                None => {
                    mismatch.get_or_insert((l.file, l.number));
                }
            }
        }
        let at = |(f, n): (usize, usize)| (self.files[f].display().to_string(), n);
        if let Some(t) = trusted {
            let (file, line) = at(t);
            return Verdict::Trusted { file, line };
        }
        if let Some((f, n)) = mismatch {
            let expected = self
                .lines
                .iter()
                .find(|l| l.file == f && l.number == n)
                .map(|l| describe_key(l.entry.public_key()))
                .unwrap_or_default();
            let (file, line) = at((f, n));
            return Verdict::Mismatch {
                file,
                line,
                expected,
            };
        }
        Verdict::Unknown
    }

    /// True when some line (a key, or a `@cert-authority`) applies to this host.
    pub fn has_entry_for(&self, host: &str, port: u16, aliases: &[&str]) -> bool {
        self.any_line_for(host, port, aliases, |m| m != Some(&Marker::Revoked))
    }

    /// True when a line whose marker passes `marker` matches this host.
    fn any_line_for(
        &self,
        host: &str,
        port: u16,
        aliases: &[&str],
        marker: impl Fn(Option<&Marker>) -> bool,
    ) -> bool {
        let lookups = lookups(host, port, aliases);
        self.lines.iter().any(|l| {
            marker(l.entry.marker())
                && lookups
                    .iter()
                    .any(|n| host_matches(l.entry.host_patterns(), n))
        })
    }

    /// Line numbers (in file order) of plain key lines whose patterns match `lookup` (a name
    /// as OpenSSH looks it up: `host` or `[host]:port`). For comparing with `ssh-keygen -F`.
    pub fn lines_matching(&self, lookup: &str) -> Vec<usize> {
        let lookup = lookup.to_ascii_lowercase();
        self.lines
            .iter()
            .filter(|l| {
                l.entry.marker().is_none() && host_matches(l.entry.host_patterns(), &lookup)
            })
            .map(|l| l.number)
            .collect()
    }

    /// True when an `@cert-authority` line covers this host: its key must come with a
    /// certificate, and `accept-new` must not learn a plain key for it.
    pub fn has_cert_authority_for(&self, host: &str, port: u16, aliases: &[&str]) -> bool {
        self.any_line_for(host, port, aliases, |m| m == Some(&Marker::CertAuthority))
    }

    /// True when some `@cert-authority` line exists (then host certificates are asked for).
    pub fn has_cert_authorities(&self) -> bool {
        self.lines
            .iter()
            .any(|l| l.entry.marker() == Some(&Marker::CertAuthority))
    }

    /// Adds one entry (e.g. a key learned under `accept-new`) as if read from `path`.
    pub fn add_entry(&mut self, path: &Path, entry: Entry) {
        let file = match self.files.iter().position(|f| f == path) {
            Some(i) => i,
            None => {
                self.files.push(path.to_path_buf());
                self.files.len() - 1
            }
        };
        let number = self
            .lines
            .iter()
            .filter(|l| l.file == file)
            .map(|l| l.number)
            .max()
            .unwrap_or(0)
            + 1;
        self.lines.push(Line {
            file,
            number,
            entry,
        });
    }

    /// Checks a host certificate offered by `host` on `port` (aliases: further names of the
    /// node): a host (not user) certificate, inside its validity window at `now` (Unix
    /// seconds), signed by a CA from an `@cert-authority` line whose patterns match the host,
    /// with a principal equal to the host or an alias, and neither the CA nor the certified
    /// key `@revoked`. Returns the trusting line, or why not.
    pub fn check_certificate(
        &self,
        host: &str,
        port: u16,
        aliases: &[&str],
        cert: &Certificate,
        now: u64,
    ) -> Result<(String, usize), String> {
        let names: Vec<&str> = std::iter::once(host)
            .chain(aliases.iter().copied())
            .collect();
        let lookups: Vec<String> = names.iter().map(|h| lookup_name(h, port)).collect();
        let signer = cert.signature_key();
        let certified = cert.public_key();
        for l in &self.lines {
            if l.entry.marker() == Some(&Marker::Revoked) {
                let k = l.entry.public_key().key_data();
                if k == signer || k == certified {
                    return Err(format!(
                        "the certificate's {} is @revoked in {}:{}",
                        if k == signer { "CA" } else { "key" },
                        self.files[l.file].display(),
                        l.number
                    ));
                }
            }
        }
        if cert.cert_type() != CertType::Host {
            return Err("it is a user certificate, not a host certificate".into());
        }
        if !cert.critical_options().is_empty() {
            // OpenSSH refuses host certificates with critical options (none are defined).
            let names: Vec<&str> = cert.critical_options().keys().map(String::as_str).collect();
            return Err(format!(
                "it has critical options ({}), which a host certificate must not have",
                names.join(", ")
            ));
        }
        let cas: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| l.entry.marker() == Some(&Marker::CertAuthority))
            .filter(|l| {
                lookups
                    .iter()
                    .any(|n| host_matches(l.entry.host_patterns(), n))
            })
            .collect();
        let Some(ca) = cas
            .iter()
            .find(|l| l.entry.public_key().key_data() == signer)
        else {
            return Err(format!(
                "it is signed by CA {}, which no @cert-authority line trusts for this host",
                signer.fingerprint(HashAlg::Sha256)
            ));
        };
        if now < cert.valid_after() {
            return Err(format!(
                "it is not valid before {}",
                unix_time(cert.valid_after())
            ));
        }
        if now >= cert.valid_before() {
            return Err(format!("it expired at {}", unix_time(cert.valid_before())));
        }
        let principals = cert.valid_principals();
        if !principals
            .iter()
            .any(|p| names.iter().any(|n| p.eq_ignore_ascii_case(n)))
        {
            return Err(format!(
                "its principals {principals:?} include neither {}",
                names.join(" nor ")
            ));
        }
        let fp = signer.fingerprint(HashAlg::Sha256);
        cert.validate_at(now, [&fp])
            .map_err(|e| format!("its signature does not verify: {e}"))?;
        Ok((self.files[ca.file].display().to_string(), ca.number))
    }
}

/// `SHA256:…` fingerprint with the algorithm, as shown in errors and status.
pub fn describe_key(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256))
}

fn unix_time(secs: u64) -> String {
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)) {
        Some(t) if secs < u64::MAX / 2 => humantime::format_rfc3339_seconds(t).to_string(),
        _ => "forever".into(),
    }
}

/// The name OpenSSH looks up: `host` on port 22, else `[host]:port`.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    }
}

fn host_matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for p in list {
                let p = p.to_ascii_lowercase();
                if let Some(neg) = p.strip_prefix('!') {
                    if glob(neg.as_bytes(), name.as_bytes()) {
                        return false;
                    }
                } else if glob(p.as_bytes(), name.as_bytes()) {
                    positive = true;
                }
            }
            positive
        }
    }
}

/// The names OpenSSH looks a host up by: `host` (or `[host]:port`) and each alias.
fn lookups(host: &str, port: u16, aliases: &[&str]) -> Vec<String> {
    std::iter::once(host)
        .chain(aliases.iter().copied())
        .map(|h| lookup_name(h, port))
        .collect()
}

/// OpenSSH's wildcard match: `*` any run, `?` one character. Iterative, no recursion blow-up.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    pub(crate) const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn kh(text: &str) -> KnownHosts {
        let mut k = KnownHosts::default();
        k.add_text(Path::new("kh"), text).unwrap();
        k
    }

    fn key(s: &str) -> PublicKey {
        s.parse().unwrap()
    }

    #[test]
    fn glob_matches_like_openssh() {
        assert!(glob(b"10.0.*", b"10.0.1.2"));
        assert!(glob(b"node-?", b"node-1"));
        assert!(!glob(b"node-?", b"node-12"));
        assert!(glob(b"*", b""));
        assert!(glob(b"[10.0.0.?]:2222", b"[10.0.0.1]:2222"));
    }

    #[test]
    fn exact_pattern_negation_and_port() {
        let k = kh(&format!(
            "10.0.0.1,node-1 {KEY_A}\n*.example,!bad.example {KEY_B}\n[10.0.0.2]:2222 {KEY_B}\n"
        ));
        assert!(matches!(
            k.check("10.0.0.1", 22, &[], &key(KEY_A)),
            Verdict::Trusted { line: 1, .. }
        ));
        assert!(matches!(
            k.check("10.0.0.1", 22, &[], &key(KEY_B)),
            Verdict::Mismatch { line: 1, .. }
        ));
        if let Verdict::Mismatch { expected, .. } = k.check("10.0.0.1", 22, &[], &key(KEY_B)) {
            assert!(expected.contains("SHA256:"), "{expected}");
        }
        assert!(matches!(
            k.check("x", 22, &["node-1"], &key(KEY_A)),
            Verdict::Trusted { .. }
        ));
        assert!(matches!(
            k.check("a.example", 22, &[], &key(KEY_B)),
            Verdict::Trusted { .. }
        ));
        assert_eq!(
            k.check("bad.example", 22, &[], &key(KEY_B)),
            Verdict::Unknown
        );
        assert!(matches!(
            k.check("10.0.0.2", 2222, &[], &key(KEY_B)),
            Verdict::Trusted { .. }
        ));
        assert_eq!(k.check("10.0.0.2", 22, &[], &key(KEY_B)), Verdict::Unknown);
    }

    #[test]
    fn hashed_and_revoked() {
        // ssh-keygen -H style entry for "10.1.2.3" with salt 16x00.
        let salt = [0u8; 20];
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt).unwrap();
        mac.update(b"10.1.2.3");
        let hash = mac.finalize().into_bytes();
        use russh::keys::ssh_encoding::base64::{Base64, Encoding};
        let line = format!(
            "|1|{}|{} {KEY_A}\n@revoked * {KEY_B}\n",
            Base64::encode_string(&salt),
            Base64::encode_string(&hash)
        );
        let k = kh(&line);
        assert!(matches!(
            k.check("10.1.2.3", 22, &[], &key(KEY_A)),
            Verdict::Trusted { .. }
        ));
        assert_eq!(k.check("10.1.2.4", 22, &[], &key(KEY_A)), Verdict::Unknown);
        assert!(matches!(
            k.check("10.1.2.3", 22, &[], &key(KEY_B)),
            Verdict::Revoked { line: 2, .. }
        ));
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let mut k = KnownHosts::default();
        let err = k
            .add_text(
                Path::new("/tmp/kh"),
                &format!("# c\n10.0.0.1 {KEY_A}\n10.0.0.2 ssh-ed25519 notbase64!!\n"),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/tmp/kh:3"), "{msg}");
    }

    #[test]
    fn host_certificates_with_critical_options_are_refused_like_openssh_does() {
        use russh::keys::ssh_key::certificate::{Builder, CertType};
        let ca = crate::ssh::keys::generate_ed25519("ca").unwrap();
        let host = crate::ssh::keys::generate_ed25519("host").unwrap();
        let ca_line = format!(
            "@cert-authority * {}",
            ca.public_key().to_openssh().unwrap()
        );
        let k = kh(&ca_line);
        let cert = |critical: bool| {
            let mut b =
                Builder::new([7u8; 16], host.public_key().key_data().clone(), 0, u64::MAX).unwrap();
            b.cert_type(CertType::Host).unwrap();
            b.key_id("node").unwrap();
            b.valid_principal("10.0.0.1").unwrap();
            if critical {
                b.critical_option("force-command", "/bin/true").unwrap();
            }
            b.sign(&ca).unwrap()
        };
        assert!(
            k.check_certificate("10.0.0.1", 22, &[], &cert(false), 1)
                .is_ok()
        );
        let why = k
            .check_certificate("10.0.0.1", 22, &[], &cert(true), 1)
            .unwrap_err();
        assert!(why.contains("critical options (force-command)"), "{why}");
        assert!(k.has_cert_authority_for("10.0.0.1", 22, &[]));
        assert!(!kh("10.0.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
            .has_cert_authority_for("10.0.0.2", 22, &[]));
    }
}
