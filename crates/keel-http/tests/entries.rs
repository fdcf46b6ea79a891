//! The entries endpoints through `oneshot`, embedded (SQLite, in-process queue).

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use keel_http::{Entries, EntrySink, entries_router};
use keel_store::{Cache, Database, DbConfig};
use keel_telemetry::Telemetry;
use keel_write_behind::{DbDeadLetters, DbEntries, WriteBehind, WriteBehindConfig};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn fixture() -> (Router, WriteBehind<keel_write_behind::EntryWrite>, DbEntries, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::new("t").unwrap();
    let db =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    db.run_migrations().await.unwrap();
    let store = DbEntries::new(db.clone());
    let config = WriteBehindConfig { flush_interval: Duration::from_millis(20), ..WriteBehindConfig::default() };
    let queue =
        WriteBehind::start(config, Arc::new(store.clone()), Arc::new(DbDeadLetters::new(db, "entries"))).unwrap();
    let entries = Entries::new(Cache::memory(), "test", EntrySink::Memory(queue.clone()), store.clone());
    (entries_router(entries), queue, store, dir)
}

async fn send(app: &Router, method: &str, uri: &str, body: Option<String>) -> Response {
    let request = Request::builder().method(method).uri(uri);
    let body = body.map_or_else(Body::empty, Body::from);
    app.clone().oneshot(request.body(body).unwrap()).await.unwrap()
}

async fn json(response: Response) -> Value {
    serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_visible_at_once_and_persisted_behind() {
    let (app, queue, store, _dir) = fixture().await;
    let response =
        send(&app, "PUT", "/api/v1/entries/users/42:profile", Some(json!({"name": "Ada"}).to_string())).await;
    assert_eq!(response.status(), 202);
    let written = json(response).await;
    assert_eq!(written["key"], "users/42:profile");
    let version = written["version"].as_i64().unwrap();

    let read = json(send(&app, "GET", "/api/v1/entries/users/42:profile", None).await).await;
    assert_eq!(
        (read["value"].clone(), read["version"].as_i64()),
        (json!({"name": "Ada"}), Some(version)),
        "at once, from the cache"
    );

    let second = json(send(&app, "PUT", "/api/v1/entries/users/42:profile", Some("7".into())).await).await;
    assert!(second["version"].as_i64().unwrap() > version, "versions only grow");
    let deleted = send(&app, "DELETE", "/api/v1/entries/users/42:profile", None).await;
    assert_eq!(deleted.status(), 202);
    assert_eq!(send(&app, "GET", "/api/v1/entries/users/42:profile", None).await.status(), 404);

    queue.shutdown().await;
    let stored = store.get("users/42:profile").await.unwrap().unwrap();
    assert!(stored.deleted, "the tombstone was persisted, newest last");
    assert_eq!(queue.metrics().persisted, 3);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let (app, _queue, _store, _dir) = fixture().await;
    let big = format!("\"{}\"", "x".repeat(70 * 1024));
    assert_eq!(send(&app, "PUT", "/api/v1/entries/k", Some(big)).await.status(), 413);
    assert_eq!(send(&app, "PUT", "/api/v1/entries/k", Some("{oops".into())).await.status(), 400);
    assert_eq!(send(&app, "PUT", "/api/v1/entries/has%20space", Some("1".into())).await.status(), 400);
    let long = "k".repeat(257);
    assert_eq!(send(&app, "GET", &format!("/api/v1/entries/{long}"), None).await.status(), 400);
    let missing = send(&app, "GET", "/api/v1/entries/never-written", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(json(missing).await["error"]["code"], "not_found");
}
