//! Serving before the application is up: the process listens at once,
//! answers `/livez` 200 and `/readyz` 503 naming what it waits for, and
//! serves the whole application once it is set.

use std::convert::Infallible;
use std::future::Ready;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use futures_util::future::Either;

use crate::ApiError;

/// What a starting process still waits for: each name with its last error.
pub type Waiting = Arc<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>;

/// Serves `app` once it is set; until then `/livez` is 200, `/readyz` and
/// `/status` are 503 with one `[-]<name> failed: <why>` line per store in
/// `waiting`, and every other path is 503 with `Retry-After: 1`.
///
/// Serve it with [`crate::serve_with_limits`]. Once the application is set,
/// a request costs the gate one atomic load: the application router's own
/// future is returned as is (no second router, no extra box).
pub fn starting_gate(waiting: Waiting, app: Arc<OnceLock<Router>>) -> StartingGate {
    StartingGate { inner: Arc::new(Inner { waiting, app }) }
}

/// The service [`starting_gate`] returns.
#[derive(Clone)]
pub struct StartingGate {
    inner: Arc<Inner>,
}

struct Inner {
    waiting: Waiting,
    app: Arc<OnceLock<Router>>,
}

impl std::fmt::Debug for StartingGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartingGate").field("open", &self.inner.app.get().is_some()).finish_non_exhaustive()
    }
}

impl tower::Service<Request> for StartingGate {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.inner.app.get() {
            // A router is always ready.
            Some(app) => Either::Left(app.clone().call(request)),
            None => Either::Right(std::future::ready(Ok(answer(&(self.inner.waiting)(), &request)))),
        }
    }
}

fn answer(missing: &[(&'static str, String)], request: &Request) -> Response {
    match request.uri().path() {
        "/livez" => text(StatusCode::OK, "ok".to_owned()),
        "/readyz" | "/status" => {
            let mut body = String::new();
            for (name, why) in missing {
                body.push_str(&format!("[-]{name} failed: {}\n", keel_core::clip(why)));
            }
            body.push_str("[-]startup failed: still starting\nreadyz check failed\n");
            text(StatusCode::SERVICE_UNAVAILABLE, body)
        }
        _ => {
            let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
            let message = if names.is_empty() {
                "starting: the stores answered; the services are starting".to_owned()
            } else {
                format!("starting: waiting for {}", names.join(", "))
            };
            ApiError::unavailable(message).with_retry_after(1).into_response()
        }
    }
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(missing: &[(&'static str, String)], path: &str) -> (u16, String) {
        let request = Request::get(path).body(Body::empty()).unwrap_or_default();
        let response = answer(missing, &request);
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_starting_process_says_what_it_waits_for() {
        let missing = [("postgres", "connection refused".to_owned()), ("redis", "no answer yet".to_owned())];
        let (status, body) = body_of(&missing, "/api/v1/entries/k").await;
        assert_eq!(status, 503);
        assert!(body.contains("starting: waiting for postgres, redis"), "{body}");
        let (status, body) = body_of(&missing, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("[-]postgres failed: connection refused\n[-]redis failed: no answer yet"), "{body}");
        let (_, body) = body_of(&[], "/api/v1/entries/k").await;
        assert!(
            body.contains("the stores answered; the services are starting") && !body.contains("waiting for starting"),
            "{body}"
        );
        assert_eq!(body_of(&missing, "/livez").await.0, 200);
    }
}
