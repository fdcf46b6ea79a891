//! The api's router and its OpenAPI document describe the same routes: every
//! documented operation is served, and every endpoint the api serves is
//! documented.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use clap::Parser;
use keel_app::config::{CommonArgs, parse_from};
use keel_app::{Role, Services, Startup};
use keel_core::Shutdown;
use tower::ServiceExt as _;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// Every endpoint of the api (`docs/http.md`), `/openapi.json` and the
/// console's static page and assets (`/`, `/assets/{file}`) aside.
const SERVED: &[(&str, &str)] = &[
    ("get", "/livez"),
    ("get", "/readyz"),
    ("get", "/status"),
    ("get", "/status/{name}"),
    ("get", "/status/history"),
    ("get", "/status/stream"),
    ("get", "/metrics"),
    ("get", "/api/v1/settings"),
    ("get", "/api/v1/settings/{name}"),
    ("put", "/api/v1/settings/{name}"),
    ("get", "/api/v1/settings/{name}/history"),
    ("get", "/api/v1/settings/{name}/schema"),
    ("get", "/api/v1/settings/{name}/stream"),
    ("post", "/api/v1/settings/{name}/revert"),
    ("put", "/api/v1/entries/{key}"),
    ("get", "/api/v1/entries/{key}"),
    ("delete", "/api/v1/entries/{key}"),
    ("post", "/api/v1/agents/{agent_id}/metadata"),
    ("get", "/api/v1/agents/{agent_id}/metadata"),
    ("get", "/api/v1/agents/{agent_id}/metadata/watch"),
    ("get", "/api/v1/monitoring/logs"),
    ("delete", "/api/v1/monitoring/logs"),
    ("get", "/api/v1/monitoring/stats"),
    ("get", "/api/v1/monitoring/stream"),
];

fn concrete(path: &str) -> String {
    path.replace("{name}", "monitoring")
        .replace("{key}", "some/key")
        .replace("{agent_id}", "7f1c1a52-8d0e-4c1b-9d55-3c4c1d0b6a11")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    let args: Args = parse_from(["api", "--data-dir", &data, "--admin-token", "t0ken-t0ken-t0ken"]).unwrap();
    let prepared = Services::prepare(Role::Api, &args.common).unwrap();
    let services = Services::connect(prepared, Shutdown::new(), &Startup::default()).await.unwrap();
    let (router, document) = services.routes_and_document();

    let mut documented = BTreeSet::new();
    for (path, item) in &document.paths.paths {
        let item = serde_json::to_value(item).unwrap();
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = SERVED.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(documented, served, "the document lists exactly the endpoints the api serves");

    for (method, path) in &documented {
        let body = if method == "post" { r#"{"metadata":[]}"# } else { "{}" };
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(concrete(path))
            .header("authorization", "Bearer t0ken-t0ken-t0ken")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        // An unrouted request is axum's bare 404 or a 405; a routed one
        // answers with a body of its own.
        let bytes = match path.ends_with("watch") || path.ends_with("stream") {
            true => bytes::Bytes::from_static(b"(a stream)"),
            false => axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap(),
        };
        assert!(status != 405 && !(status == 404 && bytes.is_empty()), "{method} {path} is not served: {status}");
    }

    let openapi = services.router().oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(openapi.status(), 200);
    let text = axum::body::to_bytes(openapi.into_body(), 1 << 20).await.unwrap();
    let served_document: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(served_document["openapi"], "3.1.0");
    assert!(served_document["components"]["securitySchemes"]["admin"]["scheme"] == "bearer");
    // Each settings document's JSON Schema is a component of the document.
    let monitoring = &served_document["components"]["schemas"]["Settings.monitoring"];
    assert_eq!(monitoring["properties"]["log_level"]["type"], "string", "{monitoring}");
    assert_eq!(monitoring["additionalProperties"], false, "{monitoring}");
    services.shutdown().trigger();
}
