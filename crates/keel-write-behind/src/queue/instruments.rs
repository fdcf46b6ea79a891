//! The queue's figures: [`Metrics`] read from the shared state, and their
//! OpenTelemetry export (shared with the stream consumers).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::*;

impl<T: Keyed + Send + Sync + 'static> WriteBehind<T> {
    /// Exports [`metrics`](Self::metrics) as OpenTelemetry instruments
    /// labelled `queue = name`, read when scraped (nothing on the hot path),
    /// and the local log's figures when the queue has one.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource, name: &str) {
        // Weak: the meter provider outlives queues and must not keep them alive.
        let queue = Arc::downgrade(&self.shared);
        #[allow(unused_mut)]
        let mut handles = export_metrics(telemetry, name, move || queue.upgrade().map(|s| s.metrics()), true);
        #[cfg(feature = "local-log")]
        if let Some((log, _)) = &self.shared.log {
            handles.extend(log.instrument(telemetry));
        }
        self.instruments.lock().unwrap_or_else(PoisonError::into_inner).extend(handles);
    }
}

/// The OpenTelemetry instruments of a write-behind queue labelled
/// `queue = name`, each reading `read` when scraped (`None`: the queue is
/// gone, nothing is observed). `backlog`: whether the depth and age gauges
/// come from `read` too (a durable consumer leaves them to the
/// [`StreamBacklog`](crate::StreamBacklog), which measures the stream
/// itself). Keep the returned handles.
pub(crate) fn export_metrics(
    telemetry: &dyn keel_telemetry::MeterSource,
    name: &str,
    read: impl Fn() -> Option<Metrics> + Clone + Send + Sync + 'static,
    backlog: bool,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    use keel_telemetry::names;
    use opentelemetry::KeyValue;
    let meter = telemetry.meter("keel-write-behind");
    let label = [KeyValue::new("queue", name.to_owned())];
    let mut handles: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    let counters: [Exported; 5] = [
        (names::WRITE_BEHIND_ENQUEUED, "Items accepted", |m| m.enqueued),
        (names::WRITE_BEHIND_PERSISTED, "Items persisted", |m| m.persisted),
        (names::WRITE_BEHIND_FAILED, "Items dead-lettered", |m| m.failed),
        (names::WRITE_BEHIND_RETRIES, "Item re-attempts", |m| m.retries),
        (names::WRITE_BEHIND_BATCHES, "Successful repository writes", |m| m.batches),
    ];
    for (metric, description, field) in counters {
        let (read, label) = (read.clone(), label.clone());
        handles.push(Box::new(
            meter
                .u64_observable_counter(metric)
                .with_description(description)
                .with_callback(move |c| {
                    if let Some(m) = read() {
                        c.observe(field(&m), &label);
                    }
                })
                .build(),
        ));
    }
    let in_flight = read.clone();
    handles.push(Box::new(
        meter
            .u64_observable_gauge(names::WRITE_BEHIND_IN_FLIGHT)
            .with_description("Items being written")
            .with_callback(move |g| {
                if let Some(m) = in_flight() {
                    g.observe(m.in_flight, &label);
                }
            })
            .build(),
    ));
    if backlog {
        handles.extend(export_backlog(telemetry, name, read));
    }
    handles
}

/// The depth and oldest-age gauges of a queue labelled `queue = name`
/// (see [`export_metrics`]).
pub(crate) fn export_backlog(
    telemetry: &dyn keel_telemetry::MeterSource,
    name: &str,
    read: impl Fn() -> Option<Metrics> + Clone + Send + Sync + 'static,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    use keel_telemetry::names;
    use opentelemetry::KeyValue;
    let meter = telemetry.meter("keel-write-behind");
    let label = [KeyValue::new("queue", name.to_owned())];
    let (depth, depth_label) = (read.clone(), label.clone());
    vec![
        Box::new(
            meter
                .u64_observable_gauge(names::WRITE_BEHIND_QUEUE_DEPTH)
                .with_description("Items waiting")
                .with_callback(move |g| {
                    if let Some(m) = depth() {
                        g.observe(m.queue_depth, &depth_label);
                    }
                })
                .build(),
        ),
        Box::new(
            meter
                .f64_observable_gauge(names::WRITE_BEHIND_OLDEST_AGE)
                .with_unit("s")
                .with_description("Age of the oldest item not yet persisted")
                .with_callback(move |g| {
                    if let Some(m) = read() {
                        g.observe(m.oldest_age.as_secs_f64(), &label);
                    }
                })
                .build(),
        ),
    ]
}

impl<T: Keyed> WriteBehind<T> {
    /// Counters and gauges now.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics()
    }
}

impl<T: Keyed> Shared<T> {
    pub(super) fn metrics(&self) -> Metrics {
        let c = &self.counters;
        let (depth, queued) = {
            let pending = self.pending();
            (pending.live as u64, pending.oldest())
        };
        let writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner).first().map(|(t, _)| *t);
        let oldest = match (queued, writing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Metrics {
            enqueued: c.enqueued.load(Ordering::Acquire),
            coalesced: c.coalesced.load(Ordering::Acquire),
            persisted: c.persisted.load(Ordering::Acquire),
            failed: c.failed.load(Ordering::Acquire),
            retries: c.retries.load(Ordering::Acquire),
            batches: c.batches.load(Ordering::Acquire),
            queue_depth: depth,
            in_flight: c.in_flight.load(Ordering::Acquire),
            oldest_age: oldest.map_or(Duration::ZERO, |t| t.elapsed()),
            dead_letter_errors: c.dead_letter_errors.load(Ordering::Acquire),
            failing_for: c.failing_for(),
            capacity: self.config.capacity as u64,
            bytes: self.bytes.load(Ordering::Acquire),
        }
    }
}
