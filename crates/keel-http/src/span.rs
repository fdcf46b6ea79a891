//! The request span: every log record written while a request is handled
//! carries its method, path and request id.
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

use axum::http::{Request, Response};
use tower::{Layer, Service};
use tower_http::request_id::RequestId;
use tracing::Span;

/// The log target of the per-request records.
pub(crate) const REQUEST_TARGET: &str = "keel_http::request";

/// Wraps each request in an `info` span named `request`.
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("");
        // Plain `&str` fields: recorded as they are, with no formatting.
        let span = tracing::info_span!(
            "request",
            method = request.method().as_str(),
            uri = request.uri().path(),
            request_id = id
        );
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        // The clock is read only when the per-answer record is wanted.
        let start = tracing::enabled!(target: REQUEST_TARGET, tracing::Level::DEBUG).then(quanta::Instant::now);
        SpannedFuture { inner, span, start }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequestSpan`].
    pub(crate) struct SpannedFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Option<quanta::Instant>,
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
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(start)) = (&result, this.start) {
            let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(target: REQUEST_TARGET, status = response.status().as_u16(), latency_ms, "request answered");
        }
        Poll::Ready(result)
    }
}
