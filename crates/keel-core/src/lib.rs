//! Primitives shared by every Keel crate: a [`Clock`] that tests can drive,
//! [`Shutdown`] coordination, the [`Status`] scale, human-readable durations
//! for configuration, and instance identifiers.
//!
//! This crate performs no I/O beyond reading the host name and listening for
//! process signals, so every other crate can depend on it cheaply.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use keel_core::{Clock, HumanDuration, ManualClock, Status};
//!
//! let interval: HumanDuration = "500ms".parse().unwrap();
//! assert_eq!(interval.get(), Duration::from_millis(500));
//!
//! let clock = ManualClock::new();
//! let before = clock.now();
//! clock.advance(Duration::from_secs(5));
//! assert_eq!(clock.now().duration_since(before).unwrap(), Duration::from_secs(5));
//!
//! assert!(Status::Ko < Status::Warn && Status::Warn < Status::Ok);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod clock;
mod counter;
mod duration;
mod failure;
mod ids;
#[cfg(feature = "json")]
mod json;
mod shutdown;
mod status;
mod text;
mod unix;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use counter::PerThreadCounter;
pub use duration::{DurationError, HumanDuration, parse_duration};
pub use failure::{FailureKind, WriteError};
pub use ids::default_instance_id;
#[cfg(feature = "json")]
pub use json::nul_path;
pub use shutdown::{DrainTimeout, Shutdown};
pub use status::{Status, StatusParseError};
pub use text::{MAX_ECHO, clip, shown};
pub use unix::{from_unix_micros, from_unix_millis, unix_micros, unix_millis};

/// The field that marks a log record as not for capture: log capture
/// (keel-monitoring) skips any event that has it, so what serving the
/// captured records writes is never captured and fanned out again.
pub const UNCAPTURED_FIELD: &str = "uncaptured";

/// The code in `docs/core.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/core.md")]
pub struct CoreGuide;
