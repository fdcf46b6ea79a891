//! The agent-metadata endpoints through `oneshot`, on embedded SQLite.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use futures_util::StreamExt as _;
use keel_batcher::{AgentMetadata, Batcher, BatcherConfig, DbMetadataSink, MetadataNotifier};
use keel_http::agents_api;
use keel_store::{Bus, Database, DbConfig};
use keel_telemetry::Telemetry;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const AGENT: &str = "7f1c1a52-8d0e-4c1b-9d55-3c4c1d0b6a11";

async fn fixture() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::new("t").unwrap();
    let db =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    db.run_migrations().await.unwrap();
    let bus = Bus::memory(&telemetry);
    let channel = MetadataNotifier::channel("test");
    let sink = Arc::new(DbMetadataSink::new(db));
    let config = BatcherConfig { flush_interval: Duration::from_millis(50), ..BatcherConfig::default() };
    let notifier = Arc::new(MetadataNotifier::bus(bus.clone(), channel.clone()));
    let batcher = Batcher::start_with("test", config, sink.clone(), Some(notifier)).unwrap();
    let service = AgentMetadata::new(batcher, sink, &bus, &channel, &keel_core::Shutdown::new()).await.unwrap();
    (axum::Router::from(agents_api(service)), dir)
}

async fn post(app: &Router, agent: &str, body: &str) -> Response {
    let request = Request::post(format!("/api/v1/agents/{agent}/metadata")).header("content-type", "application/json");
    app.clone().oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap()
}

async fn get(app: &Router, path: &str) -> Response {
    app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
}

async fn json(response: Response) -> Value {
    serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap()
}

/// Waits (bounded) until the flushed metadata has `n` keys.
async fn metadata_when(app: &Router, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = json(get(app, &format!("/api/v1/agents/{AGENT}/metadata")).await).await;
        if body["metadata"].as_array().unwrap().len() == n {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "never flushed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_metadata_is_flushed_sorted_and_truncated_with_a_note() {
    let (app, _dir) = fixture().await;
    let long = "x".repeat(3000);
    let body = json!({"metadata": [
        {"key": "uptime", "value": "12s", "collected_at": "2026-01-01T00:00:00Z"},
        {"key": "uptime", "value": "11s", "collected_at": "2025-12-31T23:59:00Z"},
        {"key": "arch", "value": "amd64"},
        {"key": "dump", "value": long, "error": "partial"},
    ]});
    let response = post(&app, AGENT, &body.to_string()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(json(response).await, json!({"accepted": 4, "dropped": 0}));

    let body = metadata_when(&app, 3).await;
    assert_eq!(body["agent_id"], AGENT);
    let keys: Vec<&str> = body["metadata"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["arch", "dump", "uptime"], "sorted by key");
    let uptime = &body["metadata"][2];
    assert_eq!(uptime["value"], "12s", "the newest collected_at wins, not the last sent");
    assert!(uptime["collected_at"].as_str().unwrap().starts_with("2026-01-01T00:00:00"));
    let dump = &body["metadata"][1];
    assert_eq!(dump["value"].as_str().unwrap().len(), 2048);
    assert_eq!(dump["error"], "partial; value truncated from 3000 to 2048 bytes");
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let (app, _dir) = fixture().await;
    let one = |key: &str| json!({"metadata": [{"key": key, "value": "v"}]}).to_string();
    assert_eq!(post(&app, "not-a-uuid", &one("k")).await.status(), 400);
    assert_eq!(post(&app, AGENT, "{\"metadata\": [").await.status(), 400);
    assert_eq!(post(&app, AGENT, "{\"metadata\": [{\"key\": 1}]}").await.status(), 400);
    for key in ["", "has space", "slash/", &"k".repeat(129)] {
        let response = post(&app, AGENT, &one(key)).await;
        assert_eq!(response.status(), 400, "{key:?}");
        assert!(json(response).await["error"]["message"].as_str().unwrap().contains("metadata[0].key"));
    }
    let response = post(&app, AGENT, &one(&"k!".repeat(5_000))).await;
    assert_eq!(response.status(), 400);
    let message = json(response).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.len() < 300, "echoes at most 200 bytes of the key: {} bytes", message.len());
    let too_many: Vec<Value> = (0..65).map(|i| json!({"key": format!("k{i}"), "value": "v"})).collect();
    let response = post(&app, AGENT, &json!({ "metadata": too_many }).to_string()).await;
    assert_eq!(response.status(), 413);
    let future = json!({"metadata": [{"key": "k", "value": "v", "collected_at": "2999-01-01T00:00:00Z"}]});
    assert_eq!(post(&app, AGENT, &future.to_string()).await.status(), 400);
    let trailing = json!({"metadata": [{"key": "k", "value": "v", "collected_at": "2020-01-01T00:00:00Z*"}]});
    assert_eq!(post(&app, AGENT, &trailing.to_string()).await.status(), 400, "no trailing characters");
    let garbled = json!({"metadata": [{"key": "k", "value": "v", "collected_at": "yesterday"}]});
    assert_eq!(post(&app, AGENT, &garbled.to_string()).await.status(), 400);
    assert_eq!(get(&app, "/api/v1/agents/nope/metadata").await.status(), 400);
    for (item, field) in [
        (json!({"key": "k", "value": "a\u{0}b"}), "metadata[0].value"),
        (json!({"key": "k", "value": "v", "error": "\u{0}"}), "metadata[0].error"),
    ] {
        let response = post(&app, AGENT, &json!({ "metadata": [item] }).to_string()).await;
        assert_eq!(response.status(), 400, "{field}");
        let message = json(response).await["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with(field) && message.contains("U+0000"), "{message}");
    }
    let empty = json(get(&app, &format!("/api/v1/agents/{AGENT}/metadata")).await).await;
    assert_eq!(empty["metadata"], json!([]), "nothing invalid was accepted");
}

async fn next_event(frames: &mut axum::body::BodyDataStream) -> String {
    let frame = tokio::time::timeout(Duration::from_secs(5), frames.next()).await.expect("no event").unwrap().unwrap();
    String::from_utf8(frame.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_current_state_then_every_flushed_change() {
    let (app, _dir) = fixture().await;
    let response = get(&app, &format!("/api/v1/agents/{AGENT}/metadata/watch")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut frames = response.into_body().into_data_stream();
    let first = next_event(&mut frames).await;
    assert!(first.starts_with("event: metadata\ndata: ") && first.contains("\"metadata\":[]"), "{first}");

    let other = "00000000-0000-0000-0000-000000000001";
    post(&app, other, &json!({"metadata": [{"key": "noise", "value": "x"}]}).to_string()).await;
    post(&app, AGENT, &json!({"metadata": [{"key": "cpu", "value": "42%"}]}).to_string()).await;
    let second = next_event(&mut frames).await;
    assert!(second.contains("\"key\":\"cpu\"") && second.contains("42%"), "{second}");
    assert!(!second.contains("noise"), "only this agent's changes: {second}");
}
