//! Several `api` processes sharing PostgreSQL and Redis.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keel_http::testing::{http_get, http_request, spawn_until_listening, terminate};
use keel_store::testing::{TempDatabase, redis_url};
use tokio::process::{Child, Command};

async fn start_api(database_url: &str, namespace: &str, dir: &std::path::Path) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("KEEL_ADMIN_TOKEN", "s3cret")
        .env("KEEL_NAMESPACE", namespace);
    spawn_until_listening(command, "api listening").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_change_on_one_api_is_served_by_the_other() {
    let temp = TempDatabase::create("api_cluster").await;
    let dir = tempfile::tempdir().unwrap();
    // The test's own key and channel namespace: other tests share this Redis.
    let namespace = temp.name().to_owned();
    let (mut first, a) = start_api(temp.url(), &namespace, dir.path()).await;
    let (mut second, b) = start_api(temp.url(), &namespace, dir.path()).await;

    let (status, body) = http_get(&b, "/api/v1/settings/monitoring").await;
    assert_eq!(status, 200, "{body}");
    let before: serde_json::Value = serde_json::from_str(&body).unwrap();

    let document = r#"{"enable_monitoring":false,"log_level":"debug"}"#;
    let version = before["version"].as_i64().unwrap().to_string();
    let if_match = format!("\"{version}\"");
    let headers = [
        ("authorization", "Bearer s3cret"),
        ("content-type", "application/json"),
        ("if-match", if_match.as_str()),
        ("x-actor", "ops"),
    ];
    let (status, body) = http_request(&a, "PUT", "/api/v1/settings/monitoring", &headers, document).await;
    assert_eq!(status, 200, "{body}");
    let written: serde_json::Value = serde_json::from_str(&body).unwrap();

    // The other process applies the invalidation within milliseconds; allow
    // a generous bound, far below the 5 minute poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(&b, "/api/v1/settings/monitoring").await;
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        if seen["version"] == written["version"] {
            assert_eq!(seen["value"]["log_level"], "debug");
            assert_eq!(seen["updated_by"], "ops");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the second api never saw the change: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = http_request(&b, "PUT", "/api/v1/settings/monitoring", &headers, document).await;
    assert_eq!(status, 412, "the first write moved the version on");

    assert_eq!(terminate(&mut first).await, Some(0));
    assert_eq!(terminate(&mut second).await, Some(0));
    temp.drop_database().await;
}
