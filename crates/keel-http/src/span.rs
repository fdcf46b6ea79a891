//! The request id and the request span: every request carries an
//! `x-request-id` (the client's, or a generated one), echoed on its response,
//! and every log record written while it is handled carries its method, path
//! and that id.
//!
//! One layer does both. A generated id is not written into the request's
//! headers (a header insert and a shared copy per request that nothing
//! read): handlers find it where log records do, in the span or
//! `keel_telemetry::request_log::with_current`.
//!
//! A small layer instead of `tower_http::trace::TraceLayer`: the span is
//! entered only while the handler runs (not again around every body frame),
//! and nothing is classified. When Keel's JSON logging is the subscriber and
//! nothing needs spans (no trace export), there is no `tracing` span at all:
//! the request is the thread's current one while it is polled, and the JSON
//! formatter writes it into the records that are written, as the same `span`
//! object (`keel_telemetry::request_log`). Every answer is logged at `debug`
//! under the target `keel_http::request` (status and latency; off at the
//! default `info`). Answers of 500 and above are logged at `error` by the JSON
//! error envelope (`keel_http::error`), once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderName, HeaderValue, Request, Response};
use keel_telemetry::request_log::RequestLog;
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => new_request_id(),
        };
        // Entered while the future is polled, where handlers run (axum's
        // `call`s only build futures).
        let scope = if keel_telemetry::request_log::spans_needed() {
            // Plain `&str` fields: recorded as they are, with no formatting.
            let span = tracing::info_span!(
                "request",
                method = request.method().as_str(),
                uri = request.uri().path(),
                request_id = id.to_str().unwrap_or("")
            );
            Scope::Span(span, Some(id))
        } else {
            // Keel's JSON logging reads the request only when it writes a
            // record: nothing is formatted or stored per request.
            Scope::Log(Some(RequestLog::new(request.method().clone(), request.uri(), id)))
        };
        let inner = self.inner.call(request);
        // The clock is read only when the per-answer record is wanted.
        let start = tracing::enabled!(target: REQUEST_TARGET, tracing::Level::DEBUG).then(quanta::Instant::now);
        SpannedFuture { inner, scope, start }
    }
}

/// What each poll of a request runs inside, and the id its answer echoes.
pub(crate) enum Scope {
    /// A `tracing` span, for subscribers other than Keel's JSON logging or
    /// for span export.
    Span(Span, Option<HeaderValue>),
    /// The request as Keel's JSON logging shows it (its id included).
    Log(Option<RequestLog>),
}

impl Scope {
    /// Runs `f` inside the span or request.
    fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        match self {
            Scope::Span(span, _) => span.in_scope(f),
            Scope::Log(request) => RequestLog::scope(request, f),
        }
    }

    /// The id to echo, once.
    fn take_id(&mut self) -> Option<HeaderValue> {
        match self {
            Scope::Span(_, id) => id.take(),
            Scope::Log(request) => request.take().map(RequestLog::into_id),
        }
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
        scope: Scope,
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
        let (inner, start) = (this.inner, *this.start);
        let answer = this.scope.run(|| {
            let result = std::task::ready!(inner.poll(cx));
            if let (Ok(response), Some(start)) = (&result, start) {
                let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
                let status = response.status().as_u16();
                if response.extensions().get::<keel_telemetry::Uncaptured>().is_some() {
                    tracing::debug!(target: REQUEST_TARGET, status, latency_ms, uncaptured = true, "request answered");
                } else {
                    tracing::debug!(target: REQUEST_TARGET, status, latency_ms, "request answered");
                }
            }
            Poll::Ready(result)
        });
        let mut result = std::task::ready!(answer);
        if let (Ok(response), Some(id)) = (&mut result, this.scope.take_id()) {
            // A handler that set its own id keeps it.
            response.headers_mut().entry(REQUEST_ID.clone()).or_insert(id);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    /// Generated ids are version-4 UUIDs in their hyphenated lowercase
    /// form, and differ.
    #[test]
    fn generated_ids_are_v4_uuids() {
        let ids: Vec<String> =
            (0..64).map(|_| super::new_request_id().to_str().unwrap_or_default().to_owned()).collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|err| panic!("{id}: {err}"));
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(parsed.hyphenated().to_string(), *id);
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
