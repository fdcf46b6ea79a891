use std::time::Duration;

use keel_telemetry::{MeterSource, names};
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::metrics::{Counter, Histogram, ObservableCounter, ObservableGauge};

use crate::batcher::Counters;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Capacity,
    Interval,
    Retry,
    Shutdown,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Capacity => "capacity",
            Reason::Interval => "interval",
            Reason::Retry => "retry",
            Reason::Shutdown => "shutdown",
        }
    }
}

/// OpenTelemetry instruments of one batcher, once
/// [`Batcher::instrument`](crate::Batcher::instrument) made them.
pub(crate) struct Metrics {
    inner: std::sync::OnceLock<Instruments>,
    name: String,
    max_batch_size: usize,
    counters: Arc<Counters>,
    /// Items waiting in the channel, while the batcher exists.
    depth: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
}

struct Instruments {
    name: KeyValue,
    batch_size: Histogram<u64>,
    utilization: Histogram<f64>,
    duration: Histogram<f64>,
    batches: Counter<u64>,
    flushed: Counter<u64>,
    errors: Counter<u64>,
    publish_errors: Counter<u64>,
    _depth: ObservableGauge<u64>,
    /// Read from the batcher's own counters when scraped: a drop under
    /// overload costs one relaxed add, not a trip through the SDK.
    _dropped: ObservableCounter<u64>,
}

impl Metrics {
    pub(crate) fn new<T: Send + 'static>(
        name: &str,
        queue: tokio::sync::mpsc::WeakSender<T>,
        counters: Arc<Counters>,
        max_batch_size: usize,
    ) -> Self {
        let depth = move || queue.upgrade().map(|tx| (tx.max_capacity() - tx.capacity()) as u64);
        Self {
            inner: std::sync::OnceLock::new(),
            name: name.to_owned(),
            max_batch_size,
            counters,
            depth: Arc::new(depth),
        }
    }

    /// Makes the instruments on `telemetry` (once; later calls do nothing).
    pub(crate) fn instrument(&self, telemetry: &dyn MeterSource) {
        if self.inner.get().is_some() {
            return;
        }
        let meter = telemetry.meter("keel-batcher");
        let label = KeyValue::new("batcher", self.name.clone());
        let depth_label = [label.clone()];
        let drop_labels = ["full", "rejected", "shutdown"].map(|r| [label.clone(), KeyValue::new("reason", r)]);
        let (counters, depth) = (self.counters.clone(), self.depth.clone());
        let instruments = Instruments {
            batch_size: meter
                .u64_histogram(names::BATCHER_BATCH_SIZE)
                .with_description("Items per written batch")
                .build(),
            utilization: meter
                .f64_histogram(names::BATCHER_BATCH_UTILIZATION)
                .with_description("Batch size over the maximum")
                .with_boundaries(vec![0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
                .build(),
            duration: meter
                .f64_histogram(names::BATCHER_FLUSH_DURATION)
                .with_unit("s")
                .with_description("Duration of batch writes")
                .with_boundaries(names::CLIENT_DURATION_BUCKETS.to_vec())
                .build(),
            batches: meter.u64_counter(names::BATCHER_BATCHES).with_description("Batches written").build(),
            flushed: meter.u64_counter(names::BATCHER_FLUSHED).with_description("Items written").build(),
            _dropped: meter
                .u64_observable_counter(names::BATCHER_DROPPED)
                .with_description("Items dropped, by reason")
                .with_callback(move |counter| {
                    let [full, rejected, shutdown] = &drop_labels;
                    counter.observe(counters.dropped_full.sum(), full);
                    counter.observe(counters.dropped_rejected.load(Ordering::Relaxed), rejected);
                    counter.observe(counters.dropped_shutdown.load(Ordering::Relaxed), shutdown);
                })
                .build(),
            errors: meter.u64_counter(names::BATCHER_FLUSH_ERRORS).with_description("Failed batch writes").build(),
            publish_errors: meter
                .u64_counter(names::BATCHER_PUBLISH_ERRORS)
                .with_description("Failed change notifications")
                .build(),
            _depth: meter
                .u64_observable_gauge(names::BATCHER_QUEUE_DEPTH)
                .with_description("Items waiting in the channel")
                .with_callback(move |gauge| {
                    if let Some(waiting) = depth() {
                        gauge.observe(waiting, &depth_label);
                    }
                })
                .build(),
            name: label,
        };
        // Series exist from the start, so rates and alerts see a 0 rather
        // than nothing before the first flush or failure.
        let labels = std::slice::from_ref(&instruments.name);
        for counter in [&instruments.flushed, &instruments.errors, &instruments.publish_errors] {
            counter.add(0, labels);
        }
        let _ = self.inner.set(instruments);
    }

    pub(crate) fn flush(&self, reason: Reason, size: usize, took: Duration, ok: bool) {
        let Some(m) = self.inner.get() else { return };
        let with_reason = [m.name.clone(), KeyValue::new("reason", reason.as_str())];
        m.duration.record(took.as_secs_f64(), &with_reason);
        if ok {
            m.batches.add(1, &with_reason);
            m.flushed.add(size as u64, std::slice::from_ref(&m.name));
            m.batch_size.record(size as u64, std::slice::from_ref(&m.name));
            m.utilization.record(size as f64 / self.max_batch_size as f64, std::slice::from_ref(&m.name));
        } else {
            m.errors.add(1, std::slice::from_ref(&m.name));
        }
    }

    pub(crate) fn publish_error(&self) {
        if let Some(m) = self.inner.get() {
            m.publish_errors.add(1, std::slice::from_ref(&m.name));
        }
    }
}
