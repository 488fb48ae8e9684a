//! `AdminToken`: the bearer token that admin actions over TCP need, kept live. Rotating a
//! token must not need a restart (a restart cuts every open stream), so `--admin-token-file`
//! is re-read when it changes (checked every `--reload-interval`, and on SIGHUP). A file that
//! no longer holds a valid token (unreadable, readable by others, too short) keeps the last
//! good token in use and is reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Why a token file cannot be used. The messages name the flag and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("--admin-token-file {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("--admin-token-file {}: mode {mode:o} lets other users read the token; chmod 600 it", path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("--admin-token-file {}: the token must be at least 16 characters on its first line (e.g. `head -c 32 /dev/urandom | base64 > FILE`)", path.display())]
    TooShort { path: PathBuf },
}

/// Reads a token file: its first line, trimmed, at least 16 characters; mode 0600 or tighter.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if mode & 0o077 != 0 {
        return Err(TokenFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(TokenFileError::TooShort {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// The admin token in use; re-read from its file (if it has one) by `reload`.
#[derive(Debug)]
pub struct AdminToken {
    current: RwLock<Arc<str>>,
    file: Option<PathBuf>,
    /// The file's modification time and size when last read.
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

impl AdminToken {
    /// A token that never changes.
    pub fn fixed(token: impl Into<Arc<str>>) -> AdminToken {
        AdminToken {
            current: RwLock::new(token.into()),
            file: None,
            stamp: Mutex::new(None),
        }
    }

    /// The token in `path` (see `read_token_file`), followed by `reload`.
    pub fn from_file(path: &Path) -> Result<AdminToken, TokenFileError> {
        let stamp = stamp(path);
        let token = read_token_file(path)?;
        Ok(AdminToken {
            current: RwLock::new(token.into()),
            file: Some(path.to_path_buf()),
            stamp: Mutex::new(stamp),
        })
    }

    /// The token in use now.
    pub fn get(&self) -> Arc<str> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The file it comes from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Re-reads the file if it changed (always with `force`): Ok(true) when the token changed;
    /// an error keeps the last good token.
    pub fn reload(&self, force: bool) -> Result<bool, TokenFileError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let now = stamp(path);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if !force && now == *seen {
                return Ok(false);
            }
            *seen = now;
        }
        let token = read_token_file(path)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if *current.as_ref() == *token.as_str() {
            return Ok(false);
        }
        *current = token.into();
        Ok(true)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
