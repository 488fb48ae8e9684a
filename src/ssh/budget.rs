//! `BufferBudget`: the pool-wide bound on bytes held for slow readers.
//!
//! russh refills a channel's receive window when data arrives, not when our reader consumes
//! it, so whatever a slow reader has not read yet must be held somewhere or the whole SSH
//! connection stops. Each channel holds up to its own cap in memory and, past that, in a
//! private spill file (see `ssh::spill`); this budget bounds the sum over every channel of the
//! pool, separately for memory and for spill-file space on disk. A channel whose share is
//! refused stops taking data, which holds up its connection: the connection then counts as
//! congested and new dials go to another connection of the node (see `ssh::congestion`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Default memory budget for buffered channel data, pool-wide.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;
/// Default disk budget for spill files, pool-wide.
pub const DEFAULT_SPILL_BUDGET: u64 = 2 << 30;

/// Where spill files go by default: `$TMPDIR` when set, else `/var/tmp` (on disk; `/tmp` is
/// often a tmpfs, which would turn spilling back into memory).
pub fn default_spill_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Pool-wide limits on bytes held for readers that are behind.
#[derive(Debug)]
pub struct BufferBudget {
    memory_limit: u64,
    memory_used: AtomicU64,
    spill_dir: Option<PathBuf>,
    spill_limit: u64,
    spill_used: AtomicU64,
}

impl Default for BufferBudget {
    /// 256 MiB of memory, 2 GiB of spill files in [`default_spill_dir`].
    fn default() -> Self {
        BufferBudget::new(
            DEFAULT_MEMORY_BUDGET,
            Some(default_spill_dir()),
            DEFAULT_SPILL_BUDGET,
        )
    }
}

impl BufferBudget {
    /// A budget of `memory` bytes in memory and `spill` bytes of spill files in `spill_dir`
    /// (no spilling when `spill_dir` is None or `spill` is 0).
    pub fn new(memory: u64, spill_dir: Option<PathBuf>, spill: u64) -> Self {
        BufferBudget {
            memory_limit: memory,
            memory_used: AtomicU64::new(0),
            spill_limit: if spill_dir.is_some() { spill } else { 0 },
            spill_dir,
            spill_used: AtomicU64::new(0),
        }
    }

    /// The memory budget in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Bytes held in memory now, over all channels.
    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Ordering::Acquire)
    }

    /// The spill budget in bytes (0: no spilling).
    pub fn spill_limit(&self) -> u64 {
        self.spill_limit
    }

    /// Bytes of spill files on disk now, over all channels.
    pub fn spill_used(&self) -> u64 {
        self.spill_used.load(Ordering::Acquire)
    }

    /// Where spill files are made, when spilling is on.
    pub fn spill_dir(&self) -> Option<&Path> {
        self.spill_dir.as_deref().filter(|_| self.spill_limit > 0)
    }

    pub(crate) fn take_memory(&self, n: u64) -> bool {
        take(&self.memory_used, self.memory_limit, n)
    }

    pub(crate) fn give_memory(&self, n: u64) {
        self.memory_used.fetch_sub(n, Ordering::AcqRel);
    }

    pub(crate) fn take_spill(&self, n: u64) -> bool {
        take(&self.spill_used, self.spill_limit, n)
    }

    pub(crate) fn give_spill(&self, n: u64) {
        self.spill_used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Adds `n` to `used` unless that would pass `limit` (a CAS, so concurrent takers cannot
/// overshoot together).
fn take(used: &AtomicU64, limit: u64, n: u64) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        u.checked_add(n).filter(|t| *t <= limit)
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back() {
        let b = BufferBudget::new(100, None, 50);
        assert!(b.take_memory(60));
        assert!(!b.take_memory(41), "60 + 41 passes 100");
        assert!(b.take_memory(40));
        assert_eq!(b.memory_used(), 100);
        b.give_memory(100);
        assert_eq!(b.memory_used(), 0);
        assert_eq!(b.spill_limit(), 0, "no directory, no spilling");
        assert!(!b.take_spill(1));
        assert!(b.spill_dir().is_none());
    }

    #[test]
    fn spill_needs_a_directory_and_a_nonzero_budget() {
        let b = BufferBudget::new(1, Some("/tmp".into()), 0);
        assert!(b.spill_dir().is_none());
        let b = BufferBudget::new(1, Some("/tmp".into()), 10);
        assert!(b.spill_dir().is_some());
        assert!(b.take_spill(10));
        assert!(!b.take_spill(1));
    }
}
