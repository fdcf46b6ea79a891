//! `/api/v1/monitoring` through `oneshot` when Redis is down: clear 503s,
//! never a 500 or a hang, and the capture keeps the application going.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use keel_http::{AdminToken, monitoring_api};
use keel_monitoring::{Collector, LogStore, MonitoringHub, RedisLogs, RedisStats, StatsStore};
use keel_store::{Bus, RedisConfig, RedisStore};
use keel_telemetry::Telemetry;
use serde_json::Value;
use tower::ServiceExt as _;

async fn get(router: &axum::Router, path: &str) -> (u16, Value) {
    let request = Request::get(path).header("authorization", "Bearer s3cret").body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_reads_answer_503_and_stats_publishing_carries_on() {
    let telemetry = Telemetry::new("t").unwrap();
    let mut server = keel_store::testing::RedisServer::start().await;
    let config = RedisConfig { command_timeout: Duration::from_millis(300), ..RedisConfig::new(server.url()) };
    let redis = RedisStore::connect(&config, &telemetry).await.unwrap();
    let stats = StatsStore::Redis(RedisStats::new(redis.clone(), "down"));
    let hub = MonitoringHub::new(
        LogStore::Redis(RedisLogs::new(redis, "down", 100)),
        stats.clone(),
        Bus::memory(&telemetry),
        "down:monitoring",
        keel_core::Shutdown::new(),
    );
    let router = axum::Router::from(monitoring_api(hub, AdminToken::new("s3cret")));
    let (status, body) = get(&router, "/api/v1/monitoring/stats").await;
    assert_eq!((status, body["instances"].as_array().map(Vec::len)), (200, Some(0)));

    server.stop();
    for path in ["/api/v1/monitoring/logs", "/api/v1/monitoring/stats"] {
        let (status, body) = get(&router, path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{path}: {body}");
    }

    // The collector keeps its interval while the store fails, and stops on time.
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let counter = published.clone();
    let run = tokio::spawn(Collector::new("api", "a-1").run(
        stats,
        Duration::from_millis(100),
        move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
        async move {
            let _ = rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(published.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing was stored, nothing announced");
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("the collector stops while Redis is down").unwrap();
}
