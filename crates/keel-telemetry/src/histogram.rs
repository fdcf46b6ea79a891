//! Duration histograms for hot paths: a series (one label set) is resolved
//! once and then recorded with three relaxed atomic adds, no lock, no hash
//! and no allocation.
//!
//! On a [`Telemetry`](crate::Telemetry) the series are read straight into its
//! Prometheus registry at scrape time, under the name the OpenTelemetry
//! exporter would give the same instrument (`http.server.request.duration`
//! in seconds is `http_server_request_duration_seconds`). On any other
//! [`MeterSource`](crate::MeterSource) they are an OpenTelemetry histogram
//! recorded with a label set built once per series.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

/// What a duration histogram is: its OpenTelemetry name, description,
/// bucket bounds in seconds and the keys of its labels.
#[derive(Debug, Clone, Copy)]
pub struct DurationSpec {
    /// The instrument name, dotted (`http.server.request.duration`).
    pub name: &'static str,
    /// One line for `# HELP`.
    pub description: &'static str,
    /// Upper bounds of the buckets, in seconds, ascending.
    pub bounds: &'static [f64],
    /// Label keys, dotted (`http.route`), in the order
    /// [`DurationHistogram::series`] takes their values.
    pub labels: &'static [&'static str],
}

/// A duration histogram; cloning shares it. A series (one label set) is
/// resolved once, then recorded without a lock, a hash or an allocation; on
/// a `Telemetry` it is read straight into the Prometheus registry at scrape
/// time, on any other meter it is an OpenTelemetry histogram.
///
/// ```
/// use std::time::Duration;
/// use keel_telemetry::{DurationSpec, MeterSource, Telemetry};
///
/// const SPEC: DurationSpec = DurationSpec {
///     name: "job.duration",
///     description: "Duration of jobs",
///     bounds: &[0.1, 1.0],
///     labels: &["queue"],
/// };
/// let telemetry = Telemetry::new("example").unwrap();
/// let histogram = telemetry.duration_histogram("example", SPEC);
/// let series = histogram.series(&["mail".into()]);
/// series.record(Duration::from_millis(250));
/// let text = telemetry.encode().unwrap();
/// assert!(text.contains("job_duration_seconds_bucket{queue=\"mail\",le=\"1\"} 1"), "{text}");
/// ```
#[derive(Clone, Debug)]
pub struct DurationHistogram {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    #[cfg(feature = "prometheus")]
    Cells(Arc<cells::Family>),
    Otel {
        histogram: Histogram<f64>,
        spec: DurationSpec,
    },
}

/// One label set of a [`DurationHistogram`]; cloning shares it. Keep it
/// where the hot path can reach it: resolving it again costs a lock.
#[derive(Clone, Debug)]
pub struct DurationSeries {
    kind: SeriesKind,
}

#[derive(Clone, Debug)]
enum SeriesKind {
    #[cfg(feature = "prometheus")]
    Cells(Arc<cells::Cells>),
    Otel {
        histogram: Histogram<f64>,
        attributes: Arc<[KeyValue]>,
    },
}

impl DurationHistogram {
    /// An OpenTelemetry histogram on `meter`.
    pub fn on_meter(meter: &Meter, spec: DurationSpec) -> Self {
        let histogram = meter
            .f64_histogram(spec.name)
            .with_unit("s")
            .with_description(spec.description)
            .with_boundaries(spec.bounds.to_vec())
            .build();
        Self { kind: Kind::Otel { histogram, spec } }
    }

    #[cfg(feature = "prometheus")]
    pub(crate) fn on_cells(family: Arc<cells::Family>) -> Self {
        Self { kind: Kind::Cells(family) }
    }

    /// The series of `values` (one per label key of the spec, in order;
    /// missing ones are empty, extra ones ignored). Asking twice for the
    /// same values gives the same series.
    pub fn series(&self, values: &[opentelemetry::Value]) -> DurationSeries {
        match &self.kind {
            #[cfg(feature = "prometheus")]
            Kind::Cells(family) => DurationSeries { kind: SeriesKind::Cells(family.series(values)) },
            Kind::Otel { histogram, spec } => {
                let attributes = spec
                    .labels
                    .iter()
                    .enumerate()
                    .map(|(i, key)| KeyValue::new(*key, values.get(i).cloned().unwrap_or_else(|| "".into())))
                    .collect();
                DurationSeries { kind: SeriesKind::Otel { histogram: histogram.clone(), attributes } }
            }
        }
    }
}

impl DurationSeries {
    /// Counts one observation of `elapsed`.
    #[inline]
    pub fn record(&self, elapsed: Duration) {
        match &self.kind {
            #[cfg(feature = "prometheus")]
            SeriesKind::Cells(cells) => cells.record(elapsed),
            SeriesKind::Otel { histogram, attributes } => histogram.record(elapsed.as_secs_f64(), attributes),
        }
    }
}

/// The Prometheus name of a dotted instrument name in seconds, as the
/// OpenTelemetry exporter spells it.
#[cfg(feature = "prometheus")]
fn prometheus_name(name: &str) -> String {
    let mut out = sanitize(name);
    if !out.ends_with("_seconds") {
        out.push_str("_seconds");
    }
    out
}

#[cfg(feature = "prometheus")]
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect()
}

#[cfg(feature = "prometheus")]
pub(crate) mod cells {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, PoisonError};

    use prometheus::core::{Collector, Desc};
    use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, MetricType};

    use super::*;

    /// Every series of one histogram, read by the registry at scrape time.
    #[derive(Debug)]
    pub(crate) struct Family {
        spec_name: &'static str,
        name: String,
        help: String,
        labels: Vec<String>,
        bounds: Vec<f64>,
        bounds_nanos: Arc<[u64]>,
        desc: Desc,
        series: Mutex<Vec<Arc<Cells>>>,
    }

    /// One label set: bucket counts (not cumulative; one more than the
    /// bounds, for slower observations) and the sum. The count is the sum
    /// of the buckets: two atomic adds per observation.
    #[derive(Debug)]
    pub(crate) struct Cells {
        values: Vec<String>,
        bounds_nanos: Arc<[u64]>,
        buckets: Box<[AtomicU64]>,
        sum_nanos: AtomicU64,
    }

    impl Cells {
        #[inline]
        pub(crate) fn record(&self, elapsed: Duration) {
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            // Bucket i counts observations up to and including bound i;
            // the last one those above every bound. A linear scan: bounds
            // are few, and most observations fall in the first ones.
            let bucket = self.bounds_nanos.iter().position(|&bound| nanos <= bound).unwrap_or(self.bounds_nanos.len());
            if let Some(cell) = self.buckets.get(bucket) {
                cell.fetch_add(1, Ordering::Relaxed);
            }
            self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    impl Family {
        pub(crate) fn new(spec: &DurationSpec) -> Result<Self, prometheus::Error> {
            let name = prometheus_name(spec.name);
            let labels: Vec<String> = spec.labels.iter().map(|l| sanitize(l)).collect();
            let desc = Desc::new(name.clone(), spec.description.to_owned(), labels.clone(), Default::default())?;
            let bounds_nanos = spec.bounds.iter().map(|s| Duration::from_secs_f64(*s).as_nanos() as u64).collect();
            Ok(Self {
                spec_name: spec.name,
                name,
                help: spec.description.to_owned(),
                labels,
                bounds: spec.bounds.to_vec(),
                bounds_nanos,
                desc,
                series: Mutex::new(Vec::new()),
            })
        }

        pub(crate) fn spec_name(&self) -> &'static str {
            self.spec_name
        }

        pub(crate) fn series(&self, values: &[opentelemetry::Value]) -> Arc<Cells> {
            let values: Vec<String> = (0..self.labels.len())
                .map(|i| values.get(i).map(|v| v.as_str().into_owned()).unwrap_or_default())
                .collect();
            let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = series.iter().find(|cells| cells.values == values) {
                return found.clone();
            }
            let cells = Arc::new(Cells {
                values,
                bounds_nanos: self.bounds_nanos.clone(),
                buckets: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            });
            series.push(cells.clone());
            cells
        }

        fn metric(&self, cells: &Cells) -> Metric {
            let mut labels: Vec<LabelPair> = self
                .labels
                .iter()
                .zip(&cells.values)
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.clone());
                    pair.set_value(value.clone());
                    pair
                })
                .collect();
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            let counts: Vec<u64> = cells.buckets.iter().map(|cell| cell.load(Ordering::Relaxed)).collect();
            let mut cumulative = 0;
            let buckets = self
                .bounds
                .iter()
                .zip(&counts)
                .map(|(bound, count)| {
                    cumulative += count;
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            let count = counts.iter().sum();
            let mut histogram = prometheus::proto::Histogram::default();
            histogram.set_sample_count(count);
            histogram.set_sample_sum(cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
            histogram.set_bucket(buckets);
            let mut metric = Metric::from_label(labels);
            metric.set_histogram(histogram);
            metric
        }
    }

    /// The registry's view of a family (registered once per name).
    pub(crate) struct Collected(pub(crate) Arc<Family>);

    impl Collector for Collected {
        fn desc(&self) -> Vec<&Desc> {
            vec![&self.0.desc]
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let family = &self.0;
            let series: Vec<Arc<Cells>> = family.series.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if series.is_empty() {
                // Like the OpenTelemetry exporter: no family before the
                // first series.
                return Vec::new();
            }
            let mut out = MetricFamily::default();
            out.set_name(family.name.clone());
            out.set_help(family.help.clone());
            out.set_field_type(MetricType::HISTOGRAM);
            out.set_metric(series.iter().map(|cells| family.metric(cells)).collect());
            vec![out]
        }
    }
}

#[cfg(all(test, feature = "prometheus"))]
mod tests {
    use super::*;
    use crate::{MeterSource, Telemetry};

    const SPEC: DurationSpec = DurationSpec {
        name: "test.op.duration",
        description: "ops",
        bounds: &[0.005, 0.25, 1.0],
        labels: &["op.name", "code"],
    };

    /// The same observations through the lock-free cells and through the
    /// OpenTelemetry exporter render the same exposition lines.
    #[test]
    fn cells_render_as_the_opentelemetry_exporter_does() {
        let fast = Telemetry::new("fast").unwrap();
        let otel = Telemetry::new("otel").unwrap();
        let on_cells = fast.duration_histogram("t", SPEC);
        let on_otel = DurationHistogram::on_meter(&otel.meter("t"), SPEC);
        for histogram in [&on_cells, &on_otel] {
            let read = histogram.series(&["read".into(), 200.into()]);
            read.record(Duration::from_millis(5));
            read.record(Duration::from_millis(200));
            read.record(Duration::from_secs(3));
            histogram.series(&["write".into(), 503.into()]).record(Duration::from_micros(10));
        }
        let lines = |text: &str| -> Vec<String> {
            text.lines().filter(|l| l.starts_with("test_op_duration_seconds")).map(str::to_owned).collect()
        };
        let (fast, otel) = (fast.encode().unwrap(), otel.encode().unwrap());
        assert_eq!(lines(&fast), lines(&otel), "\n{fast}\n---\n{otel}");
        assert!(
            fast.contains("test_op_duration_seconds_bucket{code=\"200\",op_name=\"read\",le=\"0.005\"} 1"),
            "{fast}"
        );
        assert!(
            fast.contains("test_op_duration_seconds_bucket{code=\"200\",op_name=\"read\",le=\"+Inf\"} 3"),
            "{fast}"
        );
        assert!(fast.contains("test_op_duration_seconds_sum{code=\"200\",op_name=\"read\"} 3.205"), "{fast}");
        assert!(fast.contains("# TYPE test_op_duration_seconds histogram"), "{fast}");
    }

    #[test]
    fn a_name_asked_twice_is_one_histogram() {
        let telemetry = Telemetry::new("twice").unwrap();
        let a = telemetry.duration_histogram("t", SPEC).series(&["x".into(), 1.into()]);
        let b = telemetry.duration_histogram("t", SPEC).series(&["x".into(), 1.into()]);
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(1));
        let text = telemetry.encode().unwrap();
        assert!(text.contains("test_op_duration_seconds_count{code=\"1\",op_name=\"x\"} 2"), "{text}");
    }

    #[test]
    fn nothing_is_exported_before_the_first_series() {
        let telemetry = Telemetry::new("empty").unwrap();
        let _histogram = telemetry.duration_histogram("t", SPEC);
        assert!(!telemetry.encode().unwrap().contains("test_op_duration_seconds"));
    }
}
