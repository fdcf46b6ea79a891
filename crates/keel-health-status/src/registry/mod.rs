//! The registry: monitors, component states and the cached aggregate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
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

use crate::monitor::{Machine, SharedCheck};
use crate::snapshot::{ComponentView, aggregate};
use crate::{Check, ComponentSpec, HealthError, MandatoryList, Mode, Snapshot};

mod monitors;
mod reads;

use monitors::*;

/// A component's status changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// When (the registry's wall clock).
    pub time: SystemTime,
    /// The component.
    pub component: String,
    /// Status before; `None` for the component's initial state: the first
    /// status it settles on after it is registered (a component that starts
    /// KO and rises to OK has one change, from `None` to OK, not two).
    pub from: Option<Status>,
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
    /// Whether the initial state has been recorded (`from: None`): until
    /// then the climb from KO is start-up, not a transition.
    settled: bool,
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
                    settled: false,
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
}
