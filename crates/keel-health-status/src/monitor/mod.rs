//! Component monitors: a check run on an interval with a hard timeout, panic
//! isolation, and golib's rise/fall state machine.

mod machine;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Status;

use crate::Info;
pub(crate) use machine::Machine;

/// How many consecutive results move a component between states.
///
/// From OK, `fall_warn` failures → WARN; from WARN, `fall_ko` failures → KO;
/// from KO, `rise_ko` successes → WARN; from WARN, `rise_warn` successes → OK.
/// A failure resets the success count and vice versa. Zero is treated as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures from OK to WARN.
    pub fall_warn: u32,
    /// Failures from WARN to KO.
    pub fall_ko: u32,
    /// Successes from KO to WARN.
    pub rise_ko: u32,
    /// Successes from WARN to OK.
    pub rise_warn: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { fall_warn: 1, fall_ko: 1, rise_ko: 1, rise_warn: 1 }
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Ok`, `Warn` (working but degraded) or `Ko` (failed).
    pub status: Status,
    /// Shown next to the status; empty when all is well.
    pub message: String,
}

impl Report {
    /// Success.
    pub fn ok() -> Self {
        Self { status: Status::Ok, message: String::new() }
    }

    /// Working but degraded (e.g. slow).
    pub fn warn(message: impl Into<String>) -> Self {
        Self { status: Status::Warn, message: message.into() }
    }

    /// Failure.
    pub fn fail(message: impl Into<String>) -> Self {
        Self { status: Status::Ko, message: message.into() }
    }
}

impl<E: std::fmt::Display> From<Result<(), E>> for Report {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Report::ok(),
            Err(err) => Report::fail(err.to_string()),
        }
    }
}

/// A boxed check future.
pub type CheckFuture = Pin<Box<dyn Future<Output = Report> + Send + 'static>>;

/// Something that can be checked. Implemented for every
/// `Fn() -> impl Future<Output = Report>`.
pub trait Check: Send + Sync + 'static {
    /// Runs the check once.
    fn check(&self) -> CheckFuture;
}

impl<F, Fut> Check for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Report> + Send + 'static,
{
    fn check(&self) -> CheckFuture {
        Box::pin(self())
    }
}

/// A shared check.
pub type SharedCheck = Arc<dyn Check>;

/// What to monitor and how often.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// Unique component name.
    pub name: String,
    /// Time between checks while the status is steady.
    pub interval: Duration,
    /// Time between checks while falling (a failure was seen and the status
    /// is not yet KO). Defaults to `interval`.
    pub fall_interval: Option<Duration>,
    /// Time between checks while rising (a success was seen and the status is
    /// not yet OK). Defaults to `interval`.
    pub rise_interval: Option<Duration>,
    /// A check running longer than this counts as failed.
    pub timeout: Duration,
    /// Rise/fall counts.
    pub thresholds: Thresholds,
    /// Optional description.
    pub info: Option<Info>,
}

impl ComponentSpec {
    /// A spec with a 5 s interval, 2 s timeout and thresholds of 1.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            interval: Duration::from_secs(5),
            fall_interval: None,
            rise_interval: None,
            timeout: Duration::from_secs(2),
            thresholds: Thresholds::default(),
            info: None,
        }
    }

    /// Sets the interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the thresholds.
    pub fn thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Sets the info.
    pub fn info(mut self, info: Info) -> Self {
        self.info = Some(info);
        self
    }
}
