//! The dashboards checked on a healthy deployment, and the table and JSON
//! report of what fired when.

use std::time::Duration;

use anyhow::Result;

use super::*;

impl Lab {
    /// Every dashboard query returns a series for each job on a healthy
    /// deployment, unless its panel's description says why not.
    pub(super) fn check_dashboards(&mut self) -> Result<()> {
        for file in crate::deploy::files(&self.root.join("deploy/grafana/dashboards"), "json")? {
            let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
            for panel in dashboard["panels"].as_array().into_iter().flatten() {
                let title = panel["title"].as_str().unwrap_or_default();
                let description = panel["description"].as_str().unwrap_or_default();
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let Some(expr) = target["expr"].as_str() else { continue };
                    for job in ["keel-api", "keel-worker"] {
                        if description.contains(&format!("No {job} series")) {
                            continue;
                        }
                        let query = expr.replace("$job", job);
                        if self.prometheus.query_count(&query).unwrap_or(0) == 0 {
                            self.failures.push(format!(
                                "dashboard panel {title:?}: no {job} series for {query} (say why in its description: \"No {job} series: ...\")"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

pub(super) fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".to_owned(), |d| format!("{:.0}s", d.as_secs_f64()))
}

pub(super) fn print_table(rows: &[Row]) {
    eprintln!("\n| alert | who | scenario: fault | verdict | pending | firing | resolved (recovery at) |");
    eprintln!("|---|---|---|---|---|---|---|");
    for row in rows {
        eprintln!(
            "| {} | {} | {}: {} | {} | {} | {} | {} ({}) |",
            row.alert,
            row.who,
            row.scenario,
            row.fault,
            row.verdict,
            secs(row.seen.pending),
            secs(row.seen.firing),
            secs(row.seen.resolved),
            secs(row.recovered_at),
        );
    }
    eprintln!(
        "(seconds from the scenario's first fault; rules scaled 1/{SCALE}, memory threshold {MEMORY_THRESHOLD} bytes)"
    );
}

pub(super) fn report(rows: &[Row]) -> serde_json::Value {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis());
    serde_json::json!({
        "scale": SCALE,
        "memory_threshold_bytes": MEMORY_THRESHOLD,
        "rows": rows.iter().map(|r| serde_json::json!({
            "alert": r.alert, "who": r.who, "scenario": r.scenario, "fault": r.fault, "verdict": r.verdict,
            "pending_ms": ms(r.seen.pending), "firing_ms": ms(r.seen.firing),
            "resolved_ms": ms(r.seen.resolved), "recovered_ms": ms(r.recovered_at),
        })).collect::<Vec<_>>(),
    })
}
