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

    const P: BackoffPolicy = BackoffPolicy {
        min: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    /// Sequences drawn per step: enough that the largest draw of a step comes close to its
    /// ceiling and the smallest close to the floor. Seeded, so every run draws the same.
    const RUNS: u64 = 400;

    /// `RUNS` sequences of `P`, each with its own seeded generator.
    fn sequences() -> Vec<Backoff> {
        (0..RUNS)
            .map(|seed| {
                let mut b = Backoff::new(P);
                b.rng = fastrand::Rng::with_seed(seed);
                b
            })
            .collect()
    }

    /// The next delay of every sequence, in seconds, with its smallest and largest.
    fn step(runs: &mut [Backoff]) -> (Vec<f64>, f64, f64) {
        let draws: Vec<f64> = runs
            .iter_mut()
            .map(|b| b.next_delay().as_secs_f64())
            .collect();
        let lo = draws.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = draws.iter().cloned().fold(0.0, f64::max);
        (draws, lo, hi)
    }

    #[test]
    fn grows_is_capped_jittered_and_resets() {
        let (min, max) = (P.min.as_secs_f64(), P.max.as_secs_f64());
        let mut runs = sequences();
        // The first delay is the minimum itself (the range [min, min] has no room).
        let (_, lo, hi) = step(&mut runs);
        assert!(
            (lo - min).abs() < 1e-9 && (hi - min).abs() < 1e-9,
            "first delay {lo}..{hi}, want {min}"
        );
        // Then the ceiling doubles (1, 2, 4, 8, 16 s) up to the cap (30 s) and stays there;
        // every draw is in [min, ceiling] and the draws spread over the whole range (full
        // jitter: the smallest near the floor, the largest near the ceiling).
        let mut ceiling = min;
        for i in 1..12 {
            ceiling = (ceiling * 2.0).min(max);
            let (draws, lo, hi) = step(&mut runs);
            assert!(
                draws
                    .iter()
                    .all(|d| *d >= min - 1e-9 && *d <= ceiling + 1e-9),
                "step {i}: a delay outside [{min}, {ceiling}]: {lo}..{hi}"
            );
            let span = ceiling - min;
            assert!(
                hi >= ceiling - span * 0.05,
                "step {i}: the largest of {RUNS} delays is {hi}, want close to the ceiling {ceiling}"
            );
            assert!(
                lo <= min + span * 0.05,
                "step {i}: the smallest of {RUNS} delays is {lo}, want close to the floor {min} (full jitter)"
            );
        }
        assert_eq!(ceiling, max, "the sequence reached the cap");

        // Reset starts over: the minimum, then a ceiling of 2 × min again.
        for b in &mut runs {
            b.reset();
        }
        let (_, lo, hi) = step(&mut runs);
        assert!(
            (lo - min).abs() < 1e-9 && (hi - min).abs() < 1e-9,
            "after reset the first delay is {lo}..{hi}, want {min}"
        );
        let (_, lo, hi) = step(&mut runs);
        assert!(
            lo >= min - 1e-9 && hi <= 2.0 * min + 1e-9 && hi > min + 0.9 * min,
            "after reset the second delay is {lo}..{hi}, want up to {}",
            2.0 * min
        );
    }
}
