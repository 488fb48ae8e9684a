//! Reconnection delays: exponential (backon's builder gives the capped doubling sequence) with
//! **full jitter** — each delay is drawn uniformly from [min, d] — so that many nodes that fail
//! together do not retry together. backon's own jitter only adds to the delay (d..2d), which
//! keeps retries bunched, hence the draw here. Reset after a connection has been stable.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Bounds of one backoff sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// First delay and the floor of every jittered delay.
    pub min: Duration,
    /// Cap of the doubling.
    pub max: Duration,
}

impl BackoffPolicy {
    /// Transient failures (refused, timeout, reset): 0.5 s doubling to 30 s.
    pub const TRANSIENT: BackoffPolicy = BackoffPolicy {
        min: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    /// Failures a human must fix (auth rejected, host key): 5 s doubling to 5 min, so a node
    /// with a revoked key is not hammered (and sshd's per-source penalties are not tripped).
    pub const NEEDS_HUMAN: BackoffPolicy = BackoffPolicy {
        min: Duration::from_secs(5),
        max: Duration::from_secs(300),
    };
}

/// A running backoff sequence.
pub struct Backoff {
    policy: BackoffPolicy,
    seq: ExponentialBackoff,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A fresh sequence for `policy`.
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            seq: Self::sequence(policy),
            policy,
            rng: fastrand::Rng::new(),
        }
    }

    fn sequence(p: BackoffPolicy) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(p.min)
            .with_max_delay(p.max.max(p.min))
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// The next delay: uniform in [min, d] where d doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .seq
            .next()
            .unwrap_or(self.policy.max)
            .min(self.policy.max);
        let lo = self.policy.min.min(d).as_secs_f64();
        let hi = d.as_secs_f64();
        Duration::from_secs_f64(lo + self.rng.f64() * (hi - lo))
    }

    /// Starts over from the minimum (after a stable connection).
    pub fn reset(&mut self) {
        self.seq = Self::sequence(self.policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_jittered_and_resets() {
        let p = BackoffPolicy {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        let mut ceilings = Vec::new();
        let mut b = Backoff::new(p);
        let draws: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        let mut d = 0.5f64;
        for x in &draws {
            ceilings.push(d.min(30.0));
            d *= 2.0;
            let _ = x;
        }
        for (x, ceil) in draws.iter().zip(&ceilings) {
            assert!(
                x.as_secs_f64() >= 0.5 - 1e-9 && x.as_secs_f64() <= ceil + 1e-9,
                "{x:?} vs {ceil}"
            );
        }
        // Jittered: many draws at the cap are not all equal.
        let at_cap: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(at_cap.iter().any(|x| *x != at_cap[0]));
        assert!(at_cap.iter().all(|x| *x <= Duration::from_secs(30)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
