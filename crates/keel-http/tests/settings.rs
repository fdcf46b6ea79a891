//! `/api/v1/settings` through `oneshot`, on embedded SQLite.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use keel_http::{AdminToken, settings_api};
use keel_settings_sync::{
    DbSettingsStore, MonitoringSettings, Settings, SettingsConfig, SettingsDeps, SettingsRegistry,
};
use keel_store::{Bus, Cache, Database, DbConfig};
use keel_telemetry::Telemetry;
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn router(token: Option<&str>) -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (router_on(&database(&dir).await, token).await, dir)
}

async fn database(dir: &tempfile::TempDir) -> Database {
    let telemetry = Telemetry::new("t").unwrap();
    let db =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    db.run_migrations().await.unwrap();
    db
}

fn deps(db: &Database) -> SettingsDeps {
    let telemetry = Telemetry::new("t").unwrap();
    SettingsDeps::new(Arc::new(DbSettingsStore::new(db.clone())), Cache::memory(), Bus::memory(&telemetry), telemetry)
}

/// The monitoring document, validated as the api does, served on `db`.
async fn router_on(db: &Database, token: Option<&str>) -> Router {
    let monitoring: Settings<MonitoringSettings> =
        Settings::open_validated("monitoring", deps(db), SettingsConfig::default(), |m: &MonitoringSettings| {
            keel_telemetry::check_filter(&m.log_level).map_err(|e| e.to_string())
        })
        .await
        .unwrap();
    let mut registry = SettingsRegistry::new();
    registry.register(monitoring);
    axum::Router::from(settings_api(registry, token.and_then(AdminToken::new)))
}

async fn send(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<Value>) -> Response {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    app.clone().oneshot(request.body(body).unwrap()).await.unwrap()
}

async fn json(response: Response) -> Value {
    serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap()
}

const ADMIN: (&str, &str) = ("authorization", "Bearer s3cret");

#[tokio::test]
async fn read_update_and_history() {
    let (app, _dir) = router(Some("s3cret")).await;
    let list = json(send(&app, "GET", "/api/v1/settings", &[], None).await).await;
    assert_eq!(list["settings"][0]["name"], "monitoring");

    let response = send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"0\"");
    let body = json(response).await;
    assert_eq!(body["value"], json!({"enable_monitoring": true, "log_level": "info"}));
    assert_eq!(body["version"], 0);

    let new = json!({"enable_monitoring": false, "log_level": "debug"});
    let response = send(
        &app,
        "PUT",
        "/api/v1/settings/monitoring",
        &[ADMIN, ("if-match", "\"0\""), ("x-actor", "ada")],
        Some(new.clone()),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body = json(response).await;
    assert_eq!((body["version"].as_i64(), body["updated_by"].as_str()), (Some(1), Some("ada")));
    assert_eq!(body["value"], new);
    assert!(body["updated_at"].as_str().unwrap().ends_with('Z'));

    // A stale If-Match is refused.
    let stale =
        send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN, ("if-match", "\"0\"")], Some(new.clone())).await;
    assert_eq!(stale.status(), 412);
    assert_eq!(json(stale).await["error"]["code"], "precondition_failed");

    // Without If-Match the write is unconditional.
    let again = send(
        &app,
        "PUT",
        "/api/v1/settings/monitoring",
        &[ADMIN],
        Some(json!({"enable_monitoring": true, "log_level": "warn"})),
    )
    .await;
    assert_eq!(again.status(), 200);

    let history = json(send(&app, "GET", "/api/v1/settings/monitoring/history", &[], None).await).await;
    assert_eq!(history["name"], "monitoring");
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!((changes[0]["version"].as_i64(), changes[0]["actor"].as_str()), (Some(2), Some("admin")));
    assert_eq!((changes[1]["version"].as_i64(), changes[1]["actor"].as_str()), (Some(1), Some("ada")));
    assert_eq!(changes[0]["old"], new);
    assert_eq!(changes[1]["old"], Value::Null);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let (app, _dir) = router(Some("s3cret")).await;
    let body = Some(json!({"enable_monitoring": "yes please"}));
    let invalid = send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], body).await;
    assert_eq!(invalid.status(), 422);
    assert!(json(invalid).await["error"]["message"].as_str().unwrap().contains("not a valid monitoring document"));

    let unknown_field = send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(json!({"enable": true}))).await;
    assert_eq!(unknown_field.status(), 422);
    let bad_filter =
        send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(json!({"log_level": "info,[=x"}))).await;
    assert_eq!(bad_filter.status(), 422, "the validator runs before anything is written");
    for level in ["warning", "inf"] {
        let refused =
            send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(json!({"log_level": level}))).await;
        assert_eq!(refused.status(), 422, "{level} is not a level");
    }

    let mut request = Request::put("/api/v1/settings/monitoring")
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json");
    request = request.header("if-match", "\"0\"");
    let malformed = app.clone().oneshot(request.body(Body::from("{oops")).unwrap()).await.unwrap();
    assert_eq!(malformed.status(), 400);

    for malformed in ["yesterday", "-1", "\"1", "1\"", "\"\"", "W/", "\"+1\"", "99999999999999999999"] {
        let bad_if_match =
            send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN, ("if-match", malformed)], Some(json!({}))).await;
        assert_eq!(bad_if_match.status(), 400, "If-Match: {malformed} is malformed, not stale");
    }
    assert_eq!(send(&app, "GET", "/api/v1/settings/nope", &[], None).await.status(), 404);
    assert_eq!(send(&app, "GET", "/api/v1/settings/monitoring/history?limit=0", &[], None).await.status(), 400);
    let nul = send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(json!({"log_level": "in\u{0}fo"}))).await;
    assert_eq!(nul.status(), 400, "U+0000 never reaches the database");
    let message = json(nul).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("monitoring.log_level contains U+0000"), "{message}");
    let huge =
        send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(json!({"log_level": "x".repeat(900_000)})))
            .await;
    assert_eq!(huge.status(), 422);
    let message = json(huge).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.len() < 300, "the refused input is not echoed: {} bytes", message.len());
    let current = json(send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await).await;
    assert_eq!(current["version"], 0, "nothing was written");
}

#[tokio::test]
async fn writes_need_the_admin_token() {
    let (app, _dir) = router(Some("s3cret")).await;
    let body = Some(json!({"enable_monitoring": false}));
    let missing = send(&app, "PUT", "/api/v1/settings/monitoring", &[], body.clone()).await;
    assert_eq!(missing.status(), 401);
    let wrong =
        send(&app, "PUT", "/api/v1/settings/monitoring", &[("authorization", "Bearer guess")], body.clone()).await;
    assert_eq!(wrong.status(), 403);

    let (disabled, _dir2) = router(None).await;
    let response = send(&disabled, "PUT", "/api/v1/settings/monitoring", &[ADMIN], body).await;
    assert_eq!(response.status(), 403);
    assert!(json(response).await["error"]["message"].as_str().unwrap().contains("KEEL_ADMIN_TOKEN"));
}

fn level(level: &str) -> Value {
    json!({"enable_monitoring": true, "log_level": level})
}

/// A revert writes an earlier version's value as the next version, and the
/// history says which version it restored; it is refused like any other
/// write when stale (412), and names an unknown version (404).
#[tokio::test]
async fn revert_restores_an_earlier_version_as_a_new_one() {
    let (app, _dir) = router(Some("s3cret")).await;
    for value in [level("debug"), level("warn")] {
        assert_eq!(send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(value)).await.status(), 200);
    }
    let revert = |version: Value, if_match: &'static str| {
        let app = app.clone();
        async move {
            let headers = [ADMIN, ("if-match", if_match), ("x-actor", "bob")];
            send(&app, "POST", "/api/v1/settings/monitoring/revert", &headers, Some(json!({"version": version}))).await
        }
    };
    let response = revert(json!(1), "\"2\"").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"3\"");
    let body = json(response).await;
    assert_eq!((body["version"].as_i64(), body["updated_by"].as_str()), (Some(3), Some("bob")));
    assert_eq!(body["value"], level("debug"));
    let current = json(send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await).await;
    assert_eq!(current["value"], level("debug"));

    let history = json(send(&app, "GET", "/api/v1/settings/monitoring/history", &[], None).await).await;
    let changes = history["changes"].as_array().unwrap();
    assert_eq!((changes[0]["version"].as_i64(), changes[0]["reverted_from"].as_i64()), (Some(3), Some(1)));
    assert_eq!((changes[0]["old"].clone(), changes[0]["new"].clone()), (level("warn"), level("debug")));
    assert!(changes[1].get("reverted_from").is_none(), "a plain write names no version: {}", changes[1]);

    let stale = revert(json!(2), "\"2\"").await;
    assert_eq!(stale.status(), 412);
    let unknown = revert(json!(99), "\"3\"").await;
    assert_eq!(unknown.status(), 404);
    assert!(json(unknown).await["error"]["message"].as_str().unwrap().contains("no version 99"));
    // A whole number written with a fraction is the same version (JSON
    // Schema's integer); 1.5 is not a version.
    assert_eq!(revert(json!(2.0), "\"3\"").await.status(), 200);
    for bad in [json!("two"), json!(1.5), json!(1e30), Value::Null] {
        assert_eq!(revert(bad.clone(), "*").await.status(), 422, "{bad}");
    }
    let unauthorised = send(&app, "POST", "/api/v1/settings/monitoring/revert", &[], Some(json!({"version": 1}))).await;
    assert_eq!(unauthorised.status(), 401);
    let missing = send(&app, "POST", "/api/v1/settings/nope/revert", &[ADMIN], Some(json!({"version": 1}))).await;
    assert_eq!(missing.status(), 404);
    let current = json(send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await).await;
    assert_eq!(
        (current["version"].clone(), current["value"].clone()),
        (json!(4), level("warn")),
        "nothing refused was written"
    );
}

/// A version written under looser rules (an older release without the
/// log-filter check) is checked again: reverting to it is a 422 that says
/// so, and nothing is written.
#[tokio::test]
async fn reverting_to_a_value_the_current_rules_refuse_is_a_422() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir).await;
    let loose: Settings<MonitoringSettings> =
        Settings::open("monitoring", deps(&db), SettingsConfig::default()).await.unwrap();
    let bad = MonitoringSettings { log_level: "keel=[".into(), ..MonitoringSettings::default() };
    loose.update(bad, None, "older release").await.unwrap();
    loose.update(MonitoringSettings::default(), None, "older release").await.unwrap();
    drop(loose);

    let app = router_on(&db, Some("s3cret")).await;
    let headers = [ADMIN, ("if-match", "\"2\"")];
    let refused = send(&app, "POST", "/api/v1/settings/monitoring/revert", &headers, Some(json!({"version": 1}))).await;
    assert_eq!(refused.status(), 422);
    let message = json(refused).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("version 1 is no longer valid"), "{message}");
    let current = json(send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await).await;
    assert_eq!(current["version"], 2);
}

/// The settings router served on a real socket, as the server serves it
/// (stream gate, shutdown).
struct Served {
    addr: String,
    shutdown: keel_core::Shutdown,
    task: tokio::task::JoinHandle<Result<(), keel_http::ServeError>>,
    _dir: tempfile::TempDir,
}

async fn serve(limits: keel_http::StreamLimits) -> Served {
    let (app, dir) = router(Some("s3cret")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = keel_core::Shutdown::new();
    let connection_limits =
        keel_http::ConnectionLimits { streams: keel_http::StreamGate::new(limits), ..Default::default() };
    let task = tokio::spawn(keel_http::serve_with_limits(
        listener,
        app.with_state(()),
        shutdown.clone(),
        keel_http::DrainConfig::default(),
        connection_limits,
    ));
    Served { addr, shutdown, task, _dir: dir }
}

async fn put_level(addr: &str, level_name: &str) -> u16 {
    let body = level(level_name).to_string();
    let headers = [ADMIN, ("content-type", "application/json")];
    keel_http::testing::http_request(addr, "PUT", "/api/v1/settings/monitoring", &headers, &body).await.0
}

/// The next `settings` event: its id and the document it carries.
async fn next_document(stream: &mut keel_http::testing::SseStream) -> (String, Value) {
    let event = stream.next_within(std::time::Duration::from_secs(10)).await.expect("a settings event");
    assert_eq!(event.event, "settings", "{event:?}");
    (event.id.clone(), serde_json::from_str(&event.data).unwrap())
}

/// The stream opens with the document, sends each new version with its
/// version as the event id, and resumes from `Last-Event-ID`: the current
/// version sends nothing until the next one, an older one the current
/// document at once, one the process has not reached yet nothing until it
/// has gone past it.
#[tokio::test]
async fn a_settings_stream_sends_each_version_and_resumes_from_last_event_id() {
    use keel_http::testing::sse;
    let served = serve(keel_http::StreamLimits::default()).await;
    let addr = served.addr.as_str();
    let path = "/api/v1/settings/monitoring/stream";
    let mut fresh = sse(addr, path, &[]).await;
    let (id, document) = next_document(&mut fresh).await;
    assert_eq!(
        (id.as_str(), document["version"].clone(), document["name"].clone()),
        ("0", json!(0), json!("monitoring"))
    );

    assert_eq!(put_level(addr, "debug").await, 200);
    let (id, document) = next_document(&mut fresh).await;
    assert_eq!((id.as_str(), document["value"].clone()), ("1", level("debug")));

    let mut current = sse(addr, path, &[("last-event-id", "1")]).await;
    let mut older = sse(addr, path, &[("last-event-id", "0")]).await;
    let (id, document) = next_document(&mut older).await;
    assert_eq!(
        (id.as_str(), document["value"].clone()),
        ("1", level("debug")),
        "an older id gets the current document"
    );
    let mut ahead = sse(addr, path, &[("last-event-id", "3")]).await;

    assert_eq!(put_level(addr, "warn").await, 200);
    let (id, document) = next_document(&mut current).await;
    assert_eq!((id.as_str(), document["value"].clone()), ("2", level("warn")), "nothing before the next version");
    assert_eq!(next_document(&mut fresh).await.0, "2");
    assert_eq!(next_document(&mut older).await.0, "2");
    // Versions 2 and 3 are not past what the client saw; 4 is.
    assert_eq!(put_level(addr, "error").await, 200);
    assert_eq!(put_level(addr, "info").await, 200);
    let (id, document) = next_document(&mut ahead).await;
    assert_eq!((id.as_str(), document["value"].clone()), ("4", level("info")));
    // A version whose value equals the last is a new version all the same.
    assert_eq!(put_level(addr, "info").await, 200);
    assert_eq!(next_document(&mut ahead).await.0, "5");

    for (id, status) in [("abc", 400), ("-1", 400), ("\u{84}", 400), ("", 200)] {
        let response = status_with_last_event_id(addr, path, id).await;
        assert_eq!(response, status, "Last-Event-ID {id:?}");
    }
    let (status, _) = keel_http::testing::http_get(addr, "/api/v1/settings/nope/stream").await;
    assert_eq!(status, 404);
    served.shutdown.trigger();
}

/// The status of `GET path` with `Last-Event-ID: id`, without reading the
/// stream.
async fn status_with_last_event_id(addr: &str, path: &str, id: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {id}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// Shutdown ends a settings stream with an `end` event instead of holding
/// the connection (and the drain) for the whole grace period; the stream
/// counts against the process's stream limit.
#[tokio::test]
async fn shutdown_ends_a_settings_stream_with_a_named_event_and_streams_are_bounded() {
    let limits = keel_http::StreamLimits { max_streams: 1, ..keel_http::StreamLimits::default() };
    let served = serve(limits).await;
    let path = "/api/v1/settings/monitoring/stream";
    let mut stream = keel_http::testing::sse(&served.addr, path, &[]).await;
    assert_eq!(next_document(&mut stream).await.0, "0");
    let (status, body) = keel_http::testing::http_get(&served.addr, path).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many streams"), "{body}");

    let started = std::time::Instant::now();
    served.shutdown.trigger();
    let end = stream.until("end", "shutdown").await;
    assert_eq!(serde_json::from_str::<Value>(&end).unwrap(), json!({"reason": "shutdown"}));
    assert!(stream.next_within(std::time::Duration::from_secs(5)).await.is_none(), "the stream ended after it");
    tokio::time::timeout(std::time::Duration::from_secs(5), served.task).await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() < keel_http::DrainConfig::default().grace, "the drain did not wait for the stream");
}

/// `?revert_after=` makes a write a timed value: the answer and `GET` say
/// when it reverts; a duration that does not parse is a 400, one outside
/// 1 s to the maximum a 422, and nothing is written for either.
#[tokio::test]
async fn a_timed_write_says_when_it_reverts_and_bad_durations_are_refused() {
    let (app, _dir) = router(Some("s3cret")).await;
    let put = |query: &'static str| {
        let app = app.clone();
        async move {
            let uri = format!("/api/v1/settings/monitoring{query}");
            send(&app, "PUT", &uri, &[ADMIN], Some(level("debug"))).await
        }
    };
    let before = std::time::SystemTime::now();
    let response = put("?revert_after=15m").await;
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    let at = humantime::parse_rfc3339(body["revert_at"].as_str().unwrap()).unwrap();
    let lead = at.duration_since(before).unwrap();
    assert!(lead > std::time::Duration::from_secs(899) && lead < std::time::Duration::from_secs(960), "{lead:?}");
    let current = json(send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await).await;
    assert_eq!(current["revert_at"], body["revert_at"]);

    for (query, status) in [
        ("?revert_after=soon", 400),
        ("?revert_after=15", 400),
        ("?revert_after=100ms", 422),
        ("?revert_after=25h", 422),
    ] {
        let response = put(query).await;
        assert_eq!(response.status(), status, "{query}");
        let message = json(response).await["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("revert_after"), "{query}: {message}");
    }
    let plain = json(put("").await).await;
    assert_eq!(plain["version"], 2, "only the good writes were made");
    assert!(plain.get("revert_at").is_none(), "a plain write cancels the timer: {plain}");
}

/// The document's JSON Schema is served, and a write that breaks it is a
/// 422 listing each violation by JSON Pointer; nothing is written.
#[tokio::test]
async fn the_schema_is_served_and_a_write_that_breaks_it_names_each_violation() {
    let (app, _dir) = router(Some("s3cret")).await;
    let response = send(&app, "GET", "/api/v1/settings/monitoring/schema", &[], None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/schema+json");
    let schema = json(response).await;
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(
        (schema["type"].as_str(), schema["properties"]["enable_monitoring"]["type"].as_str()),
        (Some("object"), Some("boolean"))
    );
    assert_eq!(send(&app, "GET", "/api/v1/settings/nope/schema", &[], None).await.status(), 404);

    let bad = json!({"enable_monitoring": "yes", "log_level": 5, "extra": true});
    let response = send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(bad)).await;
    assert_eq!(response.status(), 422);
    let error = json(response).await["error"].clone();
    let pointers: Vec<&str> =
        error["violations"].as_array().unwrap().iter().map(|v| v["pointer"].as_str().unwrap()).collect();
    for expected in ["/enable_monitoring", "/log_level", ""] {
        assert!(pointers.contains(&expected), "{expected:?} in {error}");
    }
    assert!(error["message"].as_str().unwrap().contains("(and 2 more)"), "{error}");
    let current = json(send(&app, "GET", "/api/v1/settings/monitoring", &[], None).await).await;
    assert_eq!(current["version"], 0);
    // A refusal with no schema to break carries no violations list.
    let response = send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(level("loud"))).await;
    assert_eq!(response.status(), 422);
    assert!(json(response).await["error"].get("violations").is_none());
}

/// A store written for an older Keel: every method but `save_timed`.
struct OlderStore(DbSettingsStore);

impl keel_settings_sync::SettingsStore for OlderStore {
    fn load<'a>(
        &'a self,
        name: &'a str,
    ) -> keel_settings_sync::StoreFuture<
        'a,
        Result<Option<keel_settings_sync::StoredDocument>, keel_settings_sync::StoreError>,
    > {
        self.0.load(name)
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        value: &'a Value,
        expected: Option<i64>,
        actor: &'a str,
    ) -> keel_settings_sync::StoreFuture<'a, Result<keel_settings_sync::StoredDocument, keel_settings_sync::StoreError>>
    {
        self.0.save(name, value, expected, actor)
    }

    fn history<'a>(
        &'a self,
        name: &'a str,
        limit: usize,
    ) -> keel_settings_sync::StoreFuture<'a, Result<Vec<keel_settings_sync::Change>, keel_settings_sync::StoreError>>
    {
        self.0.history(name, limit)
    }
}

/// A store that keeps no timers refuses a timed write with a 422 (not a
/// 503 to retry: it never will), and takes plain writes as before.
#[tokio::test]
async fn a_store_without_timed_values_refuses_a_timed_write_and_takes_plain_ones() {
    use keel_settings_sync::SettingsStore as _;
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir).await;
    let telemetry = Telemetry::new("t").unwrap();
    let deps = SettingsDeps::new(
        Arc::new(OlderStore(DbSettingsStore::new(db.clone()))),
        Cache::memory(),
        Bus::memory(&telemetry),
        telemetry,
    );
    let monitoring: Settings<MonitoringSettings> =
        Settings::open("monitoring", deps, SettingsConfig::default()).await.unwrap();
    let mut registry = SettingsRegistry::new();
    registry.register(monitoring);
    let app = axum::Router::from(settings_api(registry, AdminToken::new("s3cret")));
    let uri = "/api/v1/settings/monitoring?revert_after=15m";
    let timed = send(&app, "PUT", uri, &[ADMIN], Some(level("debug"))).await;
    assert_eq!(timed.status(), 422);
    let message = json(timed).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("cannot keep timed values"), "{message}");
    assert_eq!(DbSettingsStore::new(db).version("monitoring").await.unwrap(), 0, "nothing written");
    let plain = send(&app, "PUT", "/api/v1/settings/monitoring", &[ADMIN], Some(level("debug"))).await;
    assert_eq!(plain.status(), 200);
}
