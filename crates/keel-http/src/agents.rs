//! `/api/v1/agents/{agent_id}/metadata` over keel-batcher's agent-metadata
//! service: the HTTP and JSON shapes only; the rules are the service's.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use keel_batcher::{AgentMetadata, MetadataError, MetadataRow, Submitted};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::ApiError;
use crate::json_body::JsonBody;
use crate::openapi::{ApiRouter, ErrorSchema, SseEvent};
use crate::text::{clip, shown};

/// `POST|GET /api/v1/agents/{agent_id}/metadata` and
/// `GET /api/v1/agents/{agent_id}/metadata/watch` (Server-Sent Events).
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn agents_api(service: AgentMetadata) -> ApiRouter {
    OpenApiRouter::new().routes(routes!(submit, read)).routes(routes!(watch)).with_state(std::sync::Arc::new(service))
}

/// The agent, in every agent path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct AgentParam {
    /// The agent's UUID.
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    agent_id: String,
}

/// A submission: up to 64 keys.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Submission {
    #[schema(max_items = 64)]
    metadata: Vec<Item>,
}

/// One submitted key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Item {
    /// 1-128 bytes of [A-Za-z0-9_.-].
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    key: String,
    /// Cut to 2048 bytes, with a note in `error`; no U+0000.
    #[schema(pattern = "^[^\\u0000]*$")]
    value: String,
    /// Why collection failed, if it did; no U+0000.
    #[serde(default)]
    #[schema(pattern = "^[^\\u0000]*$")]
    error: Option<String>,
    /// RFC 3339 in UTC; now when absent; at most 5 minutes ahead.
    #[serde(default)]
    #[schema(
        pattern = "^(20[01][0-9]|202[0-5])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
    )]
    collected_at: Option<String>,
}

/// How many keys were taken and dropped.
#[derive(Serialize, ToSchema)]
struct AcceptedBody {
    accepted: u64,
    dropped: u64,
}

/// The stored metadata of one agent.
#[derive(Serialize, ToSchema)]
struct AgentBody {
    agent_id: String,
    metadata: Vec<RowBody>,
}

/// One stored key.
#[derive(Serialize, ToSchema)]
struct RowBody {
    key: String,
    value: String,
    error: String,
    collected_at: String,
}

fn api_error(err: MetadataError) -> ApiError {
    match err {
        MetadataError::TooMany(_) => ApiError::payload_too_large(err.to_string()),
        MetadataError::ShuttingDown | MetadataError::Unavailable(_) => ApiError::unavailable(err.to_string()),
        _ => ApiError::bad_request(err.to_string()),
    }
}

fn agent(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_request(format!("invalid agent id {}: expected a UUID", shown(id))))
}

fn submitted(index: usize, item: Item) -> Result<Submitted, ApiError> {
    let collected_at = match item.collected_at.as_deref() {
        None => None,
        Some(text) => Some(humantime::parse_rfc3339(text).map_err(|_| {
            ApiError::bad_request(format!(
                "metadata[{index}].collected_at {}: expected RFC 3339 in UTC, e.g. 2026-11-22T08:00:00Z",
                shown(text)
            ))
        })?),
    };
    Ok(Submitted { key: item.key, value: item.value, error: item.error, collected_at })
}

/// Submits metadata values; they are batched and written behind.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/metadata", operation_id = "submit_metadata", tag = "agents", params(AgentParam),
    request_body(content = Submission, content_type = "application/json"),
    responses(
        (status = 202, description = "Taken (or dropped when the batcher is full). Best-effort, as agents send their metadata again every interval: held in memory until the next flush (at most 5 s), so a SIGKILL or power loss of the api loses what was taken since the last flush; a SIGTERM flushes it", body = AcceptedBody),
        (status = 400, description = "A bad agent id, key, time, or U+0000", body = ErrorSchema),
        (status = 413, description = "More than 64 keys, or the body is too large", body = ErrorSchema),
        (status = 415, description = "The body is not application/json", body = ErrorSchema),
        (status = 503, description = "Shutting down", body = ErrorSchema),
    ))]
async fn submit(
    State(service): State<std::sync::Arc<AgentMetadata>>,
    Path(agent_id): Path<String>,
    body: Result<JsonBody<Submission>, JsonRejection>,
) -> Result<(StatusCode, Json<AcceptedBody>), ApiError> {
    let agent_id = agent(&agent_id)?;
    let JsonBody(submission) = body.map_err(|rejection| match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::from_status(rejection.status(), &rejection.body_text()),
        other => ApiError::bad_request(format!("malformed metadata: {}", clip(&other.body_text()))),
    })?;
    let items = submission.metadata.into_iter().enumerate().map(|(i, item)| submitted(i, item));
    let items = items.collect::<Result<Vec<_>, _>>()?;
    let taken = service.submit(agent_id, items, SystemTime::now()).map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(AcceptedBody { accepted: taken.accepted, dropped: taken.dropped })))
}

fn row_body(row: MetadataRow) -> RowBody {
    RowBody {
        key: row.key,
        value: row.value,
        error: row.error,
        collected_at: humantime::format_rfc3339_micros(row.collected_at).to_string(),
    }
}

async fn current(service: &AgentMetadata, agent_id: Uuid) -> Result<AgentBody, ApiError> {
    let rows = service.load(agent_id).await.map_err(api_error)?;
    Ok(AgentBody { agent_id: agent_id.to_string(), metadata: rows.into_iter().map(row_body).collect() })
}

/// The stored metadata of an agent, sorted by key.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/metadata", operation_id = "get_metadata", tag = "agents", params(AgentParam),
    responses(
        (status = 200, description = "The metadata", body = AgentBody),
        (status = 400, description = "A bad agent id", body = ErrorSchema),
        (status = 503, description = "The database is unreachable", body = ErrorSchema),
    ))]
async fn read(
    State(service): State<std::sync::Arc<AgentMetadata>>,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentBody>, ApiError> {
    let agent_id = agent(&agent_id)?;
    Ok(Json(current(&service, agent_id).await?))
}

/// The next state to send: the first, or after the next change of this agent.
async fn next_state(
    service: &AgentMetadata,
    changes: &mut broadcast::Receiver<Uuid>,
    agent_id: Uuid,
) -> Option<AgentBody> {
    loop {
        let received = tokio::select! {
            received = changes.recv() => received,
            () = service.stopped().cancelled() => return None,
        };
        match received {
            Ok(agent) if agent == agent_id => {}
            Ok(_) => continue,
            // Missed notifications: resend the current state.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        }
        match current(service, agent_id).await {
            Ok(body) => return Some(body),
            Err(err) => tracing::warn!(%err, "cannot refresh a metadata watch"),
        }
    }
}

/// The agent's metadata now and after every change (Server-Sent Events).
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/metadata/watch", operation_id = "watch_metadata", tag = "agents", params(AgentParam),
    responses(
        (status = 200, description = "`metadata` events, each the whole current metadata",
            body = SseEvent, content_type = "text/event-stream"),
        (status = 400, description = "A bad agent id", body = ErrorSchema),
        (status = 503, description = "The database is unreachable, or too many streams (--max-streams, or 32 per \
            client address)", body = ErrorSchema),
    ))]
async fn watch(
    State(service): State<std::sync::Arc<AgentMetadata>>,
    Path(agent_id): Path<String>,
    slot: crate::StreamSlot,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let agent_id = agent(&agent_id)?;
    let (gate, permit) = slot.open()?;
    let first = current(&service, agent_id).await?;
    let changes = service.changes();
    let stream = futures_util::stream::unfold(
        (Some(first), changes, service),
        move |(pending, mut changes, service)| async move {
            let body = match pending {
                Some(body) => body,
                None => next_state(&service, &mut changes, agent_id).await?,
            };
            let event = Event::default().event("metadata").json_data(&body).unwrap_or_default();
            Some((Ok(event), (None, changes, service)))
        },
    );
    // The watch also ends when the process stops: its change feed closes.
    Ok(Sse::new(gate.bound(permit, stream, slot.stopped())).keep_alive(KeepAlive::default()))
}
