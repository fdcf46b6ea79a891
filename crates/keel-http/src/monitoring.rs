//! `/api/v1/monitoring`: captured logs, live stats and their stream, for
//! operators (admin token).

use std::convert::Infallible;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use keel_monitoring::{LogQuery, LogRecord, MonitoringEvent, MonitoringHub, PROCESSES, SinkError, StatsDocument};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{AdminRefusals, ApiRouter, ErrorSchema, SseEvent};

use crate::admin::{Admin, AdminState};
use crate::{AdminToken, ApiError};

/// The router's state: the hub and the token that guards it.
#[derive(Clone)]
struct Operators {
    hub: MonitoringHub,
    admin: Option<AdminToken>,
}

impl AdminState for Operators {
    fn admin_token(&self) -> Option<&AdminToken> {
        self.admin.as_ref()
    }
}

/// `GET|DELETE /api/v1/monitoring/logs`, `GET /api/v1/monitoring/stats` and
/// `GET /api/v1/monitoring/stream` (Server-Sent Events). All need the admin
/// token.
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn monitoring_api(hub: MonitoringHub, admin: Option<AdminToken>) -> ApiRouter {
    OpenApiRouter::new()
        .routes(routes!(logs, clear))
        .routes(routes!(stats))
        .routes(routes!(stream))
        .with_state(std::sync::Arc::new(Operators { hub, admin }))
}

/// A captured log record.
#[derive(Serialize, ToSchema)]
struct RecordBody<'a> {
    /// RFC 3339.
    time: String,
    level: &'a str,
    target: &'a str,
    message: &'a str,
    process: &'a str,
    instance: &'a str,
    fields: &'a std::collections::BTreeMap<String, String>,
}

fn record_body(record: &LogRecord) -> RecordBody<'_> {
    let time = UNIX_EPOCH + Duration::from_millis(record.time_ms);
    RecordBody {
        time: humantime::format_rfc3339_millis(time).to_string(),
        level: &record.level,
        target: &record.target,
        message: &record.message,
        process: &record.process,
        instance: &record.instance,
        fields: &record.fields,
    }
}

/// Captured records, newest first.
#[derive(Serialize, ToSchema)]
struct LogsBody<'a> {
    records: Vec<RecordBody<'a>>,
}

/// The processes whose records were cleared.
#[derive(Serialize, ToSchema)]
struct ClearedBody {
    cleared: Vec<&'static str>,
}

/// The stats document of every live instance.
#[derive(Serialize, ToSchema)]
struct StatsBody {
    /// `{"process","instance","updated_at","uptime_s","cpu_percent","rss_bytes","tokio","http",...}`.
    #[schema(value_type = Vec<Object>)]
    instances: Vec<StatsDocument>,
}

/// Which records.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// `api` or `worker` (default: both).
    #[param(inline, value_type = Option<ProcessName>)]
    process: Option<String>,
    /// The least severe level (default: every level).
    #[param(inline, value_type = Option<LevelName>)]
    level: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// RFC 3339 (UTC) or milliseconds since the epoch: only newer records.
    #[param(
        pattern = "^(|[0-9]{1,15}|20[0-2][0-9]-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)$"
    )]
    since: Option<String>,
}

fn processes(process: Option<&str>) -> Result<Vec<&'static str>, ApiError> {
    match process.map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(PROCESSES.to_vec()),
        Some(name) => PROCESSES.iter().find(|p| **p == name).map(|p| vec![*p]).ok_or_else(|| {
            ApiError::bad_request(format!(
                "process {}: expected one of {}",
                crate::text::shown(name),
                PROCESSES.join(", ")
            ))
        }),
    }
}

fn parse_query(params: &LogParams) -> Result<LogQuery, ApiError> {
    let min_level = match params.level.as_deref().map(str::trim) {
        None | Some("") => tracing::Level::TRACE,
        Some(text) => text.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "level {}: expected error, warn, info, debug or trace",
                crate::text::shown(text)
            ))
        })?,
    };
    let limit = LogQuery::limit_from(params.limit.as_deref()).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let since_ms = match params.since.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(parse_since(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "since {}: expected RFC 3339 (2026-11-22T08:00:00Z) or milliseconds since the epoch",
                crate::text::shown(text)
            ))
        })?),
    };
    Ok(LogQuery { min_level, limit, since_ms })
}

fn parse_since(text: &str) -> Option<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    let time = humantime::parse_rfc3339(text).ok()?;
    u64::try_from(keel_core::unix_millis(time)).ok()
}

fn unavailable(what: &str, err: &SinkError) -> ApiError {
    ApiError::unavailable(format!("cannot read {what}: {err}"))
}

/// Captured log records (admin).
#[utoipa::path(get, path = "/api/v1/monitoring/logs", operation_id = "get_logs", tag = "monitoring", security(("admin" = [])), params(LogParams),
    responses(
        (status = 200, description = "Records, newest first", body = LogsBody<'static>),
        (status = 400, description = "A bad parameter", body = ErrorSchema),
        AdminRefusals,
        (status = 503, description = "The log store is unreachable", body = ErrorSchema),
    ))]
async fn logs(
    State(service): State<std::sync::Arc<Operators>>,
    _admin: Admin,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    let query = parse_query(&params)?;
    let processes = processes(params.process.as_deref())?;
    let records = service.hub.recent(&processes, &query).await.map_err(|err| unavailable("logs", &err))?;
    Ok(Json(LogsBody { records: records.iter().map(record_body).collect() }).into_response())
}

/// Whose records.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ClearParams {
    /// `api` or `worker` (default: both).
    #[param(inline, value_type = Option<ProcessName>)]
    process: Option<String>,
}

crate::openapi::string_enum_schema!(ProcessName, "`api` or `worker`; empty: both.", ["", "api", "worker"]);
crate::openapi::string_enum_schema!(
    LevelName,
    "The least severe level; empty: every level.",
    ["", "error", "warn", "info", "debug", "trace"]
);

/// Forgets captured log records (admin).
#[utoipa::path(delete, path = "/api/v1/monitoring/logs", operation_id = "clear_logs", tag = "monitoring", security(("admin" = [])),
    params(ClearParams),
    responses(
        (status = 200, description = "Cleared", body = ClearedBody),
        (status = 400, description = "A bad parameter", body = ErrorSchema),
        AdminRefusals,
        (status = 503, description = "The log store is unreachable", body = ErrorSchema),
    ))]
async fn clear(
    State(service): State<std::sync::Arc<Operators>>,
    _admin: Admin,
    Query(params): Query<ClearParams>,
) -> Result<Json<ClearedBody>, ApiError> {
    let cleared = processes(params.process.as_deref())?;
    for process in &cleared {
        service.hub.clear(process).await.map_err(|err| ApiError::unavailable(format!("cannot clear logs: {err}")))?;
    }
    tracing::info!(processes = ?cleared, "captured logs cleared");
    Ok(Json(ClearedBody { cleared }))
}

/// The stats of every live api and worker instance (admin).
#[utoipa::path(get, path = "/api/v1/monitoring/stats", operation_id = "get_stats", tag = "monitoring", security(("admin" = [])),
    responses(
        (status = 200, description = "One document per instance", body = StatsBody),
        AdminRefusals,
        (status = 503, description = "The stats store is unreachable", body = ErrorSchema),
    ))]
async fn stats(State(service): State<std::sync::Arc<Operators>>, _admin: Admin) -> Result<Json<StatsBody>, ApiError> {
    let instances = service.hub.instances().await.map_err(|err| unavailable("stats", &err))?;
    Ok(Json(StatsBody { instances }))
}

/// One event in SSE form: `stats` with a document, or one `log` event per
/// record.
fn sse_events(event: MonitoringEvent) -> Vec<Event> {
    match event {
        MonitoringEvent::Stats { stats } => vec![stats_event(&stats)],
        MonitoringEvent::Logs { records } => records
            .iter()
            .map(|record| Event::default().event("log").json_data(record_body(record)).unwrap_or_default())
            .collect(),
    }
}

fn stats_event(document: &StatsDocument) -> Event {
    Event::default().event("stats").json_data(document).unwrap_or_default()
}

/// Live `stats` and `log` events (admin), starting with the current stats.
#[utoipa::path(get, path = "/api/v1/monitoring/stream", operation_id = "monitoring_stream", tag = "monitoring", security(("admin" = [])),
    responses(
        (status = 200, description = "Server-Sent Events: `stats` (a stats document) and `log` (a record)",
            body = SseEvent, content_type = "text/event-stream"),
        AdminRefusals,
        (status = 503, description = "The event bus is unreachable, or too many streams (--max-streams, or 32 per \
            client address)", body = ErrorSchema),
    ))]
async fn stream(
    State(service): State<std::sync::Arc<Operators>>,
    _admin: Admin,
    slot: crate::StreamSlot,
) -> Result<Response, ApiError> {
    let (gate, permit) = slot.open()?;
    let events = service
        .hub
        .subscribe()
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot open the monitoring stream: {err}")))?;
    // Start with the current stats, so a new viewer sees every live instance.
    let current = service.hub.instances().await.unwrap_or_default();
    let first: std::collections::VecDeque<Event> = current.iter().map(stats_event).collect();
    let stream = futures_util::stream::unfold((first, events), |(mut pending, mut events)| async move {
        loop {
            if let Some(event) = pending.pop_front() {
                return Some((Ok::<Event, Infallible>(event), (pending, events)));
            }
            pending.extend(sse_events(events.recv().await?));
        }
    });
    // The stream's own answer is not captured: with `keel_http::request` at
    // debug, every opened stream would otherwise send its "request answered"
    // record to every other stream.
    let mut response =
        Sse::new(gate.bound(permit, stream, slot.stopped())).keep_alive(KeepAlive::default()).into_response();
    response.extensions_mut().insert(keel_telemetry::Uncaptured);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_checked() {
        let params = |level: Option<&str>, limit: Option<&str>, since: Option<&str>| LogParams {
            process: None,
            level: level.map(Into::into),
            limit: limit.map(Into::into),
            since: since.map(Into::into),
        };
        let query = parse_query(&params(Some("WARN"), Some("5"), Some("2026-11-22T08:00:00Z"))).unwrap();
        assert_eq!((query.min_level, query.limit), (tracing::Level::WARN, 5));
        assert_eq!(query.since_ms, Some(1_795_334_400_000));
        assert_eq!(parse_query(&params(None, None, Some("1700000000000"))).unwrap().since_ms, Some(1_700_000_000_000));
        assert_eq!(parse_query(&params(None, None, None)).unwrap().limit, 100);
        for bad in [params(Some("loud"), None, None), params(None, Some("0"), None), params(None, Some("1001"), None)] {
            assert_eq!(parse_query(&bad).unwrap_err().status(), 400);
        }
        assert_eq!(parse_query(&params(None, None, Some("yesterday"))).unwrap_err().status(), 400);
        assert_eq!(processes(Some("worker")).unwrap(), ["worker"]);
        assert_eq!(processes(None).unwrap(), ["api", "worker"]);
        assert_eq!(processes(Some("db")).unwrap_err().status(), 400);
    }

    #[test]
    fn events_become_sse_events() {
        let record = LogRecord { level: "INFO".into(), message: "hello".into(), ..Default::default() };
        assert_eq!(sse_events(MonitoringEvent::Logs { records: vec![record.clone(), record] }).len(), 2);
        assert_eq!(record_body(&LogRecord { time_ms: 1500, ..Default::default() }).time, "1970-01-01T00:00:01.500Z");
    }
}
