use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// A source of wall-clock and monotonic time.
///
/// Production code takes a [`SharedClock`] so tests can substitute a
/// [`ManualClock`] and move time forward deterministically.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time (for timestamps that leave the process).
    fn now(&self) -> SystemTime;
    /// A monotonic instant (for measuring elapsed time).
    fn instant(&self) -> Instant;
}

/// A clock shared between components.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; for tests.
///
/// Clones share the same time, so a test can keep one handle and give another
/// to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    wall_base: SystemTime,
    instant_base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A manual clock starting at the current system time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A manual clock whose wall time starts at `start`.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                wall_base: start,
                instant_base: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            }),
        }
    }

    /// Moves both wall and monotonic time forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.lock() += by;
    }

    /// This clock as a [`SharedClock`].
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }

    fn offset(&self) -> Duration {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Duration> {
        // The guarded value is a plain Duration: a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still safe to use.
        self.inner.offset.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.inner.wall_base + self.offset()
    }

    fn instant(&self) -> Instant {
        self.inner.instant_base + self.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let (wall, mono) = (clock.now(), clock.instant());
        assert_eq!(clock.now(), wall);
        clock.advance(Duration::from_millis(1500));
        let other = clock.clone();
        assert_eq!(other.now().duration_since(wall).unwrap(), Duration::from_millis(1500));
        assert_eq!(other.instant() - mono, Duration::from_millis(1500));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::shared();
        let a = clock.instant();
        let b = clock.instant();
        assert!(b >= a);
    }
}
