//! The built `worker` binary.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use keel_http::testing::{http_get, spawn_until_listening, terminate};
use tokio::process::Command;

#[test]
fn refuses_embedded_mode_with_exit_64() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL and REDIS_URL"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn cluster_mode_serves_admin_endpoints_and_stops_on_sigterm() {
    let postgres = std::env::var("KEEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis = std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
    command
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json", "--no-migrate"])
        .env("DATABASE_URL", &postgres)
        .env("REDIS_URL", &redis);
    let (mut child, addr) = spawn_until_listening(command, "worker admin endpoints").await;

    assert_eq!(http_get(&addr, "/livez").await.0, 200);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);
    let (status, metrics) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("db_client_connection_max{db_client_connection_pool_name=\"postgres\"}"), "{metrics}");
    let (status, body) = http_get(&addr, "/status").await;
    assert!(matches!(status, 200 | 207), "{body}");
    assert!(body.contains("\"entries\"") && !body.contains("\"batcher\""), "no metadata batcher: {body}");
    // The worker is a worker: the public API is the api's.
    // Nor does it serve the console's history and stream (docs/OPERATIONS.md).
    for path in [
        "/api/v1/entries/x",
        "/api/v1/settings/monitoring",
        "/api/v1/monitoring/stats",
        "/status/history",
        "/status/stream",
    ] {
        assert_eq!(http_get(&addr, path).await.0, 404, "{path}");
    }
    assert_eq!(terminate(&mut child).await, Some(0));
}
