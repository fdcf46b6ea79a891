//! Health aggregation in the spirit of golib's `status` package, without its
//! order-dependent and over-lenient corners.
//!
//! - [`Mode`] (`control`): `Ignore`, `Should`, `Must`, `AnyOf`, `Quorum`.
//! - [`Mandatory`] (`mandatory`) and [`MandatoryList`] (`listmandatory`): named
//!   groups of components with a mode, validated (no component in two groups,
//!   no empty or duplicate group).
//! - `monitor`: one task per component runs its [`Check`] on an interval with
//!   a hard timeout and panic isolation, through golib's rise/fall machine
//!   ([`Thresholds`]). Components start KO (`pending first check`).
//! - [`Health`]: the registry. Every status change recomputes the aggregate
//!   into an `ArcSwap` (and the global status into an atomic), so cached reads
//!   are a single atomic load; live reads recompute on demand.
//!
//! Aggregation: each group's status under its mode, then the global status is
//! the worst group impact. `Should` turns any non-OK member into WARN; `Must`
//! is its worst member; `AnyOf` its best; `Quorum` needs a strict majority OK
//! (or OK-or-WARN for WARN). A configured `Must`/`AnyOf`/`Quorum` member that
//! nothing registered counts as KO with message `missing`. Components in no
//! group form the group `default` under the default mode.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use keel_core::Status;
//! use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report};
//!
//! let groups = MandatoryList::new(vec![
//!     Mandatory::new("replicas", Mode::AnyOf, ["r1", "r2"]),
//!     Mandatory::new("mail", Mode::Should, ["smtp"]),
//! ])
//! .unwrap();
//! let health = Health::new(groups, Mode::Must);
//! let spec = |name: &str| ComponentSpec::new(name).interval(Duration::from_secs(1));
//! health.register(spec("r1"), || async { Report::fail("connection refused") }).unwrap();
//! health.register(spec("r2"), || async { Report::ok() }).unwrap();
//! health.register(spec("smtp"), || async { Report::fail("timeout") }).unwrap();
//! // From KO, one success reaches WARN and a second OK (thresholds of 1).
//! tokio::time::sleep(Duration::from_millis(1500)).await;
//!
//! // One replica is enough; the mail relay only degrades the service.
//! assert_eq!(health.cached_status(), Status::Warn);
//! assert!(health.is_cache_healthy() && !health.is_cache_strictly_healthy());
//! assert!(health.is_strictly_healthy_for(&["replicas"]));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "net")]
pub mod checks;
mod config;
mod control;
mod listmandatory;
mod mandatory;
mod monitor;
mod registry;
mod snapshot;

pub use config::{CheckConfig, CheckKind, HealthConfig, StatusCodes};
pub use control::{Mode, ModeParseError};
/// A shell wildcard pattern, as taken by [`Health::select`].
pub use glob::Pattern;
pub use listmandatory::{DEFAULT_GROUP, MandatoryList};
pub use mandatory::{Info, Mandatory};
pub use monitor::{Check, CheckFuture, ComponentSpec, Report, SharedCheck, Thresholds};
pub use registry::{DEFAULT_HISTORY, Health, HealthOptions, StatusChange};
pub use snapshot::{ComponentView, GroupView, Snapshot};

/// Errors from configuring or registering health components.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// Invalid groups, checks or codes.
    #[error("invalid health configuration: {0}")]
    Config(String),
    /// A component with this name is already registered.
    #[error("health component {0:?} is already registered")]
    Duplicate(String),
}

/// The code in `docs/health-status.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/health-status.md")]
pub struct HealthStatusGuide;
