//! `LearnedHosts`: the known_hosts file of our own that `accept-new` records first-seen host
//! keys in. It is a trust store, so it is written like one:
//! - a new version is written to an exclusive, randomly named 0600 temporary file in the same
//!   directory (`O_EXCL`: never through a symlink or over a planted file), fsynced, renamed
//!   over the old one, and the directory is fsynced, so a crash leaves the old or the new
//!   file, never half of one, and never a wider mode than 0600;
//! - if the current file cannot be read, nothing is written (the error goes up): a rewrite
//!   from an empty read would drop every key learned before;
//! - a key is never learned over a different key already on record for the host, nor for a
//!   host that an `@cert-authority` line covers (that would downgrade certificate checking to
//!   trust-on-first-use); the caller checks the latter (`KnownHosts::has_cert_authority_for`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::known_hosts::{KnownHosts, Verdict, lookup_name};
use crate::error::ConfigError;

/// Why a key was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("{file} already holds a different key for {host} (line {line}); not learning over it")]
    Conflict {
        host: String,
        file: String,
        line: usize,
    },
    #[error("cannot update {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file `accept-new` learns into, and what it holds.
#[derive(Debug)]
pub struct LearnedHosts {
    path: PathBuf,
    known: std::sync::RwLock<KnownHosts>,
}

impl LearnedHosts {
    /// Opens (or creates, empty, mode 0600) the file at `path`.
    pub fn open(path: &Path) -> Result<LearnedHosts, ConfigError> {
        let err = |reason: String| ConfigError::File {
            what: "learned known_hosts",
            path: path.to_path_buf(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e.to_string())),
        }
        Ok(LearnedHosts {
            known: std::sync::RwLock::new(KnownHosts::load(&[path.to_path_buf()])?),
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks against what was learned so far.
    pub fn check(&self, host: &str, port: u16, key: &russh::keys::PublicKey) -> Verdict {
        self.known
            .read()
            .map(|k| k.check(host, port, &[], key))
            .unwrap_or(Verdict::Unknown)
    }

    /// Records `host`'s key: written to the file (see the module comment) and remembered.
    /// Already trusted: nothing to do. A different key on record: refused.
    pub fn record(
        &self,
        host: &str,
        port: u16,
        key: &russh::keys::PublicKey,
    ) -> Result<(), LearnError> {
        let io = |source: std::io::Error| LearnError::Io {
            path: self.path.clone(),
            source,
        };
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        match known.check(host, port, &[], key) {
            Verdict::Trusted { .. } => return Ok(()),
            Verdict::Unknown => {}
            Verdict::Mismatch { file, line, .. } | Verdict::Revoked { file, line } => {
                return Err(LearnError::Conflict {
                    host: lookup_name(host, port),
                    file,
                    line,
                });
            }
        }
        let line = format!(
            "{} {}",
            lookup_name(host, port),
            key.to_openssh().map_err(|e| io(std::io::Error::other(e)))?
        );
        let entry: russh::keys::ssh_key::known_hosts::Entry = line
            .parse()
            .map_err(|e| io(std::io::Error::other(format!("{e}"))))?;
        // A read error must not turn into an empty file that drops every earlier key.
        let mut text = std::fs::read_to_string(&self.path).map_err(io)?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        replace_file(&self.path, text.as_bytes()).map_err(io)?;
        known.add_entry(&self.path, entry);
        Ok(())
    }
}

/// Writes `data` to `path` atomically and durably, mode 0600, never through a symlink.
fn replace_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    // tempfile: a random name, O_CREAT|O_EXCL (a planted file or symlink makes it fail).
    let mut tmp = tempfile::Builder::new()
        .prefix(".learned-known-hosts.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::ssh::known_hosts::tests::{KEY_A, KEY_B};

    fn key(s: &str) -> russh::keys::PublicKey {
        russh::keys::PublicKey::from_openssh(s).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn learns_into_a_0600_file_whatever_the_umask_and_keeps_earlier_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/learned");
        let l = LearnedHosts::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        l.record("10.0.0.1", 22, &key(KEY_A)).unwrap();
        l.record("10.0.0.2", 2222, &key(KEY_B)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("10.0.0.1 ssh-ed25519") && text.contains("[10.0.0.2]:2222 ssh-ed25519")
        );
        assert_eq!(mode(&path), 0o600, "still 0600 after the rename");
        assert!(matches!(
            l.check("10.0.0.1", 22, &key(KEY_A)),
            Verdict::Trusted { .. }
        ));
        // Nothing else is left in the directory (no temporary files).
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn never_learns_over_a_different_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learned");
        let l = LearnedHosts::open(&path).unwrap();
        l.record("10.0.0.1", 22, &key(KEY_A)).unwrap();
        let e = l.record("10.0.0.1", 22, &key(KEY_B)).unwrap_err();
        assert!(matches!(e, LearnError::Conflict { .. }), "{e}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn a_read_error_is_passed_up_and_the_file_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learned");
        let l = LearnedHosts::open(&path).unwrap();
        l.record("10.0.0.1", 22, &key(KEY_A)).unwrap();
        // The file becomes unreadable (a directory in its place stands for any read error).
        let saved = dir.path().join("saved");
        std::fs::rename(&path, &saved).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = l.record("10.0.0.2", 22, &key(KEY_B)).unwrap_err();
        assert!(matches!(e, LearnError::Io { .. }), "{e}");
        assert!(path.is_dir(), "nothing was written in its place");
    }

    #[test]
    fn a_symlink_planted_in_the_directory_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learned");
        let l = LearnedHosts::open(&path).unwrap();
        // The old predictable name, planted as a symlink to a file the attacker wants written.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        std::os::unix::fs::symlink(
            &victim,
            path.with_extension(format!("tmp.{}", std::process::id())),
        )
        .unwrap();
        l.record("10.0.0.1", 22, &key(KEY_A)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        assert!(std::fs::read_to_string(&path).unwrap().contains("10.0.0.1"));
    }
}
