//! `FailureLog`: keeps a node that keeps failing from flooding the log. Every state change
//! used to be a line: with 1,000 nodes refusing connections that was two lines per node per
//! backoff cycle, about 15 million a day. Now, per node:
//! - the first failure of a kind (its *class*: the error without numbers) is logged, and so is
//!   a change of class;
//! - while the same failure repeats, the retry cycle (connecting → backoff → connecting) is
//!   not logged; a summary (attempts, last error, next retry) is, at most every `interval`;
//! - becoming ready, degraded or draining is always logged.
//!
//! Status and metrics still see every attempt; only the log is quieter.

use std::time::{Duration, Instant};

use super::state::TunnelState;

/// What to do with one state change's log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// Log a summary instead: this many changes were not logged since the last line.
    Summary { quiet: u64 },
    /// Say nothing.
    Quiet,
}

/// One node's failure streak.
#[derive(Debug)]
pub struct FailureLog {
    interval: Duration,
    class: Option<String>,
    last_line: Instant,
    quiet: u64,
}

impl FailureLog {
    /// A summary at most every `interval` while one failure repeats.
    pub fn new(interval: Duration) -> FailureLog {
        FailureLog {
            interval,
            class: None,
            last_line: Instant::now(),
            quiet: 0,
        }
    }

    /// Decides about a change to `to` with `reason`, at `now`.
    pub fn judge(&mut self, to: TunnelState, reason: &str, now: Instant) -> Verdict {
        match to {
            TunnelState::Backoff | TunnelState::Failed => {
                let class = class_of(reason);
                if self.class.as_deref() != Some(class.as_str()) {
                    self.class = Some(class);
                    self.last_line = now;
                    self.quiet = 0;
                    return Verdict::Log;
                }
                self.quiet += 1;
                if now.saturating_duration_since(self.last_line) >= self.interval {
                    self.last_line = now;
                    let quiet = std::mem::take(&mut self.quiet);
                    return Verdict::Summary { quiet };
                }
                Verdict::Quiet
            }
            // The retry of a failing node: part of the streak.
            TunnelState::Connecting if self.class.is_some() => {
                self.quiet += 1;
                Verdict::Quiet
            }
            _ => {
                self.class = None;
                self.quiet = 0;
                Verdict::Log
            }
        }
    }
}

/// A failure's class: its reason without the retry delay and without digits (addresses,
/// ports, delays and counts change; the kind of failure does not).
fn class_of(reason: &str) -> String {
    let head = reason.split(" (next attempt").next().unwrap_or(reason);
    head.chars().filter(|c| !c.is_ascii_digit()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_failure_is_logged_once_then_summarised() {
        let mut f = FailureLog::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let refused = |n: u32| format!("TCP connect failed: refused (next attempt in 0.{n}s)");
        assert_eq!(
            f.judge(TunnelState::Connecting, "connecting", t0),
            Verdict::Log
        );
        assert_eq!(f.judge(TunnelState::Backoff, &refused(4), t0), Verdict::Log);
        for i in 0..100 {
            let t = t0 + Duration::from_secs(i);
            assert_eq!(
                f.judge(TunnelState::Connecting, "connecting", t),
                Verdict::Quiet
            );
            assert_eq!(
                f.judge(TunnelState::Backoff, &refused(i as u32 % 9), t),
                Verdict::Quiet
            );
        }
        let later = t0 + Duration::from_secs(301);
        assert_eq!(
            f.judge(TunnelState::Backoff, &refused(7), later),
            Verdict::Summary { quiet: 201 }
        );
        // Another kind of failure is logged at once.
        assert_eq!(
            f.judge(TunnelState::Failed, "authentication rejected", later),
            Verdict::Log
        );
        // Ready always, and it ends the streak.
        assert_eq!(
            f.judge(TunnelState::Ready, "connected", later),
            Verdict::Log
        );
        assert_eq!(
            f.judge(TunnelState::Connecting, "connecting", later),
            Verdict::Log
        );
    }
}
