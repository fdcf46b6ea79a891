//! Reading the aggregate: the cached status and snapshot for probes, a
//! fresh computation for `/status`, selections, and the change feed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use keel_core::Status;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::Snapshot;
use crate::snapshot::{ComponentView, aggregate};

use super::*;

impl Health {
    /// Status changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.inner.changes.subscribe()
    }

    /// The last transitions of every registered component (at most
    /// [`HealthOptions::history`] each), newest first.
    pub fn history(&self) -> BTreeMap<String, Vec<StatusChange>> {
        lock(&self.inner.states)
            .iter()
            .map(|(name, state)| (name.clone(), state.transitions.iter().rev().cloned().collect()))
            .collect()
    }

    /// The cached global status: one atomic load.
    pub fn cached_status(&self) -> Status {
        decode(self.inner.global.load(Ordering::Acquire))
    }

    /// Cached, tolerant: OK or WARN.
    pub fn is_cache_healthy(&self) -> bool {
        self.cached_status().is_tolerable()
    }

    /// Cached, strict: OK only.
    pub fn is_cache_strictly_healthy(&self) -> bool {
        self.cached_status() == Status::Ok
    }

    /// The cached aggregate, as of the last status or message change.
    pub fn cached(&self) -> Arc<Snapshot> {
        self.inner.cache.load_full()
    }

    /// A number that changes whenever anything a [`snapshot`](Self::snapshot)
    /// shows changes, except the passage of time (uptimes and downtimes):
    /// a component registered, a check recorded. Read it before taking a
    /// snapshot to know, later, whether a copy made from that snapshot is
    /// still current.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// The aggregate computed now (fresh latencies and uptimes).
    pub fn snapshot(&self) -> Snapshot {
        self.compute(None)
    }

    /// The components selected by `filter` (every component when `None`),
    /// less those selected by `exclude`. Each pattern (shell wildcards `*`,
    /// `?`, `[..]`) selects on its own: the components it names and every
    /// member of the groups it names (`default` for components in no
    /// group), so `mail,db` means group `mail` and component `db`. A filter
    /// matching nothing selects nothing.
    pub fn select(&self, filter: Option<&[glob::Pattern]>, exclude: &[glob::Pattern]) -> BTreeSet<String> {
        let snapshot = self.snapshot();
        let matched = |patterns: &[glob::Pattern]| -> BTreeSet<String> {
            let named = snapshot.components.keys().filter(|c| patterns.iter().any(|p| p.matches(c))).cloned();
            let in_groups = snapshot
                .groups
                .iter()
                .filter(|g| patterns.iter().any(|p| p.matches(&g.name)))
                .flat_map(|g| g.components.iter().cloned());
            named.chain(in_groups).collect()
        };
        let mut selected = match filter {
            Some(patterns) => matched(patterns),
            None => snapshot.components.keys().cloned().collect(),
        };
        if !exclude.is_empty() {
            let dropped = matched(exclude);
            selected.retain(|c| !dropped.contains(c));
        }
        selected
    }

    /// The aggregate of one group or component, computed now; `None` when
    /// no configured group, no component and not the `default` group (the
    /// components in no group, while there are any) has that name.
    pub fn snapshot_named(&self, name: &str) -> Option<Snapshot> {
        if self.inner.groups.group(name).is_some() {
            return Some(self.snapshot_of(&[name]));
        }
        let everything = self.snapshot();
        if everything.components.contains_key(name) {
            return Some(self.snapshot_of(&[name]));
        }
        let group = everything.group(crate::DEFAULT_GROUP).filter(|_| name == crate::DEFAULT_GROUP)?;
        let members: Vec<&str> = group.components.iter().map(String::as_str).collect();
        Some(self.snapshot_of(&members))
    }

    /// The aggregate of only the named components and groups, computed now
    /// under the same modes. Unknown names count as missing (KO).
    pub fn snapshot_of(&self, names: &[&str]) -> Snapshot {
        let mut scope = BTreeSet::new();
        for name in names {
            match self.inner.groups.group(name) {
                Some(group) => scope.extend(group.components.iter().cloned()),
                None => {
                    scope.insert((*name).to_owned());
                }
            }
        }
        self.compute(Some(&scope))
    }

    /// Live, tolerant: recomputed now.
    pub fn is_healthy(&self) -> bool {
        self.snapshot().status.is_tolerable()
    }

    /// Live, strict: recomputed now.
    pub fn is_strictly_healthy(&self) -> bool {
        self.snapshot().status == Status::Ok
    }

    /// Live, tolerant, for the named components or groups.
    pub fn is_healthy_for(&self, names: &[&str]) -> bool {
        self.snapshot_of(names).status.is_tolerable()
    }

    /// Live, strict, for the named components or groups.
    pub fn is_strictly_healthy_for(&self, names: &[&str]) -> bool {
        self.snapshot_of(names).status == Status::Ok
    }

    pub(super) fn compute(&self, scope: Option<&BTreeSet<String>>) -> Snapshot {
        let states = lock(&self.inner.states);
        let now = Instant::now();
        let mut views: BTreeMap<String, ComponentView> = states.iter().map(|(n, s)| (n.clone(), s.view(now))).collect();
        if let Some(scope) = scope {
            // Named components nothing registered and no group lists are
            // still reported, as missing.
            for name in scope {
                if !views.contains_key(name) && self.inner.groups.group_of(name).is_none() {
                    views.insert(name.clone(), ComponentView::missing(self.inner.default_mode, ""));
                }
            }
        }
        aggregate(&self.inner.groups, self.inner.default_mode, &views, scope)
    }

    /// Recomputes and publishes the cached aggregate. Called with the states
    /// lock held so concurrent changes are published in order.
    pub(super) fn refresh(&self, states: &BTreeMap<String, State>) {
        refresh(&self.inner, states);
    }
}
