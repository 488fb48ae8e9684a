//! Correctness checks of a benchmark run. A benchmark measures; it must still not report
//! figures from a run that lost bytes or failed dials. Every section records what it expected
//! and did not see here; the smoke run (`--smoke`, what CI runs) exits non-zero when anything
//! was recorded, and a full run prints it beside its figures. Nothing here is about speed.
//!
//! With `--smoke` the bytes are also checked by content: senders write a pattern that
//! depends on each byte's offset in its stream, and receivers compare the SHA-256 of what
//! arrived with the pattern's. A full run keeps a constant fill so that the hashing does not
//! count in the client CPU figures.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

static PROBLEMS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static VERIFY: AtomicBool = AtomicBool::new(false);

/// Records a problem when `ok` is false.
pub fn expect(ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        let what = what();
        eprintln!("bench: CHECK FAILED: {what}");
        PROBLEMS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
}

/// Everything recorded so far.
pub fn problems() -> Vec<String> {
    PROBLEMS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// From now on streams carry the offset pattern and receivers hash it.
pub fn verify_content() {
    VERIFY.store(true, Ordering::Relaxed);
}

/// Whether streams carry the offset pattern.
pub fn verifying() -> bool {
    VERIFY.load(Ordering::Relaxed)
}

/// The byte at `offset` of a verified stream (never constant over a short run).
fn pattern(offset: u64) -> u8 {
    (offset as u8) ^ ((offset >> 8) as u8).wrapping_mul(31) ^ ((offset >> 16) as u8)
}

/// Fills `buf` with the stream's bytes from `offset` on (a constant when not verifying).
pub fn fill(buf: &mut [u8], offset: u64, constant: u8) {
    if verifying() {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(offset + i as u64);
        }
    } else {
        buf.fill(constant);
    }
}

/// A running SHA-256 of a stream's bytes (does nothing when not verifying).
#[derive(Default)]
pub struct Hasher(Option<Sha256>);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(verifying().then(Sha256::new))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.0 {
            h.update(bytes);
        }
    }

    /// The hash (zeros when not verifying).
    pub fn finish(self) -> [u8; 32] {
        self.0.map_or([0; 32], |h| h.finalize().into())
    }
}

/// The hash a verified stream of `total` bytes must have (zeros when not verifying).
pub fn expected_hash(total: u64) -> [u8; 32] {
    let mut h = Hasher::new();
    if verifying() {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < total {
            let k = (total - at).min(buf.len() as u64) as usize;
            fill(&mut buf[..k], at, 0);
            h.update(&buf[..k]);
            at += k as u64;
        }
    }
    h.finish()
}
