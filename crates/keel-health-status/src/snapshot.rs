//! The aggregate: per-group and global status computed from component states.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use keel_core::Status;

use crate::listmandatory::DEFAULT_GROUP;
use crate::{Info, MandatoryList, Mode};

/// One component as shown by the status endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentView {
    /// Current status.
    pub status: Status,
    /// Last check's message (empty after a clean success).
    pub message: String,
    /// The mode of its group.
    pub mode: Mode,
    /// Its group (`default` when in none).
    pub group: String,
    /// Duration of the last check.
    pub latency: Duration,
    /// When the last check finished.
    pub last_check: Option<SystemTime>,
    /// Time spent OK or WARN.
    pub uptime: Duration,
    /// Time spent KO.
    pub downtime: Duration,
    /// When the status last went up.
    pub last_rise: Option<SystemTime>,
    /// When the status last went down.
    pub last_fall: Option<SystemTime>,
    /// Consecutive successful checks.
    pub successes: u32,
    /// Consecutive failed checks.
    pub failures: u32,
    /// Optional description.
    pub info: Option<Info>,
    /// False for a configured member that nothing registered.
    pub registered: bool,
}

impl ComponentView {
    pub(crate) fn missing(mode: Mode, group: &str) -> Self {
        Self {
            status: Status::Ko,
            message: "missing".into(),
            mode,
            group: group.to_owned(),
            latency: Duration::ZERO,
            last_check: None,
            uptime: Duration::ZERO,
            downtime: Duration::ZERO,
            last_rise: None,
            last_fall: None,
            successes: 0,
            failures: 0,
            info: None,
            registered: false,
        }
    }
}

/// One group as shown by the status endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// Group name (`default` for the components in no group).
    pub name: String,
    /// How its members combine.
    pub mode: Mode,
    /// The group's status under its mode (for `Ignore`, the worst member,
    /// shown for information).
    pub status: Status,
    /// What the group contributes to the global status (`Ok` for `Ignore`).
    pub impact: Status,
    /// Member names, sorted.
    pub components: Vec<String>,
    /// Optional description.
    pub info: Option<Info>,
}

/// The aggregate at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The global status: the worst impact of any group (`Ok` when empty).
    pub status: Status,
    /// Which groups are degraded and why; empty when OK.
    pub message: String,
    /// Groups sorted by name (`default` included when it has members).
    pub groups: Vec<GroupView>,
    /// Components by name.
    pub components: BTreeMap<String, ComponentView>,
}

impl Snapshot {
    /// The empty aggregate: OK, nothing monitored.
    pub fn empty() -> Self {
        Self { status: Status::Ok, message: String::new(), groups: Vec::new(), components: BTreeMap::new() }
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&GroupView> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Computes the aggregate of `registered` components (views whose `mode` and
/// `group` are filled in here) under `groups`. With `scope`, only the named
/// components take part, under the same modes.
///
/// The result depends only on the sets involved, never on registration or
/// iteration order: groups and components are keyed and sorted by name, and
/// every rule is a min, max or count.
pub(crate) fn aggregate(
    groups: &MandatoryList,
    default_mode: Mode,
    registered: &BTreeMap<String, ComponentView>,
    scope: Option<&BTreeSet<String>>,
) -> Snapshot {
    let in_scope = |name: &str| scope.is_none_or(|s| s.contains(name));
    let mut components = BTreeMap::new();
    let mut views = Vec::new();

    let mut add_group = |name: &str,
                         mode: Mode,
                         members: Vec<String>,
                         info: Option<Info>,
                         components: &mut BTreeMap<String, ComponentView>| {
        let mut statuses = Vec::with_capacity(members.len());
        for member in &members {
            let view = match registered.get(member) {
                Some(view) => ComponentView { mode, group: name.to_owned(), ..view.clone() },
                // An ignored member has no say, so its absence is not news.
                None if mode == Mode::Ignore => continue,
                None => ComponentView::missing(mode, name),
            };
            statuses.push(view.status);
            components.insert(member.clone(), view);
        }
        if statuses.is_empty() {
            return;
        }
        let impact = mode.group_status(&statuses).unwrap_or(Status::Ok);
        let status = if mode == Mode::Ignore { statuses.iter().copied().min().unwrap_or(Status::Ok) } else { impact };
        let mut members = members;
        members.sort();
        members.retain(|m| components.contains_key(m));
        views.push(GroupView { name: name.to_owned(), mode, status, impact, components: members, info });
    };

    for group in groups.groups() {
        let members: Vec<String> = group.components.iter().filter(|c| in_scope(c)).cloned().collect();
        add_group(&group.name, group.mode, members, group.info.clone(), &mut components);
    }
    let ungrouped: Vec<String> =
        registered.keys().filter(|name| groups.group_of(name).is_none() && in_scope(name)).cloned().collect();
    add_group(DEFAULT_GROUP, default_mode, ungrouped, None, &mut components);

    views.sort_by(|a, b| a.name.cmp(&b.name));
    let status = views.iter().map(|g| g.impact).min().unwrap_or(Status::Ok);
    let message = describe(&views, &components);
    Snapshot { status, message, groups: views, components }
}

fn describe(groups: &[GroupView], components: &BTreeMap<String, ComponentView>) -> String {
    groups
        .iter()
        .filter(|g| g.impact != Status::Ok)
        .map(|g| {
            let failing: Vec<String> = g
                .components
                .iter()
                .filter_map(|name| components.get(name).map(|c| (name, c)))
                .filter(|(_, c)| c.status != Status::Ok)
                .map(|(name, c)| {
                    if c.message.is_empty() {
                        format!("{name} {}", c.status)
                    } else {
                        format!("{name} {} ({})", c.status, c.message)
                    }
                })
                .collect();
            format!("{} {} [{}]: {}", g.name, g.impact, g.mode, failing.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
