//! The log's figures: [`LocalLogStats`] and their OpenTelemetry export.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::*;

/// The log's figures now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalLogStats {
    /// Bytes in the segment files.
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Records appended (acknowledged) since start.
    pub appends: u64,
    /// Group commits (`fdatasync`s) since start.
    pub syncs: u64,
    /// Appends that failed (answered as errors, never acknowledged).
    pub append_errors: u64,
    /// Records replayed at start.
    pub replayed: u64,
    /// Records that failed their check (or could not be decoded), kept
    /// beside the log.
    pub corrupt: u64,
    /// The last append error, while no append has succeeded since.
    pub failing: Option<String>,
}

impl LocalLog {
    /// The figures now.
    pub fn stats(&self) -> LocalLogStats {
        let s = &self.shared;
        LocalLogStats {
            bytes: s.disk.load(Ordering::Acquire),
            max_bytes: s.config.max_bytes,
            segments: s.segments.load(Ordering::Acquire),
            appends: s.appends.load(Ordering::Acquire),
            syncs: s.syncs.load(Ordering::Acquire),
            append_errors: s.append_errors.load(Ordering::Acquire),
            replayed: s.replayed.load(Ordering::Acquire),
            corrupt: s.corrupt.load(Ordering::Acquire),
            failing: s.failing.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Exports the figures as OpenTelemetry instruments, read when scraped,
    /// and records each sync's duration.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
        use keel_telemetry::names;
        let meter = telemetry.meter("keel-write-behind");
        let _ = self.shared.sync_duration.set(
            meter
                .f64_histogram(names::LOCAL_LOG_SYNC_DURATION)
                .with_unit("s")
                .with_description("Duration of one group commit (write + fdatasync)")
                .with_boundaries(names::CLIENT_DURATION_BUCKETS.to_vec())
                .build(),
        );
        type Read = fn(&LocalLogStats) -> u64;
        let counters: [(&'static str, &'static str, Read); 5] = [
            (names::LOCAL_LOG_APPENDS, "Records appended and synced", |s| s.appends),
            (names::LOCAL_LOG_SYNCS, "Group commits", |s| s.syncs),
            (names::LOCAL_LOG_APPEND_ERRORS, "Appends that failed", |s| s.append_errors),
            (names::LOCAL_LOG_REPLAYED, "Records replayed at start", |s| s.replayed),
            (names::LOCAL_LOG_CORRUPT, "Records that failed their check, kept beside the log", |s| s.corrupt),
        ];
        let gauges: [(&'static str, &'static str, Read); 3] = [
            (names::LOCAL_LOG_BYTES, "Bytes in the log's segments", |s| s.bytes),
            (names::LOCAL_LOG_MAX_BYTES, "The log's bound", |s| s.max_bytes),
            (names::LOCAL_LOG_SEGMENTS, "Segment files", |s| s.segments),
        ];
        let mut handles: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        for (name, description, read) in counters {
            let log = Arc::downgrade(&self.shared);
            handles.push(Box::new(
                meter
                    .u64_observable_counter(name)
                    .with_description(description)
                    .with_callback(move |c| {
                        if let Some(shared) = log.upgrade() {
                            c.observe(read(&LocalLog { shared }.stats()), &[]);
                        }
                    })
                    .build(),
            ));
        }
        for (name, description, read) in gauges {
            let log = Arc::downgrade(&self.shared);
            handles.push(Box::new(
                meter
                    .u64_observable_gauge(name)
                    .with_description(description)
                    .with_callback(move |g| {
                        if let Some(shared) = log.upgrade() {
                            g.observe(read(&LocalLog { shared }.stats()), &[]);
                        }
                    })
                    .build(),
            ));
        }
        handles
    }
}
