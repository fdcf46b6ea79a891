//! Operator monitoring through the real binaries: captured logs, the
//! settings toggle across processes, stats documents and their expiry, the
//! SSE stream, and the admin token — in cluster mode (PostgreSQL + Redis,
//! two `api` and one `worker`) and in embedded mode.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_http::testing::{SseStream, http_request, spawn_until_listening, sse, terminate};
use keel_store::testing::{TempDatabase, redis_url};
use serde_json::Value;
use tokio::process::{Child, Command};

const TOKEN: &str = "s3cret-s3cret-s3cret";
const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-s3cret-s3cret");
/// Requests to `/livez` log two DEBUG lines each at this filter.
const LOG_LEVEL: &str = "info,keel_http::request=debug";
const CAP: usize = 30;

/// The `worker` binary next to `api`. `cargo test --workspace` (what
/// `cargo xtask test` and CI run) builds every binary of the workspace before
/// any test starts; a test never runs cargo itself. (Alone, `cargo test -p
/// api` builds only `api`: build the worker first.)
fn worker_binary() -> PathBuf {
    let api = PathBuf::from(env!("CARGO_BIN_EXE_api"));
    let worker = api.with_file_name(format!("worker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        worker.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p worker` first)",
        worker.display()
    );
    worker
}

fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("keel.toml");
    std::fs::write(&path, format!("[monitoring]\nstats_interval = \"1s\"\nlog_cap = {CAP}\n")).unwrap();
    path
}

fn command(binary: &Path, dir: &Path, instance: &str, cluster: Option<(&str, &str)>) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["--log-format", "json", "--instance-id", instance])
        .arg("--config")
        .arg(config_file(dir))
        .current_dir(dir)
        .env("KEEL_ADMIN_TOKEN", TOKEN)
        .env("KEEL_LOG_LEVEL", LOG_LEVEL);
    if let Some((database_url, namespace)) = cluster {
        command.env("DATABASE_URL", database_url).env("REDIS_URL", redis_url()).env("KEEL_NAMESPACE", namespace);
    }
    command
}

async fn start_api(dir: &Path, instance: &str, cluster: Option<(&str, &str)>) -> (Child, String) {
    let mut command = command(Path::new(env!("CARGO_BIN_EXE_api")), dir, instance, cluster);
    command.args(["--listen", "127.0.0.1:0"]);
    spawn_until_listening(command, "api listening").await
}

async fn admin_get(addr: &str, path: &str) -> Value {
    let (status, body) = http_request(addr, "GET", path, &[AUTH], "").await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn records(addr: &str, query: &str) -> Vec<Value> {
    admin_get(addr, &format!("/api/v1/monitoring/logs?{query}")).await["records"].as_array().unwrap().clone()
}

fn from_instance(records: &[Value], instance: &str) -> usize {
    records.iter().filter(|r| r["instance"] == instance).count()
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn hit(addr: &str, times: usize) {
    for _ in 0..times {
        let (status, _) = http_request(addr, "GET", "/livez", &[], "").await;
        assert_eq!(status, 200);
    }
}

async fn set_capture(addr: &str, enabled: bool) {
    let document = format!(r#"{{"enable_monitoring":{enabled},"log_level":"{LOG_LEVEL}"}}"#);
    let headers = [AUTH, ("content-type", "application/json")];
    let (status, body) = http_request(addr, "PUT", "/api/v1/settings/monitoring", &headers, &document).await;
    assert_eq!(status, 200, "{body}");
}

async fn instances(addr: &str) -> Vec<String> {
    let stats = admin_get(addr, "/api/v1/monitoring/stats").await;
    stats["instances"].as_array().unwrap().iter().map(|d| d["instance"].as_str().unwrap().to_owned()).collect()
}

/// Opens the monitoring event stream as the admin.
async fn open_stream(addr: &str) -> SseStream {
    sse(addr, "/api/v1/monitoring/stream", &[AUTH]).await
}

/// Everything an operator can do against one process's point of view.
async fn unauthorised_requests_are_refused(addr: &str) {
    for (method, path) in [
        ("GET", "/api/v1/monitoring/logs"),
        ("GET", "/api/v1/monitoring/stats"),
        ("GET", "/api/v1/monitoring/stream"),
        ("DELETE", "/api/v1/monitoring/logs"),
    ] {
        let (status, body) = http_request(addr, method, path, &[], "").await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let (status, _) = http_request(addr, method, path, &[("authorization", "Bearer wrong")], "").await;
        assert_eq!(status, 403, "{method} {path} with a wrong token");
    }
    let (status, body) = http_request(addr, "GET", "/api/v1/monitoring/logs?level=loud", &[AUTH], "").await;
    assert_eq!(status, 400, "{body}");
    // Two Authorization headers are refused, whichever comes first.
    let wrong = ("authorization", "Bearer wrong");
    for headers in [[wrong, AUTH], [AUTH, wrong]] {
        let (status, body) = http_request(addr, "GET", "/api/v1/monitoring/stats", &headers, "").await;
        assert_eq!(status, 400, "{body}");
    }
    // A refused document names the field.
    let bad = r#"{"enable_monitoring":true,"log_level":"warning"}"#;
    let headers = [AUTH, ("content-type", "application/json")];
    let (status, body) = http_request(addr, "PUT", "/api/v1/settings/monitoring", &headers, bad).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("monitoring.log_level"), "{body}");
}

/// Levels filter as a minimum and the list keeps the newest `CAP` records.
async fn filters_and_cap(addr: &str, producer: &str, instance: &str) {
    hit(producer, CAP).await; // 2 DEBUG lines each: twice the cap
    eventually(Duration::from_secs(10), "the list to fill", || async {
        (records(addr, "process=api&limit=1000").await.len() == CAP).then_some(())
    })
    .await;
    let all = records(addr, "process=api&limit=1000").await;
    assert_eq!(all.len(), CAP, "capped");
    assert!(from_instance(&all, instance) > 0);
    assert!(all.windows(2).all(|w| w[0]["time"].as_str() >= w[1]["time"].as_str()), "newest first");
    assert!(all.iter().any(|r| r["level"] == "DEBUG"));
    let info = records(addr, "process=api&level=info&limit=1000").await;
    assert!(info.iter().all(|r| ["INFO", "WARN", "ERROR"].contains(&r["level"].as_str().unwrap())), "{info:?}");
    assert_eq!(records(addr, "process=api&limit=3").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_monitoring_across_two_apis_and_a_worker() {
    let temp = TempDatabase::create("api_monitoring").await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = temp.name().to_owned();
    let cluster = Some((temp.url(), namespace.as_str()));
    let (mut first, a) = start_api(dir.path(), "api-a", cluster).await;
    let (mut second, b) = start_api(dir.path(), "api-b", cluster).await;
    let mut worker = command(&worker_binary(), dir.path(), "worker-w", cluster);
    worker.args(["--admin-listen", "127.0.0.1:0"]);
    let (mut worker, _w) = spawn_until_listening(worker, "worker admin endpoints on").await;

    unauthorised_requests_are_refused(&a).await;

    // Every live instance of both processes is listed by either api.
    eventually(Duration::from_secs(10), "stats of all three instances", || async {
        (instances(&a).await == ["api-a", "api-b", "worker-w"]).then_some(())
    })
    .await;
    let stats = admin_get(&b, "/api/v1/monitoring/stats").await;
    let worker_doc = &stats["instances"][2];
    assert_eq!(worker_doc["process"], "worker");
    assert!(worker_doc["write_behind"]["persisted"].is_u64(), "{worker_doc}");
    assert!(worker_doc["rss_bytes"].as_u64().unwrap() > 0 && worker_doc["uptime_s"].is_u64());

    // The worker's own records, filtered by process.
    let worker_records = records(&a, "process=worker&limit=1000").await;
    assert!(!worker_records.is_empty(), "the worker's start-up lines are captured");
    assert!(worker_records.iter().all(|r| r["process"] == "worker" && r["instance"] == "worker-w"));

    // A stream on one api sees records logged by the other.
    let mut stream = open_stream(&a).await;
    hit(&b, 1).await;
    stream.until("log", "\"instance\":\"api-b\"").await;
    stream.until("stats", "\"instance\":\"worker-w\"").await;
    drop(stream);

    filters_and_cap(&a, &b, "api-b").await;

    // Disabled through the other api: api-b stops capturing within a second.
    set_capture(&a, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = http_request(&a, "DELETE", "/api/v1/monitoring/logs?process=api", &[AUTH], "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"cleared":["api"]}"#));
    hit(&b, 20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // several drain intervals
    assert_eq!(from_instance(&records(&a, "process=api&limit=1000").await, "api-b"), 0, "captured while disabled");
    // And the same requests are captured again once it is re-enabled.
    set_capture(&b, true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    hit(&b, 5).await;
    eventually(Duration::from_secs(5), "records after re-enabling", || async {
        (from_instance(&records(&a, "process=api&limit=1000").await, "api-b") > 0).then_some(())
    })
    .await;

    // A killed worker cannot clean up: its document expires (TTL 3 s).
    worker.kill().await.unwrap();
    eventually(Duration::from_secs(8), "the killed worker's stats to expire", || async {
        (instances(&a).await == ["api-a", "api-b"]).then_some(())
    })
    .await;
    // A stopped api removes its own document at once.
    assert_eq!(terminate(&mut second).await, Some(0));
    assert_eq!(instances(&a).await, ["api-a"]);
    assert_eq!(terminate(&mut first).await, Some(0));
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_monitoring_keeps_everything_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut api, addr) = start_api(dir.path(), "solo", None).await;
    unauthorised_requests_are_refused(&addr).await;

    eventually(Duration::from_secs(5), "its own stats", || async {
        (instances(&addr).await == ["solo"]).then_some(())
    })
    .await;
    let mut stream = open_stream(&addr).await;
    stream.until("stats", "\"instance\":\"solo\"").await; // the current stats first
    hit(&addr, 1).await;
    stream.until("log", "\"target\":\"keel_http::request\"").await;
    drop(stream);

    filters_and_cap(&addr, &addr, "solo").await;
    assert!(records(&addr, "process=worker").await.is_empty(), "no worker in embedded mode");

    set_capture(&addr, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = http_request(&addr, "DELETE", "/api/v1/monitoring/logs", &[AUTH], "").await;
    assert_eq!(status, 200);
    hit(&addr, 10).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(records(&addr, "limit=1000").await.is_empty(), "captured while disabled");
    let stats = admin_get(&addr, "/api/v1/monitoring/stats").await;
    let capture = &stats["instances"][0]["capture"];
    assert_eq!((capture["enabled"].as_bool(), capture["dropped"].as_u64()), (Some(false), Some(0)), "{capture}");
    assert!(capture["captured"].as_u64().unwrap() >= CAP as u64, "{capture}");
    let livez = &stats["instances"][0]["http"]["/livez"];
    assert!(livez["since_start"]["requests"].as_u64().unwrap() >= 40, "{livez}");
    assert!(livez["last_minute"]["p99_ms"].as_f64().unwrap() > 0.0, "{livez}");
    assert_eq!(terminate(&mut api).await, Some(0));
}
