//! `/api/v1/entries/{key}` over keel-entries' service: the HTTP shapes
//! only; the rules (key, size, U+0000) are the service's.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use bytes::Bytes;
use keel_entries::{Entries, EntryError};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::ApiError;
use crate::openapi::{ApiRouter, ErrorSchema};
use crate::text::shown;

/// The entry paths of the OpenAPI document: the key is one path parameter
/// there (a `/` in it is sent as `%2F`), a wildcard in the router.
#[derive(OpenApi)]
#[openapi(paths(write, read, remove), components(schemas(Written, EntryBody)))]
struct EntriesDoc;

/// `PUT|GET|DELETE /api/v1/entries/{key}` (keys may contain `/`).
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn entries_api(entries: Entries) -> ApiRouter {
    OpenApiRouter::with_openapi(EntriesDoc::openapi())
        .route("/api/v1/entries/{*key}", put(write).get(read).delete(remove))
        .with_state(std::sync::Arc::new(entries))
}

/// The entry key, in every entry path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct KeyParam {
    /// 1-256 bytes of [A-Za-z0-9_.:/-] (a `/` may be sent as `%2F`).
    #[param(pattern = "^[A-Za-z0-9_.:/-]{1,256}$")]
    key: String,
}

/// The answer to a write: its key and version.
#[derive(Serialize, ToSchema)]
struct Written {
    key: String,
    version: i64,
}

/// An entry as read.
#[derive(Serialize, ToSchema)]
struct EntryBody {
    key: String,
    /// Any JSON value.
    value: Value,
    version: i64,
    /// RFC 3339 with microseconds.
    updated_at: String,
}

fn api_error(err: EntryError) -> ApiError {
    match err {
        EntryError::InvalidKey(key) => ApiError::bad_request(EntryError::InvalidKey(shown(&key)).to_string()),
        EntryError::TooLarge(_) => ApiError::payload_too_large(err.to_string()),
        EntryError::Unparsable(_) | EntryError::Nul(_) => ApiError::bad_request(err.to_string()),
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

/// Writes an entry: visible to reads at once, persisted behind.
#[utoipa::path(put, path = "/api/v1/entries/{key}", operation_id = "put_entry", tag = "entries", params(KeyParam),
    request_body(content = Value, description = "Any JSON value, at most 64 KiB", content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = Written),
        (status = 400, description = "A bad key, a body that is not JSON, or U+0000 in it", body = ErrorSchema),
        (status = 413, description = "The value is too large", body = ErrorSchema),
        (status = 503, description = "The queue stayed full for the enqueue timeout, or Redis is unreachable",
            body = ErrorSchema, headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
async fn write(
    State(entries): State<std::sync::Arc<Entries>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Written>), ApiError> {
    let version = entries.put_json(&key, &body).await.map_err(api_error)?;
    Ok(accepted(key, version))
}

/// Deletes an entry (a tombstone written like a value).
#[utoipa::path(delete, path = "/api/v1/entries/{key}", operation_id = "delete_entry", tag = "entries", params(KeyParam),
    responses(
        (status = 202, description = "Queued", body = Written),
        (status = 400, description = "A bad key", body = ErrorSchema),
        (status = 503, description = "The queue stayed full for the enqueue timeout, or Redis is unreachable",
            body = ErrorSchema, headers(("Retry-After" = u32, description = "Seconds"))),
    ))]
async fn remove(
    State(entries): State<std::sync::Arc<Entries>>,
    Path(key): Path<String>,
) -> Result<(StatusCode, Json<Written>), ApiError> {
    let version = entries.delete(&key).await.map_err(api_error)?;
    Ok(accepted(key, version))
}

/// Reads an entry: the cache, then the database.
#[utoipa::path(get, path = "/api/v1/entries/{key}", operation_id = "get_entry", tag = "entries", params(KeyParam),
    responses(
        (status = 200, description = "The entry", body = EntryBody),
        (status = 400, description = "A bad key", body = ErrorSchema),
        (status = 404, description = "Absent or deleted", body = ErrorSchema),
        (status = 503, description = "A store is unreachable", body = ErrorSchema),
    ))]
async fn read(
    State(entries): State<std::sync::Arc<Entries>>,
    Path(key): Path<String>,
) -> Result<Json<EntryBody>, ApiError> {
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
