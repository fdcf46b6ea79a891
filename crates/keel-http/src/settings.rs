//! `/api/v1/settings`: read, update (admin) and audit settings documents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use keel_settings_sync::{DocumentView, DynSettings, HistoryError, SettingsRegistry, UpdateError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{AdminRefusals, ApiRouter, ErrorSchema};
use crate::{AdminToken, ApiError};

struct SettingsState {
    registry: SettingsRegistry,
    admin: Option<AdminToken>,
    /// Each document's answer as last rendered, reused while its version
    /// holds (a version's value, time and author never change).
    rendered: HashMap<String, ArcSwapOption<Rendered>>,
}

impl crate::admin::AdminState for SettingsState {
    fn admin_token(&self) -> Option<&AdminToken> {
        self.admin.as_ref()
    }
}

/// A document's `GET` answer, rendered once per version.
struct Rendered {
    version: i64,
    body: Bytes,
    etag: Option<HeaderValue>,
}

/// `GET /api/v1/settings`, `GET|PUT /api/v1/settings/{name}`,
/// `GET /api/v1/settings/{name}/history` and
/// `POST /api/v1/settings/{name}/revert`. Writing needs the admin token.
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn settings_api(registry: SettingsRegistry, admin: Option<AdminToken>) -> ApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read, write))
        .routes(routes!(history))
        .routes(routes!(revert))
        .with_state(std::sync::Arc::new(SettingsState::new(registry, admin)))
}

impl SettingsState {
    fn new(registry: SettingsRegistry, admin: Option<AdminToken>) -> Self {
        let rendered = registry.iter().map(|d| (d.name().to_owned(), ArcSwapOption::empty())).collect();
        Self { registry, admin, rendered }
    }

    /// `GET` of `document`: the copy rendered for its current version, or a
    /// new one.
    fn answer(&self, document: &dyn DynSettings) -> Response {
        let slot = self.rendered.get(document.name());
        let cached = slot.and_then(|slot| slot.load_full()).filter(|r| r.version == document.version());
        let rendered = cached.unwrap_or_else(|| {
            let rendered = Arc::new(Rendered::of(&document.view()));
            if let Some(slot) = slot {
                slot.store(Some(rendered.clone()));
            }
            rendered
        });
        rendered.response()
    }
}

impl Rendered {
    fn of(view: &DocumentView) -> Self {
        let body = serde_json::to_vec(&document_body(view)).unwrap_or_default();
        let etag = HeaderValue::from_str(&format!("\"{}\"", view.version)).ok();
        Self { version: view.version, body: Bytes::from(body), etag }
    }

    /// The document as JSON; its version is the `ETag`.
    fn response(&self) -> Response {
        let mut response = Response::new(axum::body::Body::from(self.body.clone()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(etag) = &self.etag {
            headers.insert(header::ETAG, etag.clone());
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

fn time(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

/// A settings document.
#[derive(Serialize, ToSchema)]
struct DocumentBody {
    name: String,
    /// 0 until first written; the `ETag`.
    version: i64,
    /// The document itself.
    #[schema(value_type = Object)]
    value: Value,
    /// RFC 3339; null until first written.
    updated_at: Option<String>,
    updated_by: String,
}

/// Every document.
#[derive(Serialize, ToSchema)]
struct ListBody {
    settings: Vec<DocumentBody>,
}

/// One change of the audit trail.
#[derive(Serialize, ToSchema)]
struct ChangeBody {
    version: i64,
    actor: String,
    /// RFC 3339.
    time: Option<String>,
    /// The document before (null for the first write).
    #[schema(value_type = Option<Object>)]
    old: Value,
    /// The document after.
    #[schema(value_type = Object)]
    new: Value,
    /// The version whose value this change restored (a revert); absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    reverted_from: Option<i64>,
}

/// Which version to restore.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RevertRequest {
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

/// The audit trail of a document, newest first.
#[derive(Serialize, ToSchema)]
struct HistoryBody {
    name: String,
    changes: Vec<ChangeBody>,
}

fn document_body(view: &DocumentView) -> DocumentBody {
    DocumentBody {
        name: view.name.clone(),
        version: view.version,
        value: view.value.clone(),
        updated_at: time(view.updated_at),
        updated_by: view.updated_by.clone(),
    }
}

fn with_etag(view: &DocumentView) -> Response {
    Rendered::of(view).response()
}

fn find<'a>(state: &'a SettingsState, name: &str) -> Result<&'a std::sync::Arc<dyn DynSettings>, ApiError> {
    state
        .registry
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no settings document named {}", crate::text::shown(name))))
}

/// Every settings document this process serves.
#[utoipa::path(get, path = "/api/v1/settings", operation_id = "list_settings", tag = "settings",
    responses((status = 200, description = "Every document", body = ListBody)))]
async fn list(State(state): State<std::sync::Arc<SettingsState>>) -> Json<ListBody> {
    Json(ListBody { settings: state.registry.iter().map(|d| document_body(&d.view())).collect() })
}

/// One document; its version is the `ETag`.
#[utoipa::path(get, path = "/api/v1/settings/{name}", operation_id = "get_settings", tag = "settings",
    params(("name" = String, Path, description = "The document name, e.g. monitoring")),
    responses(
        (status = 200, description = "The document", body = DocumentBody,
            headers(("ETag" = String, description = "The version, quoted"))),
        (status = 404, description = "No such document", body = ErrorSchema),
    ))]
async fn read(
    State(state): State<std::sync::Arc<SettingsState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(state.answer(&**find(&state, &name)?))
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

/// Replaces a document (admin). `If-Match` makes it conditional.
#[utoipa::path(put, path = "/api/v1/settings/{name}", operation_id = "put_settings", tag = "settings", security(("admin" = [])),
    params(
        ("name" = String, Path, description = "The document name"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The version the change is based on, e.g. \"3\"",
            pattern = "^(\\*|(W/)?\"[0-9]{1,18}\"|[0-9]{1,18})$"),
        ("X-Actor" = Option<String>, Header, nullable = false, description = "Who makes the change (audit); longer than 128 bytes or blank counts as admin"),
    ),
    request_body(content = Object, description = "The whole document", content_type = "application/json"),
    responses(
        (status = 200, description = "Saved", body = DocumentBody),
        (status = 400, description = "Bad If-Match, or U+0000 in the document", body = ErrorSchema),
        AdminRefusals,
        (status = 404, description = "No such document", body = ErrorSchema),
        (status = 412, description = "The document changed since the If-Match version", body = ErrorSchema),
        (status = 413, description = "The body is too large", body = ErrorSchema),
        (status = 415, description = "The body is not application/json", body = ErrorSchema),
        (status = 422, description = "Not a valid document, or not JSON", body = ErrorSchema),
        (status = 503, description = "The database is unreachable", body = ErrorSchema),
    ))]
async fn write(
    State(state): State<std::sync::Arc<SettingsState>>,
    _admin: crate::admin::Admin,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let document = find(&state, &name)?;
    let (value, expected, actor) = change(body, &headers)?;
    document.update_json(value, expected, actor).await.map(|view| with_etag(&view)).map_err(|err| refused(&name, err))
}

/// The answer to a refused update or revert.
fn refused(name: &str, err: UpdateError) -> ApiError {
    match err {
        UpdateError::Invalid { reason, .. } => {
            ApiError::unprocessable(format!("not a valid {name} document: {}", crate::text::clip(&reason)))
        }
        UpdateError::Conflict { expected, current, .. } => {
            ApiError::precondition_failed(format!("{name} is at version {current}, not {expected}: reload and retry"))
        }
        UpdateError::UnknownVersion { version, .. } => {
            ApiError::not_found(format!("{name} has no version {version} in its history"))
        }
        err @ UpdateError::Nul { .. } => ApiError::bad_request(err.to_string()),
        UpdateError::Store { source, .. } => ApiError::unavailable(format!("cannot save {name}: {source}")),
    }
}

/// Restores an earlier version (admin): its value, checked again, becomes
/// the next version, and the history records which version it restores.
/// `If-Match` makes it conditional.
#[utoipa::path(post, path = "/api/v1/settings/{name}/revert", operation_id = "revert_settings", tag = "settings", security(("admin" = [])),
    params(
        ("name" = String, Path, description = "The document name"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The version the change is based on, e.g. \"3\"",
            pattern = "^(\\*|(W/)?\"[0-9]{1,18}\"|[0-9]{1,18})$"),
        ("X-Actor" = Option<String>, Header, nullable = false, description = "Who makes the change (audit); longer than 128 bytes or blank counts as admin"),
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
async fn revert(
    State(state): State<std::sync::Arc<SettingsState>>,
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

/// How many changes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The audit trail of a document, newest first.
#[utoipa::path(get, path = "/api/v1/settings/{name}/history", operation_id = "settings_history", tag = "settings",
    params(("name" = String, Path, description = "The document name"), HistoryQuery),
    responses(
        (status = 200, description = "The changes", body = HistoryBody),
        (status = 400, description = "A bad limit", body = ErrorSchema),
        (status = 404, description = "No such document", body = ErrorSchema),
        (status = 503, description = "The database is unreachable", body = ErrorSchema),
    ))]
async fn history(
    State(state): State<std::sync::Arc<SettingsState>>,
    Path(name): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryBody>, ApiError> {
    let changes = find(&state, &name)?.history(query.limit).await.map_err(|err| match err {
        HistoryError::Limit(_) => ApiError::bad_request(err.to_string()),
        HistoryError::Store(err) => ApiError::unavailable(format!("cannot read the history of {name}: {err}")),
    })?;
    let changes = changes
        .into_iter()
        .map(|c| {
            let at =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(c.time_ms).unwrap_or_default());
            ChangeBody {
                version: c.version,
                actor: c.actor,
                time: time(Some(at)),
                old: c.old,
                new: c.new,
                reverted_from: c.reverted_from,
            }
        })
        .collect();
    Ok(Json(HistoryBody { name, changes }))
}
