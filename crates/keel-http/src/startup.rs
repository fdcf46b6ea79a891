//! Starting without the stores: the process listens at once, answers
//! `/livez` 200 and `/readyz` 503 naming what it waits for, and serves the
//! whole application once PostgreSQL and Redis answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_core::{Backoff, Shutdown};
use keel_store::StoreError;
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::{ApiError, StartError};

/// What a starting process still waits for; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    waiting: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Startup {
    /// The stores not reachable yet, with the last error of each.
    pub fn missing(&self) -> Vec<(&'static str, String)> {
        self.lock().iter().map(|(name, why)| (*name, why.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits reporting here, for at most `timeout` in all (zero: no limit),
    /// ended early by `shutdown`.
    pub(crate) fn waiter<'a>(&'a self, timeout: Duration, shutdown: &'a Shutdown) -> Waiter<'a> {
        Waiter { startup: self, deadline: (!timeout.is_zero()).then(|| Instant::now() + timeout), timeout, shutdown }
    }

    /// The answer while the application is not up yet.
    fn answer(&self, request: &Request) -> Response {
        match request.uri().path() {
            "/livez" => text(StatusCode::OK, "ok".to_owned()),
            "/readyz" | "/status" => {
                let mut body = String::new();
                for (name, why) in self.missing() {
                    body.push_str(&format!("[-]{name} failed: {}\n", crate::text::clip(&why)));
                }
                body.push_str("[-]startup failed: still starting\nreadyz check failed\n");
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
            _ => {
                let missing: Vec<&str> = self.missing().into_iter().map(|(name, _)| name).collect();
                let waiting = if missing.is_empty() { "starting".to_owned() } else { missing.join(", ") };
                ApiError::unavailable(format!("starting: waiting for {waiting}")).with_retry_after(1).into_response()
            }
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

/// Retries a store operation while it fails transiently.
pub(crate) struct Waiter<'a> {
    startup: &'a Startup,
    deadline: Option<Instant>,
    timeout: Duration,
    shutdown: &'a Shutdown,
}

impl Waiter<'_> {
    /// Runs `op` until it succeeds. A transient failure is reported under
    /// `name` and tried again with backoff; a permanent one, the deadline or
    /// shutdown end the wait with an error.
    pub(crate) async fn until<T, F, Fut>(&self, name: &'static str, mut op: F) -> Result<T, StartError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0;
        self.startup.lock().insert(name, "connecting".to_owned());
        loop {
            let err = match op().await {
                Ok(value) => {
                    self.startup.lock().remove(name);
                    if attempt > 0 {
                        tracing::info!("{name} is reachable");
                    }
                    return Ok(value);
                }
                Err(err) if !err.kind().is_transient() => return Err(err.into()),
                Err(err) => err,
            };
            attempt += 1;
            if attempt == 1 {
                tracing::warn!(%err, "{name} unreachable; waiting for it (readiness reports it)");
            }
            self.startup.lock().insert(name, err.to_string());
            let mut delay = backoff.delay(attempt);
            if let Some(deadline) = self.deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Err(StartError::Unavailable { what: name, waited: self.timeout, reason: err.to_string() });
                }
                delay = delay.min(deadline - now);
            }
            tokio::select! {
                () = self.shutdown.triggered() => return Err(StartError::Stopped),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Serves `app` once it is set, and [`Startup`]'s answers until then.
pub(crate) fn gate_router(startup: Startup, app: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |request: Request| {
        let (startup, app) = (startup.clone(), app.clone());
        async move {
            match app.get() {
                Some(app) => app.clone().oneshot(request).await.into_response(),
                None => startup.answer(&request),
            }
        }
    })
}
