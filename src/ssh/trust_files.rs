//! `LiveKnownHosts`: the `--ssh-known-hosts` files, kept live. A cluster that grows adds host
//! keys (or a host CA) to known_hosts while the daemon runs; a restart to pick them up would cut
//! every open stream. So the parsed files sit behind a lock that a handshake reads once (it
//! gets an `Arc<KnownHosts>` snapshot) and a reload swaps. A file is re-read when its
//! modification time or size changed, or on request (SIGHUP). A file that fails to load keeps
//! its last good contents, and says so in `file_status` (the `/status` document's
//! `trust_files`). Connections that are up are never touched: only the next handshake sees the
//! new contents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::known_hosts::KnownHosts;
use crate::error::KnownHostsError;

/// How one trust file is doing, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustFileStatus {
    /// The file.
    pub path: PathBuf,
    /// False when the latest read failed (the last good contents stay in use).
    pub ok: bool,
    /// Why the latest read failed (file and line), while it does.
    pub error: Option<String>,
    /// When the contents in use were read.
    pub loaded_at: SystemTime,
}

/// One followed file: its last good text and how its latest read went.
#[derive(Debug)]
struct Followed {
    path: PathBuf,
    /// Modification time and size when last read.
    stamp: Option<(SystemTime, u64)>,
    /// The contents in use (the last text that parsed).
    text: String,
    error: Option<String>,
    loaded_at: SystemTime,
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// The trusted set changed (a file that parsed has new contents).
    pub changed: bool,
    /// Files that failed to load this time (each keeps its last good contents).
    pub errors: Vec<(PathBuf, KnownHostsError)>,
}

/// The known_hosts files in use, swappable while the daemon runs.
#[derive(Debug)]
pub struct LiveKnownHosts {
    current: RwLock<Arc<KnownHosts>>,
    files: Mutex<Vec<Followed>>,
}

impl Default for LiveKnownHosts {
    fn default() -> Self {
        LiveKnownHosts::fixed(KnownHosts::default())
    }
}

impl LiveKnownHosts {
    /// Loads every file; a missing file or a malformed line is an error (at start-up).
    pub fn load(paths: &[PathBuf]) -> Result<LiveKnownHosts, KnownHostsError> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            // The stamp first: a write while the file loads is then seen as a change.
            let stamp = stamp(path);
            let text = read(path)?;
            KnownHosts::default().add_text(path, &text)?;
            files.push(Followed {
                path: path.clone(),
                stamp,
                text,
                error: None,
                loaded_at: SystemTime::now(),
            });
        }
        let kh = assemble(&files);
        Ok(LiveKnownHosts {
            current: RwLock::new(Arc::new(kh)),
            files: Mutex::new(files),
        })
    }

    /// A set that no file backs (a library user's own lines); `reload` never changes it.
    pub fn fixed(kh: KnownHosts) -> LiveKnownHosts {
        LiveKnownHosts {
            current: RwLock::new(Arc::new(kh)),
            files: Mutex::new(Vec::new()),
        }
    }

    /// The trusted set now. A handshake reads it once and keeps its snapshot.
    pub fn current(&self) -> Arc<KnownHosts> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files whose modification time or size changed (every file with `force`).
    /// A file that fails keeps its last good contents; the others are swapped in.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        let mut out = ReloadOutcome::default();
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for f in files.iter_mut() {
            let now = stamp(&f.path);
            if !force && now == f.stamp {
                continue;
            }
            f.stamp = now;
            let parsed = read(&f.path).and_then(|text| {
                KnownHosts::default().add_text(&f.path, &text)?;
                Ok(text)
            });
            match parsed {
                Ok(text) => {
                    f.error = None;
                    if text != f.text {
                        f.text = text;
                        f.loaded_at = SystemTime::now();
                        out.changed = true;
                    }
                }
                Err(e) => {
                    f.error = Some(e.to_string());
                    out.errors.push((f.path.clone(), e));
                }
            }
        }
        if out.changed {
            let kh = assemble(&files);
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(kh);
        }
        out
    }

    /// Each file's state, in the order given.
    pub fn file_status(&self) -> Vec<TrustFileStatus> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|f| TrustFileStatus {
                path: f.path.clone(),
                ok: f.error.is_none(),
                error: f.error.clone(),
                loaded_at: f.loaded_at,
            })
            .collect()
    }
}

fn read(path: &Path) -> Result<String, KnownHostsError> {
    std::fs::read_to_string(path).map_err(|e| KnownHostsError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Every file's contents in use, in order (each one parsed before, so this cannot fail).
fn assemble(files: &[Followed]) -> KnownHosts {
    let mut kh = KnownHosts::default();
    for f in files {
        if let Err(e) = kh.add_text(&f.path, &f.text) {
            tracing::error!(error = %e, "known_hosts contents that parsed before no longer do");
        }
    }
    kh
}

/// A file's modification time and size (None when it cannot be read).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::known_hosts::tests::{KEY_A, KEY_B};

    #[test]
    fn a_changed_file_is_swapped_in_and_a_broken_one_keeps_its_last_good_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        std::fs::write(&p, format!("a.example {KEY_A}\n")).unwrap();
        let live = LiveKnownHosts::load(std::slice::from_ref(&p)).unwrap();
        let before = live.current();
        assert_eq!(before.len(), 1);
        assert!(
            !live.reload(false).changed,
            "an unchanged file is not re-read"
        );

        std::fs::write(&p, format!("a.example {KEY_A}\nb.example {KEY_B}\n")).unwrap();
        let out = live.reload(true);
        assert!(out.changed && out.errors.is_empty());
        assert_eq!(live.current().len(), 2);
        assert_eq!(before.len(), 1, "a snapshot taken before is unchanged");

        std::fs::write(&p, "this is not a known_hosts line\n").unwrap();
        let out = live.reload(true);
        assert!(!out.changed);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(live.current().len(), 2, "the last good contents stay");
        let st = live.file_status();
        assert!(!st[0].ok);
        assert!(
            st[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains(":1 is malformed")
        );

        std::fs::write(&p, format!("b.example {KEY_B}\n")).unwrap();
        let out = live.reload(true);
        assert!(out.changed && out.errors.is_empty());
        assert_eq!(live.current().len(), 1);
        assert!(live.file_status()[0].ok);
    }

    #[test]
    fn the_cert_authority_line_of_the_security_guide_covers_port_22_and_other_ports() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("known_hosts");
        std::fs::write(
            &p,
            format!("@cert-authority 10.0.0.*,[10.0.0.*]:* {KEY_A}\n"),
        )
        .unwrap();
        let kh = LiveKnownHosts::load(std::slice::from_ref(&p))
            .unwrap()
            .current();
        assert!(kh.has_cert_authority_for("10.0.0.5", 22, &[]));
        assert!(kh.has_cert_authority_for("10.0.0.5", 2222, &[]));
        assert!(!kh.has_cert_authority_for("10.0.1.5", 22, &[]));
    }
}
