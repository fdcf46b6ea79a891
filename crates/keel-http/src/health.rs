//! `/status`, `/status/{name}`, `/livez` and `/readyz` over a [`Health`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_core::{Shutdown, Status};
use keel_health_status::Pattern;
use keel_health_status::{ComponentView, Health, Snapshot, StatusCodes};
use keel_health_status::{Info, Mode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::openapi::{ApiRouter, ErrorSchema};

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

/// Shared by every health route (behind one `Arc`: axum clones a route's
/// state for each request).
pub(crate) struct HealthState {
    pub(crate) health: Health,
    pub(crate) app: AppInfo,
    codes: StatusCodes,
    pub(crate) shutdown: Shutdown,
    /// `/status` answers without a filter, one per rendering (format,
    /// short, map), reused while they are current.
    rendered: [ArcSwapOption<RenderedStatus>; RENDERINGS],
}

/// Formats × short × map.
const RENDERINGS: usize = 12;

/// A whole-registry `/status` answer, valid while the registry's revision
/// holds and until the first uptime or downtime in it would reach its next
/// whole second: exactly what a fresh rendering would answer.
struct RenderedStatus {
    revision: u64,
    until: tokio::time::Instant,
    code: StatusCode,
    content_type: &'static str,
    body: Bytes,
}

impl HealthState {
    /// The whole-registry answer for `options`, rendered again only when
    /// something in it changed: `None` when a filter asks for part of it.
    fn whole(&self, options: &ViewOptions) -> Option<Response> {
        if options.filter.is_some() || !options.exclude.is_empty() {
            return None;
        }
        let format = match options.format {
            Format::Json => 0,
            Format::Text => 1,
            Format::HealthJson => 2,
        };
        let slot = &self.rendered[format * 4 + usize::from(options.short) * 2 + usize::from(options.map)];
        let now = tokio::time::Instant::now();
        // Read before the snapshot: a change in between makes the copy
        // stale at once rather than wrongly current.
        let revision = self.health.revision();
        if let Some(current) = &*slot.load()
            && current.revision == revision
            && now < current.until
        {
            return Some(respond(current.code, current.content_type, current.body.clone()));
        }
        let snapshot = self.health.snapshot();
        let (code, content_type, body) = render_parts(self, options, &snapshot);
        let body = Bytes::from(body);
        let until = now + next_second(&snapshot);
        slot.store(Some(Arc::new(RenderedStatus { revision, until, code, content_type, body: body.clone() })));
        Some(respond(code, content_type, body))
    }
}

/// How long until the first uptime or downtime of `snapshot` reaches its
/// next whole second (they are shown in whole seconds): at most a second.
fn next_second(snapshot: &Snapshot) -> Duration {
    let to_next = |d: Duration| Duration::from_secs(1) - Duration::from_nanos(u64::from(d.subsec_nanos()));
    snapshot
        .components
        .values()
        .flat_map(|view| [to_next(view.uptime), to_next(view.downtime)])
        .min()
        .unwrap_or(Duration::from_secs(1))
}

/// The health endpoints. `/readyz` answers 503 at once when `shutdown`
/// starts, and otherwise follows the cached global status (tolerant: OK or
/// WARN is ready).
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn health_api(health: Health, app: AppInfo, codes: StatusCodes, shutdown: Shutdown) -> ApiRouter {
    health_routes(health, app, codes, shutdown, true)
}

/// The status and the probes alone (`/status`, `/status/{name}`, `/livez`,
/// `/readyz`): what a process serves on an admin port that the console does
/// not read (the worker), without the history and the stream.
pub fn health_status_api(health: Health, app: AppInfo, codes: StatusCodes, shutdown: Shutdown) -> ApiRouter {
    health_routes(health, app, codes, shutdown, false)
}

fn health_routes(health: Health, app: AppInfo, codes: StatusCodes, shutdown: Shutdown, feed: bool) -> ApiRouter {
    let mut routes = utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(status_of))
        .routes(routes!(livez))
        .routes(routes!(readyz));
    if feed {
        routes = routes.routes(routes!(crate::status_feed::history)).routes(routes!(crate::status_feed::stream));
    }
    routes.with_state(std::sync::Arc::new(HealthState { health, app, codes, shutdown, rendered: Default::default() }))
}

/// How `/status` renders; the `X-Verbose`, `Accept`, `X-MapMode` and
/// `X-Filter` headers override the matching parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// Only the overall status.
    #[param(inline, value_type = Option<Flag>)]
    short: Option<String>,
    /// `json` (default), `text` or `health+json`.
    #[param(inline, value_type = Option<FormatName>)]
    format: Option<String>,
    /// Components grouped.
    #[param(inline, value_type = Option<Flag>)]
    map: Option<String>,
    /// Comma-separated component or group name patterns (`*`, `?`) to keep.
    #[param(pattern = "^(\\*?([A-Za-z0-9_.?,-]|\\[!?[A-Za-z0-9_.-]+\\]))*\\*?$")]
    filter: Option<String>,
    /// Comma-separated component or group name patterns to leave out.
    #[param(pattern = "^(\\*?([A-Za-z0-9_.?,-]|\\[!?[A-Za-z0-9_.-]+\\]))*\\*?$")]
    exclude: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Text,
    HealthJson,
}

#[derive(Debug)]
pub(crate) struct ViewOptions {
    pub(crate) short: bool,
    pub(crate) format: Format,
    pub(crate) map: bool,
    pub(crate) filter: Option<Vec<Pattern>>,
    pub(crate) exclude: Vec<Pattern>,
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

/// Comma-separated name patterns: name characters, `?`, `*` (never two in a
/// row) and `[...]` classes, as `/openapi.json` documents.
fn patterns(name: &str, list: &str) -> Result<Vec<Pattern>, ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.-?*[]!".contains(c);
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let invalid = |why: &dyn std::fmt::Display| {
                ApiError::bad_request(format!("{name}: invalid pattern {}: {why}", crate::text::shown(p)))
            };
            if !p.chars().all(allowed) {
                return Err(invalid(&"use name characters [A-Za-z0-9_.-], ?, * and [...]"));
            }
            if p.contains("**") {
                return Err(invalid(&"one * matches any run of characters; ** is not a pattern"));
            }
            Pattern::new(p).map_err(|err| invalid(&err))
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

/// The options of a `/status` request, read from its query and headers in
/// place (most requests carry no query: nothing is decoded then).
fn view_options(request: &Request) -> Result<ViewOptions, Refused> {
    let query = match request.uri().query() {
        None => StatusQuery::default(),
        Some(_) => Query::<StatusQuery>::try_from_uri(request.uri()).map_err(Refused::Query)?.0,
    };
    ViewOptions::parse(&query, request.headers()).map_err(Refused::Options)
}

/// Why [`view_options`] refused a request.
enum Refused {
    Query(QueryRejection),
    Options(ApiError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Query(rejection) => rejection.into_response(),
            Self::Options(err) => err.into_response(),
        }
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

/// The health of the process and its components.
#[utoipa::path(get, path = "/status", operation_id = "status", tag = "health", params(StatusQuery, StatusHeaders), responses(
    (status = 200, description = "OK or WARN", content(
        (StatusBody<'static> = "application/json"), (HealthJsonBody = "application/health+json"), (String = "text/plain"))),
    (status = 503, description = "KO", content(
        (StatusBody<'static> = "application/json"), (HealthJsonBody = "application/health+json"), (String = "text/plain"))),
    (status = 400, description = "A parameter or header is not understood", body = ErrorSchema),
))]
async fn status(State(state): State<std::sync::Arc<HealthState>>, request: Request) -> Response {
    let options = match view_options(&request) {
        Ok(options) => options,
        Err(refused) => return refused.into_response(),
    };
    if let Some(whole) = state.whole(&options) {
        return whole;
    }
    let snapshot = match select(&state, &options) {
        None => state.health.snapshot(),
        Some(names) if names.is_empty() => {
            Snapshot { message: "no component matches the filter".into(), ..Snapshot::empty() }
        }
        Some(names) => state.health.snapshot_of(&names.iter().map(String::as_str).collect::<Vec<_>>()),
    };
    render(&state, &options, &snapshot)
}

/// The health of one group or component.
#[utoipa::path(get, path = "/status/{name}", operation_id = "status_of", tag = "health",
    params(("name" = String, Path, description = "A group or component name"), StatusQuery, StatusHeaders),
    responses(
        (status = 200, description = "OK or WARN", content(
            (StatusBody<'static> = "application/json"), (HealthJsonBody = "application/health+json"), (String = "text/plain"))),
        (status = 503, description = "KO", content(
            (StatusBody<'static> = "application/json"), (HealthJsonBody = "application/health+json"), (String = "text/plain"))),
        (status = 400, description = "A parameter or header is not understood", body = ErrorSchema),
        (status = 404, description = "No such group or component", body = ErrorSchema),
    ))]
async fn status_of(
    State(state): State<std::sync::Arc<HealthState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let options = match view_options(&request) {
        Ok(options) => options,
        Err(refused) => return refused.into_response(),
    };
    let Some(snapshot) = state.health.snapshot_named(&name) else {
        return ApiError::not_found(format!("no health group or component named {}", crate::text::shown(&name)))
            .into_response();
    };
    render(&state, &options, &snapshot)
}

fn to_json(body: &impl Serialize) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

fn render(state: &HealthState, options: &ViewOptions, snapshot: &Snapshot) -> Response {
    let (code, content_type, body) = render_parts(state, options, snapshot);
    respond(code, content_type, body)
}

fn render_parts(state: &HealthState, options: &ViewOptions, snapshot: &Snapshot) -> (StatusCode, &'static str, String) {
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
fn respond(code: StatusCode, content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
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
fn millis(d: Duration) -> f64 {
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

fn component_body(view: &ComponentView) -> ComponentBody<'_> {
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

fn health_json(app: &AppInfo, snapshot: &Snapshot) -> HealthJsonBody {
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

/// The probes' form.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Verbose {
    /// Present: one line per check.
    verbose: Option<String>,
}

/// Headers that override [`StatusQuery`].
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct StatusHeaders {
    /// `true`: every component (not the short form).
    #[param(rename = "X-Verbose", inline, nullable = false, value_type = Option<Flag>)]
    x_verbose: Option<String>,
    /// `true`: components grouped.
    #[param(rename = "X-MapMode", inline, nullable = false, value_type = Option<Flag>)]
    x_map_mode: Option<String>,
    /// Comma-separated name patterns to keep.
    #[param(
        rename = "X-Filter",
        nullable = false,
        pattern = "^(\\*?([A-Za-z0-9_.?,-]|\\[!?[A-Za-z0-9_.-]+\\]))*\\*?$"
    )]
    x_filter: Option<String>,
}

crate::openapi::string_enum_schema!(
    Flag,
    "A switch: empty (present without a value), true, 1 or yes is on; false, 0 or no is off.",
    ["", "true", "false", "1", "0", "yes", "no"]
);
crate::openapi::string_enum_schema!(FormatName, "A rendering of `/status`.", ["json", "text", "health+json", "health"]);

fn plain(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    respond(status, "text/plain; charset=utf-8", body)
}

/// A probe's `?verbose`. Probes rarely carry a query: the common case
/// decodes nothing.
fn verbose(uri: &axum::http::Uri) -> Result<bool, QueryRejection> {
    Ok(uri.query().is_some() && Query::<Verbose>::try_from_uri(uri)?.0.verbose.is_some())
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/livez", operation_id = "livez", tag = "health", params(Verbose),
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn livez(request: Request) -> Result<Response, QueryRejection> {
    let body = if verbose(request.uri())? { "[+]ping ok\nlivez check passed\n" } else { "ok" };
    Ok(plain(StatusCode::OK, body))
}

/// Readiness: 503 while KO, starting or draining.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health", params(Verbose), responses(
    (status = 200, description = "Ready", body = String, content_type = "text/plain"),
    (status = 503, description = "Not ready, starting or draining", body = String, content_type = "text/plain"),
))]
async fn readyz(
    State(state): State<std::sync::Arc<HealthState>>,
    request: Request,
) -> Result<Response, QueryRejection> {
    let verbose = verbose(request.uri())?;
    let draining = state.shutdown.is_triggered();
    let ready = !draining && state.health.is_cache_healthy();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !verbose {
        return Ok(plain(
            code,
            if ready {
                "ok"
            } else if draining {
                "draining"
            } else {
                "not ready"
            },
        ));
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
    Ok(plain(code, body))
}
