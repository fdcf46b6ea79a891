//! The health endpoints through `oneshot`.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use keel_core::{Shutdown, Status};
use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report, StatusCodes};
use keel_http::{AppInfo, health_api};
use serde_json::Value;
use tower::ServiceExt as _;

fn app_info() -> AppInfo {
    AppInfo { name: "keel-test".into(), release: "1.2.3".into(), hash: "abc123".into(), build_date: None }
}

/// storage (Must: db, cache) OK; upstreams (Quorum: a, b, c) 2/3 OK; mail
/// (Should: smtp) WARN; `extra` in no group, OK. Global: WARN.
async fn fixture(codes: StatusCodes) -> (Router, Shutdown, Health) {
    let groups = MandatoryList::new(vec![
        Mandatory::new("storage", Mode::Must, ["db", "cache"]),
        Mandatory::new("upstreams", Mode::Quorum, ["a", "b", "c"]),
        Mandatory::new("mail", Mode::Should, ["smtp"]),
    ])
    .unwrap();
    let health = Health::new(groups, Mode::Must);
    for (name, status) in [
        ("db", Status::Ok),
        ("cache", Status::Ok),
        ("a", Status::Ok),
        ("b", Status::Ok),
        ("c", Status::Ko),
        ("smtp", Status::Warn),
        ("extra", Status::Ok),
    ] {
        let report = match status {
            Status::Ok => Report::ok(),
            Status::Warn => Report::warn("queue is slow"),
            Status::Ko => Report::fail("connection refused"),
        };
        health
            .register(ComponentSpec::new(name).interval(Duration::from_secs(1)), move || {
                std::future::ready(report.clone())
            })
            .unwrap();
    }
    // Two checks each: KO → WARN → OK for the healthy ones.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shutdown = Shutdown::new();
    (axum::Router::from(health_api(health.clone(), app_info(), codes, shutdown.clone())), shutdown, health)
}

async fn get(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
}

async fn text(response: Response) -> String {
    String::from_utf8(axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
}

async fn json(response: Response) -> Value {
    serde_json::from_str(&text(response).await).unwrap()
}

fn component_names(body: &Value) -> Vec<String> {
    body["components"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn full_json_lists_every_component_with_its_group_and_mode() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let response = get(&app, "/status", &[]).await;
    assert_eq!(response.status(), 207, "WARN answers 207 by default");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json(response).await;
    assert_eq!(body["name"], "keel-test");
    assert_eq!(body["release"], "1.2.3");
    assert_eq!(body["hash"], "abc123");
    assert_eq!(body["status"], "WARN");
    assert!(body["message"].as_str().unwrap().contains("mail WARN"), "{body}");
    assert_eq!(component_names(&body), ["a", "b", "c", "cache", "db", "extra", "smtp"]);
    let c = &body["components"]["c"];
    assert_eq!(
        (c["status"].as_str(), c["mode"].as_str(), c["group"].as_str()),
        (Some("KO"), Some("Quorum"), Some("upstreams"))
    );
    assert_eq!(c["message"], "connection refused");
    assert_eq!(body["components"]["extra"]["group"], "default");
    for key in ["latency_ms", "last_check", "uptime_s", "downtime_s"] {
        assert!(c.get(key).is_some(), "{key} missing in {c}");
    }
    assert!(body.get("groups").is_none());
}

#[tokio::test(start_paused = true)]
async fn short_and_verbose_with_headers_winning() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let short = json(get(&app, "/status?short", &[]).await).await;
    assert_eq!(short["status"], "WARN");
    assert!(short.get("components").is_none() && short.get("groups").is_none());
    let header_short = json(get(&app, "/status", &[("x-verbose", "false")]).await).await;
    assert!(header_short.get("components").is_none());
    let header_wins = json(get(&app, "/status?short=true", &[("x-verbose", "true")]).await).await;
    assert_eq!(component_names(&header_wins).len(), 7);
    assert_eq!(get(&app, "/status?short=maybe", &[]).await.status(), 400);
}

#[tokio::test(start_paused = true)]
async fn text_and_json_with_headers_winning_over_the_query() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let response = get(&app, "/status?format=text", &[]).await;
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let body = text(response).await;
    let mut lines = body.lines();
    assert!(lines.next().unwrap().starts_with("WARN: keel-test (1.2.3, abc123) | mail WARN"), "{body}");
    let c_line = body.lines().find(|l| l.contains(": c |")).unwrap();
    assert!(c_line.starts_with("KO: c | ") && c_line.ends_with("| connection refused"), "{c_line}");
    assert_eq!(body.lines().count(), 8);

    let json_wins = get(&app, "/status?format=text", &[("accept", "application/json")]).await;
    assert_eq!(json_wins.headers()["content-type"], "application/json");
    let text_wins = get(&app, "/status?format=json", &[("accept", "text/plain")]).await;
    assert!(text_wins.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(get(&app, "/status?format=xml", &[]).await.status(), 400);
}

#[tokio::test(start_paused = true)]
async fn map_mode_groups_components_and_puts_the_rest_in_default() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    for response in [get(&app, "/status?map=true", &[]).await, get(&app, "/status", &[("x-mapmode", "true")]).await] {
        let body = json(response).await;
        assert!(body.get("components").is_none());
        let groups = body["groups"].as_array().unwrap();
        let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["default", "mail", "storage", "upstreams"]);
        let upstreams = &groups[3];
        assert_eq!((upstreams["mode"].as_str(), upstreams["status"].as_str()), (Some("Quorum"), Some("OK")));
        assert_eq!(upstreams["components"].as_object().unwrap().len(), 3);
        assert_eq!(groups[0]["components"]["extra"]["status"], "OK");
        assert_eq!(groups[1]["status"], "WARN");
    }
    let text = text(get(&app, "/status?map&format=text", &[]).await).await;
    assert!(text.contains("WARN - mail - Should:\n\tWARN: smtp | "), "{text}");
    assert!(text.contains("OK - upstreams - Quorum:\n"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn filters_by_component_wildcard_and_group_and_nothing_means_nothing() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let db = get(&app, "/status?filter=db", &[]).await;
    assert_eq!(db.status(), 200, "the filtered view's own status decides the code");
    assert_eq!(component_names(&json(db).await), ["db"]);

    assert_eq!(component_names(&json(get(&app, "/status?filter=ca*", &[]).await).await), ["cache"]);
    assert_eq!(component_names(&json(get(&app, "/status?filter=[ab],smtp", &[]).await).await), ["a", "b", "smtp"]);
    let group = json(get(&app, "/status?filter=upstream?", &[]).await).await;
    assert_eq!(component_names(&group), ["a", "b", "c"], "a pattern matching a group selects its members");
    assert_eq!(group["status"], "OK");

    let header = json(get(&app, "/status?filter=db", &[("x-filter", "extra")]).await).await;
    assert_eq!(component_names(&header), ["extra"], "X-Filter wins over ?filter");

    let none = get(&app, "/status?filter=nothing-*", &[]).await;
    assert_eq!(none.status(), 200);
    let none = json(none).await;
    assert!(component_names(&none).is_empty(), "a filter matching nothing shows nothing, not everything");
    assert_eq!(none["message"], "no component matches the filter");

    assert_eq!(get(&app, "/status?filter=[", &[]).await.status(), 400);
}

#[tokio::test(start_paused = true)]
async fn exclude_drops_components_and_groups() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let response = get(&app, "/status?exclude=smtp", &[]).await;
    assert_eq!(response.status(), 200, "without the Should member everything is OK");
    let body = json(response).await;
    assert_eq!(component_names(&body), ["a", "b", "c", "cache", "db", "extra"]);
    let body = json(get(&app, "/status?exclude=upstreams,mail", &[]).await).await;
    assert_eq!(component_names(&body), ["cache", "db", "extra"]);
}

#[tokio::test(start_paused = true)]
async fn status_of_a_group_or_component_and_unknown_names() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let storage = get(&app, "/status/storage", &[]).await;
    assert_eq!(storage.status(), 200);
    assert_eq!(component_names(&json(storage).await), ["cache", "db"]);
    let smtp = get(&app, "/status/smtp", &[]).await;
    assert_eq!(smtp.status(), 207);
    let c = get(&app, "/status/c", &[]).await;
    assert_eq!(c.status(), 503, "KO answers 503 by default");
    assert_eq!(component_names(&json(get(&app, "/status/default", &[]).await).await), ["extra"]);
    let unknown = get(&app, "/status/nope", &[]).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(json(unknown).await["error"]["code"], "not_found");
}

#[tokio::test(start_paused = true)]
async fn configured_codes_follow_the_status() {
    let (app, _, _) = fixture(StatusCodes { ok: 200, warn: 299, ko: 500 }).await;
    assert_eq!(get(&app, "/status", &[]).await.status(), 299);
    assert_eq!(get(&app, "/status/c", &[]).await.status(), 500);
    assert_eq!(get(&app, "/status/db", &[]).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn health_json_follows_the_ietf_draft() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let response = get(&app, "/status", &[("accept", "application/health+json")]).await;
    assert_eq!(response.headers()["content-type"], "application/health+json");
    let body = json(response).await;
    assert_eq!(body["status"], "warn");
    assert_eq!(body["checks"]["db:responseTime"][0]["status"], "pass");
    assert_eq!(body["checks"]["c:responseTime"][0]["status"], "fail");
    assert_eq!(body["checks"]["c:responseTime"][0]["output"], "connection refused");
    assert_eq!(body["checks"]["smtp:responseTime"][0]["status"], "warn");
    assert_eq!(body["checks"]["db:responseTime"][0]["observedUnit"], "ms");
    let only_db = json(get(&app, "/status?filter=db", &[("accept", "application/health+json")]).await).await;
    assert_eq!(only_db["status"], "pass");
}

#[tokio::test(start_paused = true)]
async fn readyz_follows_the_cached_status_and_shutdown() {
    let (app, shutdown, _) = fixture(StatusCodes::default()).await;
    assert_eq!(text(get(&app, "/livez", &[]).await).await, "ok");
    let ready = get(&app, "/readyz?verbose", &[]).await;
    assert_eq!(ready.status(), 200, "WARN is still ready");
    let body = text(ready).await;
    assert!(body.contains("[+]shutdown ok\n") && body.contains("[-]c failed: connection refused\n"), "{body}");
    assert!(body.ends_with("readyz check passed\n"), "{body}");

    shutdown.trigger();
    let draining = get(&app, "/readyz?verbose", &[]).await;
    assert_eq!(draining.status(), 503);
    assert!(text(draining).await.contains("[-]shutdown failed: draining"));
    assert_eq!(get(&app, "/livez", &[]).await.status(), 200, "liveness is unaffected by draining");
}

#[tokio::test(start_paused = true)]
async fn readyz_is_503_when_a_must_group_is_ko() {
    let groups = MandatoryList::new(vec![Mandatory::new("storage", Mode::Must, ["db"])]).unwrap();
    let health = Health::new(groups, Mode::Must);
    health.register(ComponentSpec::new("db"), || std::future::ready(Report::fail("down"))).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let app = axum::Router::from(health_api(health, app_info(), StatusCodes::default(), Shutdown::new()));
    assert_eq!(get(&app, "/readyz", &[]).await.status(), 503);
    assert_eq!(get(&app, "/status", &[]).await.status(), 503);
}

/// Through the whole middleware stack (which rewrites plain-text errors into
/// the JSON envelope), a failing probe keeps the representation asked for.
#[tokio::test(start_paused = true)]
async fn a_503_keeps_the_negotiated_text_health_json_or_json() {
    let groups = MandatoryList::new(vec![Mandatory::new("storage", Mode::Must, ["db"])]).unwrap();
    let health = Health::new(groups, Mode::Must);
    health.register(ComponentSpec::new("db"), || std::future::ready(Report::fail("down"))).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
    let app = keel_http::middleware::apply(
        axum::Router::from(health_api(health, app_info(), StatusCodes::default(), Shutdown::new())),
        &keel_http::MiddlewareConfig::default(),
        &keel_http::HttpMetrics::new(&telemetry),
    );
    let content_type = |r: &Response| r.headers()["content-type"].to_str().unwrap().to_owned();

    let readyz = get(&app, "/readyz?verbose", &[]).await;
    assert_eq!((readyz.status().as_u16(), content_type(&readyz).starts_with("text/plain")), (503, true));
    let body = text(readyz).await;
    assert!(body.contains("[-]db failed") && body.ends_with("readyz check failed\n"), "{body}");

    let status = get(&app, "/status?format=text", &[]).await;
    assert_eq!(status.status(), 503);
    assert!(text(status).await.starts_with("KO: keel-test"), "text lines, not a JSON error");

    let health_json = get(&app, "/status", &[("accept", "application/health+json")]).await;
    assert_eq!((health_json.status().as_u16(), content_type(&health_json)), (503, "application/health+json".into()));
    assert_eq!(json(health_json).await["status"], "fail");

    let plain_json = json(get(&app, "/status", &[]).await).await;
    assert_eq!(plain_json["status"], "KO", "the status document, not the error envelope");

    let livez = get(&app, "/livez", &[]).await;
    assert_eq!(livez.status(), 200);
    let missing = get(&app, "/status/nope", &[]).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(json(missing).await["error"]["code"], "not_found", "real errors keep the envelope");
}

/// Each pattern selects on its own: a group pattern does not swallow the
/// component patterns beside it.
#[tokio::test(start_paused = true)]
async fn a_filter_mixing_a_group_and_a_component_selects_both() {
    let (app, _, health) = fixture(StatusCodes::default()).await;
    let body = json(get(&app, "/status?filter=mail,db", &[]).await).await;
    assert_eq!(component_names(&body), ["db", "smtp"]);
    let body = json(get(&app, "/status?filter=upstreams,extra&exclude=c", &[]).await).await;
    assert_eq!(component_names(&body), ["a", "b", "extra"]);
    let patterns =
        |list: &[&str]| list.iter().map(|p| keel_health_status::Pattern::new(p).unwrap()).collect::<Vec<_>>();
    let selected = health.select(Some(&patterns(&["storage", "sm*"])), &patterns(&["cache"]));
    assert_eq!(selected.into_iter().collect::<Vec<_>>(), ["db", "smtp"]);
    assert_eq!(health.select(None, &patterns(&["default"])).len(), 6, "everything but the ungrouped `extra`");
}

#[tokio::test(start_paused = true)]
async fn group_info_is_shown_in_map_mode() {
    let mut storage = Mandatory::new("storage", Mode::Must, ["db"]);
    storage.info = Some(keel_health_status::Info {
        name: Some("Primary database".into()),
        data: [("owner".to_owned(), "platform".to_owned())].into(),
    });
    let health = Health::new(MandatoryList::new(vec![storage]).unwrap(), Mode::Must);
    health.register(ComponentSpec::new("db"), || std::future::ready(Report::ok())).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let app = axum::Router::from(health_api(health, app_info(), StatusCodes::default(), Shutdown::new()));
    let body = json(get(&app, "/status?map=true", &[]).await).await;
    let group = &body["groups"][0];
    assert_eq!(group["name"], "storage");
    assert_eq!(group["info"], serde_json::json!({"name": "Primary database", "data": {"owner": "platform"}}));
    let text = text(get(&app, "/status?map=true&format=text", &[]).await).await;
    assert!(text.contains(" - storage (Primary database) - "), "{text}");
}

#[tokio::test(start_paused = true)]
async fn history_lists_each_components_transitions_newest_first() {
    let (app, _, _) = fixture(StatusCodes::default()).await;
    let response = get(&app, "/status/history", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json(response).await;
    let components = body["components"].as_object().unwrap();
    assert_eq!(components.len(), 7, "every component, with or without transitions");
    let steps = |name: &str| -> Vec<(Value, String)> {
        components[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["from"].clone(), c["to"].as_str().unwrap().to_owned()))
            .collect()
    };
    // Start-up is no transition: each component's first settled status is
    // its initial state (from null), whether it climbed to OK, stays WARN or
    // was KO from the start.
    assert_eq!(steps("db"), [(Value::Null, "OK".into())]);
    assert_eq!(steps("smtp"), [(Value::Null, "WARN".into())]);
    assert_eq!(steps("c"), [(Value::Null, "KO".into())]);
    let first = &components["db"][0];
    assert_eq!(first["component"], "db");
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
}

/// The next Server-Sent Event on `body`: (event name, JSON data); `None`
/// when the stream ended.
async fn next_event(body: &mut Body) -> Option<(String, Value)> {
    use http_body_util::BodyExt as _;
    let mut text = String::new();
    loop {
        if let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
            let (Some(event), Some(data)) = (field("event: "), field("data: ")) else { continue };
            return Some((event, serde_json::from_str(&data).unwrap()));
        }
        let frame = body.frame().await?.unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_stream_opens_with_the_view_then_pushes_each_change_and_ends_at_shutdown() {
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let health =
        Health::new(MandatoryList::new(vec![Mandatory::new("edge", Mode::Must, ["port"])]).unwrap(), Mode::Must);
    let flag = up.clone();
    health
        .register(ComponentSpec::new("port").interval(Duration::from_secs(1)), move || {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            std::future::ready(if ok { Report::ok() } else { Report::fail("connection refused") })
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shutdown = Shutdown::new();
    let app = axum::Router::from(health_api(health, app_info(), StatusCodes::default(), shutdown.clone()));

    let response = get(&app, "/status/stream", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let (event, view) = next_event(&mut body).await.unwrap();
    assert_eq!(event, "status");
    assert_eq!(view["status"], "OK");
    assert_eq!(view["groups"][0]["name"], "edge");
    assert_eq!(view["groups"][0]["components"]["port"]["status"], "OK");

    // The port closes: OK → WARN → KO, each pushed with the view it led to.
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (event, data) = next_event(&mut body).await.unwrap();
        if event == "change" {
            assert_eq!(
                (data["component"].as_str(), data["message"].as_str()),
                (Some("port"), Some("connection refused"))
            );
            seen.push(format!("{}→{}", data["from"].as_str().unwrap(), data["to"].as_str().unwrap()));
            let (next, view) = next_event(&mut body).await.unwrap();
            assert_eq!(next, "status", "a change is followed by its view");
            assert_eq!(view["groups"][0]["components"]["port"]["status"], data["to"]);
        }
    }
    assert_eq!(seen, ["OK→WARN", "WARN→KO"]);
    // KO answers 200 on the feeds (a page reading them sees no failed request).
    assert_eq!(get(&app, "/status/history", &[]).await.status(), 200);
    assert_eq!(get(&app, "/status", &[]).await.status(), 503);

    // Nothing changes: the view repeats every 2 s.
    let (event, _) = next_event(&mut body).await.unwrap();
    assert_eq!(event, "status");
    shutdown.trigger();
    assert!(next_event(&mut body).await.is_none(), "the stream ends when shutdown starts");
}

/// The whole-registry answer is rendered again exactly when what it shows
/// changes: it is the same while nothing happens, an uptime that reaches its
/// next whole second shows at once, and so does a component registered
/// since.
#[tokio::test(start_paused = true)]
async fn a_repeated_status_shows_every_change_at_once() {
    let health = Health::new(MandatoryList::new(Vec::new()).unwrap(), Mode::Must);
    let slow = || ComponentSpec::new("db").interval(Duration::from_secs(600));
    health.register(slow(), || std::future::ready(Report::ok())).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let app = axum::Router::from(health_api(health.clone(), app_info(), StatusCodes::default(), Shutdown::new()));
    let seconds = |body: &Value, name: &str| {
        let c = &body["components"][name];
        c["uptime_s"].as_u64().unwrap() + c["downtime_s"].as_u64().unwrap()
    };

    let first = json(get(&app, "/status", &[]).await).await;
    assert_eq!(json(get(&app, "/status", &[]).await).await, first);
    tokio::time::sleep(Duration::from_millis(980)).await;
    assert_eq!(seconds(&json(get(&app, "/status", &[]).await).await, "db"), seconds(&first, "db"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = json(get(&app, "/status", &[]).await).await;
    assert_eq!(seconds(&later, "db"), seconds(&first, "db") + 1, "{later}");

    health
        .register(ComponentSpec::new("cache").interval(Duration::from_secs(600)), || {
            std::future::ready(Report::fail("refused"))
        })
        .unwrap();
    let registered = json(get(&app, "/status", &[]).await).await;
    assert_eq!(component_names(&registered), ["cache", "db"], "{registered}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let checked = json(get(&app, "/status", &[]).await).await;
    assert_eq!(checked["components"]["cache"]["message"], "refused", "{checked}");
    for headers in [[("accept", "text/plain")], [("x-verbose", "false")]] {
        assert_eq!(text(get(&app, "/status", &headers).await).await, text(get(&app, "/status", &headers).await).await);
    }
}
