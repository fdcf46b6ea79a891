//! The request id and the request span: every request carries an
//! `x-request-id` (the client's, or a generated one), echoed on its response,
//! and every log record written while it is handled carries its method, path
//! and that id.
//!
//! One layer does both: the id is written into the request's headers once
//! and read back from there for the span and the response (no extensions
//! entry, no second layer).
//!
//! A small layer instead of `tower_http::trace::TraceLayer`: the span is
//! entered only while the handler runs (not again around every body frame),
//! and nothing is classified. Every answer is logged at `debug` under the
//! target `keel_http::request` (status and latency; off at the default
//! `info`). Answers of 500 and above are logged at `error` by the JSON error
//! envelope (`keel_http::error`), once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Span;

/// [`crate::middleware::REQUEST_ID_HEADER`], parsed once.
static REQUEST_ID: HeaderName = HeaderName::from_static(crate::middleware::REQUEST_ID_HEADER);

/// The log target of the per-request records.
pub(crate) const REQUEST_TARGET: &str = "keel_http::request";

/// Gives each request an id and wraps it in an `info` span named `request`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestSpanLayer;

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// The service of [`RequestSpanLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequestSpan<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestSpan<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = SpannedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
                id
            }
        };
        // Plain `&str` fields: recorded as they are, with no formatting.
        let span = tracing::info_span!(
            "request",
            method = request.method().as_str(),
            uri = request.uri().path(),
            request_id = id.to_str().unwrap_or("")
        );
        // Entered while the future is polled, where handlers run (axum's
        // `call`s only build futures).
        let inner = self.inner.call(request);
        // The clock is read only when the per-answer record is wanted.
        let start = tracing::enabled!(target: REQUEST_TARGET, tracing::Level::DEBUG).then(quanta::Instant::now);
        SpannedFuture { inner, span, start, id: Some(id) }
    }
}

/// A random (v4) UUID from a per-thread generator: no system call per
/// request. Request ids correlate logs; they are not secrets.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pin_project_lite::pin_project! {
    /// The future of [`RequestSpan`].
    pub(crate) struct SpannedFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Option<quanta::Instant>,
        id: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for SpannedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut result, this.id.take()) {
            // A handler that set its own id keeps it.
            response.headers_mut().entry(REQUEST_ID.clone()).or_insert(id);
        }
        if let (Ok(response), Some(start)) = (&result, this.start) {
            let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(target: REQUEST_TARGET, status = response.status().as_u16(), latency_ms, "request answered");
        }
        Poll::Ready(result)
    }
}
