//! `/status`, `/status/{name}`, `/livez` and `/readyz` over a [`Health`].

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_core::{Shutdown, Status};
use keel_health_status::Pattern;
use keel_health_status::{ComponentView, DEFAULT_GROUP, Health, Snapshot, StatusCodes};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::ApiError;

/// What `/status` says about the application itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// Application name.
    pub name: String,
    /// Release (version).
    pub release: String,
    /// Source revision.
    pub hash: String,
    /// Build date, when known.
    pub build_date: Option<String>,
}

impl AppInfo {
    /// This build of Keel under `name`: the crate version, the git commit
    /// and the build date recorded at compile time.
    pub fn build(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            release: env!("CARGO_PKG_VERSION").to_owned(),
            hash: env!("KEEL_GIT_HASH").to_owned(),
            build_date: Some(env!("KEEL_BUILD_DATE").to_owned()),
        }
    }
}

#[derive(Clone)]
struct HealthState {
    health: Health,
    app: AppInfo,
    codes: StatusCodes,
    shutdown: Shutdown,
}

/// The health endpoints. `/readyz` answers 503 at once when `shutdown`
/// starts, and otherwise follows the cached global status (tolerant: OK or
/// WARN is ready).
pub fn health_router(health: Health, app: AppInfo, codes: StatusCodes, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/status/{name}", get(status_of))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(HealthState { health, app, codes, shutdown })
}

#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    short: Option<String>,
    format: Option<String>,
    map: Option<String>,
    filter: Option<String>,
    exclude: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    HealthJson,
}

#[derive(Debug)]
struct ViewOptions {
    short: bool,
    format: Format,
    map: bool,
    filter: Option<Vec<Pattern>>,
    exclude: Vec<Pattern>,
}

fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => {
            Err(ApiError::bad_request(format!("{name}: expected true or false, got {}", crate::text::shown(other))))
        }
    }
}

fn patterns(name: &str, list: &str) -> Result<Vec<Pattern>, ApiError> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            Pattern::new(p).map_err(|err| {
                ApiError::bad_request(format!("{name}: invalid pattern {}: {err}", crate::text::shown(p)))
            })
        })
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ApiError::bad_request(format!("{name}: header is not text"))))
        .transpose()
}

impl ViewOptions {
    /// Query parameters first, then headers, which win.
    fn parse(query: &StatusQuery, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut short = query.short.as_deref().map(|v| flag("short", v)).transpose()?.unwrap_or(false);
        let mut format = match query.format.as_deref().map(|f| f.trim().to_ascii_lowercase()) {
            None => Format::Json,
            Some(f) if f == "json" => Format::Json,
            Some(f) if f == "text" => Format::Text,
            Some(f) if f == "health+json" || f == "health" => Format::HealthJson,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "format: expected json or text, got {}",
                    crate::text::shown(&other)
                )));
            }
        };
        let mut map = query.map.as_deref().map(|v| flag("map", v)).transpose()?.unwrap_or(false);
        let mut filter = query.filter.as_deref().map(|f| patterns("filter", f)).transpose()?;
        let exclude = query.exclude.as_deref().map(|f| patterns("exclude", f)).transpose()?.unwrap_or_default();

        if let Some(verbose) = header_str(headers, "x-verbose")? {
            short = !flag("X-Verbose", verbose)?;
        }
        if let Some(accept) = header_str(headers, "accept")? {
            // The first type we serve wins; `*/*` and unknown types leave the
            // query's choice alone.
            for media in accept.split(',').map(|m| m.split(';').next().unwrap_or("").trim()) {
                let chosen = match media {
                    "application/health+json" => Some(Format::HealthJson),
                    "application/json" => Some(Format::Json),
                    "text/plain" => Some(Format::Text),
                    _ => None,
                };
                if let Some(chosen) = chosen {
                    format = chosen;
                    break;
                }
            }
        }
        if let Some(mode) = header_str(headers, "x-mapmode")? {
            map = flag("X-MapMode", mode)?;
        }
        if let Some(list) = header_str(headers, "x-filter")? {
            filter = Some(patterns("X-Filter", list)?);
        }
        Ok(Self { short, format, map, filter, exclude })
    }
}

/// The component names selected by the filter and exclude patterns (see
/// [`Health::select`]). `None`: no filter, everything.
fn select(state: &HealthState, options: &ViewOptions) -> Option<BTreeSet<String>> {
    if options.filter.is_none() && options.exclude.is_empty() {
        return None;
    }
    Some(state.health.select(options.filter.as_deref(), &options.exclude))
}

async fn status(State(state): State<HealthState>, Query(query): Query<StatusQuery>, headers: HeaderMap) -> Response {
    let options = match ViewOptions::parse(&query, &headers) {
        Ok(options) => options,
        Err(err) => return err.into_response(),
    };
    let snapshot = match select(&state, &options) {
        None => state.health.snapshot(),
        Some(names) if names.is_empty() => {
            Snapshot { message: "no component matches the filter".into(), ..Snapshot::empty() }
        }
        Some(names) => state.health.snapshot_of(&names.iter().map(String::as_str).collect::<Vec<_>>()),
    };
    render(&state, &options, &snapshot)
}

async fn status_of(
    State(state): State<HealthState>,
    Path(name): Path<String>,
    Query(query): Query<StatusQuery>,
    headers: HeaderMap,
) -> Response {
    let options = match ViewOptions::parse(&query, &headers) {
        Ok(options) => options,
        Err(err) => return err.into_response(),
    };
    let known = state.health.groups().group(&name).is_some()
        || state.health.snapshot().components.contains_key(&name)
        || (name == DEFAULT_GROUP && state.health.snapshot().group(DEFAULT_GROUP).is_some());
    if !known {
        return ApiError::not_found(format!("no health group or component named {}", crate::text::shown(&name)))
            .into_response();
    }
    let snapshot = if name == DEFAULT_GROUP && state.health.groups().group(&name).is_none() {
        let everything = state.health.snapshot();
        let members: Vec<&str> = everything
            .group(DEFAULT_GROUP)
            .map(|g| g.components.iter().map(String::as_str).collect())
            .unwrap_or_default();
        state.health.snapshot_of(&members)
    } else {
        state.health.snapshot_of(&[name.as_str()])
    };
    render(&state, &options, &snapshot)
}

fn render(state: &HealthState, options: &ViewOptions, snapshot: &Snapshot) -> Response {
    let code =
        StatusCode::from_u16(state.codes.for_status(snapshot.status)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (content_type, body) = match options.format {
        Format::Json => ("application/json", json_body(&state.app, options, snapshot).to_string()),
        Format::HealthJson => ("application/health+json", health_json(&state.app, snapshot).to_string()),
        Format::Text => ("text/plain; charset=utf-8", text_body(&state.app, options, snapshot)),
    };
    let mut response = (code, body).into_response();
    response.extensions_mut().insert(crate::error::Negotiated);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn rfc3339(time: Option<SystemTime>) -> Value {
    time.map_or(Value::Null, |t| Value::String(humantime::format_rfc3339_millis(t).to_string()))
}

fn millis(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}

fn component_json(view: &ComponentView) -> Value {
    let mut object = json!({
        "status": view.status,
        "message": view.message,
        "mode": view.mode,
        "group": view.group,
        "latency_ms": millis(view.latency),
        "last_check": rfc3339(view.last_check),
        "uptime_s": view.uptime.as_secs(),
        "downtime_s": view.downtime.as_secs(),
    });
    if let (Some(info), Some(map)) = (&view.info, object.as_object_mut()) {
        map.insert("info".into(), serde_json::to_value(info).unwrap_or(Value::Null));
    }
    object
}

fn json_body(app: &AppInfo, options: &ViewOptions, snapshot: &Snapshot) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(app.name));
    body.insert("release".into(), json!(app.release));
    body.insert("hash".into(), json!(app.hash));
    if let Some(date) = &app.build_date {
        body.insert("build_date".into(), json!(date));
    }
    body.insert("status".into(), json!(snapshot.status));
    body.insert("message".into(), json!(snapshot.message));
    if options.short {
        return Value::Object(body);
    }
    if options.map {
        let groups: Vec<Value> = snapshot
            .groups
            .iter()
            .map(|group| {
                let components: Map<String, Value> = group
                    .components
                    .iter()
                    .filter_map(|name| snapshot.components.get(name).map(|v| (name.clone(), component_json(v))))
                    .collect();
                let mut group_json =
                    json!({"name": group.name, "mode": group.mode, "status": group.status, "components": components});
                if let (Some(info), Some(object)) = (&group.info, group_json.as_object_mut()) {
                    object.insert("info".into(), serde_json::to_value(info).unwrap_or(Value::Null));
                }
                group_json
            })
            .collect();
        body.insert("groups".into(), Value::Array(groups));
    } else {
        let components: Map<String, Value> =
            snapshot.components.iter().map(|(name, view)| (name.clone(), component_json(view))).collect();
        body.insert("components".into(), Value::Object(components));
    }
    Value::Object(body)
}

fn text_line(status: Status, name: &str, latency: Duration, message: &str) -> String {
    format!("{status}: {name} | {latency:.3?} | {message}")
}

fn text_body(app: &AppInfo, options: &ViewOptions, snapshot: &Snapshot) -> String {
    let mut out = format!("{}: {} ({}, {}) | {}\n", snapshot.status, app.name, app.release, app.hash, snapshot.message);
    if options.short {
        return out;
    }
    if options.map {
        for group in &snapshot.groups {
            let shown =
                group.info.as_ref().and_then(|i| i.name.as_deref()).map_or(String::new(), |n| format!(" ({n})"));
            out.push_str(&format!("{} - {}{shown} - {}:\n", group.status, group.name, group.mode));
            for name in &group.components {
                if let Some(view) = snapshot.components.get(name) {
                    out.push('\t');
                    out.push_str(&text_line(view.status, name, view.latency, &view.message));
                    out.push('\n');
                }
            }
        }
    } else {
        for (name, view) in &snapshot.components {
            out.push_str(&text_line(view.status, name, view.latency, &view.message));
            out.push('\n');
        }
    }
    out
}

fn pass_warn_fail(status: Status) -> &'static str {
    match status {
        Status::Ok => "pass",
        Status::Warn => "warn",
        Status::Ko => "fail",
    }
}

/// The IETF health-check draft (`application/health+json`).
fn health_json(app: &AppInfo, snapshot: &Snapshot) -> Value {
    let checks: Map<String, Value> = snapshot
        .components
        .iter()
        .map(|(name, view)| {
            let mut entry = json!({
                "componentId": name,
                "componentType": "component",
                "observedValue": millis(view.latency),
                "observedUnit": "ms",
                "status": pass_warn_fail(view.status),
                "time": rfc3339(view.last_check),
            });
            if !view.message.is_empty()
                && let Some(map) = entry.as_object_mut()
            {
                map.insert("output".into(), json!(view.message));
            }
            (format!("{name}:responseTime"), json!([entry]))
        })
        .collect();
    let mut body = json!({
        "status": pass_warn_fail(snapshot.status),
        "version": app.release,
        "releaseId": app.hash,
        "serviceId": app.name,
        "description": format!("health of {}", app.name),
        "checks": checks,
    });
    if !snapshot.message.is_empty()
        && let Some(map) = body.as_object_mut()
    {
        map.insert("output".into(), json!(snapshot.message));
    }
    body
}

#[derive(Deserialize)]
struct Verbose {
    verbose: Option<String>,
}

fn plain(status: StatusCode, body: String) -> Response {
    let mut response =
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body)
            .into_response();
    // The probes' text is the representation asked for, also when it fails.
    response.extensions_mut().insert(crate::error::Negotiated);
    response
}

async fn livez(Query(q): Query<Verbose>) -> Response {
    let body = if q.verbose.is_some() { "[+]ping ok\nlivez check passed\n" } else { "ok" };
    plain(StatusCode::OK, body.to_owned())
}

async fn readyz(State(state): State<HealthState>, Query(q): Query<Verbose>) -> Response {
    let draining = state.shutdown.is_triggered();
    let ready = !draining && state.health.is_cache_healthy();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if q.verbose.is_none() {
        return plain(
            code,
            if ready {
                "ok"
            } else if draining {
                "draining"
            } else {
                "not ready"
            }
            .to_owned(),
        );
    }
    let mut body = String::from(if draining { "[-]shutdown failed: draining\n" } else { "[+]shutdown ok\n" });
    let snapshot = state.health.cached();
    for (name, view) in &snapshot.components {
        if view.status.is_tolerable() {
            body.push_str(&format!("[+]{name} ok\n"));
        } else {
            body.push_str(&format!("[-]{name} failed: {}\n", view.message));
        }
    }
    body.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
    plain(code, body)
}
