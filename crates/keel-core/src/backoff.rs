use std::time::Duration;

/// Capped exponential backoff with jitter: the one retry timing Keel's
/// reconnecting bus, batcher and write-behind queue share.
///
/// ```
/// use std::time::Duration;
/// use keel_core::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).with_jitter(0.0);
/// assert_eq!(backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay(3), Duration::from_millis(400));
/// assert_eq!(backoff.delay(30), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry, doubled for each further one...
    pub initial: Duration,
    /// ...up to this.
    pub max: Duration,
    /// Random spread of each delay as a fraction, in `[0, 1)`: 0.2 = ±20 %.
    pub jitter: f64,
}

impl Backoff {
    /// `initial` doubling up to `max`, with ±20 % jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, jitter: 0.2 }
    }

    /// The same with another jitter (clamped into `[0, 1)`).
    #[must_use]
    pub fn with_jitter(self, jitter: f64) -> Self {
        Self { jitter: jitter.clamp(0.0, 0.999), ..self }
    }

    /// The delay before retry number `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max);
        if self.jitter > 0.0 { base.mul_f64(1.0 - self.jitter + fastrand::f64() * 2.0 * self.jitter) } else { base }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_within_its_spread() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        for attempt in 1..40 {
            let base =
                Duration::from_millis(200).saturating_mul(1 << (attempt - 1).min(20)).min(Duration::from_secs(10));
            let d = b.delay(attempt);
            assert!(d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2), "attempt {attempt}: {d:?} vs {base:?}");
        }
        assert_eq!(b.with_jitter(0.0).delay(0), Duration::from_millis(200));
    }
}
