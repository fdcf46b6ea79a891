//! A group of components sharing a control mode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Mode;

/// Free-form description attached to a group or component (shown in JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Key/value details (version, endpoint, owner, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// A named group of components and the mode that combines them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mandatory {
    /// Group name (unique; `default` is reserved for ungrouped components).
    pub name: String,
    /// How members combine.
    pub mode: Mode,
    /// Member component names.
    pub components: Vec<String>,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Info>,
}

impl Mandatory {
    /// A group without info.
    pub fn new(name: impl Into<String>, mode: Mode, components: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { name: name.into(), mode, components: components.into_iter().map(Into::into).collect(), info: None }
    }

    /// Whether `component` is a member.
    pub fn contains(&self, component: &str) -> bool {
        self.components.iter().any(|c| c == component)
    }
}
