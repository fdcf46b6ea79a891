//! Trace export: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at a receiver
//! this test runs, a request to `api` produces a request span with a child
//! database span. Built only with the `otlp` feature
//! (`cargo test -p api --features otlp --test otlp`, run by `cargo xtask ci`).
#![cfg(feature = "otlp")]
// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use keel_http::testing::{http_get, spawn_until_listening, terminate};
use serde_json::Value;
use tokio::process::Command;

/// A minimal OTLP/HTTP receiver (an axum server): keeps every JSON body
/// POSTed to it.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let kept = kept.clone();
        async move {
            kept.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            ([("content-type", "application/json")], "{}")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, bodies)
}

fn spans(bodies: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(scope["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_exported_as_a_span_with_a_child_database_span() {
    let (collector, bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_api"));
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_SERVICE_NAME", "keel-api-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let (mut api, addr) = spawn_until_listening(command, "api listening").await;
    let (status, body) = http_get(&addr, "/api/v1/agents/5b0f3c0e-2a51-4c7e-9f0a-9e4a1b2c3d4e/metadata").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(terminate(&mut api).await, Some(0), "spans are flushed at exit");

    let bodies = bodies.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "nothing reached the OTLP receiver");
    let service = &bodies[0]["resourceSpans"][0]["resource"]["attributes"];
    assert!(service.to_string().contains("keel-api-test"), "service name: {service}");
    let spans = spans(&bodies);
    let request = spans
        .iter()
        .find(|s| s["name"] == "request" && attribute(s, "uri").is_some_and(|u| u.to_string().contains("/metadata")))
        .unwrap_or_else(|| panic!("no request span among {spans:#?}"));
    let children: Vec<&Value> = spans.iter().filter(|s| s["parentSpanId"] == request["spanId"]).collect();
    let database = children
        .iter()
        .find(|s| attribute(s, "db.system.name").is_some_and(|v| v.to_string().contains("sqlite")))
        .unwrap_or_else(|| panic!("no database child of the request span among {children:#?}"));
    assert_eq!(database["traceId"], request["traceId"]);
    assert!(database["name"].as_str().unwrap().contains("agent_metadata"), "{database}");
    eprintln!("request span {} has child {}", request["name"], database["name"]);
}
