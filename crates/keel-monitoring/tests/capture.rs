//! Log capture: the toggle, a flood against a stalled sink, the ring.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_monitoring::{
    Capture, CaptureConfig, Collector, HttpStats, LogQuery, LogRecord, LogSink, MemoryLogs, Redactor, RedisLogs,
    RedisStats, StatsStore,
};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt as _;

fn query(min_level: Level, limit: usize) -> LogQuery {
    LogQuery { min_level, limit, since_ms: None }
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
        // What serving the captured records writes is never captured.
        tracing::info!(uncaptured = true, "a monitoring stream answered");
        tracing::error!("second");
    });
    assert_eq!((capture.captured(), capture.dropped()), (2, 0));
    drop(capture);
    assert_eq!(drain.await.unwrap(), 0);
    let recent = logs.recent("api", &query(Level::TRACE, 10));
    let messages: Vec<&str> = recent.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["second", "first"], "newest first, nothing while off, nothing marked uncaptured");
    assert_eq!((recent[1].fields["user"].as_str(), recent[1].instance.as_str()), ("7", "api-1"));
    assert_eq!(logs.recent("api", &query(Level::WARN, 10)).len(), 1, "level is a minimum");
    assert_eq!(logs.recent("worker", &query(Level::TRACE, 10)).len(), 0);
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
    let messages: Vec<String> = logs.recent("api", &query(Level::TRACE, 10)).into_iter().map(|r| r.message).collect();
    assert_eq!(messages, ["m4", "m3", "m2"]);
    assert_eq!(logs.recent("api", &query(Level::TRACE, 1)).len(), 1);
    logs.clear("worker");
    assert_eq!(logs.recent("api", &query(Level::TRACE, 10)).len(), 3, "only the worker's ring is cleared");
    assert!(logs.recent("worker", &query(Level::TRACE, 10)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lists_are_capped_newest_first_and_filtered() {
    // The standalone server, then the cluster.
    for url in keel_store::testing::redis_urls() {
        let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
        let store = keel_store::testing::redis_at(&url, &telemetry).await;
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
            logs.recent("api", &query(Level::TRACE, 100)).await.unwrap().into_iter().map(|r| r.message).collect();
        assert_eq!(all, ["m7", "m6", "m5", "m4", "m3"], "capped at 5, newest first");
        let errors: Vec<String> =
            logs.recent("api", &query(Level::ERROR, 100)).await.unwrap().into_iter().map(|r| r.message).collect();
        assert_eq!(errors, ["m7", "m5", "m3"]);
        let since = LogQuery { since_ms: Some(6), ..query(Level::TRACE, 100) };
        let recent: Vec<String> = logs.recent("api", &since).await.unwrap().into_iter().map(|r| r.message).collect();
        assert_eq!(recent, ["m7", "m6"], "since is inclusive");
        logs.clear("api").await.unwrap();
        assert!(logs.recent("api", &query(Level::TRACE, 100)).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_with_redis_stopped_never_blocks_and_counts_every_drop() {
    let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
    let mut server = keel_store::testing::RedisServer::start().await;
    // A short command timeout so the drain gives each batch up quickly.
    let config = keel_store::RedisConfig {
        command_timeout: Duration::from_millis(200),
        ..keel_store::RedisConfig::new(server.url())
    };
    let store = keel_store::RedisStore::connect(&config, &telemetry).await.unwrap();
    let logs = RedisLogs::new(store, "flood", 1000);
    server.stop();

    let config = CaptureConfig { buffer: 1000, ..CaptureConfig::new("api", "api-1") };
    let (capture, records) = Capture::new(config, Redactor::default());
    let drain = tokio::spawn(Capture::drain(records, Arc::new(logs), 100, Duration::from_millis(5)));
    let subscriber = tracing_subscriber::registry().with(capture.layer());
    let started = Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..100_000 {
            tracing::info!(i, "flood");
        }
    });
    let took = started.elapsed();
    let (captured, dropped) = (capture.captured(), capture.dropped());
    assert_eq!(captured + dropped, 100_000, "every event is either captured or counted as dropped");
    // The buffer bounds memory: records the drain has not taken yet are at
    // most the buffer; everything beyond it is dropped and counted.
    assert!(dropped > 0, "a flood against a dead Redis must drop");
    assert!(captured < 10_000, "{captured} captured: the buffer (1000) did not bound what was held");
    assert!(took < Duration::from_secs(30), "logging blocked for {took:?}");
    // Whatever was captured is being offered to the dead Redis and lost
    // batch by batch, never held without bound.
    drop(capture);
    let lost = tokio::time::timeout(Duration::from_secs(60), drain).await.unwrap().unwrap();
    assert_eq!(lost, captured, "every captured record was offered to Redis and counted lost");
}

fn collector_doc(process: &str, instance: &str) -> keel_monitoring::StatsDocument {
    let http = HttpStats::new();
    http.record("/livez", 200, Duration::from_millis(2));
    Collector::new(process, instance).with_http(http).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stats_are_listed_until_they_expire_or_are_removed() {
    // The standalone server, then the cluster (documents and index may sit on different shards).
    for url in keel_store::testing::redis_urls() {
        let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
        let store = keel_store::testing::redis_at(&url, &telemetry).await;
        let namespace = keel_store::testing::unique_prefix("stats");
        let stats = StatsStore::Redis(RedisStats::new(store, &namespace));
        stats.publish(&collector_doc("worker", "w-1"), Duration::from_secs(60)).await.unwrap();
        stats.publish(&collector_doc("api", "a-1"), Duration::from_secs(60)).await.unwrap();
        stats.publish(&collector_doc("api", "a-2"), Duration::from_millis(300)).await.unwrap();
        let listed: Vec<(String, String)> =
            stats.list().await.unwrap().into_iter().map(|d| (d.process, d.instance)).collect();
        assert_eq!(
            listed,
            [("api".into(), "a-1".into()), ("api".into(), "a-2".into()), ("worker".into(), "w-1".into())]
        );
        let documents = stats.list().await.unwrap();
        assert_eq!(documents[0].http["/livez"].since_start.requests, 1);

        // Redis expires the key itself: real time is the only clock it has.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stats.remove("worker", "w-1").await.unwrap();
        let listed: Vec<String> = stats.list().await.unwrap().into_iter().map(|d| d.instance).collect();
        assert_eq!(listed, ["a-1"], "a-2 expired, w-1 removed");
    }
}

#[tokio::test(start_paused = true)]
async fn the_collector_publishes_every_interval_and_removes_itself_at_stop() {
    let store = StatsStore::memory();
    let http = HttpStats::new();
    let collector = Collector::new("api", "a-1").with_http(http.clone());
    let stop = stop_signal();
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = published.clone();
    let task = tokio::spawn(collector.run(
        store.clone(),
        Duration::from_secs(5),
        move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
        stop.1,
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(published.load(std::sync::atomic::Ordering::Relaxed), 1, "the first document goes out at once");
    http.record("/x", 500, Duration::from_millis(1));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].http["/x"].since_start.errors, listed[0].uptime_s), (1, 5));
    assert_eq!(published.load(std::sync::atomic::Ordering::Relaxed), 2);

    let _ = stop.0.send(());
    task.await.unwrap();
    assert!(store.list().await.unwrap().is_empty(), "removed at stop");
    store.publish(&collector_doc("api", "a-2"), Duration::from_secs(15)).await.unwrap();
    tokio::time::advance(Duration::from_secs(14)).await;
    assert_eq!(store.list().await.unwrap().len(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(store.list().await.unwrap().is_empty(), "expired after its TTL");
}

#[test]
fn the_last_minute_window_forgets_older_requests() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    rt.block_on(async {
        let http = HttpStats::new();
        let mut collector = Collector::new("api", "a-1").with_http(http.clone());
        http.record("/r", 200, Duration::from_millis(1));
        collector.collect();
        for _ in 0..13 {
            tokio::time::advance(Duration::from_secs(5)).await;
            collector.collect();
        }
        http.record("/r", 200, Duration::from_millis(1));
        let document = collector.collect();
        assert_eq!(document.http["/r"].since_start.requests, 2);
        assert_eq!(document.http["/r"].last_minute.requests, 1, "the first request is over a minute old");
        let tokio = document.tokio.unwrap();
        assert_eq!(tokio.workers, 1);
        assert!(document.rss_bytes.unwrap() > 0);
    });
}

/// A one-shot stop signal.
fn stop_signal() -> (tokio::sync::oneshot::Sender<()>, impl std::future::Future<Output = ()> + Send) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_is_kept_however_many_there_are() {
    let (capture, records) = Capture::new(CaptureConfig::new("api", "api-1"), Redactor::new(["pw"]));
    let logs = Arc::new(MemoryLogs::new(10));
    let drain = tokio::spawn(Capture::drain(records, logs.clone(), 10, Duration::from_millis(5)));
    let subscriber = tracing_subscriber::registry().with(capture.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(
            a = 1,
            b = 2,
            c = 3,
            d = 4,
            e = 5,
            f = 6,
            g = 7,
            h = 8,
            i = 9,
            j = 10,
            k = 11,
            l = 12,
            m = 13,
            n = "pw-in-the-14th",
            "{} fields",
            14
        );
    });
    drop(capture);
    drain.await.unwrap();
    let record = &logs.recent("api", &query(Level::TRACE, 1))[0];
    assert_eq!(record.message, "14 fields");
    assert_eq!(record.fields.len(), 14);
    assert_eq!((record.fields["a"].as_str(), record.fields["m"].as_str()), ("1", "13"));
    assert_eq!(record.fields["n"], "[redacted]-in-the-14th", "spilled fields are redacted too");
}
