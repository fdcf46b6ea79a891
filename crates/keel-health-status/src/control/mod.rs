//! Control modes: how a group's members affect the global status.

use std::fmt;
use std::str::FromStr;

use keel_core::Status;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How the members of a group affect the global status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Monitored and shown, never affects the global status.
    Ignore,
    /// Non-critical: any member WARN or KO makes the group WARN, never KO.
    Should,
    /// Critical: the group is as bad as its worst member.
    Must,
    /// Redundant: the group is as good as its best member.
    AnyOf,
    /// Consensus: more than half OK → OK; more than half OK-or-WARN → WARN;
    /// else KO.
    Quorum,
}

/// The text is not a control mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid control mode {0:?} (expected ignore, should, must, anyof or quorum)")]
pub struct ModeParseError(String);

impl Mode {
    /// Every mode, for tests and documentation.
    pub const ALL: [Mode; 5] = [Mode::Ignore, Mode::Should, Mode::Must, Mode::AnyOf, Mode::Quorum];

    /// The canonical name: `Ignore`, `Should`, `Must`, `AnyOf`, `Quorum`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Ignore => "Ignore",
            Mode::Should => "Should",
            Mode::Must => "Must",
            Mode::AnyOf => "AnyOf",
            Mode::Quorum => "Quorum",
        }
    }

    /// The group status under this mode, given the members' statuses (a
    /// missing member is passed as `Ko`). `None` for `Ignore` and for an empty
    /// member list: such a group has no say.
    pub fn group_status(self, members: &[Status]) -> Option<Status> {
        if members.is_empty() {
            return None;
        }
        match self {
            Mode::Ignore => None,
            Mode::Should => Some(if members.iter().all(|s| *s == Status::Ok) { Status::Ok } else { Status::Warn }),
            Mode::Must => members.iter().copied().min(),
            Mode::AnyOf => members.iter().copied().max(),
            Mode::Quorum => {
                let total = members.len();
                let ok = members.iter().filter(|s| **s == Status::Ok).count();
                let tolerable = members.iter().filter(|s| s.is_tolerable()).count();
                Some(if ok * 2 > total {
                    Status::Ok
                } else if tolerable * 2 > total {
                    Status::Warn
                } else {
                    Status::Ko
                })
            }
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ModeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ignore" => Ok(Mode::Ignore),
            "should" => Ok(Mode::Should),
            "must" => Ok(Mode::Must),
            "anyof" | "any_of" | "any-of" => Ok(Mode::AnyOf),
            "quorum" => Ok(Mode::Quorum),
            _ => Err(ModeParseError(s.to_owned())),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::{Ko, Ok as Up, Warn};

    #[test]
    fn parses_case_insensitively_and_rejects_garbage() {
        assert_eq!("MUST".parse::<Mode>().unwrap(), Mode::Must);
        assert_eq!("anyOf".parse::<Mode>().unwrap(), Mode::AnyOf);
        assert_eq!(" Quorum ".parse::<Mode>().unwrap(), Mode::Quorum);
        assert!("mandatory".parse::<Mode>().is_err());
        for mode in Mode::ALL {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(serde_json::from_str::<Mode>(&json).unwrap(), mode);
        }
        assert!(serde_json::from_str::<Mode>("\"sometimes\"").is_err());
    }

    #[test]
    fn group_rules() {
        assert_eq!(Mode::Should.group_status(&[Up, Warn]), Some(Warn), "Should does not ignore WARN");
        assert_eq!(Mode::Should.group_status(&[Up, Ko]), Some(Warn));
        assert_eq!(Mode::Must.group_status(&[Up, Warn, Ko]), Some(Ko));
        assert_eq!(Mode::AnyOf.group_status(&[Ko, Warn]), Some(Warn));
        assert_eq!(Mode::AnyOf.group_status(&[Ko, Up]), Some(Up));
        assert_eq!(Mode::Quorum.group_status(&[Up, Up, Ko]), Some(Up));
        assert_eq!(Mode::Quorum.group_status(&[Up, Ko, Ko]), Some(Ko));
        assert_eq!(Mode::Quorum.group_status(&[Up, Warn, Ko]), Some(Warn));
        assert_eq!(Mode::Quorum.group_status(&[Up, Ko]), Some(Ko), "exactly half is not a majority");
        assert_eq!(Mode::Ignore.group_status(&[Ko]), None);
        assert_eq!(Mode::Must.group_status(&[]), None);
    }
}
