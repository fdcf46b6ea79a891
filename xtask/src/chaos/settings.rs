//! The `timed-revert` scenario: a timed settings value returns to the value
//! before it exactly once, when the process that wrote it was SIGKILLed
//! right after, and when every process was down at the time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Lab, Outcome, Scenario, load, with};
use crate::servers::Binary;

const TOKEN: &str = "chaos-admin-token-0001";
const DOCUMENT: &str = "/api/v1/settings/monitoring";
/// Who the audit trail names for a timed revert (keel-settings-sync).
const TIMED_REVERT_ACTOR: &str = "keel (timed revert)";

impl Lab {
    /// Two cluster apis. A timed value written on one, which is SIGKILLed at
    /// once, is reverted by the other when due; a second one, written on
    /// the other, comes due while both are down, and is reverted by the
    /// two as they start together. Each revert must land once, restore the
    /// value before, and come within 5 s of its time (of the start, for the
    /// second).
    pub(super) fn timed_revert(
        &self,
        scenario: Scenario,
        envs: &[(&'static str, String)],
        log: &Path,
    ) -> Result<Outcome> {
        let envs = with(envs, "KEEL_ADMIN_TOKEN", TOKEN);
        let mut a = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-a"), log)?;
        let mut b = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-b"), log)?;
        for process in [&mut a, &mut b] {
            process.wait_ready(Duration::from_secs(60))?;
        }
        let lasting = put(&a.addr, "", "warn")?;

        // 1. The writer dies right after its answer: the other reverts it.
        let timed = put(&a.addr, "?revert_after=3s", "debug")?;
        a.kill()?;
        let due = Instant::now() + Duration::from_secs(3);
        let first = wait_for_version(&b.addr, timed + 1, Duration::from_secs(10))?;
        let survivor_late = Instant::now().saturating_duration_since(due);
        check_revert(&first, "warn", lasting)?;

        // 2. Due while every process is down: the first to start reverts it.
        let timed_again = put(&b.addr, "?revert_after=2s", "error")?;
        b.kill()?;
        std::thread::sleep(Duration::from_secs(3));
        a.restart()?;
        b.restart()?;
        for process in [&mut a, &mut b] {
            process.wait_ready(Duration::from_secs(60))?;
        }
        let started = Instant::now();
        let second = wait_for_version(&a.addr, timed_again + 1, Duration::from_secs(10))?;
        let start_late = started.elapsed();
        check_revert(&second, "warn", first["version"].as_i64().unwrap_or_default())?;

        // Once each: a moment for any second attempt, then the audit trail.
        std::thread::sleep(Duration::from_secs(2));
        let (status, body) = load::get(&b.addr, &format!("{DOCUMENT}/history?limit=20"))?;
        if status != 200 {
            bail!("history: {status} {body}");
        }
        let history: Value = serde_json::from_str(&body)?;
        let reverts: Vec<i64> = history["changes"]
            .as_array()
            .context("no changes")?
            .iter()
            .filter(|c| c["actor"] == TIMED_REVERT_ACTOR)
            .filter_map(|c| c["version"].as_i64())
            .collect();
        let newest = history["changes"][0]["version"].as_i64().unwrap_or_default();
        for process in [&mut a, &mut b] {
            process.stop();
        }
        let mut outcome = Outcome {
            name: scenario.name.to_owned(),
            note: format!(
                "2 timed values, {} reverts (versions {reverts:?}); the survivor reverted {} ms after the time, the \
                 restarted pair {} ms after they were ready",
                reverts.len(),
                survivor_late.as_millis(),
                start_late.as_millis()
            ),
            ..Outcome::default()
        };
        if reverts != [timed_again + 1, timed + 1] || newest != timed_again + 1 {
            outcome.failure = Some(format!(
                "expected one revert per timed value (versions {}, {}): {body}",
                timed + 1,
                timed_again + 1
            ));
        } else if survivor_late > Duration::from_secs(5) || start_late > Duration::from_secs(5) {
            outcome.failure = Some(format!("a revert came late: {}", outcome.note));
        }
        Ok(outcome)
    }
}

/// Writes `log_level` (with `query`) and returns the version written.
fn put(api: &str, query: &str, level: &str) -> Result<i64> {
    let body = format!(r#"{{"enable_monitoring":true,"log_level":"{level}"}}"#);
    let auth = format!("Bearer {TOKEN}");
    let (status, text) =
        load::request_with(api, "PUT", &format!("{DOCUMENT}{query}"), &[("Authorization", &auth)], &body)?;
    if status != 200 {
        bail!("PUT {DOCUMENT}{query}: {status} {text}");
    }
    load::version_of(&text).context("a settings answer without a version")
}

/// Polls `api` until its document is at `version` or later.
fn wait_for_version(api: &str, version: i64, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((200, body)) = load::get(api, DOCUMENT) {
            let document: Value = serde_json::from_str(&body)?;
            if document["version"].as_i64().is_some_and(|v| v >= version) {
                return Ok(document);
            }
        }
        if Instant::now() > deadline {
            bail!("{api} never reached version {version} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The document is a timed revert to `level`, restoring version `from`.
fn check_revert(document: &Value, level: &str, from: i64) -> Result<()> {
    if document["updated_by"] != TIMED_REVERT_ACTOR || document["value"]["log_level"] != level {
        bail!("expected a timed revert to log_level {level} (version {from}'s value): {document}");
    }
    if document.get("revert_at").is_some() {
        bail!("the revert itself is not timed: {document}");
    }
    Ok(())
}
