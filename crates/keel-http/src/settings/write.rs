//! Writing a settings document: `PUT` (plain or timed) and revert, with
//! their `If-Match`, `X-Actor` and refusals.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use keel_settings_sync::UpdateError;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{DocumentBody, SettingsState, find, with_etag};
use crate::ApiError;
use crate::openapi::{AdminRefusals, ErrorSchema};

/// Which version to restore.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevertRequest {
    /// A version from the document's history.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole_number")]
    version: i64,
}

/// A JSON integer, or a number with no fraction (`3.0`: JSON Schema's
/// `integer` accepts it, so a client generated from the schema may send it).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_i64()
        .or_else(|| number.as_f64().and_then(|f| f.to_string().parse().ok()))
        .ok_or_else(|| serde::de::Error::custom(format!("expected a whole version number, got {number}")))
}

/// `If-Match: "3"` (or `3`, `W/"3"`) → `Some(3)`; `*` or absent → `None`.
fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::bad_request("If-Match: not text"))?.trim();
    if text == "*" {
        return Ok(None);
    }
    // An entity tag (`"3"`, weak `W/"3"`) or, leniently, the bare number.
    let tag = text.strip_prefix("W/").unwrap_or(text);
    let digits = match tag.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(tag),
    };
    digits
        .filter(|d| !d.is_empty() && d.len() <= 18 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "If-Match: expected a version such as \"3\", got {}",
                crate::text::shown(text)
            ))
        })
}

/// What a write asks for: its body, the `If-Match` version and the
/// `X-Actor` (empty when absent: recorded as admin).
fn change<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    headers: &HeaderMap,
) -> Result<(T, Option<i64>, &str), ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::from_status(rejection.status(), &rejection.body_text()))?;
    let actor = headers.get("x-actor").and_then(|v| v.to_str().ok()).unwrap_or_default();
    Ok((body, expected_version(headers)?, actor))
}

/// The headers of a write: its precondition and its author. Read by
/// [`change`]; declared here once for both writes' OpenAPI entries.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(super) struct WriteHeaders {
    /// The version the change is based on, e.g. `"3"`.
    #[param(rename = "If-Match", nullable = false, pattern = "^(\\*|(W/)?\"[0-9]{1,18}\"|[0-9]{1,18})$")]
    if_match: Option<String>,
    /// Who makes the change (audit); longer than 128 bytes or blank counts
    /// as admin.
    #[param(rename = "X-Actor", nullable = false)]
    x_actor: Option<String>,
}

/// A timed value.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WriteQuery {
    /// Return to the value before after this long (`15m`, `1h`; 1 s to
    /// `[settings] max_revert_after`, 24 h by default), once across the
    /// deployment, as a new version by `keel (timed revert)`. A later write
    /// cancels it.
    #[param(pattern = "^[0-9]+ ?(ms|s|m|h|d)( ?[0-9]+ ?(ms|s|m|h|d))*$", example = "15m")]
    revert_after: Option<String>,
}

/// Replaces a document (admin). `If-Match` makes it conditional;
/// `?revert_after=15m` makes it a timed value.
#[utoipa::path(put, path = "/api/v1/settings/{name}", operation_id = "put_settings", tag = "settings", security(("admin" = [])),
    params(
        ("name" = String, Path, description = "The document name"),
        WriteQuery,
        WriteHeaders,
    ),
    request_body(content = Object, description = "The whole document", content_type = "application/json"),
    responses(
        (status = 200, description = "Saved", body = DocumentBody),
        (status = 400, description = "Bad If-Match, a revert_after that is not a duration, or U+0000 in the document", body = ErrorSchema),
        AdminRefusals,
        (status = 404, description = "No such document", body = ErrorSchema),
        (status = 412, description = "The document changed since the If-Match version", body = ErrorSchema),
        (status = 413, description = "The body is too large", body = ErrorSchema),
        (status = 415, description = "The body is not application/json", body = ErrorSchema),
        (status = 422, description = "Not a valid document, not JSON, or a revert_after outside 1 s to the configured maximum", body = ErrorSchema),
        (status = 503, description = "The database is unreachable", body = ErrorSchema),
    ))]
pub(super) async fn write(
    State(state): State<Arc<SettingsState>>,
    _admin: crate::admin::Admin,
    Path(name): Path<String>,
    query: Result<Query<WriteQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let document = find(&state, &name)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let revert_after = query
        .revert_after
        .map(|text| {
            keel_core::parse_duration(&text).map_err(|err| ApiError::bad_request(format!("revert_after: {err}")))
        })
        .transpose()?;
    let (value, expected, actor) = change(body, &headers)?;
    document
        .update_json(value, expected, actor, revert_after)
        .await
        .map(|view| with_etag(&view))
        .map_err(|err| refused(&name, err))
}

/// The answer to a refused update or revert.
fn refused(name: &str, err: UpdateError) -> ApiError {
    match err {
        UpdateError::Invalid { reason, .. } => {
            ApiError::unprocessable(format!("not a valid {name} document: {}", crate::text::clip(&reason)))
        }
        UpdateError::Schema { violations, .. } => {
            let first = violations.first().map(ToString::to_string).unwrap_or_default();
            let more = match violations.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            ApiError::unprocessable(format!("not a valid {name} document: {}{more}", crate::text::clip(&first)))
                .with_violations(
                    violations
                        .into_iter()
                        .map(|v| crate::Violation { pointer: v.pointer, message: v.message })
                        .collect(),
                )
        }
        UpdateError::Conflict { expected, current, .. } => {
            ApiError::precondition_failed(format!("{name} is at version {current}, not {expected}: reload and retry"))
        }
        UpdateError::UnknownVersion { version, .. } => {
            ApiError::not_found(format!("{name} has no version {version} in its history"))
        }
        err @ UpdateError::Nul { .. } => ApiError::bad_request(err.to_string()),
        err @ UpdateError::RevertAfter { .. } => ApiError::unprocessable(err.to_string()),
        // A store that cannot keep a timer: the request cannot be done as asked, now or later.
        UpdateError::Store { source: source @ keel_settings_sync::StoreError::Unsupported(_), .. } => {
            ApiError::unprocessable(format!("cannot save {name}: {source}"))
        }
        UpdateError::Store { source, .. } => ApiError::unavailable(format!("cannot save {name}: {source}")),
    }
}

/// Restores an earlier version (admin): its value, checked again, becomes
/// the next version, and the history records which version it restores.
/// `If-Match` makes it conditional.
#[utoipa::path(post, path = "/api/v1/settings/{name}/revert", operation_id = "revert_settings", tag = "settings", security(("admin" = [])),
    params(
        ("name" = String, Path, description = "The document name"),
        WriteHeaders,
    ),
    request_body(content = RevertRequest, description = "The version to restore", content_type = "application/json"),
    responses(
        (status = 200, description = "Saved as the next version", body = DocumentBody),
        (status = 400, description = "Bad If-Match, or a body that is not JSON", body = ErrorSchema),
        AdminRefusals,
        (status = 404, description = "No such document, or no such version in its history", body = ErrorSchema),
        (status = 412, description = "The document changed since the If-Match version", body = ErrorSchema),
        (status = 413, description = "The body is too large", body = ErrorSchema),
        (status = 415, description = "The body is not application/json", body = ErrorSchema),
        (status = 422, description = "No version number, or that version is not a valid document any more", body = ErrorSchema),
        (status = 503, description = "The database is unreachable", body = ErrorSchema),
    ))]
pub(super) async fn revert(
    State(state): State<Arc<SettingsState>>,
    _admin: crate::admin::Admin,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RevertRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let document = find(&state, &name)?;
    let (request, expected, actor) = change(body, &headers)?;
    document
        .revert(request.version, expected, actor)
        .await
        .map(|view| with_etag(&view))
        .map_err(|err| refused(&name, err))
}
