//! `/api/v1/monitoring`: captured logs, live stats and their stream, for
//! operators (admin token).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::Stream;
use keel_monitoring::{LogQuery, LogRecord, LogSink, LogStore, SinkError, SinkFuture, StatsDocument, StatsStore};
use keel_store::Bus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AdminToken, ApiError};

/// The processes whose logs can be read.
pub const PROCESSES: [&str; 2] = ["api", "worker"];
/// Most records one read returns.
pub const MAX_LOG_LIMIT: usize = 1000;

/// What the monitoring endpoints read from; cloning shares it.
#[derive(Clone)]
pub struct MonitoringService {
    logs: LogStore,
    stats: StatsStore,
    events: Bus,
    channel: String,
    admin: Option<AdminToken>,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for MonitoringService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitoringService").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl MonitoringService {
    /// Reads logs from `logs` and stats from `stats`; new stats and log
    /// records travel on `channel` of `events` (the Redis bus in cluster
    /// mode, so a stream on any replica sees every process). Streams end when
    /// `stop` is cancelled.
    pub fn new(
        logs: LogStore,
        stats: StatsStore,
        events: Bus,
        channel: impl Into<String>,
        admin: Option<AdminToken>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self { logs, stats, events, channel: channel.into(), admin, stop }
    }

    /// The bus channel of a namespace's monitoring events.
    pub fn channel(namespace: &str) -> String {
        format!("{namespace}:monitoring")
    }

    /// A sink that stores records in the log store, then announces them to
    /// every stream.
    pub fn log_sink(&self) -> Arc<dyn LogSink> {
        Arc::new(AnnouncingSink { inner: self.logs.sink(), events: self.events.clone(), channel: self.channel.clone() })
    }

    /// Announces a published stats document to every stream (in the
    /// background: the collector never waits for the bus).
    pub fn announce_stats(&self, document: &StatsDocument) {
        let payload = json!({ "kind": "stats", "stats": document }).to_string();
        let (events, channel) = (self.events.clone(), self.channel.clone());
        tokio::spawn(async move {
            // No stream listening, or the bus briefly down: the document is in
            // the store either way.
            let _ = events.publish(&channel, Bytes::from(payload)).await;
        });
    }
}

struct AnnouncingSink {
    inner: Arc<dyn LogSink>,
    events: Bus,
    channel: String,
}

impl LogSink for AnnouncingSink {
    fn push<'a>(&'a self, records: &'a [LogRecord]) -> SinkFuture<'a> {
        Box::pin(async move {
            self.inner.push(records).await?;
            let payload = json!({ "kind": "logs", "records": records }).to_string();
            // Stored is what counts: a failed announcement only means open
            // streams miss these records, which the log endpoint still serves.
            let _ = self.events.publish(&self.channel, Bytes::from(payload)).await;
            Ok(())
        })
    }
}

/// `GET|DELETE /api/v1/monitoring/logs`, `GET /api/v1/monitoring/stats` and
/// `GET /api/v1/monitoring/stream` (Server-Sent Events). All need the admin
/// token.
pub fn monitoring_router(service: MonitoringService) -> Router {
    Router::new()
        .route("/api/v1/monitoring/logs", get(logs).delete(clear))
        .route("/api/v1/monitoring/stats", get(stats))
        .route("/api/v1/monitoring/stream", get(stream))
        .with_state(service)
}

/// A record in the HTTP shape: `time` as RFC 3339.
fn record_json(record: &LogRecord) -> Value {
    let time = UNIX_EPOCH + Duration::from_millis(record.time_ms);
    json!({
        "time": humantime::format_rfc3339_millis(time).to_string(),
        "level": record.level,
        "target": record.target,
        "message": record.message,
        "process": record.process,
        "instance": record.instance,
        "fields": record.fields,
    })
}

#[derive(Deserialize)]
struct LogParams {
    process: Option<String>,
    level: Option<String>,
    limit: Option<String>,
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
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(text) => {
            text.trim().parse::<usize>().ok().filter(|n| (1..=MAX_LOG_LIMIT).contains(n)).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit {}: expected a number from 1 to {MAX_LOG_LIMIT}",
                    crate::text::shown(text)
                ))
            })?
        }
    };
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
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    u64::try_from(keel_core::unix_millis(time)).ok()
}

fn unavailable(what: &str, err: &SinkError) -> ApiError {
    ApiError::unavailable(format!("cannot read {what}: {err}"))
}

async fn logs(
    State(service): State<MonitoringService>,
    headers: HeaderMap,
    Query(params): Query<LogParams>,
) -> Result<Json<Value>, ApiError> {
    AdminToken::authorize(service.admin.as_ref(), &headers)?;
    let query = parse_query(&params)?;
    let mut records = Vec::new();
    for process in processes(params.process.as_deref())? {
        records.extend(service.logs.recent(process, &query).await.map_err(|err| unavailable("logs", &err))?);
    }
    // Newest first across processes.
    records.sort_by_key(|r| std::cmp::Reverse(r.time_ms));
    records.truncate(query.limit);
    Ok(Json(json!({ "records": records.iter().map(record_json).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
struct ClearParams {
    process: Option<String>,
}

async fn clear(
    State(service): State<MonitoringService>,
    headers: HeaderMap,
    Query(params): Query<ClearParams>,
) -> Result<Json<Value>, ApiError> {
    AdminToken::authorize(service.admin.as_ref(), &headers)?;
    let cleared = processes(params.process.as_deref())?;
    for process in &cleared {
        service.logs.clear(process).await.map_err(|err| ApiError::unavailable(format!("cannot clear logs: {err}")))?;
    }
    tracing::info!(processes = ?cleared, "captured logs cleared");
    Ok(Json(json!({ "cleared": cleared })))
}

async fn stats(State(service): State<MonitoringService>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    AdminToken::authorize(service.admin.as_ref(), &headers)?;
    let instances = service.stats.list().await.map_err(|err| unavailable("stats", &err))?;
    Ok(Json(json!({ "instances": instances })))
}

/// Turns one bus message into SSE events: `stats` with a document, or one
/// `log` event per record.
fn events_of(payload: &[u8]) -> Vec<Event> {
    let Ok(mut message) = serde_json::from_slice::<Value>(payload) else { return Vec::new() };
    match message["kind"].as_str() {
        Some("stats") => vec![Event::default().event("stats").data(message["stats"].to_string())],
        Some("logs") => serde_json::from_value::<Vec<LogRecord>>(message["records"].take())
            .unwrap_or_default()
            .iter()
            .map(|record| Event::default().event("log").data(record_json(record).to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

async fn stream(
    State(service): State<MonitoringService>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    AdminToken::authorize(service.admin.as_ref(), &headers)?;
    let subscription = service
        .events
        .subscribe(&service.channel)
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot open the monitoring stream: {err}")))?;
    // Start with the current stats, so a new viewer sees every live instance.
    let current = service.stats.list().await.unwrap_or_default();
    let first: Vec<Event> =
        current.iter().map(|doc| Event::default().event("stats").data(json!(doc).to_string())).collect();
    let stop = service.stop.clone();
    let stream = futures_util::stream::unfold(
        (std::collections::VecDeque::from(first), subscription, stop),
        |(mut pending, mut subscription, stop)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (pending, subscription, stop)));
                }
                let payload = tokio::select! {
                    payload = subscription.recv() => payload?,
                    () = stop.cancelled() => return None,
                };
                pending.extend(events_of(&payload));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
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
    fn bus_messages_become_events() {
        let record = LogRecord {
            time_ms: 0,
            level: "INFO".into(),
            target: "t".into(),
            message: "hello".into(),
            process: "api".into(),
            instance: "a".into(),
            fields: Default::default(),
        };
        let payload = json!({"kind": "logs", "records": [record.clone(), record]}).to_string();
        assert_eq!(events_of(payload.as_bytes()).len(), 2);
        assert_eq!(events_of(br#"{"kind":"stats","stats":{}}"#).len(), 1);
        assert!(events_of(b"not json").is_empty());
        assert_eq!(record_json(&LogRecord { time_ms: 1500, ..Default::default() })["time"], "1970-01-01T00:00:01.500Z");
    }
}
