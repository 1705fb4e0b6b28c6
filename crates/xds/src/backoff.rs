//! Reconnect delays: exponential, bounded, with jitter so that proxies cut off together do not
//! reconnect together.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential backoff between `initial` and `max`. The delay of attempt `n` is drawn from
/// `[d/2, d]` where `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay ceiling of the first retry.
    pub initial: Duration,
    /// Delay ceiling of every retry.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), for a `jitter` sample in `[0, 1]`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self
            .initial
            .checked_mul(2u32.saturating_pow(attempt.min(31)))
            .unwrap_or(self.max)
            .min(self.max);
        let fraction = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
        ceiling.mul_f64(fraction)
    }

    /// The delay before retry number `attempt`, with fresh jitter.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, jitter_sample())
    }
}

/// A uniform sample in `[0, 1]`. `RandomState` is seeded randomly per instance, which is all the
/// randomness jitter needs.
fn jitter_sample() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_bounds() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        };
        let ms = Duration::from_millis;
        let cases = [
            (0, 1.0, ms(100)),
            (0, 0.0, ms(50)),
            (1, 1.0, ms(200)),
            (3, 1.0, ms(800)),
            (7, 1.0, ms(12_800)),
            (8, 1.0, ms(15_000)),
            (8, 0.0, ms(7_500)),
            (40, 1.0, ms(15_000)),
            (u32::MAX, 0.5, ms(11_250)),
            (2, 7.0, ms(400)),
            (2, -1.0, ms(200)),
        ];
        for (attempt, jitter, expected) in cases {
            assert_eq!(
                backoff.delay(attempt, jitter),
                expected,
                "attempt {attempt}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn jitter_samples_are_in_range_and_vary() {
        let samples: Vec<f64> = (0..32).map(|_| jitter_sample()).collect();
        assert!(samples.iter().all(|sample| (0.0..=1.0).contains(sample)));
        assert!(samples.windows(2).any(|pair| pair[0] != pair[1]));
    }
}
