//! The agent-metadata service: batched writes, reads, and live watches.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use keel_batcher::{AddError, Batcher, DbMetadataSink, MetadataKey, MetadataValue, decode_chunk};
use keel_store::Bus;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::ApiError;
use crate::text::{clip, nul_error, shown};

/// Most keys accepted in one request.
pub const MAX_KEYS: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest value kept, in bytes; longer values are truncated with a note.
pub const MAX_VALUE_LEN: usize = 2048;
/// How far in the future `collected_at` may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Everything the metadata endpoints need; cloning shares it.
#[derive(Clone)]
pub struct AgentMetadata {
    batcher: Batcher<MetadataKey, MetadataValue>,
    sink: Arc<DbMetadataSink>,
    changes: broadcast::Sender<Uuid>,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for AgentMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetadata").field("batcher", &self.batcher).finish_non_exhaustive()
    }
}

impl AgentMetadata {
    /// Wires the endpoints to `batcher` (writes), `sink` (reads) and the
    /// change notifications on `channel` of `bus`, which reach this process
    /// whichever replica wrote. Watches end when `stop` is cancelled, so open
    /// streams never hold up a graceful shutdown.
    pub async fn new(
        batcher: Batcher<MetadataKey, MetadataValue>,
        sink: Arc<DbMetadataSink>,
        bus: &Bus,
        channel: &str,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Self, keel_store::StoreError> {
        let (changes, _) = broadcast::channel(1024);
        let mut subscription = bus.subscribe(channel).await?;
        let fanout = changes.clone();
        tokio::spawn(async move {
            while let Some(payload) = subscription.recv().await {
                match decode_chunk(&payload) {
                    Ok(agents) => {
                        for agent in agents {
                            // No watcher is fine.
                            let _ = fanout.send(agent);
                        }
                    }
                    Err(err) => tracing::warn!(%err, "ignoring a malformed metadata notification"),
                }
            }
        });
        Ok(Self { batcher, sink, changes, stop })
    }

    /// The batcher behind the writes.
    pub fn batcher(&self) -> &Batcher<MetadataKey, MetadataValue> {
        &self.batcher
    }
}

/// `POST|GET /api/v1/agents/{agent_id}/metadata` and
/// `GET /api/v1/agents/{agent_id}/metadata/watch` (Server-Sent Events).
pub fn agents_router(service: AgentMetadata) -> Router {
    Router::new()
        .route("/api/v1/agents/{agent_id}/metadata", post(submit).get(read))
        .route("/api/v1/agents/{agent_id}/metadata/watch", get(watch))
        .with_state(service)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    metadata: Vec<Item>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    key: String,
    value: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    collected_at: Option<String>,
}

fn agent(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_request(format!("invalid agent id {}: expected a UUID", shown(id))))
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Cuts `value` and `error` to at most `MAX_VALUE_LEN` bytes each, on a
/// character boundary; a cut value is noted in the error.
fn truncate(value: String, error: Option<String>) -> (String, String) {
    let error = error.unwrap_or_default();
    let (value, cut_from) = cut(value);
    let error = match cut_from {
        None => error,
        Some(from) => {
            let note = format!("value truncated from {from} to {} bytes", value.len());
            if error.is_empty() { note } else { format!("{error}; {note}") }
        }
    };
    (value, cut(error).0)
}

/// `text` cut to `MAX_VALUE_LEN` bytes, and its length before when it was cut.
fn cut(mut text: String) -> (String, Option<usize>) {
    if text.len() <= MAX_VALUE_LEN {
        return (text, None);
    }
    let from = text.len();
    let mut end = MAX_VALUE_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, Some(from))
}

async fn submit(
    State(service): State<AgentMetadata>,
    Path(agent_id): Path<String>,
    body: Result<Json<Submission>, JsonRejection>,
) -> Result<Response, ApiError> {
    let agent_id = agent(&agent_id)?;
    let Json(submission) = body.map_err(|rejection| match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::from_status(rejection.status(), &rejection.body_text()),
        other => ApiError::bad_request(format!("malformed metadata: {}", clip(&other.body_text()))),
    })?;
    if submission.metadata.len() > MAX_KEYS {
        return Err(ApiError::payload_too_large(format!(
            "{} keys in one request; at most {MAX_KEYS}",
            submission.metadata.len()
        )));
    }
    let now = SystemTime::now();
    let mut entries = Vec::with_capacity(submission.metadata.len());
    for (index, item) in submission.metadata.into_iter().enumerate() {
        if !valid_key(&item.key) {
            return Err(ApiError::bad_request(format!(
                "metadata[{index}].key {}: use 1-{MAX_KEY_LEN} characters from [A-Za-z0-9_.-]",
                shown(&item.key)
            )));
        }
        let collected_at = match item.collected_at.as_deref() {
            None => now,
            Some(text) => humantime::parse_rfc3339_weak(text).map_err(|_| {
                ApiError::bad_request(format!(
                    "metadata[{index}].collected_at {}: expected RFC 3339 in UTC, e.g. 2026-11-22T08:00:00Z",
                    shown(text)
                ))
            })?,
        };
        if collected_at > now + MAX_CLOCK_SKEW {
            return Err(ApiError::bad_request(format!(
                "metadata[{index}].collected_at is more than 5 minutes in the future"
            )));
        }
        if item.value.contains('\0') {
            return Err(nul_error(&format!("metadata[{index}].value")));
        }
        if item.error.as_deref().is_some_and(|e| e.contains('\0')) {
            return Err(nul_error(&format!("metadata[{index}].error")));
        }
        let (value, error) = truncate(item.value, item.error);
        entries.push((MetadataKey { agent_id, key: item.key }, MetadataValue { value, error, collected_at }));
    }
    let (mut accepted, mut dropped) = (0u64, 0u64);
    for (key, value) in entries {
        match service.batcher.add(key, value) {
            Ok(()) => accepted += 1,
            Err(AddError::Full) => dropped += 1,
            Err(AddError::Closed) => return Err(ApiError::unavailable("shutting down")),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted, "dropped": dropped })).into_response())
        .into_response())
}

async fn current(service: &AgentMetadata, agent_id: Uuid) -> Result<Value, ApiError> {
    let rows = service
        .sink
        .load(agent_id)
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot read metadata: {err}")))?;
    let metadata: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "key": r.key,
                "value": r.value,
                "error": r.error,
                "collected_at": humantime::format_rfc3339_micros(r.collected_at).to_string(),
            })
        })
        .collect();
    Ok(json!({ "agent_id": agent_id.to_string(), "metadata": metadata }))
}

async fn read(State(service): State<AgentMetadata>, Path(agent_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let agent_id = agent(&agent_id)?;
    Ok(Json(current(&service, agent_id).await?))
}

async fn watch(
    State(service): State<AgentMetadata>,
    Path(agent_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let agent_id = agent(&agent_id)?;
    let first = current(&service, agent_id).await?;
    let changes = service.changes.subscribe();
    let stream = futures_util::stream::unfold(
        (Some(first), changes, service),
        move |(pending, mut changes, service)| async move {
            let body = match pending {
                Some(body) => body,
                None => loop {
                    let received = tokio::select! {
                        received = changes.recv() => received,
                        () = service.stop.cancelled() => return None,
                    };
                    match received {
                        Ok(agent) if agent == agent_id => {}
                        Ok(_) => continue,
                        // Missed notifications: resend the current state.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                    match current(&service, agent_id).await {
                        Ok(body) => break body,
                        Err(err) => tracing::warn!(%err, "cannot refresh a metadata watch"),
                    }
                },
            };
            let event = Event::default().event("metadata").data(body.to_string());
            Some((Ok(event), (None, changes, service)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_truncation() {
        assert!(valid_key("cpu.load-1_m") && !valid_key("") && !valid_key("has space") && !valid_key(&"k".repeat(129)));
        let (value, error) = truncate("é".repeat(1500), None);
        assert!(value.len() <= MAX_VALUE_LEN && value.is_char_boundary(value.len()));
        assert_eq!(error, "value truncated from 3000 to 2048 bytes");
        let (value, error) = truncate("x".repeat(3000), Some("timeout".into()));
        assert_eq!((value.len(), error.as_str()), (2048, "timeout; value truncated from 3000 to 2048 bytes"));
        let (value, error) = truncate("ok".into(), Some("é".repeat(1500)));
        assert_eq!(value, "ok");
        assert!(error.len() <= MAX_VALUE_LEN && error.len() > 2040, "the error is bounded like the value");
    }
}
