use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Health of a component or of the whole service, ordered `Ko < Warn < Ok`.
///
/// The order lets aggregation use `min`/`max` directly: the global status is
/// the worst (minimum) impact of its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Not working.
    #[serde(rename = "KO")]
    Ko,
    /// Working, but degraded.
    #[serde(rename = "WARN")]
    Warn,
    /// Working.
    #[serde(rename = "OK")]
    Ok,
}

/// The text was not one of `OK`, `WARN` or `KO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid status {0:?} (expected OK, WARN or KO)")]
pub struct StatusParseError(String);

impl Status {
    /// The upper-case name used on the wire: `OK`, `WARN` or `KO`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Ko => "KO",
        }
    }

    /// True for `Ok` and `Warn` (the tolerant reading of health).
    pub const fn is_tolerable(self) -> bool {
        matches!(self, Status::Ok | Status::Warn)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = StatusParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "OK" => Ok(Status::Ok),
            "WARN" => Ok(Status::Warn),
            "KO" => Ok(Status::Ko),
            _ => Err(StatusParseError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_ko_warn_ok() {
        let mut all = vec![Status::Ok, Status::Ko, Status::Warn];
        all.sort();
        assert_eq!(all, vec![Status::Ko, Status::Warn, Status::Ok]);
        assert_eq!(Status::Ok.min(Status::Warn), Status::Warn);
    }

    #[test]
    fn parses_and_serializes() {
        assert_eq!("warn".parse::<Status>().unwrap(), Status::Warn);
        assert!("fine".parse::<Status>().is_err());
        assert_eq!(serde_json::to_string(&Status::Ko).unwrap(), "\"KO\"");
        assert_eq!(serde_json::from_str::<Status>("\"OK\"").unwrap(), Status::Ok);
        assert!(Status::Warn.is_tolerable() && !Status::Ko.is_tolerable());
    }
}
