//! The backlog of a durable queue's streams, measured on its own timer.
//!
//! A consumer stuck retrying a failed database cannot report how much is
//! waiting behind it, and a process with no consumer (the api) has none to
//! ask. [`StreamBacklog`] asks Redis directly every interval: each stream's
//! length (consumers delete what they persist, so the length is everything
//! not yet persisted, delivered or not) and the age of its first entry,
//! from the entry id's milliseconds against the Redis server's own clock
//! (no skew between hosts). Between measurements, and while Redis does not
//! answer, the age keeps growing from the last one: a backlog never looks
//! younger because it could not be measured.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fred::types::Value;
use keel_store::{RedisStore, Script};
use tokio::time::Instant;

use crate::{DurableError, Metrics};

/// Length, first entry id and server time of one stream, in one call.
const MEASURE: &str = r#"
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    local length = redis.call('XLEN', KEYS[1])
    local now = redis.call('TIME')
    local id = false
    if first[1] then id = first[1][1] end
    return {length, id, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
"#;

/// How often the backlog is measured by default.
pub const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);

/// The last measurement of every stream together.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    depth: u64,
    /// Age of the oldest entry of any stream when measured.
    age: Duration,
    at: Option<Instant>,
}

/// A durable queue's backlog (entries not yet persisted, and the age of
/// the oldest), measured by a task of its own. Cloning shares it.
#[derive(Clone, Default)]
pub struct StreamBacklog {
    last: Arc<Mutex<Measured>>,
    /// The exported instruments, kept while the backlog lives.
    instruments: Arc<Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>>,
}

impl std::fmt::Debug for StreamBacklog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBacklog").field("depth", &self.depth()).field("oldest_age", &self.oldest_age()).finish()
    }
}

impl StreamBacklog {
    /// Measures `streams` every `every` until `shutdown` stops, on
    /// `shutdown`'s tracker.
    pub fn watch(redis: RedisStore, streams: Vec<String>, every: Duration, shutdown: &keel_core::Shutdown) -> Self {
        let backlog = Self::default();
        let (last, stop) = (backlog.last.clone(), shutdown.token());
        shutdown.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match tokio::time::timeout(every.max(Duration::from_secs(1)), measure(&redis, &streams)).await {
                    Ok(Ok((depth, age))) => {
                        *last.lock().unwrap_or_else(PoisonError::into_inner) =
                            Measured { depth, age, at: Some(Instant::now()) };
                    }
                    Ok(Err(err)) => tracing::debug!(%err, "cannot measure the stream backlog; keeping the last figure"),
                    Err(_) => tracing::debug!("measuring the stream backlog timed out; keeping the last figure"),
                }
            }
        });
        backlog
    }

    /// Entries waiting in every stream, at the last measurement.
    pub fn depth(&self) -> u64 {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).depth
    }

    /// The last measurement, read as [`Self::oldest_age`] reads it.
    fn read(last: &Mutex<Measured>) -> (u64, Duration) {
        let last = *last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.at {
            Some(at) if last.depth > 0 => (last.depth, last.age + at.elapsed()),
            _ => (last.depth, Duration::ZERO),
        }
    }

    /// Age of the oldest waiting entry now: the last measured age plus the
    /// time since (zero when nothing was waiting).
    pub fn oldest_age(&self) -> Duration {
        Self::read(&self.last).1
    }

    /// `metrics` with the depth and age taken from this backlog.
    pub fn apply(&self, metrics: Metrics) -> Metrics {
        let (queue_depth, oldest_age) = Self::read(&self.last);
        Metrics { queue_depth, oldest_age, ..metrics }
    }

    /// Exports the depth and age as `keel.write_behind.queue_depth` and
    /// `keel.write_behind.oldest_age`, labelled `queue = name`: the same
    /// series an in-process queue exports, so one alert reads both.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource, name: &str) {
        // Weak: the meter provider outlives the backlog.
        let last = Arc::downgrade(&self.last);
        let handles = crate::queue::export_backlog(telemetry, name, move || {
            let (queue_depth, oldest_age) = Self::read(&*last.upgrade()?);
            Some(Metrics { queue_depth, oldest_age, ..Metrics::default() })
        });
        self.instruments.lock().unwrap_or_else(PoisonError::into_inner).extend(handles);
    }
}

/// Every stream's length added up, and the oldest first entry's age.
async fn measure(redis: &RedisStore, streams: &[String]) -> Result<(u64, Duration), DurableError> {
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::from_lua(MEASURE));
    let (mut depth, mut age) = (0u64, Duration::ZERO);
    for stream in streams {
        let reply = redis.run_script::<Vec<Value>>(&SCRIPT, vec![stream.clone()], vec![]).await?;
        let [length, first, now] = <[Value; 3]>::try_from(reply)
            .map_err(|r| DurableError::Protocol(format!("backlog script answered {} values", r.len())))?;
        depth += length.as_u64().unwrap_or(0);
        let first_ms = first.as_string().and_then(|id| id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()));
        if let (Some(first_ms), Some(now_ms)) = (first_ms, now.as_u64()) {
            age = age.max(Duration::from_millis(now_ms.saturating_sub(first_ms)));
        }
    }
    Ok((depth, age))
}
