//! A file the listener re-reads when it changes (`--reverse-authorized`, `--reverse-revoked`):
//! every look-up (a node authenticating, the pool asking whether a node is reverse, the
//! listener's check of its live sessions) checks the file's size, mtime and inode first and
//! loads it again if one changed. A file that fails to load keeps the last good set (logged),
//! as a bad node file does. Each good load bumps a generation number, so the listener can
//! tell that live sessions must be checked again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::authorized::AuthorizedNodes;
use super::revoked::RevokedKeys;
use super::server::ReverseError;

/// What identifies one version of the file.
type Stamp = (u64, i64, i64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// The contents of a live file: how to load it, and the flag that names it in logs.
pub trait Loadable: Default + Send + Sync + 'static {
    const FLAG: &'static str;
    fn load(path: &Path) -> Result<Self, ReverseError>;
}

impl Loadable for AuthorizedNodes {
    const FLAG: &'static str = "--reverse-authorized";
    fn load(path: &Path) -> Result<Self, ReverseError> {
        AuthorizedNodes::load(path)
    }
}

impl Loadable for RevokedKeys {
    const FLAG: &'static str = "--reverse-revoked";
    fn load(path: &Path) -> Result<Self, ReverseError> {
        RevokedKeys::load(path)
    }
}

struct State<T> {
    stamp: Option<Stamp>,
    value: Arc<T>,
    generation: u64,
}

/// A file, kept current.
pub struct LiveFile<T> {
    path: PathBuf,
    state: Mutex<State<T>>,
}

impl<T> std::fmt::Debug for LiveFile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The authorized file, kept current.
pub type LiveAuthorized = LiveFile<AuthorizedNodes>;
/// The revoked-keys file, kept current.
pub type LiveRevoked = LiveFile<RevokedKeys>;

impl<T: Loadable> LiveFile<T> {
    /// Loads the file; it must load now (a start-up error otherwise).
    pub fn load(path: &Path) -> Result<LiveFile<T>, ReverseError> {
        let before = stamp(path);
        let value = T::load(path)?;
        Ok(LiveFile {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                stamp: before,
                value: Arc::new(value),
                generation: 0,
            }),
        })
    }

    /// The current contents (re-read first if the file changed).
    pub fn current(&self) -> Arc<T> {
        self.current_with_generation().0
    }

    /// The current contents and how many times they were reloaded.
    pub fn current_with_generation(&self) -> (Arc<T>, u64) {
        let now = stamp(&self.path);
        // A poisoned lock keeps the last value (an empty revoked set would fail open).
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != st.stamp {
            st.stamp = now;
            match T::load(&self.path) {
                Ok(n) => {
                    tracing::info!(file = %self.path.display(), "{} changed: reloaded", T::FLAG);
                    st.value = Arc::new(n);
                    st.generation += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{} changed but does not load; keeping the last good set", T::FLAG)
                }
            }
        }
        (st.value.clone(), st.generation)
    }
}
