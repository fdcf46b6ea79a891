//! Running one scenario and watching Prometheus: every expected alert must
//! fire in time, nothing else may, and all must resolve after recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;

use rules::budget;

use super::*;

impl Lab {
    /// Runs `scenario`: `inject(lab, phase)` starts each phase, `recover`
    /// ends the fault.
    pub(super) fn scenario(
        &mut self,
        scenario: &Scenario,
        mut inject: impl FnMut(&mut Self, usize) -> Result<()>,
        recover: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<Vec<Row>> {
        eprintln!("xtask: alerts: {} ...", scenario.name);
        let start = Instant::now();
        let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
        let mut fault_of: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
        for (index, phase) in scenario.phases.iter().enumerate() {
            if let Err(err) = inject(self, index) {
                self.failures.push(format!("{}: injecting {:?}: {err:#}", scenario.name, phase.fault));
            }
            let phase_start = Instant::now();
            let mut deadline = phase_start + phase.hold;
            for (alert, who) in &phase.expect {
                expected.insert(((*alert).to_owned(), (*who).to_owned()));
                fault_of.insert(((*alert).to_owned(), (*who).to_owned()), phase.fault.to_owned());
                deadline = deadline.max(phase_start + budget(&self.rules, alert));
            }
            loop {
                self.observe(scenario, start, &mut seen, &mut fault_of, phase.fault)?;
                let missing: Vec<String> = phase
                    .expect
                    .iter()
                    .filter(|(a, w)| seen.get(&((*a).to_owned(), (*w).to_owned())).is_none_or(|s| s.firing.is_none()))
                    .map(|(a, w)| format!("{a}@{w}"))
                    .collect();
                let now = Instant::now();
                if missing.is_empty() && now >= phase_start + phase.hold {
                    break;
                }
                if now > deadline {
                    self.failures.push(format!(
                        "{}: {} not firing {:.0?} after {:?}",
                        scenario.name,
                        missing.join(", "),
                        now - phase_start,
                        phase.fault
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if let Err(err) = recover(self) {
            self.failures.push(format!("{}: recovering: {err:#}", scenario.name));
        }
        let recovered = start.elapsed();
        let resolve_by = Instant::now() + RESOLVE_WITHIN;
        loop {
            let active = self.observe(scenario, start, &mut seen, &mut fault_of, "after recovery")?;
            if active.is_empty() {
                break;
            }
            if Instant::now() > resolve_by {
                self.failures.push(format!(
                    "{}: still active {RESOLVE_WITHIN:?} after recovery: {}",
                    scenario.name,
                    active.iter().map(|(a, w)| format!("{a}@{w}")).collect::<Vec<_>>().join(", ")
                ));
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let rows: Vec<Row> = seen
            .into_iter()
            .map(|((alert, who), seen)| {
                let key = (alert.clone(), who.clone());
                Row {
                    scenario: scenario.name,
                    fault: fault_of.get(&key).cloned().unwrap_or_default(),
                    verdict: if expected.contains(&key) {
                        "expected"
                    } else if scenario.allows(&key.0, &key.1) {
                        "allowed"
                    } else {
                        "not allowed (pending only)"
                    },
                    alert,
                    who,
                    seen,
                    recovered_at: Some(recovered),
                }
            })
            .collect();
        let rows = if rows.is_empty() {
            // A scenario that raised nothing still has its row.
            let fault = scenario.phases.iter().map(|p| p.fault).collect::<Vec<_>>().join("; ");
            let verdict = "nothing raised, as required";
            let seen = Seen::default();
            let (alert, who) = ("(none)".to_owned(), "—".to_owned());
            vec![Row { scenario: scenario.name, fault, verdict, alert, who, seen, recovered_at: Some(recovered) }]
        } else {
            rows
        };
        print_table(&rows);
        for failure in &self.failures {
            eprintln!("xtask: alerts: so far: {failure}");
        }
        Ok(rows)
    }

    /// Reads Prometheus's alerts once: records state changes, fails on an
    /// alert the scenario does not allow; the active ones.
    pub(super) fn observe(
        &mut self,
        scenario: &Scenario,
        start: Instant,
        seen: &mut BTreeMap<(String, String), Seen>,
        fault_of: &mut BTreeMap<(String, String), String>,
        fault: &str,
    ) -> Result<BTreeSet<(String, String)>> {
        let now = start.elapsed();
        let mut active = BTreeSet::new();
        for (alert, instance, job, state) in self.prometheus.alerts()? {
            let who = instance.as_deref().and_then(|i| self.who.get(i).copied()).map_or(job, str::to_owned);
            let key = (alert.clone(), who.clone());
            let allowed = scenario.allows(&alert, &who);
            let entry = seen.entry(key.clone()).or_default();
            if entry.pending.is_none() {
                fault_of.entry(key.clone()).or_insert_with(|| fault.to_owned());
            }
            // An alert nothing allows fails the run once it fires; pending
            // is enough in the healthy period.
            let counts = state == "firing" || scenario.phases.iter().all(|p| p.expect.is_empty());
            if !allowed && counts && entry.firing.is_none() && !(state == "pending" && entry.pending.is_some()) {
                self.failures.push(format!("{}: unexpected {alert}@{who} ({state}) during {fault:?}", scenario.name));
            }
            match state.as_str() {
                "pending" => {
                    entry.pending.get_or_insert(now);
                }
                "firing" => {
                    entry.pending.get_or_insert(now);
                    entry.firing.get_or_insert(now);
                }
                _ => {}
            }
            entry.resolved = None;
            active.insert(key);
        }
        for (key, entry) in seen.iter_mut() {
            if !active.contains(key) && entry.resolved.is_none() {
                entry.resolved = Some(now);
            }
        }
        Ok(active)
    }
}
