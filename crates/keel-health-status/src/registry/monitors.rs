//! The monitors: one task per component running its check on its own task
//! with a hard timeout, the optional watchdog runtime, and how a report
//! moves the component's state and the aggregate.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use keel_core::Status;
use opentelemetry::KeyValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ComponentSpec;
use crate::monitor::{Report, SharedCheck};
use crate::snapshot::aggregate;

use super::*;

pub(super) fn refresh(inner: &Inner, states: &BTreeMap<String, State>) {
    inner.revision.fetch_add(1, Ordering::AcqRel);
    let now = Instant::now();
    let views = states.iter().map(|(n, s)| (n.clone(), s.view(now))).collect();
    let snapshot = aggregate(&inner.groups, inner.default_mode, &views, None);
    inner.global.store(encode(snapshot.status), Ordering::Release);
    inner.cache.store(Arc::new(snapshot));
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything that
    // can panic, so a poisoned lock is safe to keep using.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn start_watchdog(cancel: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new().name("keel-health-watchdog".into()).spawn(move || {
        runtime.block_on(cancel.cancelled());
    })?;
    Ok(handle)
}

pub(super) async fn run_monitor(
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
pub(super) async fn run_check(
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
pub(super) fn record(inner: &Inner, name: &str, report: Report, latency: Duration) -> Duration {
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
    // Start-up is not a transition: the first status the component settles
    // on (where its last result leads and stays) is recorded once as its
    // initial state, and only changes after it are transitions.
    let from = if state.settled {
        (before != after).then_some(Some(before))
    } else if state.machine.settled() {
        state.settled = true;
        Some(None)
    } else {
        None
    };
    if let Some(metrics) = lock(&inner.metrics).as_ref() {
        let component = KeyValue::new("component", name.to_owned());
        metrics.duration.record(latency.as_secs_f64(), std::slice::from_ref(&component));
        if let Some(Some(before)) = from {
            metrics
                .transitions
                .add(1, &[component, KeyValue::new("from", before.as_str()), KeyValue::new("to", after.as_str())]);
        }
    }
    let change = from.map(|from| StatusChange {
        time: wall,
        component: name.to_owned(),
        from,
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
        match change.from {
            None if after == Status::Ok => tracing::info!(component = name, status = %after, "health status settled"),
            None => {
                tracing::warn!(component = name, status = %after, reason = %report.message, "health status settled");
            }
            Some(before) if after < before => {
                tracing::warn!(component = name, from = %before, to = %after, reason = %report.message, "health status fell");
            }
            Some(before) => tracing::info!(component = name, from = %before, to = %after, "health status rose"),
        }
        let _ = inner.changes.send(change);
    }
    wait
}
