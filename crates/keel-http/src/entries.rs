//! `/api/v1/entries/{key}` over keel-write-behind's entries service: the
//! HTTP shapes only; the rules are the service's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use axum::{Json, Router};
use bytes::Bytes;
use keel_write_behind::{Entries, EntryError, MAX_ENTRY_VALUE};
use serde::Serialize;
use serde_json::Value;

use crate::ApiError;
use crate::text::{refuse_nul, shown};

/// `PUT|GET|DELETE /api/v1/entries/{key}` (keys may contain `/`).
pub fn entries_router(entries: Entries) -> Router {
    Router::new().route("/api/v1/entries/{*key}", put(write).get(read).delete(remove)).with_state(entries)
}

/// The answer to a write: its key and version.
#[derive(Serialize)]
struct Written {
    key: String,
    version: i64,
}

/// An entry as read.
#[derive(Serialize)]
struct EntryBody {
    key: String,
    value: Value,
    version: i64,
    updated_at: String,
}

fn api_error(err: EntryError) -> ApiError {
    match err {
        EntryError::InvalidKey(key) => ApiError::bad_request(EntryError::InvalidKey(shown(&key)).to_string()),
        EntryError::Full(_) => ApiError::unavailable(err.to_string()).with_retry_after(1),
        EntryError::ShuttingDown => ApiError::unavailable(err.to_string()),
        EntryError::Unavailable { retry: true, .. } => ApiError::unavailable(err.to_string()).with_retry_after(1),
        EntryError::Unavailable { .. } => ApiError::unavailable(err.to_string()),
        EntryError::Internal(_) => ApiError::internal(err.to_string()),
    }
}

fn accepted(key: String, version: i64) -> (StatusCode, Json<Written>) {
    (StatusCode::ACCEPTED, Json(Written { key, version }))
}

async fn write(
    State(entries): State<Entries>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Written>), ApiError> {
    Entries::check_key(&key).map_err(api_error)?;
    if body.len() > MAX_ENTRY_VALUE {
        return Err(ApiError::payload_too_large(format!("{} bytes; values are at most {MAX_ENTRY_VALUE}", body.len())));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("the body is not JSON: {err}")))?;
    refuse_nul(&value, "value")?;
    let version = entries.put(&key, value).await.map_err(api_error)?;
    Ok(accepted(key, version))
}

async fn remove(
    State(entries): State<Entries>,
    Path(key): Path<String>,
) -> Result<(StatusCode, Json<Written>), ApiError> {
    let version = entries.delete(&key).await.map_err(api_error)?;
    Ok(accepted(key, version))
}

async fn read(State(entries): State<Entries>, Path(key): Path<String>) -> Result<Json<EntryBody>, ApiError> {
    match entries.get(&key).await.map_err(api_error)? {
        Some(entry) => Ok(Json(EntryBody {
            value: entry.value,
            version: entry.version,
            updated_at: humantime::format_rfc3339_micros(entry.updated_at).to_string(),
            key,
        })),
        None => Err(ApiError::not_found(format!("no entry {}", shown(&key)))),
    }
}
