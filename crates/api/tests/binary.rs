//! The built `api` binary, started the way a newcomer starts it.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use keel_http::testing::{http_get, http_request, spawn_until_listening, terminate};
use tokio::process::{Child, Command};

/// Starts `api` on an ephemeral port in `dir` with no storage environment.
async fn start_api(dir: &Path) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("KEEL_CONFIG")
        .env_remove("KEEL_DATA_DIR");
    spawn_until_listening(command, "api listening").await
}

#[tokio::test]
async fn embedded_start_serves_livez_and_metrics_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_api(dir.path()).await;
    assert!(dir.path().join("data").join("keel.sqlite").exists(), "embedded data is created under ./data");

    let (status, body) = http_get(&addr, "/livez").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);
    let (status, body) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("http_server_request_duration_seconds_bucket"), "{body}");
    assert!(body.contains("http_route=\"/livez\""), "{body}");

    assert_eq!(terminate(&mut child).await, Some(0), "SIGTERM is a clean exit");
}

#[tokio::test]
async fn a_short_admin_token_is_accepted_only_when_asked_for_and_then_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--allow-weak-admin-token"])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("KEEL_DATA_DIR")
        .env("KEEL_ADMIN_TOKEN", "s3cret");
    let (mut child, addr) = spawn_until_listening(command, "api listening").await;
    for (header, status) in [("Bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer s3cre", 403)] {
        let (got, body) =
            http_request(&addr, "GET", "/api/v1/monitoring/stats", &[("authorization", header)], "").await;
        assert_eq!(got, status, "{header}: {body}");
    }
    assert_eq!(terminate(&mut child).await, Some(0));
}

#[tokio::test]
async fn a_second_start_reuses_the_migrated_database() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (mut child, addr) = start_api(dir.path()).await;
        assert_eq!(http_get(&addr, "/livez").await.0, 200);
        assert_eq!(terminate(&mut child).await, Some(0));
    }
}

fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .envs(envs.iter().copied())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A process that should have exited but is serving instead must fail the
    // test, not hang it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("api {args:?} {envs:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn invalid_configuration_exits_64_with_one_line_naming_the_key() {
    let (code, err) = run_to_exit(&["--listen", "not-an-address"], &[]);
    assert_eq!(code, Some(64));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--listen"), "{err}");

    let (code, err) = run_to_exit(&[], &[("KEEL_LOG_FORMAT", "xml")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--log-format"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    std::fs::write(&file, "[app]\nnmae = \"typo\"\n").unwrap();
    let (code, err) = run_to_exit(&["--config", file.to_str().unwrap(), "--log-format", "json"], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("nmae"), "{err}");

    let (code, err) = run_to_exit(&["--log-format", "json"], &[("KEEL_ADMIN_TOKEN", " s3cret ")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.trim().lines().count() == 1 && err.contains("--admin-token"), "{err}");
    assert!(!err.contains("s3cret"), "the token is never printed: {err}");

    let (code, err) = run_to_exit(&["--log-format", "json"], &[("KEEL_ADMIN_TOKEN", "pässwörd-pässwörd")]);
    assert_eq!(code, Some(64), "a token that could never authenticate: {err}");
    assert!(err.trim().lines().count() == 1 && err.contains("b64token") && !err.contains("pässwörd"), "{err}");
    let (code, err) = run_to_exit(&["--log-format", "json"], &[("KEEL_ADMIN_TOKEN", "s3cret")]);
    assert_eq!(code, Some(64), "too short: {err}");
    assert!(err.contains("6 bytes") && err.contains("--allow-weak-admin-token") && !err.contains("s3cret"), "{err}");

    let (code, err) = run_to_exit(&["--log-format", "json"], &[("KEEL_LOG_LEVEL", "bogus")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.trim().lines().count() == 1 && err.contains("--log-level"), "{err}");

    let (code, err) = run_to_exit(&["--log-format", "json"], &[("DATABASE_URL", "mysql://nope")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("database url"), "{err}");
}

#[tokio::test]
async fn a_second_api_on_the_same_data_dir_exits_64_naming_the_log_and_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _) = start_api(dir.path()).await;
    let second = Command::new(env!("CARGO_BIN_EXE_api"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("KEEL_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), second).await.expect("the second api exits").unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let holder = first.id().unwrap().to_string();
    assert!(err.contains("entries-log") && err.contains(&holder), "names the log and pid {holder}: {err}");
    assert_eq!(terminate(&mut first).await, Some(0));
}

/// Every 202 of an embedded api killed with SIGKILL is served after the
/// restart: the write was in the local log before it was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_the_embedded_api() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_api(dir.path()).await;
    let writes = (0..300).map(|i| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let body = format!("{{\"n\":{i}}}");
            let (status, answer) = http_request(
                &addr,
                "PUT",
                &format!("/api/v1/entries/kill-{i}"),
                &[("content-type", "application/json")],
                &body,
            )
            .await;
            assert_eq!(status, 202, "{answer}");
            let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
            (i, answer["version"].as_i64().unwrap())
        })
    });
    let mut acked = Vec::new();
    for write in writes {
        acked.push(write.await.unwrap());
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (mut child, addr) = start_api(dir.path()).await;
    for (i, version) in acked {
        let path = format!("/api/v1/entries/kill-{i}");
        // 503 while the replayed writes are not persisted yet; never 404.
        let (status, body) = wait_for(&addr, &path, |status, _| status != 503).await;
        assert_eq!(status, 200, "kill-{i}: {body}");
        let served: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(served["version"].as_i64(), Some(version), "kill-{i}: {body}");
        assert_eq!(served["value"]["n"].as_i64(), Some(i), "kill-{i}: {body}");
    }
    assert_eq!(terminate(&mut child).await, Some(0));
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api")).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for env in [
        "KEEL_LISTEN",
        "KEEL_CONFIG",
        "KEEL_DATA_DIR",
        "DATABASE_URL",
        "REDIS_URL",
        "KEEL_ADMIN_TOKEN",
        "KEEL_LOG_FORMAT",
        "KEEL_INSTANCE_ID",
        "KEEL_LOCAL_LOG",
        "KEEL_LOCAL_LOG_MAX_BYTES",
    ] {
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
}

/// Polls `path` until `accept(status, body)` holds, for at most 20 s: the
/// monitors run on real intervals in a real process.
async fn wait_for(addr: &str, path: &str, accept: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(addr, path).await;
        if accept(status, &body) {
            return (status, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never matched; last answer {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_configured_tcp_check_follows_its_target_and_the_code_follows_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = upstream.local_addr().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[app]
name = "e2e"

[[health.groups]]
name = "upstreams"
mode = "must"
components = ["upstream"]

[[health.checks]]
name = "upstream"
kind = "tcp"
target = "{target}"
interval = "100ms"
timeout = "500ms"
"#
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    let (mut child, addr) = spawn_until_listening(command, "api listening").await;

    let is = |status: &'static str| {
        move |_: u16, body: &str| serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v["status"] == status)
    };
    let (code, body) = wait_for(&addr, "/status/upstream", is("OK")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = wait_for(&addr, "/status", is("OK")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"name\":\"e2e\"") && body.contains("\"sqlite\""), "{body}");

    drop(upstream);
    let (code, body) = wait_for(&addr, "/status/upstream", is("KO")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connect"), "the check's error is shown: {body}");
    let (code, _) = http_get(&addr, "/status").await;
    assert_eq!(code, 503, "a KO Must group makes the service KO");
    assert_eq!(http_get(&addr, "/readyz").await.0, 503);
    assert_eq!(terminate(&mut child).await, Some(0));
}

/// Redis is not there when `api` starts: it listens anyway, is live but not
/// ready (naming Redis), and becomes ready once Redis appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_started_before_redis_waits_for_it_and_becomes_ready() {
    use keel_store::testing::{RedisServer, TempDatabase, free_port};
    let temp = TempDatabase::create("start_before_redis").await;
    let dir = tempfile::tempdir().unwrap();
    let (redis_port, listen) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
        .args(["--listen", &listen, "--log-format", "json"])
        .current_dir(dir.path())
        .env("DATABASE_URL", temp.url())
        .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
        .env("KEEL_NAMESPACE", keel_store::testing::unique_prefix("early"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "api never listened on {listen}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(&listen, "/livez", |status, _| status == 200).await;
    // Readiness names what is missing (both stores are waited for at once).
    let (status, _) = wait_for(&listen, "/readyz?verbose", |_, body| body.contains("[-]redis failed")).await;
    assert_eq!(status, 503);
    let (status, body) = http_get(&listen, "/api/v1/entries/k").await;
    assert_eq!(status, 503, "{body}");
    // Named, whether or not the migrations are still running beside it.
    assert!(body.contains("starting: waiting for") && body.contains("redis"), "{body}");
    let _redis = RedisServer::start_on(redis_port).await;
    wait_for(&listen, "/readyz", |status, _| status == 200).await;
    let (status, body) = keel_http::testing::http_request(&listen, "PUT", "/api/v1/entries/k", &[], "1").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(terminate(&mut child).await, Some(0));
    temp.drop_database().await;
}

#[test]
fn a_store_unreachable_past_the_startup_timeout_exits_69_with_one_line() {
    let (code, err) = run_to_exit(
        &["--log-format", "json", "--startup-timeout", "1s"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")],
    );
    assert_eq!(code, Some(69), "{err}");
    let own: Vec<&str> = err.lines().filter(|l| l.starts_with("api:")).collect();
    assert_eq!(own.len(), 1, "{err}");
    assert!(own[0].contains("postgres unreachable"), "{err}");
}

#[test]
fn a_malformed_redis_url_exits_64_before_anything_is_created_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .args(["--log-format", "json"])
        .env_remove("DATABASE_URL")
        .env("REDIS_URL", "http://nope")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("data").exists(), "no embedded database was created");
    let (code, err) = run_to_exit(&["--log-format", "json"], &[("DATABASE_URL", "postgres://a:b@:x:y/%%")]);
    assert_eq!(code, Some(64), "{err}");
}
