//! Operator monitoring: the `monitoring` settings document applied live,
//! log capture drained into the log store, and the stats collector.

use std::time::Duration;

use keel_batcher::Batcher;
use keel_core::Shutdown;
use keel_entries::Entries;
use keel_monitoring::{
    Capture, Collector, LogStore, MemoryLogs, MonitoringHub, Records, RedisLogs, RedisStats, StatsStore,
};
use keel_settings_sync::{MonitoringSettings, Settings};
use keel_store::Bus;
use keel_telemetry::LogHandle;
use serde::Serialize;

use crate::core::Core;

/// Applies the `monitoring` document now (if it was ever written) and on
/// every change, in this process: `log_level` replaces the log filter and
/// `enable_monitoring` switches the operator log capture.
pub(crate) fn follow_monitoring_settings(
    monitoring: &Settings<MonitoringSettings>,
    log: &LogHandle,
    capture: &Capture,
    shutdown: &Shutdown,
) {
    let apply = |log: &LogHandle, capture: &Capture, document: &MonitoringSettings| {
        match log.set_filter(&document.log_level) {
            Ok(()) => tracing::info!(log_level = document.log_level, "log level applied from the monitoring settings"),
            Err(err) => tracing::warn!(%err, "ignoring the monitoring settings' log level"),
        }
        if capture.is_enabled() != document.enable_monitoring {
            capture.set_enabled(document.enable_monitoring);
            let state = if document.enable_monitoring { "enabled" } else { "disabled" };
            tracing::info!(enable_monitoring = document.enable_monitoring, "monitoring log capture {state}");
        }
    };
    if monitoring.version() > 0 {
        apply(log, capture, &monitoring.get());
    }
    let mut changes = monitoring.subscribe();
    let (log, capture, token) = (log.clone(), capture.clone(), shutdown.token());
    shutdown.spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let document = changes.borrow_and_update().clone();
                    apply(&log, &capture, &document);
                }
                () = token.cancelled() => return,
            }
        }
    });
}

/// Log and stats stores (Redis in cluster mode, else this process), the
/// capture drain, and the stats collector; both stop with the process.
pub(crate) fn start_monitoring(core: &Core, captured: Records, collector: Collector) -> MonitoringHub {
    let (namespace, shutdown) = (core.args.namespace.as_str(), &core.shutdown);
    let section = &core.file.monitoring;
    let cap = section.log_cap.unwrap_or(1000);
    // Without Redis every process keeps its own logs and stats, so their
    // events stay in-process too (a PostgreSQL NOTIFY could not carry them).
    let (logs, stats, events) = match &core.redis {
        Some(redis) => (
            LogStore::Redis(RedisLogs::new(redis.clone(), namespace, cap)),
            StatsStore::Redis(RedisStats::new(redis.clone(), namespace)),
            core.bus.clone(),
        ),
        None => (
            LogStore::Memory(std::sync::Arc::new(MemoryLogs::new(cap))),
            StatsStore::memory(),
            Bus::memory(&core.telemetry),
        ),
    };
    let hub = MonitoringHub::new(logs, stats.clone(), events, &MonitoringHub::channel(namespace), shutdown.clone());
    let stop = shutdown.token().cancelled_owned();
    shutdown.spawn(Capture::drain_until(captured, hub.log_sink(), 500, Duration::from_millis(50), stop));
    let interval = section.stats_interval.map_or(Duration::from_secs(5), Duration::from);
    let announcer = hub.clone();
    let stop = shutdown.token().cancelled_owned();
    let (process, instance) = collector.identity();
    tracing::info!(
        process,
        instance,
        stats_interval = ?interval,
        store = if core.redis.is_some() { "redis" } else { "memory" },
        "monitoring started"
    );
    shutdown.spawn(collector.run(stats, interval, move |document| announcer.announce_stats(document), stop));
    hub
}

/// The `capture` section of the stats document.
#[derive(Serialize)]
struct CaptureSection {
    enabled: bool,
    captured: u64,
    dropped: u64,
}

/// The capture switch and counters for the stats document: records kept
/// and dropped because the buffer was full.
pub(crate) fn capture_section(capture: Capture) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
    move || {
        let section =
            CaptureSection { enabled: capture.is_enabled(), captured: capture.captured(), dropped: capture.dropped() };
        serde_json::to_value(section).unwrap_or_default()
    }
}

/// The `batcher` section of the stats document.
#[derive(Serialize)]
struct BatcherSection {
    offered: u64,
    flushed: u64,
    deduplicated: u64,
    dropped: u64,
    pending: u64,
    batches: u64,
    queue_depth: usize,
    queue_capacity: usize,
}

/// The batcher's counters for the stats document.
pub(crate) fn batcher_section<K, V>(batcher: Batcher<K, V>) -> impl Fn() -> serde_json::Value + Send + Sync + 'static
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    move || {
        let s = batcher.stats();
        let section = BatcherSection {
            offered: s.offered,
            flushed: s.flushed,
            deduplicated: s.deduplicated,
            dropped: s.dropped(),
            pending: s.pending,
            batches: s.batches,
            queue_depth: batcher.queue_depth(),
            queue_capacity: batcher.queue_capacity(),
        };
        serde_json::to_value(section).unwrap_or_default()
    }
}

/// The `write_behind` section of the stats document.
#[derive(Serialize)]
struct WriteBehindSection {
    enqueued: u64,
    persisted: u64,
    failed: u64,
    retries: u64,
    batches: u64,
    queue_depth: u64,
    in_flight: u64,
    oldest_age_ms: u64,
    failing_for_s: u64,
    /// The local write-ahead log behind the in-process queue, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    local_log: Option<LocalLogSection>,
}

/// The local log's figures in the `write_behind` section.
#[derive(Serialize)]
struct LocalLogSection {
    bytes: u64,
    max_bytes: u64,
    segments: u64,
    appends: u64,
    syncs: u64,
    append_errors: u64,
    corrupt: u64,
}

/// The write-behind figures of whoever persists in this process: the
/// in-process queue, or the stream consumer (worker); `null` for a process
/// that only produces to the stream.
pub(crate) fn write_behind_section(entries: &Entries) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
    let entries = entries.clone();
    move || {
        let Some(m) = entries.metrics() else {
            return serde_json::Value::Null;
        };
        let section = WriteBehindSection {
            enqueued: m.enqueued,
            persisted: m.persisted,
            failed: m.failed,
            retries: m.retries,
            batches: m.batches,
            queue_depth: m.queue_depth,
            in_flight: m.in_flight,
            oldest_age_ms: u64::try_from(m.oldest_age.as_millis()).unwrap_or(u64::MAX),
            failing_for_s: m.failing_for.as_secs(),
            local_log: entries.local_log().map(|log| {
                let s = log.stats();
                LocalLogSection {
                    bytes: s.bytes,
                    max_bytes: s.max_bytes,
                    segments: s.segments,
                    appends: s.appends,
                    syncs: s.syncs,
                    append_errors: s.append_errors,
                    corrupt: s.corrupt,
                }
            }),
        };
        serde_json::to_value(section).unwrap_or_default()
    }
}
