//! Trace export over OTLP (feature `otlp`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;

use crate::{ExtraLayer, TelemetryError};

/// Flushes and stops the span exporter when dropped (or on
/// [`shutdown`](Self::shutdown)), so spans of the last requests are not lost
/// at exit.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Exports what is still buffered and stops.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            // Not through tracing: the exporter is what failed.
            eprintln!("keel-telemetry: cannot flush spans: {err}");
        }
    }
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        // A second shutdown after an explicit one is harmless.
        let _ = self.provider.shutdown();
    }
}

/// When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// is set: a `tracing` layer that exports spans over OTLP/HTTP with JSON
/// bodies (spans batched on a background thread, never on the request path),
/// and the handle that flushes them at exit. `OTEL_SERVICE_NAME` overrides
/// `service`.
pub fn otlp_layer(service: &str) -> Result<Option<(ExtraLayer, TraceExport)>, TelemetryError> {
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()
        .map_err(|err| TelemetryError::Exporter(format!("otlp: {err}")))?;
    let name =
        std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("keel")).boxed();
    // Exported traces need every request as a real span.
    crate::request_log::need_spans();
    Ok(Some((layer, TraceExport { provider })))
}
