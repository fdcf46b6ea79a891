//! The outcome table printed after a run and its JSON report.

use serde_json::json;

use super::*;

pub(super) fn print_table(outcomes: &[Outcome]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<20} {:>6} {:>5} {:>9} {:>5} {:>9} {:>13} {:>8} {:>9} {:>9} {:>10}  result",
        "scenario",
        "acked",
        "keys",
        "persisted",
        "lost",
        "regressed",
        "dead-lettered",
        "phantoms",
        "recovery",
        "catch-up",
        "accounting"
    );
    for o in outcomes {
        let accounting = match o.accounting {
            Some(true) => "exact",
            Some(false) => "MISMATCH",
            None => "n/a",
        };
        let _ = writeln!(
            out,
            "{:<20} {:>6} {:>5} {:>9} {:>5} {:>9} {:>13} {:>8} {:>8.1}s {:>8.1}s {:>10}  {}",
            o.name,
            o.acknowledged,
            o.keys,
            o.persisted,
            o.lost,
            o.regressed,
            o.dead_lettered,
            o.phantoms,
            o.recovery.as_secs_f64(),
            o.catch_up.as_secs_f64(),
            accounting,
            if o.bad() { "FAIL" } else { "ok" }
        );
        if !o.note.is_empty() {
            let _ = writeln!(out, "{:<20} {}", "", o.note);
        }
    }
}

pub(super) fn report_json(profile: Profile, outcomes: &[Outcome]) -> serde_json::Value {
    json!({
        "profile": profile.name,
        "fault_seconds": profile.fault.as_secs(),
        "rate_per_second": profile.rate,
        "scenarios": outcomes.iter().map(|o| json!({
            "scenario": o.name,
            "acknowledged": o.acknowledged,
            "keys": o.keys,
            "persisted": o.persisted,
            "lost": o.lost,
            "regressed": o.regressed,
            "dead_lettered": o.dead_lettered,
            "phantoms": o.phantoms,
            "recovery_seconds": o.recovery.as_secs_f64(),
            "catch_up_seconds": o.catch_up.as_secs_f64(),
            "accounting": o.accounting,
            "note": o.note,
            "failure": o.failure,
            "ok": !o.bad(),
        })).collect::<Vec<_>>(),
    })
}
