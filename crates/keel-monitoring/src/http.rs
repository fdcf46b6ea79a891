//! Per-route HTTP request counts and latency percentiles.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The first bucket holds everything up to this many microseconds.
const FIRST_BOUND_US: f64 = 50.0;
/// Each bucket's bound is 10 % above the previous one, so a reported
/// percentile is within 10 % of the true value.
const GROWTH: f64 = 1.1;
/// 50 µs × 1.1^148 ≈ 65 s; slower requests share the last bucket.
const BUCKETS: usize = 150;

fn bucket_of(elapsed: Duration) -> usize {
    // A binary search over the bounds in nanoseconds: a few comparisons
    // instead of a logarithm on every request.
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    bounds_nanos().partition_point(|&bound| bound < nanos).min(BUCKETS - 1)
}

/// The upper bound of every bucket, in nanoseconds.
fn bounds_nanos() -> &'static [u64; BUCKETS] {
    static BOUNDS: std::sync::OnceLock<[u64; BUCKETS]> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| std::array::from_fn(|bucket| (upper_bound_ms(bucket) * 1e6).ceil() as u64))
}

fn upper_bound_ms(bucket: usize) -> f64 {
    FIRST_BOUND_US * GROWTH.powi(i32::try_from(bucket).unwrap_or(i32::MAX)) / 1000.0
}

struct RouteCells {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl RouteCells {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    #[inline]
    fn count(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> RouteCounts {
        RouteCounts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// Records every request's route, status and duration; cloning shares the
/// figures. Recording is a read lock and three relaxed atomic adds, so it
/// can sit on every request.
///
/// ```
/// use std::time::Duration;
/// use keel_monitoring::HttpStats;
///
/// let stats = HttpStats::new();
/// stats.record("/users/{id}", 200, Duration::from_millis(3));
/// stats.record("/users/{id}", 503, Duration::from_millis(40));
/// let summary = stats.snapshot().summaries();
/// assert_eq!((summary["/users/{id}"].requests, summary["/users/{id}"].errors), (2, 1));
/// ```
#[derive(Clone, Default)]
pub struct HttpStats {
    routes: Arc<RwLock<HashMap<Box<str>, Arc<RouteCells>>>>,
}

/// One route's figures in an [`HttpStats`]; cloning shares them.
#[derive(Clone)]
pub struct RouteStats {
    cells: Arc<RouteCells>,
}

impl std::fmt::Debug for RouteStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteStats").field("requests", &self.cells.requests.load(Ordering::Relaxed)).finish()
    }
}

impl RouteStats {
    /// Counts one request that answered `status` after `elapsed` (500 and
    /// above are errors).
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.cells.count(status, elapsed);
    }
}

impl std::fmt::Debug for HttpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStats").finish_non_exhaustive()
    }
}

impl HttpStats {
    /// Empty figures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request to `route` (a template such as `/users/{id}`,
    /// never a raw path) that answered `status` after `elapsed`. Statuses of
    /// 500 and above count as errors.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        // Known routes are counted under the shared lock, with no clone.
        if let Some(cells) = self.routes.read().unwrap_or_else(PoisonError::into_inner).get(route) {
            return cells.count(status, elapsed);
        }
        self.route(route).record(status, elapsed);
    }

    /// The figures of `route`, to keep where a hot path can reach them:
    /// [`RouteStats::record`] is then three relaxed atomic adds, no lock.
    pub fn route(&self, route: &str) -> RouteStats {
        if let Some(cells) = self.routes.read().unwrap_or_else(PoisonError::into_inner).get(route) {
            return RouteStats { cells: cells.clone() };
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        RouteStats { cells: routes.entry(route.into()).or_insert_with(|| Arc::new(RouteCells::new())).clone() }
    }

    /// The counts since start, per route.
    pub fn snapshot(&self) -> HttpSnapshot {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        HttpSnapshot { routes: routes.iter().map(|(route, cells)| (route.to_string(), cells.read())).collect() }
    }
}

/// Cumulative counts of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteCounts {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl RouteCounts {
    fn minus(&self, earlier: &RouteCounts) -> RouteCounts {
        RouteCounts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self.buckets.iter().zip(&earlier.buckets).map(|(a, b)| a.saturating_sub(*b)).collect(),
        }
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0.0;
        }
        // The rank of the q-quantile, 1-based; counts are far below 2^52.
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (upper_bound_ms(bucket) * 1000.0).round() / 1000.0;
            }
        }
        upper_bound_ms(BUCKETS - 1)
    }

    fn summary(&self) -> RouteSummary {
        RouteSummary {
            requests: self.requests,
            errors: self.errors,
            p50_ms: self.percentile_ms(0.50),
            p95_ms: self.percentile_ms(0.95),
            p99_ms: self.percentile_ms(0.99),
        }
    }
}

/// The counts of every route at one moment; subtract an earlier snapshot to
/// get the figures of a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSnapshot {
    routes: BTreeMap<String, RouteCounts>,
}

impl HttpSnapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &HttpSnapshot) -> HttpSnapshot {
        let routes = self
            .routes
            .iter()
            .map(|(route, now)| {
                let window = match earlier.routes.get(route) {
                    Some(before) => now.minus(before),
                    None => now.clone(),
                };
                (route.clone(), window)
            })
            .collect();
        HttpSnapshot { routes }
    }

    /// Requests, errors and latency percentiles per route.
    pub fn summaries(&self) -> BTreeMap<String, RouteSummary> {
        self.routes.iter().map(|(route, counts)| (route.clone(), counts.summary())).collect()
    }
}

/// Requests, errors (status ≥ 500) and latency percentiles of one route.
/// Percentiles are bucket bounds, within 10 % of the true value; 0 when
/// there were no requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteSummary {
    /// Requests answered.
    pub requests: u64,
    /// Requests answered 500 or above.
    pub errors: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile latency, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_ten_percent() {
        let stats = HttpStats::new();
        for ms in 1..=100u64 {
            stats.record("/r", if ms > 98 { 500 } else { 200 }, Duration::from_millis(ms));
        }
        let summary = stats.snapshot().summaries()["/r"];
        assert_eq!((summary.requests, summary.errors), (100, 2));
        for (got, want) in [(summary.p50_ms, 50.0), (summary.p95_ms, 95.0), (summary.p99_ms, 99.0)] {
            assert!(got >= want && got <= want * 1.1, "{got} vs {want}");
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let stats = HttpStats::new();
        stats.record("/a", 200, Duration::from_secs(2));
        let before = stats.snapshot();
        stats.record("/a", 200, Duration::from_micros(10));
        stats.record("/b", 404, Duration::from_micros(10));
        let window = stats.snapshot().since(&before).summaries();
        assert_eq!((window["/a"].requests, window["/a"].p99_ms), (1, 0.05));
        assert_eq!(window["/b"].requests, 1);
        assert_eq!(HttpSnapshot::default().summaries().len(), 0);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
    }

    /// Every duration lands in the first bucket whose bound covers it.
    #[test]
    fn a_duration_lands_under_its_bound() {
        let mut nanos = 1u64;
        while nanos < 70_000_000_000 {
            let bucket = bucket_of(Duration::from_nanos(nanos));
            let ms = nanos as f64 / 1e6;
            if bucket < BUCKETS - 1 {
                assert!(ms <= upper_bound_ms(bucket) + 1e-6, "{nanos} ns in bucket {bucket}");
            }
            if bucket > 0 {
                assert!(ms > upper_bound_ms(bucket - 1), "{nanos} ns in bucket {bucket}");
            }
            nanos = nanos * 101 / 100 + 1;
        }
        let stats = HttpStats::new();
        let route = stats.route("/h");
        route.record(200, Duration::from_micros(40));
        route.record(503, Duration::from_micros(40));
        stats.record("/h", 200, Duration::from_micros(40));
        let summary = stats.snapshot().summaries()["/h"];
        assert_eq!((summary.requests, summary.errors, summary.p99_ms), (3, 1, 0.05));
    }
}
