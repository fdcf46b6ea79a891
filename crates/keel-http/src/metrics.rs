//! Golden-signal HTTP metrics, following the OpenTelemetry HTTP semantic
//! conventions.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
#[cfg(feature = "monitoring")]
use keel_monitoring::{HttpStats, RouteStats};
use keel_telemetry::{DurationHistogram, DurationSeries, DurationSpec, MeterSource, names};
use opentelemetry::Value;
use opentelemetry::metrics::{Counter, ObservableGauge};
use tower::{Layer, Service};

/// The `http.route` label of requests that matched no route: one shared
/// series, whatever the path, so scanners cannot explode cardinality.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The request duration histogram (semantic conventions: method, route,
/// status code).
const DURATION: DurationSpec = DurationSpec {
    name: names::HTTP_SERVER_REQUEST_DURATION,
    description: "Duration of HTTP server requests",
    bounds: &names::HTTP_DURATION_BUCKETS,
    labels: &["http.request.method", "http.route", "http.response.status_code"],
};

/// The HTTP server instruments of one meter.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    inner: Arc<Instruments>,
}

#[derive(Debug)]
struct Instruments {
    duration: DurationHistogram,
    /// In-flight requests per entry of [`METHODS`]. Plain atomics read by an
    /// observable gauge: two relaxed adds per request instead of two trips
    /// through the SDK's attribute map.
    active: Arc<[AtomicI64; METHODS.len()]>,
    _active_gauge: ObservableGauge<i64>,
    panics: Counter<u64>,
    /// Every route seen, by template. Requests find their route's slot
    /// through the per-route service ([`HttpMetricsService`]), so this map
    /// is read once per route, not per request.
    routes: RwLock<std::collections::HashMap<Box<str>, Arc<RouteSlot>>>,
    /// Per-route figures for operators' stats documents, when wanted.
    #[cfg(feature = "monitoring")]
    stats: Option<HttpStats>,
}

impl Instruments {
    /// The slot of `template`, created on its first request.
    fn route(&self, template: &str) -> Arc<RouteSlot> {
        let read = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = read.get(template) {
            return slot.clone();
        }
        drop(read);
        let mut write = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        write.entry(template.into()).or_insert_with(|| Arc::new(RouteSlot::new(self, template))).clone()
    }
}

/// The method labels, in the order of [`Instruments::active`].
const METHODS: [&str; 10] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER"];

/// Statuses whose series a route keeps in a fixed slot (found without a
/// lock); any other status is looked up under the route's mutex.
const STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 412, 413, 415, 422, 429, 500,
    503,
];

/// Everything one route records into, resolved once: its label, its
/// series per method and status, and its operators' figures.
struct RouteSlot {
    template: Box<str>,
    label: Value,
    duration: DurationHistogram,
    active: Arc<[AtomicI64; METHODS.len()]>,
    series: Box<[OnceLock<DurationSeries>]>,
    other: Mutex<Vec<(usize, u16, DurationSeries)>>,
    #[cfg(feature = "monitoring")]
    stats: Option<RouteStats>,
}

impl std::fmt::Debug for RouteSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSlot").field("route", &self.template).finish_non_exhaustive()
    }
}

impl RouteSlot {
    fn new(instruments: &Instruments, template: &str) -> Self {
        Self {
            template: template.into(),
            label: Value::from(Arc::<str>::from(template)),
            duration: instruments.duration.clone(),
            active: instruments.active.clone(),
            series: (0..METHODS.len() * STATUSES.len()).map(|_| OnceLock::new()).collect(),
            other: Mutex::new(Vec::new()),
            #[cfg(feature = "monitoring")]
            stats: instruments.stats.as_ref().map(|stats| stats.route(template)),
        }
    }

    fn make_series(&self, method: usize, status: u16) -> DurationSeries {
        self.duration.series(&[METHODS[method].into(), self.label.clone(), i64::from(status).into()])
    }

    /// One record per request: the duration series of (method, route,
    /// status), and the route's operators' figures.
    #[inline]
    fn record(&self, method: usize, status: u16, elapsed: Duration) {
        #[cfg(feature = "monitoring")]
        if let Some(stats) = &self.stats {
            stats.record(status, elapsed);
        }
        match STATUSES.iter().position(|&known| known == status) {
            Some(index) => self.series[method * STATUSES.len() + index]
                .get_or_init(|| self.make_series(method, status))
                .record(elapsed),
            None => {
                let mut other = self.other.lock().unwrap_or_else(PoisonError::into_inner);
                match other.iter().find(|(m, s, _)| *m == method && *s == status) {
                    Some((_, _, series)) => series.record(elapsed),
                    None => {
                        let series = self.make_series(method, status);
                        series.record(elapsed);
                        other.push((method, status, series));
                    }
                }
            }
        }
    }
}

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
            duration: meters.duration_histogram("keel-http", DURATION),
            active,
            _active_gauge: meter
                .i64_observable_gauge(names::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_description("Number of active HTTP server requests")
                .with_callback(move |gauge| {
                    for (method, count) in METHODS.iter().zip(observed.iter()) {
                        let count = count.load(Ordering::Relaxed);
                        // Methods never seen stay out of the exposition.
                        if count != 0 || *method == "GET" {
                            gauge.observe(count, &[opentelemetry::KeyValue::new("http.request.method", *method)]);
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
        // axum applies a layer to each route's service, so this service
        // (and its clones, one per request) only ever sees one route: its
        // slot is remembered after the first request.
        let shared = Arc::new(PerRoute { instruments: self.metrics.inner.clone(), slot: OnceLock::new() });
        HttpMetricsService { inner, shared }
    }
}

/// The service produced by [`HttpMetricsLayer`].
#[derive(Clone, Debug)]
pub struct HttpMetricsService<S> {
    inner: S,
    shared: Arc<PerRoute>,
}

#[derive(Debug)]
struct PerRoute {
    instruments: Arc<Instruments>,
    slot: OnceLock<Arc<RouteSlot>>,
}

impl PerRoute {
    fn slot(&self, template: &str) -> Arc<RouteSlot> {
        match self.slot.get() {
            Some(slot) if *slot.template == *template => slot.clone(),
            _ => {
                let slot = self.instruments.route(template);
                // A service seeing another route (not axum's way) still
                // counts right, through the map.
                let _ = self.slot.set(slot.clone());
                slot
            }
        }
    }
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
        let template = req.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let slot = self.shared.slot(template);
        let guard = ActiveGuard::new(slot, method);
        ResponseFuture { inner: self.inner.call(req), state: Some(Pending { start: quanta::Instant::now(), guard }) }
    }
}

struct Pending {
    /// From the time-stamp counter where the CPU has a stable one (a few
    /// nanoseconds against a clock system call's tens), else the OS clock.
    start: quanta::Instant,
    guard: ActiveGuard,
}

/// Decrements the active-requests gauge when the request ends, including when
/// the client goes away and the future is dropped unfinished.
struct ActiveGuard {
    slot: Arc<RouteSlot>,
    method: usize,
}

impl ActiveGuard {
    fn new(slot: Arc<RouteSlot>, method: usize) -> Self {
        slot.active[method].fetch_add(1, Ordering::Relaxed);
        Self { slot, method }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.slot.active[self.method].fetch_sub(1, Ordering::Relaxed);
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
            pending.guard.slot.record(pending.guard.method, status, pending.start.elapsed());
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
