//! The listener's book of live authenticated sessions: which node each serves and with which
//! credential. It counts a node's sessions (`--reverse-max-sessions-per-node`), and it lets
//! the listener cut the sessions whose credential is no longer good (revoked, or the node's
//! key taken out of `--reverse-authorized`) when those files change. The book is a plain
//! mutex held only for map updates, never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::Certificate;
use russh::keys::ssh_key::PublicKey;
use russh::server::Handle;
use tokio_util::sync::CancellationToken;

/// What a session authenticated with.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    Key(PublicKey),
    Certificate(Box<Certificate>),
}

/// One live session.
pub(crate) struct LiveSession {
    pub(crate) node: String,
    pub(crate) credential: Credential,
    pub(crate) handle: Handle,
    /// Cuts its connection under it (after a disconnect had its chance).
    pub(crate) cut: CancellationToken,
    /// The session's reason slot, shared with its pool link.
    pub(crate) reason: Arc<Mutex<Option<String>>>,
}

/// Live authenticated sessions by connection id.
#[derive(Default)]
pub(crate) struct Book {
    entries: Mutex<HashMap<u64, LiveSession>>,
    next: AtomicU64,
    /// Sessions admitted so far: a session admitted after a check of the files (with what it
    /// authenticated against an older version) makes the next check run again.
    admitted: AtomicU64,
}

impl Book {
    /// A new connection's id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Enters a session unless its node already holds `max` live ones (then Err(count)).
    pub(crate) fn admit(&self, id: u64, session: LiveSession, max: usize) -> Result<(), usize> {
        let Ok(mut e) = self.entries.lock() else {
            return Err(0);
        };
        let live = e.values().filter(|s| s.node == session.node).count();
        if live >= max {
            return Err(live);
        }
        e.insert(id, session);
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// How many sessions were admitted so far.
    pub(crate) fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Acquire)
    }

    /// The session ended.
    pub(crate) fn remove(&self, id: u64) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(&id);
        }
    }

    /// Takes out every session that `check` says is no longer allowed, with why.
    pub(crate) fn take_disallowed(
        &self,
        check: impl Fn(&str, &Credential) -> Option<String>,
    ) -> Vec<(LiveSession, String)> {
        let Ok(mut e) = self.entries.lock() else {
            return Vec::new();
        };
        let gone: Vec<(u64, String)> = e
            .iter()
            .filter_map(|(id, s)| check(&s.node, &s.credential).map(|why| (*id, why)))
            .collect();
        gone.into_iter()
            .filter_map(|(id, why)| e.remove(&id).map(|s| (s, why)))
            .collect()
    }
}
