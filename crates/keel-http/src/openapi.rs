//! The OpenAPI 3.1 document: every router registers its routes and their
//! spec entries together (utoipa-axum), and [`openapi_router`] serves the
//! merged document at `GET /openapi.json`.

use axum::Router;
use axum::routing::get;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, RefOr};
use utoipa::{Modify, PartialSchema as _, ToSchema};

/// A router whose routes carry their OpenAPI entries.
pub type ApiRouter<S = ()> = utoipa_axum::router::OpenApiRouter<S>;

/// The error envelope's schema (`Error`), derived from the type every error
/// response is written from.
pub(crate) type ErrorSchema = crate::error::Envelope<'static>;

/// One Server-Sent Event, as the `text/event-stream` schema of a streaming
/// endpoint: its name and its data (a JSON document, as text).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SseEvent {
    /// The event name, e.g. `metadata`, `stats`, `log`.
    event: String,
    /// The event's JSON document, as text.
    data: String,
}

/// A string schema that takes exactly `values` (an empty string among
/// them, which a derived enum cannot name).
pub(crate) fn string_enum(description: &str, values: &[&str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// Implements the schema of a query or header value that takes one of a
/// fixed list of strings.
macro_rules! string_enum_schema {
    ($name:ident, $description:literal, [$($value:literal),+ $(,)?]) => {
        #[doc = $description]
        pub(crate) struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::string_enum($description, &[$($value),+])
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use string_enum_schema;

/// The answers of an admin endpoint to a missing or wrong token.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum AdminRefusals {
    /// No or wrong bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorSchema),
    /// Admin endpoints are disabled (no token configured).
    #[response(status = 403)]
    Forbidden(ErrorSchema),
}

/// The name of the admin bearer security scheme.
pub(crate) const ADMIN: &str = "admin";

struct AdminBearer;

impl Modify for AdminBearer {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some("KEEL_ADMIN_TOKEN (--admin-token); without one, admin endpoints answer 403".into());
        components.add_security_scheme(ADMIN, SecurityScheme::Http(bearer));
        components.schemas.insert("Error".into(), ErrorSchema::schema());
        components.schemas.insert("ErrorDetail".into(), crate::error::ErrorDetail::schema());
    }
}

/// An empty document titled `title` at `version`, with the admin bearer
/// scheme and the error shape: start an [`ApiRouter`] from it.
pub fn api_base(title: &str, version: &str) -> ApiRouter {
    let mut doc = OpenApiBuilder::new().info(InfoBuilder::new().title(title).version(version).build()).build();
    AdminBearer.modify(&mut doc);
    ApiRouter::with_openapi(doc)
}

/// `GET /openapi.json`: `doc` as JSON.
pub fn openapi_router(doc: OpenApi) -> Router {
    let body = doc.to_json().unwrap_or_default();
    Router::new().route(
        "/openapi.json",
        get(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}
