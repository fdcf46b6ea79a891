//! Log capture: the toggle, a flood against a stalled sink, the ring.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_monitoring::{Capture, CaptureConfig, LogRecord, LogSink, MemoryLogs, Redactor, SinkFuture};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt as _;

/// A sink that never returns: Redis stopped, say.
struct Stalled;

impl LogSink for Stalled {
    fn push<'a>(&'a self, _records: &'a [LogRecord]) -> SinkFuture<'a> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_only_while_enabled() {
    let (capture, records) = Capture::new(CaptureConfig::new("api", "api-1"), Redactor::default());
    let logs = Arc::new(MemoryLogs::new(100));
    let drain = tokio::spawn(Capture::drain(records, logs.clone(), 10, Duration::from_millis(5)));
    let subscriber = tracing_subscriber::registry().with(capture.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(user = 7, "first");
        capture.set_enabled(false);
        tracing::info!("while off");
        capture.set_enabled(true);
        tracing::error!("second");
    });
    assert_eq!((capture.captured(), capture.dropped()), (2, 0));
    drop(capture);
    assert_eq!(drain.await.unwrap(), 0);
    let recent = logs.recent("api", Level::TRACE, 10);
    let messages: Vec<&str> = recent.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["second", "first"], "newest first, nothing while off");
    assert_eq!((recent[1].fields["user"].as_str(), recent[1].instance.as_str()), ("7", "api-1"));
    assert_eq!(logs.recent("api", Level::WARN, 10).len(), 1, "level is a minimum");
    assert_eq!(logs.recent("worker", Level::TRACE, 10).len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_a_stalled_sink_never_blocks_and_memory_stays_bounded() {
    let config = CaptureConfig { buffer: 1000, ..CaptureConfig::new("api", "api-1") };
    let (capture, records) = Capture::new(config, Redactor::default());
    let drain = tokio::spawn(Capture::drain(records, Arc::new(Stalled), 100, Duration::from_millis(5)));
    let subscriber = tracing_subscriber::registry().with(capture.layer());
    let started = Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..100_000 {
            tracing::info!(i, "flood");
        }
    });
    let took = started.elapsed();
    let (captured, dropped) = (capture.captured(), capture.dropped());
    assert_eq!(captured + dropped, 100_000, "every event is either captured or counted");
    // The stalled drain holds one batch; the buffer holds the rest.
    assert!(captured <= 1000 + 100, "memory is bounded by the buffer: {captured} captured");
    assert!(dropped >= 98_900, "{dropped} dropped");
    // Not a timing assertion on speed: a generous bound that only a blocking
    // layer (waiting on the stalled sink) could exceed.
    assert!(took < Duration::from_secs(30), "logging blocked for {took:?}");
    drain.abort();
}

#[tokio::test]
async fn the_ring_keeps_the_newest_records_per_process() {
    let logs = MemoryLogs::new(3);
    let record = |process: &str, message: &str| LogRecord {
        time_ms: 0,
        level: "INFO".into(),
        target: "t".into(),
        message: message.into(),
        process: process.into(),
        instance: "i".into(),
        fields: Default::default(),
    };
    let batch: Vec<LogRecord> =
        (0..5).map(|i| record("api", &format!("m{i}"))).chain([record("worker", "w")]).collect();
    logs.push(&batch).await.unwrap();
    let messages: Vec<String> = logs.recent("api", Level::TRACE, 10).into_iter().map(|r| r.message).collect();
    assert_eq!(messages, ["m4", "m3", "m2"]);
    assert_eq!(logs.recent("api", Level::TRACE, 1).len(), 1);
    logs.clear();
    assert!(logs.recent("worker", Level::TRACE, 10).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lists_are_capped_newest_first_and_filtered() {
    let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
    let store = keel_store::testing::redis(&telemetry).await;
    let namespace = keel_store::testing::unique_prefix("logs");
    let logs = keel_monitoring::RedisLogs::new(store, &namespace, 5);
    let record = |level: &str, i: usize| LogRecord {
        time_ms: i as u64,
        level: level.into(),
        target: "t".into(),
        message: format!("m{i}"),
        process: "api".into(),
        instance: "i".into(),
        fields: Default::default(),
    };
    let batch: Vec<LogRecord> = (0..8).map(|i| record(if i % 2 == 0 { "INFO" } else { "ERROR" }, i)).collect();
    logs.push(&batch).await.unwrap();
    let all: Vec<String> =
        logs.recent("api", Level::TRACE, 100).await.unwrap().into_iter().map(|r| r.message).collect();
    assert_eq!(all, ["m7", "m6", "m5", "m4", "m3"], "capped at 5, newest first");
    let errors: Vec<String> =
        logs.recent("api", Level::ERROR, 100).await.unwrap().into_iter().map(|r| r.message).collect();
    assert_eq!(errors, ["m7", "m5", "m3"]);
    logs.clear("api").await.unwrap();
    assert!(logs.recent("api", Level::TRACE, 100).await.unwrap().is_empty());
}
