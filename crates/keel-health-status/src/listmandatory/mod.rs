//! A validated list of groups.

use std::collections::BTreeMap;

use crate::{HealthError, Mandatory};

/// The name under which ungrouped components are shown and combined.
pub const DEFAULT_GROUP: &str = "default";

/// Groups with unique names, no empty group, and no component in two groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MandatoryList {
    groups: Vec<Mandatory>,
    owner: BTreeMap<String, usize>,
}

impl MandatoryList {
    /// Validates `groups`.
    pub fn new(groups: Vec<Mandatory>) -> Result<Self, HealthError> {
        let mut owner = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (index, group) in groups.iter().enumerate() {
            let name = group.name.trim();
            if name.is_empty() {
                return Err(HealthError::Config("a health group has an empty name".into()));
            }
            if name == DEFAULT_GROUP {
                return Err(HealthError::Config(format!(
                    "health group name {DEFAULT_GROUP:?} is reserved for components in no group"
                )));
            }
            if names.insert(name.to_owned(), index).is_some() {
                return Err(HealthError::Config(format!("health group {name:?} is declared twice")));
            }
            if group.components.is_empty() {
                return Err(HealthError::Config(format!("health group {name:?} has no components")));
            }
            for component in &group.components {
                if let Some(previous) = owner.insert(component.clone(), index) {
                    if previous == index {
                        return Err(HealthError::Config(format!(
                            "component {component:?} is listed twice in health group {name:?}"
                        )));
                    }
                    return Err(HealthError::Config(format!(
                        "component {component:?} is in two health groups: {:?} and {name:?}",
                        groups[previous].name
                    )));
                }
            }
        }
        Ok(Self { groups, owner })
    }

    /// The groups, in declaration order.
    pub fn groups(&self) -> &[Mandatory] {
        &self.groups
    }

    /// The group `component` belongs to, if any.
    pub fn group_of(&self, component: &str) -> Option<&Mandatory> {
        self.owner.get(component).map(|i| &self.groups[*i])
    }

    /// The group called `name`, if any.
    pub fn group(&self, name: &str) -> Option<&Mandatory> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Adds a group after validation of the whole list.
    pub fn with(self, group: Mandatory) -> Result<Self, HealthError> {
        let mut groups = self.groups;
        groups.push(group);
        Self::new(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    #[test]
    fn rejects_overlaps_empties_duplicates_and_the_reserved_name() {
        let ok = MandatoryList::new(vec![
            Mandatory::new("db", Mode::Must, ["pg"]),
            Mandatory::new("up", Mode::Quorum, ["a", "b", "c"]),
        ])
        .unwrap();
        assert_eq!(ok.group_of("b").unwrap().name, "up");
        assert!(ok.group_of("zzz").is_none());

        let two =
            MandatoryList::new(vec![Mandatory::new("x", Mode::Must, ["a"]), Mandatory::new("y", Mode::Should, ["a"])]);
        assert!(two.unwrap_err().to_string().contains("two health groups"));
        let empty = MandatoryList::new(vec![Mandatory::new("x", Mode::Must, Vec::<String>::new())]);
        assert!(empty.unwrap_err().to_string().contains("no components"));
        let dup =
            MandatoryList::new(vec![Mandatory::new("x", Mode::Must, ["a"]), Mandatory::new("x", Mode::Must, ["b"])]);
        assert!(dup.unwrap_err().to_string().contains("declared twice"));
        let reserved = MandatoryList::new(vec![Mandatory::new("default", Mode::Must, ["a"])]);
        assert!(reserved.unwrap_err().to_string().contains("reserved"));
        let twice = MandatoryList::new(vec![Mandatory::new("x", Mode::Must, ["a", "a"])]);
        assert!(twice.unwrap_err().to_string().contains("listed twice"));
    }
}
