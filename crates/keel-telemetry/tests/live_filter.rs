//! The live log filter, installed as the global subscriber (its own test
//! binary: a process has one): what it lets through, and that a new filter
//! takes effect at once for events and spans alike.

#![cfg(feature = "logging")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use keel_telemetry::{ExtraLayer, FilteredRegistry, LogFormat, init_logging_with};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Records the names of the events and spans that reach it.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Layer<FilteredRegistry> for Seen {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, FilteredRegistry>) {
        self.0.lock().unwrap().push(format!("event {}", event.metadata().target()));
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, FilteredRegistry>) {
        self.0.lock().unwrap().push(format!("span {}", attrs.metadata().name()));
    }
}

fn emit() {
    tracing::debug!(target: "app", "a debug event");
    tracing::info!(target: "app", "an info event");
    tracing::debug!(target: "noisy", "a debug event");
    let span = tracing::debug_span!("work");
    let _entered = span.enter();
}

#[test]
fn the_filter_decides_and_a_new_one_applies_at_once() {
    let seen = Seen::default();
    let extra: Vec<ExtraLayer> = vec![Box::new(seen.clone())];
    let handle = init_logging_with(LogFormat::Json, "info", extra).unwrap();
    emit();
    assert_eq!(seen.take(), ["event app"], "info: only the info event");

    handle.set_filter("debug,noisy=warn").unwrap();
    emit();
    assert_eq!(seen.take(), ["event app", "event app", "span work"], "debug except the noisy target");

    handle.set_filter("warn").unwrap();
    emit();
    assert!(seen.take().is_empty(), "warn: nothing");

    assert!(handle.set_filter("loud").is_err(), "a bad filter is refused");
    handle.set_filter("trace").unwrap();
    emit();
    assert_eq!(seen.take().len(), 4, "trace: everything");
}
