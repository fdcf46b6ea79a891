//! Golden-signal HTTP metrics, following the OpenTelemetry HTTP semantic
//! conventions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
#[cfg(feature = "monitoring")]
use keel_monitoring::HttpStats;
use keel_telemetry::{MeterSource, names};
use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};
use opentelemetry::{KeyValue, Value};
use tower::{Layer, Service};

/// The `http.route` label of requests that matched no route: one shared
/// series, whatever the path, so scanners cannot explode cardinality.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The HTTP server instruments of one meter.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    inner: Arc<Instruments>,
}

#[derive(Debug)]
struct Instruments {
    duration: Histogram<f64>,
    /// In-flight requests per entry of [`METHODS`]. Plain atomics read by an
    /// observable gauge: two relaxed adds per request instead of two trips
    /// through the SDK's attribute map.
    active: Arc<[AtomicI64; METHODS.len()]>,
    _active_gauge: ObservableGauge<i64>,
    panics: Counter<u64>,
    /// Route templates as shared label values, so a request clones an
    /// `Arc<str>` instead of allocating its route (routes are few and fixed).
    routes: std::sync::RwLock<std::collections::HashMap<Box<str>, Value>>,
    /// Per-route figures for operators' stats documents, when wanted.
    #[cfg(feature = "monitoring")]
    stats: Option<HttpStats>,
}

impl Instruments {
    /// The label value of `template`, shared after its first request.
    fn route(&self, template: &str) -> Value {
        let read = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(value) = read.get(template) {
            return value.clone();
        }
        drop(read);
        let value = Value::from(std::sync::Arc::<str>::from(template));
        let mut write = self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        write.entry(template.into()).or_insert(value).clone()
    }
}

/// The method labels, in the order of [`Instruments::active`].
const METHODS: [&str; 10] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER"];

impl HttpMetrics {
    /// Creates the instruments on `meters`' `keel-http` meter.
    pub fn new(meters: &dyn MeterSource) -> Self {
        Self { inner: Arc::new(Instruments::new(meters)) }
    }

    /// Creates the instruments, also counting every request in `stats`
    /// (the per-route figures of `keel-monitoring`'s stats documents).
    #[cfg(feature = "monitoring")]
    pub fn with_stats(meters: &dyn MeterSource, stats: HttpStats) -> Self {
        Self { inner: Arc::new(Instruments { stats: Some(stats), ..Instruments::new(meters) }) }
    }

    /// The tower layer that records every request.
    pub fn layer(&self) -> HttpMetricsLayer {
        HttpMetricsLayer { metrics: self.clone() }
    }

    pub(crate) fn count_panic(&self) {
        self.inner.panics.add(1, &[]);
    }
}

impl Instruments {
    fn new(meters: &dyn MeterSource) -> Self {
        let meter = meters.meter("keel-http");
        let active: Arc<[AtomicI64; METHODS.len()]> = Arc::new(Default::default());
        let observed = active.clone();
        Self {
            duration: meter
                .f64_histogram(names::HTTP_SERVER_REQUEST_DURATION)
                .with_unit("s")
                .with_description("Duration of HTTP server requests")
                .with_boundaries(names::HTTP_DURATION_BUCKETS.to_vec())
                .build(),
            active,
            _active_gauge: meter
                .i64_observable_gauge(names::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_description("Number of active HTTP server requests")
                .with_callback(move |gauge| {
                    for (method, count) in METHODS.iter().zip(observed.iter()) {
                        let count = count.load(Ordering::Relaxed);
                        // Methods never seen stay out of the exposition.
                        if count != 0 || *method == "GET" {
                            gauge.observe(count, &[KeyValue::new("http.request.method", *method)]);
                        }
                    }
                })
                .build(),
            panics: meter
                .u64_counter(names::HTTP_SERVER_PANICS)
                .with_description("Handler panics answered with 500")
                .build(),
            routes: Default::default(),
            #[cfg(feature = "monitoring")]
            stats: None,
        }
    }
}

/// Semconv: known methods verbatim, anything else `_OTHER` (so a client
/// inventing methods cannot create series). Returns the index in [`METHODS`].
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// Records `http_server_request_duration_seconds` and
/// `http_server_active_requests` for the wrapped service.
///
/// Add it with `Router::layer` after the routes, so it runs after routing
/// and sees the route template ([`MatchedPath`]).
#[derive(Clone, Debug)]
pub struct HttpMetricsLayer {
    metrics: HttpMetrics,
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// The service produced by [`HttpMetricsLayer`].
#[derive(Clone, Debug)]
pub struct HttpMetricsService<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = method_index(req.method());
        let route: Value = match req.extensions().get::<MatchedPath>() {
            Some(path) => self.metrics.inner.route(path.as_str()),
            None => UNMATCHED_ROUTE.into(),
        };
        let guard = ActiveGuard::new(self.metrics.inner.clone(), method);
        ResponseFuture { inner: self.inner.call(req), state: Some(Pending { start: Instant::now(), route, guard }) }
    }
}

struct Pending {
    start: Instant,
    route: Value,
    guard: ActiveGuard,
}

/// Decrements the active-requests gauge when the request ends, including when
/// the client goes away and the future is dropped unfinished.
struct ActiveGuard {
    instruments: Arc<Instruments>,
    method: usize,
}

impl ActiveGuard {
    fn new(instruments: Arc<Instruments>, method: usize) -> Self {
        instruments.active[method].fetch_add(1, Ordering::Relaxed);
        Self { instruments, method }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.instruments.active[self.method].fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`HttpMetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<Pending>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(pending) = this.state.take() {
            // Errors never reach here from axum (its services are infallible);
            // count them as 500 for other stacks.
            let status = result.as_ref().map_or(500, |r| r.status().as_u16());
            let elapsed = pending.start.elapsed();
            #[cfg(feature = "monitoring")]
            if let Some(stats) = &pending.guard.instruments.stats {
                stats.record(&pending.route.as_str(), status, elapsed);
            }
            let attrs = [
                KeyValue::new("http.request.method", METHODS[pending.guard.method]),
                KeyValue::new("http.route", pending.route),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ];
            pending.guard.instruments.duration.record(elapsed.as_secs_f64(), &attrs);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        assert_eq!(METHODS[method_index(&Method::from_bytes(b"FOO").unwrap())], "_OTHER");
    }
}
