//! `/status`, `/status/{name}`, `/livez` and `/readyz` over a [`Health`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_core::Shutdown;
use keel_health_status::{Health, Snapshot, StatusCodes};
use utoipa_axum::routes;

use crate::openapi::{ApiRouter, ErrorSchema};

use crate::ApiError;

mod probes;
mod query;
mod render;

use query::*;
pub(crate) use query::{Format, ViewOptions};
use render::*;
pub(crate) use render::{StatusSchema, json_body, rfc3339};

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
        .routes(routes!(probes::livez))
        .routes(routes!(probes::readyz));
    if feed {
        routes = routes.routes(routes!(crate::status_feed::history)).routes(routes!(crate::status_feed::stream));
    }
    routes.with_state(std::sync::Arc::new(HealthState { health, app, codes, shutdown, rendered: Default::default() }))
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
