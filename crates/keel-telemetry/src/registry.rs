//! `Telemetry`: an OpenTelemetry meter provider read in the Prometheus text
//! format.

use opentelemetry::metrics::MeterProvider as _;
pub use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder as _, TextEncoder};

use crate::histogram::cells;
use crate::{DurationHistogram, DurationSpec, Meter, MeterSource, names};

/// Why telemetry could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus exporter could not be built.
    #[error("cannot build the prometheus exporter: {0}")]
    Exporter(String),
    /// The registry could not be encoded.
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// A meter provider wired to its own Prometheus registry.
///
/// Each `Telemetry` owns a private registry (never the global one), so tests
/// and several services in one process do not see each other's series.
/// Cloning shares the provider and registry.
#[derive(Clone, Debug)]
pub struct Telemetry {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    service: &'static str,
    /// Duration histograms kept in lock-free cells, by Prometheus name.
    histograms: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<cells::Family>>>>,
}

impl Telemetry {
    /// A provider for `service` (used as the instrumentation scope name).
    pub fn new(service: &'static str) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Scope labels would add `otel_scope_*` to every series; Keel's
            // metric names are already unique, so they only cost cardinality.
            .scope_info_enabled(false)
            .build()
            .map_err(|err| TelemetryError::Exporter(err.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        instrument_process(&provider.meter("process"));
        Ok(Self { provider, registry, service, histograms: Default::default() })
    }

    /// A meter for one instrumentation scope.
    pub fn meter(&self, scope: &'static str) -> Meter {
        self.provider.meter(scope)
    }

    /// The service name given at construction.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The underlying provider, for wiring other OpenTelemetry components.
    pub fn provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    /// The current readings in the Prometheus text exposition format.
    pub fn encode(&self) -> Result<String, TelemetryError> {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut out)?;
        // The text encoder only ever writes UTF-8 (names and labels are
        // validated as such by the registry).
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Process gauges read at scrape time: uptime, resident memory, CPU time
/// (OpenTelemetry process semantic conventions). The SDK keeps the callbacks
/// for the life of the provider.
fn instrument_process(meter: &Meter) {
    let started = std::time::Instant::now();
    meter
        .f64_observable_gauge(names::PROCESS_UPTIME)
        .with_unit("s")
        .with_description("Seconds since the process started")
        .with_callback(move |gauge| gauge.observe(started.elapsed().as_secs_f64(), &[]))
        .build();
    meter
        .u64_observable_gauge(names::PROCESS_MEMORY_USAGE)
        .with_unit("By")
        .with_description("Resident memory of the process")
        .with_callback(|gauge| {
            if let Some(usage) = memory_stats::memory_stats() {
                gauge.observe(usage.physical_mem as u64, &[]);
            }
        })
        .build();
    meter
        .f64_observable_counter(names::PROCESS_CPU_TIME)
        .with_unit("s")
        .with_description("CPU time used by the process")
        .with_callback(|counter| {
            if let Ok(used) = cpu_time::ProcessTime::try_now() {
                counter.observe(used.as_duration().as_secs_f64(), &[]);
            }
        })
        .build();
}

/// The content type of [`Telemetry::encode`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl MeterSource for Telemetry {
    fn meter(&self, scope: &'static str) -> Meter {
        Telemetry::meter(self, scope)
    }

    /// Lock-free cells registered with this telemetry's registry; the same
    /// name asked twice is one histogram (as with OpenTelemetry
    /// instruments). A spec the registry refuses falls back to an
    /// OpenTelemetry histogram.
    fn duration_histogram(&self, scope: &'static str, spec: DurationSpec) -> DurationHistogram {
        let mut known = self.histograms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(family) = known.iter().find(|family| family.spec_name() == spec.name) {
            return DurationHistogram::on_cells(family.clone());
        }
        let registered = cells::Family::new(&spec).map(std::sync::Arc::new).and_then(|family| {
            self.registry.register(Box::new(cells::Collected(family.clone())))?;
            Ok(family)
        });
        match registered {
            Ok(family) => {
                known.push(family.clone());
                DurationHistogram::on_cells(family)
            }
            Err(_) => DurationHistogram::on_meter(&self.meter(scope), spec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    #[test]
    fn histogram_uses_configured_buckets_and_unit_suffix() {
        let telemetry = Telemetry::new("test").unwrap();
        let histogram = telemetry
            .meter("test")
            .f64_histogram(names::HTTP_SERVER_REQUEST_DURATION)
            .with_unit("s")
            .with_boundaries(names::HTTP_DURATION_BUCKETS.to_vec())
            .build();
        histogram.record(0.2, &[KeyValue::new("http.route", "/x/{id}")]);
        let text = telemetry.encode().unwrap();
        assert!(
            text.contains("http_server_request_duration_seconds_bucket{http_route=\"/x/{id}\",le=\"0.25\"} 1"),
            "{text}"
        );
        assert!(!text.contains("otel_scope_name"), "{text}");
    }

    #[test]
    fn registries_are_private() {
        let a = Telemetry::new("a").unwrap();
        let b = Telemetry::new("b").unwrap();
        a.meter("a").u64_counter("only.in.a").build().add(1, &[]);
        assert!(a.encode().unwrap().contains("only_in_a_total"));
        assert!(!b.encode().unwrap().contains("only_in_a_total"));
    }

    #[test]
    fn process_gauges_are_exported() {
        let text = Telemetry::new("p").unwrap().encode().unwrap();
        for name in ["process_memory_usage_bytes ", "process_cpu_time_seconds_total ", "process_uptime_seconds "] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
