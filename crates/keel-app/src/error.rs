//! Why start-up failed, and the exit code each failure maps to.

use std::process::ExitCode;
use std::time::Duration;

use keel_settings_sync::SettingsError;
use keel_store::StoreError;

use crate::config::{ConfigError, EXIT_CONFIG, EXIT_SOFTWARE, EXIT_UNAVAILABLE};

/// Why start-up failed; each maps to a distinct exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A required service is unreachable (exit 69).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Logging could not be set up (exit 70).
    #[error(transparent)]
    Logging(#[from] keel_telemetry::LoggingError),
    /// A store stayed unreachable for the whole `--startup-timeout` (exit 69).
    #[error("{what} unreachable for {waited:?} (--startup-timeout): {reason}")]
    Unavailable {
        /// What was waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
        /// The last error.
        reason: String,
    },
    /// SIGINT/SIGTERM arrived while waiting for the stores (exit 0).
    #[error("stopped before the stores were reachable")]
    Stopped,
    /// Telemetry could not be set up (exit 70).
    #[error(transparent)]
    Telemetry(#[from] keel_telemetry::TelemetryError),
    /// The write-behind queue could not start (exit 69).
    #[error("cannot start the entries queue: {0}")]
    WriteBehind(String),
    /// A settings document could not be opened (exit 69).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// An operating-system facility (signal handlers, a thread) could not be
    /// set up (exit 70).
    #[error("cannot {what}: {source}")]
    Os {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl StartError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            StartError::Stopped => 0,
            StartError::Config(_) => EXIT_CONFIG,
            StartError::Store(StoreError::InvalidUrl { .. }) => EXIT_CONFIG,
            StartError::Store(_)
            | StartError::Unavailable { .. }
            | StartError::Settings(_)
            | StartError::WriteBehind(_) => EXIT_UNAVAILABLE,
            StartError::Logging(_) | StartError::Telemetry(_) | StartError::Os { .. } => EXIT_SOFTWARE,
        })
    }
}
