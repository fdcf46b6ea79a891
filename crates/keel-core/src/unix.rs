use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 before it, saturating far after it),
/// the form Keel stores times in where a database or cache has no time type.
pub fn unix_micros(time: SystemTime) -> i64 {
    i64::try_from(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(time: SystemTime) -> i64 {
    i64::try_from(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
}

/// The time `micros` microseconds after the Unix epoch (negative: the epoch).
pub fn from_unix_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or_default())
}

/// The time `millis` milliseconds after the Unix epoch (negative: the epoch).
pub fn from_unix_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_clamps() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(from_unix_micros(unix_micros(t)), t);
        assert_eq!(unix_millis(t), 1_700_000_000_123);
        assert_eq!(from_unix_millis(1_700_000_000_123), UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(unix_micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(from_unix_micros(-5), UNIX_EPOCH);
    }
}
