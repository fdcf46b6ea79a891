//! The `[health]` configuration section.

use std::collections::BTreeSet;

use keel_core::HumanDuration;
use serde::{Deserialize, Serialize};

use crate::{ComponentSpec, HealthError, Info, Mandatory, MandatoryList, Mode, Thresholds};

/// HTTP codes answered for each global status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodes {
    /// Code for OK (default 200).
    #[serde(default = "default_ok")]
    pub ok: u16,
    /// Code for WARN (default 207).
    #[serde(default = "default_warn")]
    pub warn: u16,
    /// Code for KO (default 503).
    #[serde(default = "default_ko")]
    pub ko: u16,
}

fn default_ok() -> u16 {
    200
}
fn default_warn() -> u16 {
    207
}
fn default_ko() -> u16 {
    503
}

impl Default for StatusCodes {
    fn default() -> Self {
        Self { ok: default_ok(), warn: default_warn(), ko: default_ko() }
    }
}

impl StatusCodes {
    /// The code for `status`.
    pub fn for_status(&self, status: keel_core::Status) -> u16 {
        match status {
            keel_core::Status::Ok => self.ok,
            keel_core::Status::Warn => self.warn,
            keel_core::Status::Ko => self.ko,
        }
    }
}

/// What a configured check probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect to `host:port`.
    Tcp,
    /// HTTP GET of an `http://` URL, expecting `expect_status` (default: any 2xx).
    Http,
    /// `SELECT 1` on the service's database pool.
    Postgres,
    /// `PING` on the service's Redis connection.
    Redis,
}

/// One `[[health.checks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Component name (referenced by groups).
    pub name: String,
    /// What to probe.
    pub kind: CheckKind,
    /// `host:port` for tcp, a URL for http; unused otherwise.
    #[serde(default)]
    pub target: Option<String>,
    /// Expected HTTP status for `http` checks.
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// Time between checks (default `5s`).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Time between checks while falling (default: `interval`).
    #[serde(default)]
    pub fall_interval: Option<HumanDuration>,
    /// Time between checks while rising (default: `interval`).
    #[serde(default)]
    pub rise_interval: Option<HumanDuration>,
    /// A check running longer fails (default `2s`).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Failures from OK to WARN.
    #[serde(default = "one")]
    pub fall_warn: u32,
    /// Failures from WARN to KO.
    #[serde(default = "one")]
    pub fall_ko: u32,
    /// Successes from KO to WARN.
    #[serde(default = "one")]
    pub rise_ko: u32,
    /// Successes from WARN to OK.
    #[serde(default = "one")]
    pub rise_warn: u32,
    /// Optional description.
    #[serde(default)]
    pub info: Option<Info>,
}

fn default_interval() -> HumanDuration {
    HumanDuration::new(std::time::Duration::from_secs(5))
}
fn default_timeout() -> HumanDuration {
    HumanDuration::new(std::time::Duration::from_secs(2))
}
fn one() -> u32 {
    1
}

impl CheckConfig {
    /// The monitor settings of this check.
    pub fn spec(&self) -> ComponentSpec {
        ComponentSpec {
            name: self.name.clone(),
            interval: self.interval.get(),
            fall_interval: self.fall_interval.map(HumanDuration::get),
            rise_interval: self.rise_interval.map(HumanDuration::get),
            timeout: self.timeout.get(),
            thresholds: Thresholds {
                fall_warn: self.fall_warn,
                fall_ko: self.fall_ko,
                rise_ko: self.rise_ko,
                rise_warn: self.rise_warn,
            },
            info: self.info.clone(),
        }
    }
}

/// The `[health]` section: default mode, codes, groups and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Mode of components in no group (default `Must`).
    #[serde(default = "default_mode")]
    pub default_mode: Mode,
    /// HTTP codes per status.
    #[serde(default)]
    pub codes: StatusCodes,
    /// `[[health.groups]]`.
    #[serde(default)]
    pub groups: Vec<Mandatory>,
    /// `[[health.checks]]`.
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// Transitions kept per component for `/status/history` (default 100).
    #[serde(default = "default_history")]
    pub history: usize,
}

/// The most transitions `health.history` may keep per component.
const MAX_HISTORY: usize = 10_000;

fn default_history() -> usize {
    crate::DEFAULT_HISTORY
}

fn default_mode() -> Mode {
    Mode::Must
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            default_mode: Mode::Must,
            codes: StatusCodes::default(),
            groups: Vec::new(),
            checks: Vec::new(),
            history: crate::DEFAULT_HISTORY,
        }
    }
}

impl HealthConfig {
    /// Validates everything that serde cannot: codes, check names and
    /// targets, and the groups (see [`MandatoryList::new`]).
    pub fn validate(&self) -> Result<MandatoryList, HealthError> {
        for (key, code) in [("ok", self.codes.ok), ("warn", self.codes.warn), ("ko", self.codes.ko)] {
            if !(100..=599).contains(&code) {
                return Err(HealthError::Config(format!("health.codes.{key}: {code} is not an HTTP status code")));
            }
        }
        if self.history > MAX_HISTORY {
            return Err(HealthError::Config(format!(
                "health.history: {} transitions per component is more than the {MAX_HISTORY} allowed",
                self.history
            )));
        }
        let mut names = BTreeSet::new();
        for check in &self.checks {
            if check.name.trim().is_empty() {
                return Err(HealthError::Config("health.checks: a check has an empty name".into()));
            }
            if !names.insert(check.name.as_str()) {
                return Err(HealthError::Config(format!("health.checks: {:?} is declared twice", check.name)));
            }
            if check.interval.get().is_zero() || check.timeout.get().is_zero() {
                return Err(HealthError::Config(format!(
                    "health.checks.{}: interval and timeout must be positive",
                    check.name
                )));
            }
            let target = check.target.as_deref().map(str::trim).unwrap_or_default();
            match check.kind {
                CheckKind::Tcp if !target.contains(':') => {
                    return Err(HealthError::Config(format!(
                        "health.checks.{}: tcp needs target = \"host:port\"",
                        check.name
                    )));
                }
                CheckKind::Http if !target.starts_with("http://") => {
                    return Err(HealthError::Config(format!(
                        "health.checks.{}: http needs target = \"http://host:port/path\" (https is not supported; use a tcp check)",
                        check.name
                    )));
                }
                _ => {}
            }
        }
        MandatoryList::new(self.groups.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let text = r#"
            default_mode = "must"
            codes = { ok = 200, warn = 207, ko = 503 }
            [[groups]]
            name = "upstreams"
            mode = "quorum"
            components = ["a", "b", "c"]
            [[checks]]
            name = "a"
            kind = "tcp"
            target = "127.0.0.1:7001"
            interval = "1s"
            timeout = "500ms"
            fall_warn = 1
            fall_ko = 1
            rise_ko = 1
            rise_warn = 1
        "#;
        let config: HealthConfig = toml::from_str(text).unwrap();
        let groups = config.validate().unwrap();
        assert_eq!(groups.group_of("b").unwrap().mode, Mode::Quorum);
        assert_eq!(config.checks[0].spec().timeout, std::time::Duration::from_millis(500));
        assert_eq!(config.history, crate::DEFAULT_HISTORY, "the default when not given");
        assert_eq!(toml::from_str::<HealthConfig>("history = 7").unwrap().history, 7);
    }

    #[test]
    fn rejects_bad_values_with_the_key() {
        let bad = |text: &str| -> String {
            match toml::from_str::<HealthConfig>(text) {
                Ok(config) => config.validate().unwrap_err().to_string(),
                Err(err) => err.to_string(),
            }
        };
        assert!(bad("default_mode = \"sometimes\"").contains("invalid control mode"));
        assert!(bad("codes = { ok = 42 }").contains("health.codes.ok"));
        assert!(bad("history = 10001").contains("health.history"));
        assert!(bad("history = -1").contains("invalid value"));
        assert!(bad("[[checks]]\nname = \"a\"\nkind = \"tcp\"\n").contains("tcp needs target"));
        assert!(
            bad("[[checks]]\nname = \"a\"\nkind = \"http\"\ntarget = \"https://x\"\n")
                .contains("https is not supported")
        );
        assert!(bad("[[checks]]\nname = \"a\"\nkind = \"smtp\"\n").contains("unknown variant"));
        assert!(bad("[[checks]]\nname = \"a\"\nkind = \"redis\"\ninterval = \"0s\"\n").contains("positive"));
    }
}
