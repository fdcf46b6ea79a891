//! `/api/v1/settings`: read, update (admin) and audit settings documents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use keel_settings_sync::{DocumentView, DynSettings, HistoryError, SettingsRegistry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{ApiRouter, ErrorSchema};
use crate::{AdminToken, ApiError};

mod stream;
mod write;

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
/// `GET /api/v1/settings/{name}/history`,
/// `POST /api/v1/settings/{name}/revert` and
/// `GET /api/v1/settings/{name}/stream` (Server-Sent Events) and
/// `GET /api/v1/settings/{name}/schema`. Writing needs the admin token.
///
/// An [`ApiRouter`](crate::ApiRouter): its routes and their OpenAPI entries
/// come from one registration; `axum::Router::from` it to serve without
/// the document.
pub fn settings_api(registry: SettingsRegistry, admin: Option<AdminToken>) -> ApiRouter {
    let mut router = routes(registry.clone(), admin);
    publish_schemas(&registry, router.get_openapi_mut());
    router
}

/// Each document's JSON Schema as a component of the API document,
/// `Settings.<name>`, so a client generator sees the shapes too.
fn publish_schemas(registry: &SettingsRegistry, document: &mut utoipa::openapi::OpenApi) {
    let components = document.components.get_or_insert_with(Default::default);
    for settings in registry.iter() {
        let mut schema = Value::clone(&settings.schema());
        if let Some(fields) = schema.as_object_mut() {
            // The document's dialect is the API document's own (3.1: 2020-12).
            fields.remove("$schema");
        }
        match serde_json::from_value::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>(schema) {
            Ok(schema) => {
                components.schemas.insert(format!("Settings.{}", settings.name()), schema);
            }
            Err(err) => tracing::warn!(settings = settings.name(), %err, "a settings schema is not an OpenAPI schema"),
        }
    }
}

fn routes(registry: SettingsRegistry, admin: Option<AdminToken>) -> ApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read, write::write))
        .routes(routes!(history))
        .routes(routes!(write::revert))
        .routes(routes!(stream::stream))
        .routes(routes!(schema))
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
        self.rendered(document).response()
    }

    /// `document` rendered at its current version: shared by every `GET`
    /// and stream until the next version.
    fn rendered(&self, document: &dyn DynSettings) -> Arc<Rendered> {
        let slot = self.rendered.get(document.name());
        let cached = slot.and_then(|slot| slot.load_full()).filter(|r| r.version == document.version());
        cached.unwrap_or_else(|| {
            let rendered = Arc::new(Rendered::of(&document.view()));
            if let Some(slot) = slot {
                slot.store(Some(rendered.clone()));
            }
            rendered
        })
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
    /// RFC 3339: when this version returns to the value before it (a
    /// timed value, `PUT …?revert_after=15m`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    revert_at: Option<String>,
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
        revert_at: time(view.revert_at),
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

/// The document's JSON Schema (2020-12), generated from its type: what a
/// `PUT` is checked against (a 422 lists each violation with its JSON
/// Pointer). Also in `/openapi.json` as the component `Settings.<name>`.
#[utoipa::path(get, path = "/api/v1/settings/{name}/schema", operation_id = "settings_schema", tag = "settings",
    params(("name" = String, Path, description = "The document name")),
    responses(
        (status = 200, description = "The JSON Schema", body = Object, content_type = "application/schema+json"),
        (status = 404, description = "No such document", body = ErrorSchema),
    ))]
async fn schema(
    State(state): State<std::sync::Arc<SettingsState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let schema = find(&state, &name)?.schema();
    let mut response = Response::new(axum::body::Body::from(serde_json::to_vec(&*schema).unwrap_or_default()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/schema+json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
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
