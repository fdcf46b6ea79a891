//! `/status` rendered: JSON, text and `application/health+json`, and the
//! uncached answer they go out in.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use keel_core::Status;
use keel_health_status::{ComponentView, Snapshot};
use keel_health_status::{Info, Mode};
use serde::Serialize;
use utoipa::ToSchema;

use super::*;

pub(super) fn to_json(body: &impl Serialize) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

pub(super) fn render(state: &HealthState, options: &ViewOptions, snapshot: &Snapshot) -> Response {
    let (code, content_type, body) = render_parts(state, options, snapshot);
    respond(code, content_type, body)
}

pub(super) fn render_parts(
    state: &HealthState,
    options: &ViewOptions,
    snapshot: &Snapshot,
) -> (StatusCode, &'static str, String) {
    let code =
        StatusCode::from_u16(state.codes.for_status(snapshot.status)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (content_type, body) = match options.format {
        Format::Json => ("application/json", to_json(&json_body(&state.app, options, snapshot))),
        Format::HealthJson => ("application/health+json", to_json(&health_json(&state.app, snapshot))),
        Format::Text => ("text/plain; charset=utf-8", text_body(&state.app, options, snapshot)),
    };
    (code, content_type, body)
}

/// An uncached answer in `content_type`; a failure keeps that rendering
/// (it is what was asked for), not the JSON error envelope.
pub(super) fn respond(code: StatusCode, content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    // Static header values: a `&str` would be checked and copied on every
    // answer.
    let mut response = Response::new(body.into());
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !code.is_success() {
        response.extensions_mut().insert(crate::error::Negotiated);
    }
    response
}

pub(crate) fn rfc3339(time: Option<SystemTime>) -> Option<String> {
    time.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

/// Milliseconds with microsecond precision.
pub(super) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// `/status` in JSON (the default).
#[derive(Serialize, ToSchema)]
pub(crate) struct StatusBody<'a> {
    /// Application name.
    name: &'a str,
    /// Release (version).
    release: &'a str,
    /// Source revision.
    hash: &'a str,
    /// Build date (RFC 3339), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    build_date: Option<&'a str>,
    /// The aggregated status.
    #[schema(value_type = StatusSchema)]
    status: Status,
    /// Why, when not OK.
    message: &'a str,
    /// Every component by name (not in map mode or short form).
    #[serde(skip_serializing_if = "Option::is_none")]
    components: Option<BTreeMap<&'a str, ComponentBody<'a>>>,
    /// The groups, each with its components (map mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<GroupBody<'a>>>,
}

/// `OK`, `WARN` or `KO`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum StatusSchema {
    #[schema(rename = "OK")]
    Ok,
    #[schema(rename = "WARN")]
    Warn,
    #[schema(rename = "KO")]
    Ko,
}

/// One health component.
#[derive(Serialize, ToSchema)]
pub(crate) struct ComponentBody<'a> {
    #[schema(value_type = StatusSchema)]
    status: Status,
    message: &'a str,
    /// Control mode: `must`, `should`, `optional`, ...
    #[schema(value_type = String)]
    mode: Mode,
    group: &'a str,
    latency_ms: f64,
    /// RFC 3339; null before the first check.
    last_check: Option<String>,
    uptime_s: u64,
    downtime_s: u64,
    /// The `info` of its configuration, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    info: Option<&'a Info>,
}

/// A group in map mode.
#[derive(Serialize, ToSchema)]
pub(crate) struct GroupBody<'a> {
    name: &'a str,
    #[schema(value_type = String)]
    mode: Mode,
    #[schema(value_type = StatusSchema)]
    status: Status,
    components: BTreeMap<&'a str, ComponentBody<'a>>,
    /// The `info` of `[[health.groups]]`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    info: Option<&'a Info>,
}

pub(super) fn component_body(view: &ComponentView) -> ComponentBody<'_> {
    ComponentBody {
        status: view.status,
        message: &view.message,
        mode: view.mode,
        group: &view.group,
        latency_ms: millis(view.latency),
        last_check: rfc3339(view.last_check),
        uptime_s: view.uptime.as_secs(),
        downtime_s: view.downtime.as_secs(),
        info: view.info.as_ref(),
    }
}

pub(crate) fn json_body<'a>(app: &'a AppInfo, options: &ViewOptions, snapshot: &'a Snapshot) -> StatusBody<'a> {
    let mut body = StatusBody {
        name: &app.name,
        release: &app.release,
        hash: &app.hash,
        build_date: app.build_date.as_deref(),
        status: snapshot.status,
        message: &snapshot.message,
        components: None,
        groups: None,
    };
    if options.short {
        return body;
    }
    if options.map {
        let group_body = |group: &'a keel_health_status::GroupView| GroupBody {
            name: &group.name,
            mode: group.mode,
            status: group.status,
            components: group
                .components
                .iter()
                .filter_map(|name| snapshot.components.get(name).map(|v| (name.as_str(), component_body(v))))
                .collect(),
            info: group.info.as_ref(),
        };
        body.groups = Some(snapshot.groups.iter().map(group_body).collect());
    } else {
        body.components =
            Some(snapshot.components.iter().map(|(name, view)| (name.as_str(), component_body(view))).collect());
    }
    body
}

pub(super) fn text_line(status: Status, name: &str, latency: Duration, message: &str) -> String {
    format!("{status}: {name} | {latency:.3?} | {message}")
}

pub(super) fn text_body(app: &AppInfo, options: &ViewOptions, snapshot: &Snapshot) -> String {
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

pub(super) fn pass_warn_fail(status: Status) -> &'static str {
    match status {
        Status::Ok => "pass",
        Status::Warn => "warn",
        Status::Ko => "fail",
    }
}

/// `/status` as the IETF health-check draft (`application/health+json`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthJsonBody {
    /// `pass`, `warn` or `fail`.
    status: &'static str,
    version: String,
    release_id: String,
    service_id: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    /// `<component>:responseTime` → one observation.
    checks: BTreeMap<String, Vec<HealthCheckBody>>,
}

/// One observation of the draft.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthCheckBody {
    component_id: String,
    component_type: &'static str,
    observed_value: f64,
    observed_unit: &'static str,
    status: &'static str,
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

pub(super) fn health_json(app: &AppInfo, snapshot: &Snapshot) -> HealthJsonBody {
    let not_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let checks = snapshot
        .components
        .iter()
        .map(|(name, view)| {
            let check = HealthCheckBody {
                component_id: name.clone(),
                component_type: "component",
                observed_value: millis(view.latency),
                observed_unit: "ms",
                status: pass_warn_fail(view.status),
                time: rfc3339(view.last_check),
                output: not_empty(&view.message),
            };
            (format!("{name}:responseTime"), vec![check])
        })
        .collect();
    HealthJsonBody {
        status: pass_warn_fail(snapshot.status),
        version: app.release.clone(),
        release_id: app.hash.clone(),
        service_id: app.name.clone(),
        description: format!("health of {}", app.name),
        output: not_empty(&snapshot.message),
        checks,
    }
}
