use keel_telemetry::{MeterSource, names};
use opentelemetry::metrics::Counter;

/// Instruments shared by the storage components of one [`Telemetry`].
#[derive(Clone, Debug)]
pub(crate) struct StoreMetrics {
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    db_duration: opentelemetry::metrics::Histogram<f64>,
    #[cfg(feature = "redis")]
    redis_duration: opentelemetry::metrics::Histogram<f64>,
    pub(crate) bus_published: Counter<u64>,
    pub(crate) bus_lagged: Counter<u64>,
    #[cfg(any(feature = "postgres", feature = "redis"))]
    pub(crate) bus_reconnects: Counter<u64>,
}

impl StoreMetrics {
    pub(crate) fn new(telemetry: &dyn MeterSource) -> Self {
        let meter = telemetry.meter("keel-store");
        Self {
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            db_duration: meter
                .f64_histogram(names::DB_OPERATION_DURATION)
                .with_unit("s")
                .with_description("Duration of database operations")
                .with_boundaries(names::CLIENT_DURATION_BUCKETS.to_vec())
                .build(),
            #[cfg(feature = "redis")]
            redis_duration: meter
                .f64_histogram(names::REDIS_COMMAND_DURATION)
                .with_unit("s")
                .with_description("Duration of Redis commands, by command name")
                .with_boundaries(names::CLIENT_DURATION_BUCKETS.to_vec())
                .build(),
            bus_published: meter
                .u64_counter(names::BUS_PUBLISHED)
                .with_description("Messages published on the bus")
                .build(),
            bus_lagged: meter
                .u64_counter(names::BUS_LAGGED)
                .with_description("Messages a slow local subscriber missed")
                .build(),
            #[cfg(any(feature = "postgres", feature = "redis"))]
            bus_reconnects: meter
                .u64_counter(names::BUS_RECONNECTS)
                .with_description("Bus subscriber reconnections")
                .build(),
        }
    }

    /// Times a database operation.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) async fn time_db<T, E>(
        &self,
        system: &'static str,
        operation: &'static str,
        table: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        use opentelemetry::KeyValue;
        let start = std::time::Instant::now();
        let span = child_span(|| {
            tracing::info_span!(
                "db",
                otel.name = %format_args!("{operation} {table}"),
                otel.kind = "client",
                db.system.name = system,
                db.operation.name = operation,
                db.collection.name = table,
            )
        });
        let out = tracing::Instrument::instrument(fut, span).await;
        let attrs = [
            KeyValue::new("db.system.name", system),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.collection.name", table),
            KeyValue::new("outcome", if out.is_ok() { "ok" } else { "error" }),
        ];
        self.db_duration.record(start.elapsed().as_secs_f64(), &attrs);
        out
    }

    /// Times a Redis command; `command` is the command name, never a key.
    #[cfg(feature = "redis")]
    pub(crate) async fn time_redis<T, E>(
        &self,
        command: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        use opentelemetry::KeyValue;
        let start = std::time::Instant::now();
        let span = child_span(|| {
            tracing::info_span!(
                "redis",
                otel.name = command,
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = command,
            )
        });
        let out = tracing::Instrument::instrument(fut, span).await;
        let attrs = [
            KeyValue::new("db.operation.name", command),
            KeyValue::new("outcome", if out.is_ok() { "ok" } else { "error" }),
        ];
        self.redis_duration.record(start.elapsed().as_secs_f64(), &attrs);
        out
    }
}

/// A span for a database or Redis call made on behalf of something already
/// traced (a request, a flush): the child of the current span. Calls made
/// outside any span (background polls, log shipping) get none, so traces are
/// not flooded with parentless spans.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "redis"))]
fn child_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing::Span::current().is_none() { tracing::Span::none() } else { make() }
}
