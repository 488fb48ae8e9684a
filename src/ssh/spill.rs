//! `SpillFile`: where a channel keeps what its reader has not read yet once its memory share
//! is used up, like nginx's `proxy_temp_path`. Without it a reader slower than its source
//! would hold up every other channel of its SSH connection (russh gives no per-channel flow
//! control on receive; see `ssh::budget`).
//!
//! The file is private: made unlinked (`O_TMPFILE`, mode 0600) in the spill directory, so no
//! other process can open it by name and nothing is left behind when the process dies. It is
//! a ring of at most `capacity` bytes, so its size never passes the channel's spill cap; its
//! size on disk is charged to the pool's `BufferBudget` as it grows and given back when the
//! reader has caught up (the file is then truncated) or the channel ends.
//!
//! Reads and writes are plain positioned I/O on the pump task: a spill write lands in the page
//! cache (one SSH packet, at most 32 KiB), which costs microseconds; a disk so slow that this
//! matters would be shown by the channel's throughput, not by other channels.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::budget::BufferBudget;

/// A channel's spill file: a ring of unread bytes, FIFO.
pub(crate) struct SpillFile {
    file: File,
    capacity: u64,
    /// Total bytes ever written and read since the file was last emptied.
    written: u64,
    read: u64,
    /// Bytes of file size charged to the budget.
    charged: u64,
    budget: Arc<BufferBudget>,
}

impl SpillFile {
    /// Makes an unlinked 0600 file in `dir` holding at most `capacity` unread bytes.
    pub(crate) fn create(
        dir: &Path,
        capacity: u64,
        budget: Arc<BufferBudget>,
    ) -> io::Result<SpillFile> {
        let file = tempfile::tempfile_in(dir)?;
        Ok(SpillFile {
            file,
            capacity,
            written: 0,
            read: 0,
            charged: 0,
            budget,
        })
    }

    /// Unread bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.written - self.read
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` if the ring has room and the budget allows the file to grow;
    /// `Ok(false)` when it does not (the caller then waits for the reader).
    pub(crate) fn append(&mut self, data: &[u8]) -> io::Result<bool> {
        self.append_all(&[data])
    }

    /// Appends every part, in order, or none (`Ok(false)`: no room in the ring or the
    /// budget). On an I/O error the file may hold some of them: the caller drops it.
    pub(crate) fn append_all(&mut self, parts: &[&[u8]]) -> io::Result<bool> {
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.len() + n > self.capacity {
            return Ok(false);
        }
        // The file grows until the ring wraps once; after that its size stays `capacity`.
        let size_after = (self.written + n).min(self.capacity);
        let grow = size_after.saturating_sub(self.charged);
        if grow > 0 {
            if !self.budget.take_spill(grow) {
                return Ok(false);
            }
            self.charged += grow;
        }
        for data in parts {
            let at = self.written % self.capacity;
            let first = (self.capacity - at).min(data.len() as u64) as usize;
            self.file.write_all_at(&data[..first], at)?;
            if first < data.len() {
                self.file.write_all_at(&data[first..], 0)?;
            }
            self.written += data.len() as u64;
        }
        Ok(true)
    }

    /// Takes up to `max` unread bytes, oldest first. Once everything is read the file is
    /// emptied (truncated, its budget share given back).
    pub(crate) fn take(&mut self, max: usize) -> io::Result<Bytes> {
        let n = self.len().min(max as u64) as usize;
        let mut out = BytesMut::zeroed(n);
        let at = self.read % self.capacity;
        let first = ((self.capacity - at) as usize).min(n);
        self.file.read_exact_at(&mut out[..first], at)?;
        if first < n {
            self.file.read_exact_at(&mut out[first..], 0)?;
        }
        self.read += n as u64;
        if self.is_empty() {
            self.file.set_len(0)?;
            self.written = 0;
            self.read = 0;
            self.budget.give_spill(self.charged);
            self.charged = 0;
        }
        Ok(out.freeze())
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.budget.give_spill(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(spill: u64) -> Arc<BufferBudget> {
        Arc::new(BufferBudget::new(0, Some(std::env::temp_dir()), spill))
    }

    #[test]
    fn keeps_order_across_the_wrap_and_frees_when_drained() {
        let b = budget(1 << 20);
        let mut f = SpillFile::create(&std::env::temp_dir(), 10, b.clone()).unwrap();
        assert!(f.append(b"abcdef").unwrap());
        assert!(!f.append(b"ghijk").unwrap(), "6 + 5 passes the ring of 10");
        assert_eq!(&f.take(4).unwrap()[..], b"abcd");
        assert!(f.append(b"ghijkl").unwrap(), "wraps around");
        assert_eq!(f.len(), 8);
        assert_eq!(b.spill_used(), 10, "the file is charged by its size");
        assert_eq!(&f.take(100).unwrap()[..], b"efghijkl");
        assert!(f.is_empty());
        assert_eq!(b.spill_used(), 0, "drained: truncated and given back");
        assert_eq!(f.file.metadata().unwrap().len(), 0);
        assert!(f.append(b"xyz").unwrap());
        drop(f);
        assert_eq!(b.spill_used(), 0, "dropping gives the rest back");
    }

    #[test]
    fn the_pool_budget_bounds_every_file_together() {
        let b = budget(8);
        let dir = std::env::temp_dir();
        let mut f = SpillFile::create(&dir, 100, b.clone()).unwrap();
        let mut g = SpillFile::create(&dir, 100, b.clone()).unwrap();
        assert!(f.append(b"12345").unwrap());
        assert!(!g.append(b"1234").unwrap(), "5 + 4 passes the budget of 8");
        assert!(g.append(b"123").unwrap());
        assert_eq!(b.spill_used(), 8);
    }

    #[test]
    fn several_parts_go_in_together_in_order_or_not_at_all() {
        let b = budget(1 << 20);
        let mut f = SpillFile::create(&std::env::temp_dir(), 10, b.clone()).unwrap();
        assert!(
            !f.append_all(&[b"abcd", b"efgh", b"ijk"]).unwrap(),
            "11 passes 10"
        );
        assert!(f.is_empty(), "none went in");
        assert!(f.append_all(&[b"abcd", b"efgh"]).unwrap());
        assert_eq!(&f.take(100).unwrap()[..], b"abcdefgh");
    }
}
