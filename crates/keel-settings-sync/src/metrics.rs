use std::sync::{Arc, Weak};

use keel_telemetry::{MeterSource, names};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableCounter, ObservableGauge};

use crate::settings::Document;

/// Where a refill found its value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    Cache,
    Db,
}

/// Instruments of one settings document.
pub(crate) struct Metrics {
    /// In-memory reads, on the hot path: one slot per thread, summed when
    /// scraped.
    l1_reads: Arc<keel_core::PerThreadCounter>,
    reads: Counter<u64>,
    db_loads: Counter<u64>,
    version_checks: Counter<u64>,
    sent: Counter<u64>,
    received: Counter<u64>,
    errors: Counter<u64>,
    name: KeyValue,
    cache_source: KeyValue,
    _l1: ObservableCounter<u64>,
    _version: ObservableGauge<i64>,
    _staleness: ObservableGauge<f64>,
}

impl Metrics {
    pub(crate) fn new<T: Document>(
        telemetry: &dyn MeterSource,
        name: &str,
        inner: Weak<crate::settings::InnerHandle<T>>,
    ) -> Self {
        let meter = telemetry.meter("keel-settings-sync");
        let label = KeyValue::new("name", name.to_owned());
        let l1_reads = Arc::new(keel_core::PerThreadCounter::default());
        let (l1, l1_label) = (l1_reads.clone(), [label.clone(), KeyValue::new("source", "l1")]);
        let (weak_version, weak_stale) = (inner.clone(), inner);
        let (version_label, stale_label) = ([label.clone()], [label.clone()]);
        Self {
            _l1: meter
                .u64_observable_counter(names::SETTINGS_READS)
                .with_description("Settings reads by source (l1, redis or memory cache, db)")
                .with_callback(move |c| c.observe(l1.sum(), &l1_label))
                .build(),
            reads: meter.u64_counter(names::SETTINGS_READS).build(),
            db_loads: meter
                .u64_counter(names::SETTINGS_DB_LOADS)
                .with_description("Settings loads from the database")
                .build(),
            version_checks: meter
                .u64_counter(names::SETTINGS_VERSION_CHECKS)
                .with_description("Version-only looks at the database (at open and after a bus reconnect)")
                .build(),
            sent: meter
                .u64_counter(names::SETTINGS_INVALIDATIONS_SENT)
                .with_description("Invalidations published")
                .build(),
            received: meter
                .u64_counter(names::SETTINGS_INVALIDATIONS_RECEIVED)
                .with_description("Invalidations received for this document")
                .build(),
            errors: meter
                .u64_counter(names::SETTINGS_SYNC_ERRORS)
                .with_description("Settings sync errors by stage")
                .build(),
            _version: meter
                .i64_observable_gauge(names::SETTINGS_VERSION)
                .with_description("Settings version held by this process")
                .with_callback(move |g| {
                    if let Some(inner) = weak_version.upgrade() {
                        g.observe(inner.version(), &version_label);
                    }
                })
                .build(),
            _staleness: meter
                .f64_observable_gauge(names::SETTINGS_STALENESS)
                .with_unit("s")
                .with_description("Seconds since the settings were last confirmed, while refreshes fail")
                .with_callback(move |g| {
                    if let Some(inner) = weak_stale.upgrade() {
                        g.observe(inner.staleness().as_secs_f64(), &stale_label);
                    }
                })
                .build(),
            l1_reads,
            name: label,
            cache_source: KeyValue::new("source", "cache"),
        }
    }

    pub(crate) fn with_cache_backend(mut self, backend: &'static str) -> Self {
        self.cache_source = KeyValue::new("source", backend);
        self
    }

    pub(crate) fn count_l1_read(&self) {
        self.l1_reads.add_one();
    }

    pub(crate) fn read(&self, source: Source) {
        let source = match source {
            Source::Cache => self.cache_source.clone(),
            Source::Db => KeyValue::new("source", "db"),
        };
        self.reads.add(1, &[self.name.clone(), source]);
    }

    pub(crate) fn db_load(&self) {
        self.db_loads.add(1, std::slice::from_ref(&self.name));
    }

    pub(crate) fn version_check(&self) {
        self.version_checks.add(1, std::slice::from_ref(&self.name));
    }

    pub(crate) fn invalidation_sent(&self) {
        self.sent.add(1, std::slice::from_ref(&self.name));
    }

    pub(crate) fn invalidation_received(&self) {
        self.received.add(1, std::slice::from_ref(&self.name));
    }

    pub(crate) fn sync_error(&self, stage: &'static str) {
        self.errors.add(1, &[self.name.clone(), KeyValue::new("stage", stage)]);
    }
}
