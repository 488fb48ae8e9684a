//! Rate limits for the listener's refusal log lines. Anyone who can reach `--reverse-listen`
//! can try keys, and each refusal is a warning that names the key and why. Without a limit,
//! a scanner or a node with a stale key fills the log (up to `--reverse-max-unauthenticated`
//! attempts at a time, each about a second long). Each kind of refusal for each key (or
//! certificate, or node) is logged at once the first time, then at most once every 10 s,
//! with how many like it were held back. The book is small and bounded: past its size,
//! refusals share one entry per kind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per kind and key in this time.
const INTERVAL: Duration = Duration::from_secs(10);
/// Keys tracked one by one; past this, refusals of a kind share one entry.
const MAX_KEYS: usize = 64;

struct Entry {
    /// When the last line for this key was written.
    logged: Instant,
    /// Refusals held back since.
    held: u64,
}

/// The book of recent refusal lines.
#[derive(Default)]
pub(crate) struct RefusalLog {
    entries: Mutex<HashMap<(&'static str, String), Entry>>,
}

impl std::fmt::Debug for RefusalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLog").finish_non_exhaustive()
    }
}

impl RefusalLog {
    /// Whether to log a refusal of `kind` for `key` now: `Some(held)` with the number of such
    /// refusals held back since the last line, or `None` to hold this one back.
    pub(crate) fn admit(&self, kind: &'static str, key: &str) -> Option<u64> {
        self.admit_at(kind, key, Instant::now())
    }

    fn admit_at(&self, kind: &'static str, key: &str, now: Instant) -> Option<u64> {
        // A poisoned lock logs every line, as before the limit.
        let Ok(mut e) = self.entries.lock() else {
            return Some(0);
        };
        let mut k = (kind, key.to_string());
        if !e.contains_key(&k) && e.len() >= MAX_KEYS {
            e.retain(|_, v| now.duration_since(v.logged) < INTERVAL);
            if e.len() >= MAX_KEYS {
                k = (kind, String::from("(other keys)"));
            }
        }
        match e.get_mut(&k) {
            None => {
                e.insert(
                    k,
                    Entry {
                        logged: now,
                        held: 0,
                    },
                );
                Some(0)
            }
            Some(v) if now.duration_since(v.logged) >= INTERVAL => {
                let held = v.held;
                v.logged = now;
                v.held = 0;
                Some(held)
            }
            Some(v) => {
                v.held += 1;
                None
            }
        }
    }
}

/// The text added to a refusal line that stands for refusals held back.
pub(crate) fn held_back(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more like it held back since the last such line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_logged_at_once_then_once_per_interval_with_the_count_held_back() {
        let log = RefusalLog::default();
        let t = Instant::now();
        assert_eq!(log.admit_at("unknown", "k1", t), Some(0));
        assert_eq!(
            log.admit_at("unknown", "k1", t + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.admit_at("unknown", "k1", t + Duration::from_secs(2)),
            None
        );
        // Another kind or another key is logged at once.
        assert_eq!(log.admit_at("revoked", "k1", t), Some(0));
        assert_eq!(log.admit_at("unknown", "k2", t), Some(0));
        assert_eq!(log.admit_at("unknown", "k1", t + INTERVAL), Some(2));
        assert_eq!(log.admit_at("unknown", "k1", t + INTERVAL), None);
    }

    #[test]
    fn past_the_book_size_new_keys_share_one_entry_until_old_ones_age_out() {
        let log = RefusalLog::default();
        let t = Instant::now();
        for i in 0..MAX_KEYS {
            assert_eq!(log.admit_at("unknown", &format!("k{i}"), t), Some(0));
        }
        // Full: the first new key gets the shared entry's line, the next ones are held.
        assert_eq!(log.admit_at("unknown", "new-1", t), Some(0));
        assert_eq!(log.admit_at("unknown", "new-2", t), None);
        assert_eq!(log.admit_at("unknown", "new-3", t), None);
        assert!(log.entries.lock().unwrap().len() <= MAX_KEYS + 1);
        // Once the old entries age out, a new key has its own entry again.
        assert_eq!(log.admit_at("unknown", "new-4", t + INTERVAL), Some(0));
        assert!(log.entries.lock().unwrap().len() <= MAX_KEYS + 1);
    }
}
