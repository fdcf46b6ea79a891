//! Telemetry for Keel services: an OpenTelemetry meter provider whose
//! readings are exposed in the Prometheus text format, `tracing` set-up for
//! humans (pretty) or machines (JSON), and the names of every metric Keel
//! exports (in [`names`]), kept in one place so dashboards and alerts have a
//! single source of truth. With the `otlp` feature, `otlp_layer` exports
//! `tracing` spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! # Example
//!
//! ```
//! use keel_telemetry::{Telemetry, names};
//! use opentelemetry::KeyValue;
//!
//! let telemetry = Telemetry::new("example").unwrap();
//! let meter = telemetry.meter("example");
//! let counter = meter.u64_counter("jobs.done").build();
//! counter.add(1, &[KeyValue::new("queue", "default")]);
//! let text = telemetry.encode().unwrap();
//! assert!(text.contains("jobs_done_total{queue=\"default\"} 1"));
//! let _ = names::HTTP_SERVER_REQUEST_DURATION;
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod histogram;
#[cfg(feature = "logging")]
mod json_fields;
#[cfg(feature = "logging")]
mod logging;
pub mod names;
#[cfg(feature = "otlp")]
mod otlp;
#[cfg(feature = "prometheus")]
mod registry;
pub mod request_log;

pub use histogram::{DurationHistogram, DurationSeries, DurationSpec};
#[cfg(feature = "logging")]
pub use logging::{
    ExtraLayer, FilteredRegistry, LiveFilter, LogFormat, LogHandle, LoggingError, check_filter, init_logging,
    init_logging_with,
};
pub use opentelemetry::metrics::Meter;

/// Put in a response's extensions by a handler whose own request record must
/// not be captured (a monitoring stream): Keel's request logging then writes
/// its "request answered" record with `keel_core::UNCAPTURED_FIELD`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uncaptured;
#[cfg(feature = "otlp")]
pub use otlp::{TraceExport, otlp_layer};
#[cfg(feature = "prometheus")]
pub use registry::{PROMETHEUS_CONTENT_TYPE, SdkMeterProvider, Telemetry, TelemetryError};

/// Where a library gets its meter: a [`Meter`] itself (whatever provider
/// made it), or, with the `prometheus` feature, a [`Telemetry`]. Libraries
/// take `&dyn MeterSource`, so they never depend on an exporter.
pub trait MeterSource: Send + Sync {
    /// The meter for `scope` (a library's name).
    fn meter(&self, scope: &'static str) -> Meter;

    /// A duration histogram for a hot path, on `scope`'s meter. By default
    /// an OpenTelemetry histogram; a [`Telemetry`] keeps it in lock-free
    /// cells read at scrape time (same exposition, a fraction of the cost).
    fn duration_histogram(&self, scope: &'static str, spec: DurationSpec) -> DurationHistogram {
        DurationHistogram::on_meter(&self.meter(scope), spec)
    }
}

impl MeterSource for Meter {
    fn meter(&self, _scope: &'static str) -> Meter {
        self.clone()
    }
}

/// The code in `docs/telemetry.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/telemetry.md")]
pub struct TelemetryGuide;
