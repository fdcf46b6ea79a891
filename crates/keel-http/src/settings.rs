//! `/api/v1/settings`: read, update (admin) and audit settings documents.

use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keel_settings_sync::{DocumentView, DynSettings, SettingsRegistry, UpdateError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AdminToken, ApiError};

#[derive(Clone)]
struct SettingsState {
    registry: SettingsRegistry,
    admin: Option<AdminToken>,
}

/// `GET /api/v1/settings`, `GET|PUT /api/v1/settings/{name}` and
/// `GET /api/v1/settings/{name}/history`. Writing needs the admin token.
pub fn settings_router(registry: SettingsRegistry, admin: Option<AdminToken>) -> Router {
    Router::new()
        .route("/api/v1/settings", get(list))
        .route("/api/v1/settings/{name}", get(read).put(write))
        .route("/api/v1/settings/{name}/history", get(history))
        .with_state(SettingsState { registry, admin })
}

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| json!(humantime::format_rfc3339_millis(t).to_string()))
}

fn document_json(view: &DocumentView) -> Value {
    json!({
        "name": view.name,
        "version": view.version,
        "value": view.value,
        "updated_at": time(view.updated_at),
        "updated_by": view.updated_by,
    })
}

fn with_etag(view: &DocumentView) -> Response {
    let mut response = Json(document_json(view)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", view.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn find<'a>(state: &'a SettingsState, name: &str) -> Result<&'a std::sync::Arc<dyn DynSettings>, ApiError> {
    state
        .registry
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no settings document named {}", crate::text::shown(name))))
}

async fn list(State(state): State<SettingsState>) -> Json<Value> {
    let documents: Vec<Value> = state.registry.iter().map(|d| document_json(&d.view())).collect();
    Json(json!({ "settings": documents }))
}

async fn read(State(state): State<SettingsState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(with_etag(&find(&state, &name)?.view()))
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

async fn write(
    State(state): State<SettingsState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    AdminToken::authorize(state.admin.as_ref(), &headers)?;
    let document = find(&state, &name)?;
    let Json(value) = body.map_err(|rejection| ApiError::from_status(rejection.status(), &rejection.body_text()))?;
    crate::text::refuse_nul(&value, &name)?;
    let expected = expected_version(&headers)?;
    let actor = headers
        .get("x-actor")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|a| !a.is_empty() && a.len() <= 128)
        .unwrap_or("admin")
        .to_owned();
    match document.update_json(value, expected, &actor).await {
        Ok(view) => Ok(with_etag(&view)),
        Err(UpdateError::Invalid { reason, .. }) => {
            Err(ApiError::unprocessable(format!("not a valid {name} document: {}", crate::text::clip(&reason))))
        }
        Err(UpdateError::Conflict { expected, current, .. }) => Err(ApiError::precondition_failed(format!(
            "{name} is at version {current}, not {expected}: reload and retry"
        ))),
        Err(UpdateError::Store { source, .. }) => Err(ApiError::unavailable(format!("cannot save {name}: {source}"))),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(state): State<SettingsState>,
    Path(name): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: expected 1 to 1000"));
    }
    let changes = find(&state, &name)?
        .history(limit)
        .await
        .map_err(|err| ApiError::unavailable(format!("cannot read the history of {name}: {err}")))?;
    let changes: Vec<Value> = changes
        .into_iter()
        .map(|c| {
            let at =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(c.time_ms).unwrap_or_default());
            json!({"version": c.version, "actor": c.actor, "time": time(Some(at)), "old": c.old, "new": c.new})
        })
        .collect();
    Ok(Json(json!({ "name": name, "changes": changes })))
}
