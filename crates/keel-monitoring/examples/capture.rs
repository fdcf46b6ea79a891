//! Operator log capture with keel-monitoring: a `tracing` layer copies each
//! record (secrets redacted) into a bounded channel that never blocks the
//! caller; a drain task writes batches to a log store (in memory here, a
//! Redis list with the `redis` feature), where an operator console reads
//! the most recent ones by level.
//!
//! Run it with `cargo run -p keel-monitoring --example capture`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::sync::Arc;
use std::time::Duration;

use keel_monitoring::{Capture, CaptureConfig, LogQuery, MemoryLogs, Redactor};
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (capture, records) = Capture::new(CaptureConfig::new("api", "api-1"), Redactor::new(["s3cret"]));
    let logs = Arc::new(MemoryLogs::new(1_000));
    let drain = tokio::spawn(Capture::drain(records, logs.clone(), 100, Duration::from_millis(50)));

    let subscriber = tracing_subscriber::registry().with(capture.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(user = "ada", "signed in");
        tracing::warn!(user = "bob", password = "s3cret", "login failed");
        tracing::debug!("below the query's level");
    });
    drop(capture); // closes the channel: the drain writes what is left and ends
    drain.await?;

    let query = LogQuery { min_level: tracing::Level::INFO, limit: 10, since_ms: None };
    let recent = logs.recent("api", &query);
    for record in &recent {
        println!("{} {} {:?}", record.level, record.message, record.fields);
    }
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].message, "login failed", "newest first");
    assert_eq!(recent[0].fields["password"], "[redacted]");
    Ok(())
}
