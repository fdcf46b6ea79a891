//! Several `api` processes sharing PostgreSQL and Redis.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keel_http::testing::{LogLines, http_get, http_request, spawn_with_logs, sse, terminate, wait_for_log};
use keel_store::testing::{TempDatabase, redis_url};
use tokio::process::{Child, Command};

async fn start_api(database_url: &str, namespace: &str, dir: &std::path::Path) -> (Child, String) {
    let (child, addr, _) = start_api_with_logs(database_url, namespace, dir).await;
    (child, addr)
}

async fn start_api_with_logs(database_url: &str, namespace: &str, dir: &std::path::Path) -> (Child, String, LogLines) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("KEEL_ADMIN_TOKEN", "s3cret-s3cret-s3cret")
        .env("KEEL_NAMESPACE", namespace);
    spawn_with_logs(command, "api listening").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_change_on_one_api_is_served_by_the_other() {
    let temp = TempDatabase::create("api_cluster").await;
    let dir = tempfile::tempdir().unwrap();
    // The test's own key and channel namespace: other tests share this Redis.
    let namespace = temp.name().to_owned();
    let (mut first, a) = start_api(temp.url(), &namespace, dir.path()).await;
    let (mut second, b, mut logs_b) = start_api_with_logs(temp.url(), &namespace, dir.path()).await;

    let (status, body) = http_get(&b, "/api/v1/settings/monitoring").await;
    assert_eq!(status, 200, "{body}");
    let before: serde_json::Value = serde_json::from_str(&body).unwrap();

    let document = r#"{"enable_monitoring":false,"log_level":"debug"}"#;
    let version = before["version"].as_i64().unwrap().to_string();
    let if_match = format!("\"{version}\"");
    let headers = [
        ("authorization", "Bearer s3cret-s3cret-s3cret"),
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
    // The other process changed its running log filter.
    let applied = wait_for_log(&mut logs_b, "log level applied", Duration::from_secs(5)).await;
    assert_eq!(applied["log_level"], "debug");
    let debug = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = logs_b.recv().await {
            if line["level"] == "DEBUG" {
                return line;
            }
        }
        panic!("process exited");
    })
    .await
    .expect("no DEBUG line after the log level changed to debug");
    assert_eq!(debug["level"], "DEBUG");

    assert_eq!(terminate(&mut first).await, Some(0));
    assert_eq!(terminate(&mut second).await, Some(0));
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_posted_to_one_api_reaches_a_watcher_on_the_other() {
    let temp = TempDatabase::create("api_watch").await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = temp.name().to_owned();
    let (mut first, a) = start_api(temp.url(), &namespace, dir.path()).await;
    let (mut second, b) = start_api(temp.url(), &namespace, dir.path()).await;
    let agent = "5b0f3c0e-2a51-4c7e-9f0a-9e4a1b2c3d4e";

    let mut watch = sse(&b, &format!("/api/v1/agents/{agent}/metadata/watch"), &[]).await;
    // The first event is the current (empty) state.
    watch.until("metadata", "\"metadata\":[]").await;

    let body = r#"{"metadata":[{"key":"region","value":"eu-west"}]}"#;
    let headers = [("content-type", "application/json")];
    let (status, answer) = http_request(&a, "POST", &format!("/api/v1/agents/{agent}/metadata"), &headers, body).await;
    assert_eq!(status, 202, "{answer}");

    // Flushed on the next interval (5 s) by the first api, announced on
    // Redis, pushed by the second.
    let data = watch.until_within("metadata", "eu-west", Duration::from_secs(20)).await;
    assert!(data.contains("region"), "{data}");

    let (_, current) = http_get(&b, &format!("/api/v1/agents/{agent}/metadata")).await;
    assert!(current.contains("\"region\"") && current.contains("eu-west"), "{current}");
    assert_eq!(terminate(&mut first).await, Some(0));
    let stopping = tokio::time::Instant::now();
    assert_eq!(terminate(&mut second).await, Some(0), "an open watch does not hold up shutdown");
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped in {:?}", stopping.elapsed());
    drop(watch);
    temp.drop_database().await;
}
