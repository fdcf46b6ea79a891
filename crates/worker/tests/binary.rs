//! The built `worker` binary.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn refuses_embedded_mode_with_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .await
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json", "--no-migrate"])
        .env("DATABASE_URL", &postgres)
        .env("REDIS_URL", &redis)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if json["message"].as_str().is_some_and(|m| m.starts_with("worker admin endpoints")) {
                assert_eq!(json["mode"], "cluster");
                return json["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("worker exited before listening (is Postgres/Redis up?):\n{}", seen.join("\n"));
    })
    .await
    .expect("worker did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let stream = tokio::net::TcpStream::connect(&addr).await;
    assert!(stream.is_ok(), "admin port accepts connections");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert_eq!(exit.code(), Some(0));
}
