//! `/livez` and `/readyz`: plain text, answered without computing an
//! aggregate.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::*;

/// The probes' form.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Verbose {
    /// Present: one line per check.
    pub(super) verbose: Option<String>,
}

pub(super) fn plain(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    respond(status, "text/plain; charset=utf-8", body)
}

/// A probe's `?verbose`. Probes rarely carry a query: the common case
/// decodes nothing.
pub(super) fn verbose(uri: &axum::http::Uri) -> Result<bool, QueryRejection> {
    Ok(uri.query().is_some() && Query::<Verbose>::try_from_uri(uri)?.0.verbose.is_some())
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/livez", operation_id = "livez", tag = "health", params(Verbose),
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
pub(super) async fn livez(request: Request) -> Result<Response, QueryRejection> {
    let body = if verbose(request.uri())? { "[+]ping ok\nlivez check passed\n" } else { "ok" };
    Ok(plain(StatusCode::OK, body))
}

/// Readiness: 503 while KO, starting or draining.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health", params(Verbose), responses(
    (status = 200, description = "Ready", body = String, content_type = "text/plain"),
    (status = 503, description = "Not ready, starting or draining", body = String, content_type = "text/plain"),
))]
pub(super) async fn readyz(
    State(state): State<std::sync::Arc<HealthState>>,
    request: Request,
) -> Result<Response, QueryRejection> {
    let verbose = verbose(request.uri())?;
    let draining = state.shutdown.is_triggered();
    let ready = !draining && state.health.is_cache_healthy();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !verbose {
        return Ok(plain(
            code,
            if ready {
                "ok"
            } else if draining {
                "draining"
            } else {
                "not ready"
            },
        ));
    }
    let mut body = String::from(if draining { "[-]shutdown failed: draining\n" } else { "[+]shutdown ok\n" });
    let snapshot = state.health.cached();
    for (name, view) in &snapshot.components {
        if view.status.is_tolerable() {
            body.push_str(&format!("[+]{name} ok\n"));
        } else {
            body.push_str(&format!("[-]{name} failed: {}\n", view.message));
        }
    }
    body.push_str(if ready { "readyz check passed\n" } else { "readyz check failed\n" });
    Ok(plain(code, body))
}
