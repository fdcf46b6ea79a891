//! `init_logging` without extra layers logs (its own test binary: a
//! process has one global subscriber). An empty list of extra layers once
//! disabled every event and span.

#![cfg(feature = "logging")]
#![allow(clippy::unwrap_used)]

use keel_telemetry::{LogFormat, init_logging};

#[test]
fn logging_without_extra_layers_lets_events_and_spans_through() {
    let _handle = init_logging(LogFormat::Json, "info").unwrap();
    assert!(tracing::enabled!(tracing::Level::INFO));
    assert!(!tracing::enabled!(tracing::Level::DEBUG));
    assert!(!tracing::info_span!("work").is_none(), "an info span exists");
    assert!(tracing::debug_span!("detail").is_none(), "a debug span is filtered out");
}
