//! Documents every Keel binary serves.

use serde::{Deserialize, Serialize};

/// The `monitoring` document: operator log capture and the running log filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSettings {
    /// Whether log records and stats are captured for operators.
    #[serde(default = "yes")]
    pub enable_monitoring: bool,
    /// The log filter every process applies, e.g. `info` or `info,keel_store=debug`.
    #[serde(default = "info")]
    pub log_level: String,
}

fn yes() -> bool {
    true
}

fn info() -> String {
    "info".into()
}

impl Default for MonitoringSettings {
    fn default() -> Self {
        Self { enable_monitoring: true, log_level: info() }
    }
}

impl MonitoringSettings {
    /// The document's name.
    pub const NAME: &'static str = "monitoring";
}
