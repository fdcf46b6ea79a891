//! The periodic stats document of one process.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::http::{HttpSnapshot, HttpStats, RouteSummary};
use crate::store::StatsStore;

/// What one process publishes every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsDocument {
    /// `api` or `worker`.
    pub process: String,
    /// The instance.
    pub instance: String,
    /// When the document was made, RFC 3339.
    pub updated_at: String,
    /// Seconds since the collector started.
    pub uptime_s: u64,
    /// CPU used by the process over the last interval, in percent of one
    /// core (200 means two cores busy); `null` where unavailable.
    pub cpu_percent: Option<f64>,
    /// Resident memory in bytes; `null` where unavailable.
    pub rss_bytes: Option<u64>,
    /// The tokio runtime, when collected from inside one.
    pub tokio: Option<TokioStats>,
    /// Per route template.
    pub http: BTreeMap<String, RouteWindows>,
    /// Further snapshots by name (`batcher`, `write_behind`).
    #[serde(flatten)]
    pub sections: BTreeMap<String, Value>,
}

/// The tokio runtime's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokioStats {
    /// Worker threads.
    pub workers: usize,
    /// Tasks spawned and not yet finished.
    pub alive_tasks: usize,
}

/// One route's figures since start and over the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteWindows {
    /// Since the collector started.
    pub since_start: RouteSummary,
    /// Over the last minute (or since start, if that is shorter).
    pub last_minute: RouteSummary,
}

/// A named snapshot added to every document.
pub type Section = Box<dyn Fn() -> Value + Send + Sync>;

/// How long the "last minute" window is.
const WINDOW: Duration = Duration::from_secs(60);

/// Builds [`StatsDocument`]s: CPU, memory, the tokio runtime, HTTP figures
/// and any named sections.
///
/// ```
/// use keel_monitoring::{Collector, HttpStats};
///
/// let http = HttpStats::new();
/// http.record("/livez", 200, std::time::Duration::from_millis(1));
/// let mut collector = Collector::new("api", "api-1")
///     .with_http(http)
///     .with_section("batcher", || serde_json::json!({"pending": 0}));
/// let document = collector.collect();
/// assert_eq!(document.http["/livez"].since_start.requests, 1);
/// assert_eq!(document.sections["batcher"]["pending"], 0);
/// ```
pub struct Collector {
    process: String,
    instance: String,
    started: Instant,
    http: Option<HttpStats>,
    sections: Vec<(String, Section)>,
    /// HTTP snapshots of up to the last minute, oldest first.
    history: VecDeque<(Instant, HttpSnapshot)>,
    last_cpu: Option<(Instant, Duration)>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("process", &self.process).field("instance", &self.instance).finish()
    }
}

impl Collector {
    /// A collector for `process` / `instance`; uptime counts from now.
    pub fn new(process: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            process: process.into(),
            instance: instance.into(),
            started: Instant::now(),
            http: None,
            sections: Vec::new(),
            history: VecDeque::new(),
            last_cpu: None,
        }
    }

    /// Adds per-route HTTP figures.
    pub fn with_http(mut self, http: HttpStats) -> Self {
        self.http = Some(http);
        self
    }

    /// Adds a section `name` filled by `snapshot` at every collection.
    pub fn with_section(
        mut self,
        name: impl Into<String>,
        snapshot: impl Fn() -> Value + Send + Sync + 'static,
    ) -> Self {
        self.sections.push((name.into(), Box::new(snapshot)));
        self
    }

    /// The process and instance this collector describes.
    pub fn identity(&self) -> (&str, &str) {
        (&self.process, &self.instance)
    }

    /// Makes one document now.
    pub fn collect(&mut self) -> StatsDocument {
        let now = Instant::now();
        StatsDocument {
            process: self.process.clone(),
            instance: self.instance.clone(),
            updated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            uptime_s: now.duration_since(self.started).as_secs(),
            cpu_percent: self.cpu_percent(now),
            rss_bytes: memory_stats::memory_stats().map(|m| m.physical_mem as u64),
            tokio: tokio::runtime::Handle::try_current().ok().map(|handle| {
                let metrics = handle.metrics();
                TokioStats { workers: metrics.num_workers(), alive_tasks: metrics.num_alive_tasks() }
            }),
            http: self.http_windows(now),
            sections: self.sections.iter().map(|(name, snapshot)| (name.clone(), snapshot())).collect(),
        }
    }

    fn cpu_percent(&mut self, now: Instant) -> Option<f64> {
        let used = cpu_time::ProcessTime::try_now().ok()?.as_duration();
        let previous = self.last_cpu.replace((now, used));
        // The first reading covers the time since start.
        let (since, before) = previous.unwrap_or((self.started, Duration::ZERO));
        let wall = now.duration_since(since).as_secs_f64();
        (wall > 0.0).then(|| ((used.saturating_sub(before).as_secs_f64() / wall) * 1000.0).round() / 10.0)
    }

    fn http_windows(&mut self, now: Instant) -> BTreeMap<String, RouteWindows> {
        let Some(http) = &self.http else { return BTreeMap::new() };
        let current = http.snapshot();
        // Keep the newest snapshot at least a minute old as the window start.
        while self.history.len() > 1 && now.duration_since(self.history[1].0) >= WINDOW {
            self.history.pop_front();
        }
        let last_minute = match self.history.front() {
            Some((_, earlier)) => current.since(earlier),
            None => current.clone(),
        };
        let (since_start, last_minute) = (current.summaries(), last_minute.summaries());
        self.history.push_back((now, current));
        since_start
            .into_iter()
            .map(|(route, since_start)| {
                let last_minute = last_minute.get(&route).copied().unwrap_or(since_start);
                (route, RouteWindows { since_start, last_minute })
            })
            .collect()
    }

    /// Publishes a document to `store` every `interval` with a time to live
    /// of three intervals, calling `published` with each one, until `stop`
    /// completes; then removes this instance's document so it disappears at
    /// once. A failing store is logged once and retried every interval.
    pub async fn run(
        mut self,
        store: StatsStore,
        interval: Duration,
        mut published: impl FnMut(&StatsDocument) + Send,
        stop: impl Future<Output = ()> + Send,
    ) {
        let ttl = interval * 3;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut stop => break,
            }
            let document = self.collect();
            match store.publish(&document, ttl).await {
                Ok(()) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("stats publishing recovered");
                    }
                    published(&document);
                }
                // Logged once per outage, not every interval.
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(%err, "cannot publish stats; retrying every interval");
                }
                Err(_) => {}
            }
        }
        if let Err(err) = store.remove(&self.process, &self.instance).await {
            tracing::warn!(%err, "cannot remove this instance's stats; they expire after {ttl:?}");
        }
    }
}
