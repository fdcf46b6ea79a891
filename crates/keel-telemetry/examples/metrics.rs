//! Metrics with keel-telemetry: an OpenTelemetry meter whose readings are
//! served in the Prometheus text format (with process gauges), and a
//! duration histogram with Keel's buckets.
//!
//! Run it with `cargo run -p keel-telemetry --example metrics`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::time::Duration;

use keel_telemetry::{DurationSpec, MeterSource as _, Telemetry};
use opentelemetry::KeyValue;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::new("example")?;
    let meter = telemetry.meter("jobs");

    let done = meter.u64_counter("jobs.done").with_description("Jobs finished").build();
    done.add(3, &[KeyValue::new("queue", "mail")]);

    const DURATION: DurationSpec = DurationSpec {
        name: "jobs.duration",
        description: "How long a job ran",
        bounds: &[0.005, 0.05, 0.5, 5.0],
        labels: &["queue"],
    };
    // Resolve the series once, off the hot path; recording is then lock-free.
    let mail = telemetry.duration_histogram("jobs", DURATION).series(&["mail".into()]);
    mail.record(Duration::from_millis(12));

    // What a `/metrics` handler would answer.
    let text = telemetry.encode()?;
    assert!(text.contains("jobs_done_total{queue=\"mail\"} 3"), "{text}");
    assert!(text.contains("jobs_duration_seconds_count{queue=\"mail\"} 1"), "{text}");
    for line in text.lines().filter(|l| l.starts_with("jobs_")) {
        println!("{line}");
    }
    Ok(())
}
