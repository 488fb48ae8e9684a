//! The `--reverse-authorized` file, re-read when it changes: every look-up (a node
//! authenticating, the pool asking whether a node is reverse) checks the file's size, mtime
//! and inode first and loads it again if one changed. A file that fails to load keeps the last
//! good set (logged), as a bad node file does.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::authorized::AuthorizedNodes;
use super::server::ReverseError;

/// What identifies one version of the file.
type Stamp = (u64, i64, i64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// The authorized file, kept current.
#[derive(Debug)]
pub struct LiveAuthorized {
    path: PathBuf,
    state: Mutex<(Option<Stamp>, Arc<AuthorizedNodes>)>,
}

impl LiveAuthorized {
    /// Loads the file; it must load now (a start-up error otherwise).
    pub fn load(path: &Path) -> Result<LiveAuthorized, ReverseError> {
        let before = stamp(path);
        let nodes = AuthorizedNodes::load(path)?;
        Ok(LiveAuthorized {
            path: path.to_path_buf(),
            state: Mutex::new((before, Arc::new(nodes))),
        })
    }

    /// The current set (re-read first if the file changed).
    pub fn current(&self) -> Arc<AuthorizedNodes> {
        let now = stamp(&self.path);
        let Ok(mut st) = self.state.lock() else {
            return Arc::new(AuthorizedNodes::default());
        };
        if now.is_some() && now != st.0 {
            st.0 = now;
            match AuthorizedNodes::load(&self.path) {
                Ok(n) => {
                    tracing::info!(file = %self.path.display(), "--reverse-authorized changed: reloaded");
                    st.1 = Arc::new(n);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "--reverse-authorized changed but does not load; keeping the last good set")
                }
            }
        }
        st.1.clone()
    }
}
