//! The registry: monitors, component states and the cached aggregate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use keel_core::{SharedClock, Status, SystemClock};
use keel_telemetry::{MeterSource, names};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::monitor::{Machine, Report, SharedCheck};
use crate::snapshot::{ComponentView, aggregate};
use crate::{Check, ComponentSpec, HealthError, MandatoryList, Mode, Snapshot};

/// A component's status changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// When (the registry's wall clock).
    pub time: SystemTime,
    /// The component.
    pub component: String,
    /// Status before.
    pub from: Status,
    /// Status after.
    pub to: Status,
    /// The check message that caused it.
    pub message: String,
}

/// Health of a service: registered components, their groups, and the
/// aggregate. Cloning shares everything; monitors stop on
/// [`shutdown`](Health::shutdown) or when the last clone drops.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report};
/// use std::time::Duration;
///
/// let groups = MandatoryList::new(vec![Mandatory::new("storage", Mode::Must, ["db"])]).unwrap();
/// let health = Health::new(groups, Mode::Must);
/// health.register(ComponentSpec::new("db").interval(Duration::from_secs(1)), || async { Report::ok() }).unwrap();
/// assert!(!health.is_cache_healthy(), "components start KO until checked");
/// tokio::time::sleep(Duration::from_millis(10)).await;
/// assert!(health.is_cache_healthy(), "one success: KO → WARN");
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// assert!(health.is_cache_strictly_healthy(), "two successes: WARN → OK");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

/// How a [`Health`] runs its monitors.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// Mode of components in no group (default `Must`).
    pub default_mode: Mode,
    /// Wall clock for timestamps.
    pub clock: SharedClock,
    /// Run the monitors (and so their timeouts) on a dedicated thread with
    /// its own runtime. Checks still run on the caller's runtime, but a check
    /// that blocks its thread instead of yielding can no longer stall the
    /// timer that fails it. Use in services; leave off under paused time.
    pub isolated: bool,
    /// Transitions kept per component for [`Health::history`] (default
    /// [`DEFAULT_HISTORY`]; 0 keeps none).
    pub history: usize,
}

/// Transitions kept per component unless [`HealthOptions::history`] says
/// otherwise.
pub const DEFAULT_HISTORY: usize = 100;

impl Default for HealthOptions {
    fn default() -> Self {
        Self { default_mode: Mode::Must, clock: SystemClock::shared(), isolated: false, history: DEFAULT_HISTORY }
    }
}

#[derive(Debug)]
struct Inner {
    groups: MandatoryList,
    default_mode: Mode,
    states: Mutex<BTreeMap<String, State>>,
    cache: ArcSwap<Snapshot>,
    global: AtomicU8,
    /// Moved by every change of the states (see [`Health::revision`]).
    revision: AtomicU64,
    changes: broadcast::Sender<StatusChange>,
    /// Woken after every recorded check.
    recorded: tokio::sync::Notify,
    metrics: Mutex<Option<Metrics>>,
    clock: SharedClock,
    /// Transitions kept per component.
    history: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Where monitors run when isolated.
    watchdog: Option<tokio::runtime::Handle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Debug)]
struct Metrics {
    duration: Histogram<f64>,
    transitions: Counter<u64>,
    _status: ObservableGauge<i64>,
}

#[derive(Debug)]
struct State {
    spec: ComponentSpec,
    machine: Machine,
    message: String,
    latency: Duration,
    last_check: Option<SystemTime>,
    up: Duration,
    down: Duration,
    since: Instant,
    last_rise: Option<SystemTime>,
    last_fall: Option<SystemTime>,
    successes: u32,
    failures: u32,
    /// The last transitions, oldest first.
    transitions: VecDeque<StatusChange>,
}

impl State {
    fn view(&self, now: Instant) -> ComponentView {
        let current = now.saturating_duration_since(self.since);
        let (uptime, downtime) = if self.machine.status.is_tolerable() {
            (self.up + current, self.down)
        } else {
            (self.up, self.down + current)
        };
        ComponentView {
            status: self.machine.status,
            message: self.message.clone(),
            mode: Mode::Must,
            group: String::new(),
            latency: self.latency,
            last_check: self.last_check,
            uptime,
            downtime,
            last_rise: self.last_rise,
            last_fall: self.last_fall,
            successes: self.successes,
            failures: self.failures,
            info: self.spec.info.clone(),
            registered: true,
        }
    }
}

fn encode(status: Status) -> u8 {
    match status {
        Status::Ko => 0,
        Status::Warn => 1,
        Status::Ok => 2,
    }
}

fn decode(value: u8) -> Status {
    match value {
        2 => Status::Ok,
        1 => Status::Warn,
        _ => Status::Ko,
    }
}

impl Health {
    /// A registry with `groups`; components in no group use `default_mode`.
    /// Monitors run on the caller's runtime.
    pub fn new(groups: MandatoryList, default_mode: Mode) -> Self {
        Self::build(groups, HealthOptions { default_mode, ..HealthOptions::default() }, None, CancellationToken::new())
    }

    /// A registry with explicit options; fails only if the watchdog thread of
    /// an isolated registry cannot be started.
    pub fn with_options(groups: MandatoryList, options: HealthOptions) -> std::io::Result<Self> {
        // The watchdog thread stops with this registry (its token).
        let cancel = CancellationToken::new();
        let watchdog = if options.isolated { Some(start_watchdog(cancel.clone())?) } else { None };
        Ok(Self::build(groups, options, watchdog, cancel))
    }

    fn build(
        groups: MandatoryList,
        options: HealthOptions,
        watchdog: Option<tokio::runtime::Handle>,
        cancel: CancellationToken,
    ) -> Self {
        let HealthOptions { default_mode, clock, history, .. } = options;
        let initial = aggregate(&groups, default_mode, &BTreeMap::new(), None);
        let global = AtomicU8::new(encode(initial.status));
        let (changes, _) = broadcast::channel(256);
        Self {
            inner: Arc::new(Inner {
                groups,
                default_mode,
                states: Mutex::new(BTreeMap::new()),
                cache: ArcSwap::from_pointee(initial),
                global,
                revision: AtomicU64::new(0),
                changes,
                recorded: tokio::sync::Notify::new(),
                metrics: Mutex::new(None),
                clock,
                history,
                cancel,
                tracker: TaskTracker::new(),
                watchdog,
            }),
        }
    }

    /// Exports `keel_health_status` (2 OK, 1 WARN, 0 KO per component),
    /// `keel_health_check_duration_seconds` and
    /// `keel_health_transitions_total{component,from,to}`.
    pub fn instrument(&self, telemetry: &dyn MeterSource) {
        let meter = telemetry.meter("keel-health-status");
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let status = meter
            .i64_observable_gauge(names::HEALTH_STATUS)
            .with_description("Component status: 2 OK, 1 WARN, 0 KO")
            .with_callback(move |gauge| {
                let Some(inner) = weak.upgrade() else { return };
                for (name, state) in lock(&inner.states).iter() {
                    gauge.observe(i64::from(encode(state.machine.status)), &[KeyValue::new("component", name.clone())]);
                }
            })
            .build();
        let metrics = Metrics {
            duration: meter
                .f64_histogram(names::HEALTH_CHECK_DURATION)
                .with_unit("s")
                .with_description("Duration of health checks")
                .with_boundaries(names::CLIENT_DURATION_BUCKETS.to_vec())
                .build(),
            transitions: meter
                .u64_counter(names::HEALTH_TRANSITIONS)
                .with_description("Component status transitions")
                .build(),
            _status: status,
        };
        *lock(&self.inner.metrics) = Some(metrics);
    }

    /// The configured groups.
    pub fn groups(&self) -> &MandatoryList {
        &self.inner.groups
    }

    /// The mode of components in no group.
    pub fn default_mode(&self) -> Mode {
        self.inner.default_mode
    }

    /// Registers a component and starts its monitor (the first check runs at
    /// once). The component is KO with message `pending first check` until
    /// then. Must be called inside a tokio runtime.
    pub fn register(&self, spec: ComponentSpec, check: impl Check) -> Result<(), HealthError> {
        self.register_shared(spec, Arc::new(check))
    }

    /// [`register`](Self::register) for an already shared check.
    pub fn register_shared(&self, spec: ComponentSpec, check: SharedCheck) -> Result<(), HealthError> {
        let name = spec.name.clone();
        if name.trim().is_empty() {
            return Err(HealthError::Config("a health component has an empty name".into()));
        }
        if spec.interval.is_zero() || spec.timeout.is_zero() {
            return Err(HealthError::Config(format!(
                "health component {name:?}: interval and timeout must be positive"
            )));
        }
        {
            let mut states = lock(&self.inner.states);
            if states.contains_key(&name) {
                return Err(HealthError::Duplicate(name));
            }
            states.insert(
                name.clone(),
                State {
                    machine: Machine::new(spec.thresholds),
                    spec: spec.clone(),
                    message: "pending first check".into(),
                    latency: Duration::ZERO,
                    last_check: None,
                    up: Duration::ZERO,
                    down: Duration::ZERO,
                    since: Instant::now(),
                    last_rise: None,
                    last_fall: None,
                    successes: 0,
                    failures: 0,
                    transitions: VecDeque::new(),
                },
            );
            self.refresh(&states);
        }
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.child_token();
        // Checks run where the caller runs (their connections live there);
        // the monitor runs on the watchdog when isolated.
        let checks = tokio::runtime::Handle::current();
        let monitor = run_monitor(weak, name, spec, check, checks, cancel);
        match &self.inner.watchdog {
            Some(watchdog) => self.inner.tracker.spawn_on(monitor, watchdog),
            None => self.inner.tracker.spawn(monitor),
        };
        Ok(())
    }

    /// Completes once every registered component has finished at least one
    /// check (successful or not), so the aggregate reflects real results.
    pub async fn first_checks(&self) {
        loop {
            let notified = self.inner.recorded.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.inner.states).values().all(|s| s.last_check.is_some()) {
                return;
            }
            notified.await;
        }
    }

    /// Stops every monitor and waits for them.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Status changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.inner.changes.subscribe()
    }

    /// The last transitions of every registered component (at most
    /// [`HealthOptions::history`] each), newest first.
    pub fn history(&self) -> BTreeMap<String, Vec<StatusChange>> {
        lock(&self.inner.states)
            .iter()
            .map(|(name, state)| (name.clone(), state.transitions.iter().rev().cloned().collect()))
            .collect()
    }

    /// The cached global status: one atomic load.
    pub fn cached_status(&self) -> Status {
        decode(self.inner.global.load(Ordering::Acquire))
    }

    /// Cached, tolerant: OK or WARN.
    pub fn is_cache_healthy(&self) -> bool {
        self.cached_status().is_tolerable()
    }

    /// Cached, strict: OK only.
    pub fn is_cache_strictly_healthy(&self) -> bool {
        self.cached_status() == Status::Ok
    }

    /// The cached aggregate, as of the last status or message change.
    pub fn cached(&self) -> Arc<Snapshot> {
        self.inner.cache.load_full()
    }

    /// A number that changes whenever anything a [`snapshot`](Self::snapshot)
    /// shows changes, except the passage of time (uptimes and downtimes):
    /// a component registered, a check recorded. Read it before taking a
    /// snapshot to know, later, whether a copy made from that snapshot is
    /// still current.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// The aggregate computed now (fresh latencies and uptimes).
    pub fn snapshot(&self) -> Snapshot {
        self.compute(None)
    }

    /// The components selected by `filter` (every component when `None`),
    /// less those selected by `exclude`. Each pattern (shell wildcards `*`,
    /// `?`, `[..]`) selects on its own: the components it names and every
    /// member of the groups it names (`default` for components in no
    /// group), so `mail,db` means group `mail` and component `db`. A filter
    /// matching nothing selects nothing.
    pub fn select(&self, filter: Option<&[glob::Pattern]>, exclude: &[glob::Pattern]) -> BTreeSet<String> {
        let snapshot = self.snapshot();
        let matched = |patterns: &[glob::Pattern]| -> BTreeSet<String> {
            let named = snapshot.components.keys().filter(|c| patterns.iter().any(|p| p.matches(c))).cloned();
            let in_groups = snapshot
                .groups
                .iter()
                .filter(|g| patterns.iter().any(|p| p.matches(&g.name)))
                .flat_map(|g| g.components.iter().cloned());
            named.chain(in_groups).collect()
        };
        let mut selected = match filter {
            Some(patterns) => matched(patterns),
            None => snapshot.components.keys().cloned().collect(),
        };
        if !exclude.is_empty() {
            let dropped = matched(exclude);
            selected.retain(|c| !dropped.contains(c));
        }
        selected
    }

    /// The aggregate of one group or component, computed now; `None` when
    /// no configured group, no component and not the `default` group (the
    /// components in no group, while there are any) has that name.
    pub fn snapshot_named(&self, name: &str) -> Option<Snapshot> {
        if self.inner.groups.group(name).is_some() {
            return Some(self.snapshot_of(&[name]));
        }
        let everything = self.snapshot();
        if everything.components.contains_key(name) {
            return Some(self.snapshot_of(&[name]));
        }
        let group = everything.group(crate::DEFAULT_GROUP).filter(|_| name == crate::DEFAULT_GROUP)?;
        let members: Vec<&str> = group.components.iter().map(String::as_str).collect();
        Some(self.snapshot_of(&members))
    }

    /// The aggregate of only the named components and groups, computed now
    /// under the same modes. Unknown names count as missing (KO).
    pub fn snapshot_of(&self, names: &[&str]) -> Snapshot {
        let mut scope = BTreeSet::new();
        for name in names {
            match self.inner.groups.group(name) {
                Some(group) => scope.extend(group.components.iter().cloned()),
                None => {
                    scope.insert((*name).to_owned());
                }
            }
        }
        self.compute(Some(&scope))
    }

    /// Live, tolerant: recomputed now.
    pub fn is_healthy(&self) -> bool {
        self.snapshot().status.is_tolerable()
    }

    /// Live, strict: recomputed now.
    pub fn is_strictly_healthy(&self) -> bool {
        self.snapshot().status == Status::Ok
    }

    /// Live, tolerant, for the named components or groups.
    pub fn is_healthy_for(&self, names: &[&str]) -> bool {
        self.snapshot_of(names).status.is_tolerable()
    }

    /// Live, strict, for the named components or groups.
    pub fn is_strictly_healthy_for(&self, names: &[&str]) -> bool {
        self.snapshot_of(names).status == Status::Ok
    }

    fn compute(&self, scope: Option<&BTreeSet<String>>) -> Snapshot {
        let states = lock(&self.inner.states);
        let now = Instant::now();
        let mut views: BTreeMap<String, ComponentView> = states.iter().map(|(n, s)| (n.clone(), s.view(now))).collect();
        if let Some(scope) = scope {
            // Named components nothing registered and no group lists are
            // still reported, as missing.
            for name in scope {
                if !views.contains_key(name) && self.inner.groups.group_of(name).is_none() {
                    views.insert(name.clone(), ComponentView::missing(self.inner.default_mode, ""));
                }
            }
        }
        aggregate(&self.inner.groups, self.inner.default_mode, &views, scope)
    }

    /// Recomputes and publishes the cached aggregate. Called with the states
    /// lock held so concurrent changes are published in order.
    fn refresh(&self, states: &BTreeMap<String, State>) {
        refresh(&self.inner, states);
    }
}

fn refresh(inner: &Inner, states: &BTreeMap<String, State>) {
    inner.revision.fetch_add(1, Ordering::AcqRel);
    let now = Instant::now();
    let views = states.iter().map(|(n, s)| (n.clone(), s.view(now))).collect();
    let snapshot = aggregate(&inner.groups, inner.default_mode, &views, None);
    inner.global.store(encode(snapshot.status), Ordering::Release);
    inner.cache.store(Arc::new(snapshot));
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything that
    // can panic, so a poisoned lock is safe to keep using.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn start_watchdog(cancel: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new().name("keel-health-watchdog".into()).spawn(move || {
        runtime.block_on(cancel.cancelled());
    })?;
    Ok(handle)
}

async fn run_monitor(
    weak: Weak<Inner>,
    name: String,
    spec: ComponentSpec,
    check: SharedCheck,
    checks: tokio::runtime::Handle,
    cancel: CancellationToken,
) {
    let mut previous: Option<tokio::task::JoinHandle<Report>> = None;
    loop {
        let started = Instant::now();
        let report = tokio::select! {
            report = run_check(&check, &checks, &mut previous, spec.timeout) => report,
            () = cancel.cancelled() => return,
        };
        let latency = started.elapsed();
        let Some(inner) = weak.upgrade() else { return };
        let wait = record(&inner, &name, report, latency);
        drop(inner);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Runs the check on its own task: a panic is contained by the task, and the
/// timeout fires whether or not the check ever yields. A run that ignored its
/// cancellation and is still going blocks the next one (reported as a
/// failure), so a stuck check costs one task, not one per interval.
async fn run_check(
    check: &SharedCheck,
    runtime: &tokio::runtime::Handle,
    previous: &mut Option<tokio::task::JoinHandle<Report>>,
    timeout: Duration,
) -> Report {
    if let Some(stuck) = previous.take()
        && !stuck.is_finished()
    {
        *previous = Some(stuck);
        return Report::fail("previous check is still running after its timeout");
    }
    let mut task = runtime.spawn(check.check());
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(report)) => report,
        Ok(Err(err)) if err.is_panic() => {
            let payload = err.into_panic();
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Report::fail(format!("check panicked: {detail}"))
        }
        Ok(Err(_)) => Report::fail("check was cancelled"),
        Err(_) => {
            task.abort();
            *previous = Some(task);
            Report::fail(format!("check timed out after {}", keel_core::HumanDuration::new(timeout)))
        }
    }
}

/// Applies a result; returns how long to wait before the next check.
fn record(inner: &Inner, name: &str, report: Report, latency: Duration) -> Duration {
    let now = Instant::now();
    let wall = inner.clock.now();
    let mut states = lock(&inner.states);
    let Some(state) = states.get_mut(name) else { return Duration::from_secs(1) };
    inner.revision.fetch_add(1, Ordering::AcqRel);
    let before = state.machine.status;
    let after = state.machine.apply(report.status);
    let message_changed = state.message != report.message;
    state.message = report.message.clone();
    state.latency = latency;
    state.last_check = Some(wall);
    if report.status == Status::Ko {
        state.failures += 1;
        state.successes = 0;
    } else {
        state.successes += 1;
        state.failures = 0;
    }
    if before != after {
        let elapsed = now.saturating_duration_since(state.since);
        if before.is_tolerable() {
            state.up += elapsed;
        } else {
            state.down += elapsed;
        }
        state.since = now;
        if after > before {
            state.last_rise = Some(wall);
        } else {
            state.last_fall = Some(wall);
        }
    }
    let wait = if state.machine.falling() {
        state.spec.fall_interval.unwrap_or(state.spec.interval)
    } else if state.machine.rising() {
        state.spec.rise_interval.unwrap_or(state.spec.interval)
    } else {
        state.spec.interval
    };
    if let Some(metrics) = lock(&inner.metrics).as_ref() {
        let component = KeyValue::new("component", name.to_owned());
        metrics.duration.record(latency.as_secs_f64(), std::slice::from_ref(&component));
        if before != after {
            metrics
                .transitions
                .add(1, &[component, KeyValue::new("from", before.as_str()), KeyValue::new("to", after.as_str())]);
        }
    }
    let change = (before != after).then(|| StatusChange {
        time: wall,
        component: name.to_owned(),
        from: before,
        to: after,
        message: report.message.clone(),
    });
    if let Some(change) = &change
        && inner.history > 0
    {
        if state.transitions.len() >= inner.history {
            state.transitions.pop_front();
        }
        state.transitions.push_back(change.clone());
    }
    if before != after || message_changed {
        refresh(inner, &states);
    }
    drop(states);
    inner.recorded.notify_waiters();
    if let Some(change) = change {
        if after < before {
            tracing::warn!(component = name, from = %before, to = %after, reason = %report.message, "health status fell");
        } else {
            tracing::info!(component = name, from = %before, to = %after, "health status rose");
        }
        let _ = inner.changes.send(change);
    }
    wait
}
