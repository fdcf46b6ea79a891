//! Judging a scenario: waiting until every acknowledged write is stored,
//! then comparing what was acknowledged with what is stored (lost,
//! regressed, phantom) and the processes' own accounting.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use load::{Ledger, Load};

use super::*;

impl Lab {
    /// Waits (up to 90 s) until every acknowledged write is stored, then
    /// compares.
    pub(super) fn settle(&self, scenario: Scenario, database: &str, ledger: &Ledger, api: &str) -> Result<Outcome> {
        let acked = ledger.acked.lock().map_err(|_| anyhow::anyhow!("ledger poisoned"))?.clone();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let outcome = self.compare(scenario, database, &acked)?;
            if (outcome.lost == 0 && outcome.regressed == 0) || Instant::now() > deadline {
                let phantoms = self.phantoms(scenario, database, ledger, api)?;
                let acknowledged = ledger.acks.load(Ordering::Acquire);
                return Ok(Outcome { phantoms, acknowledged, ..outcome });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub(super) fn compare(&self, scenario: Scenario, database: &str, acked: &HashMap<String, i64>) -> Result<Outcome> {
        let mut outcome = Outcome { name: scenario.name.to_owned(), keys: acked.len(), ..Outcome::default() };
        if scenario.load == Load::Metadata {
            let stored: HashSet<String> =
                self.pg.psql(database, "SELECT agent_id FROM agent_metadata")?.lines().map(str::to_owned).collect();
            outcome.persisted = acked.keys().filter(|agent| stored.contains(*agent)).count();
            outcome.lost = acked.len() - outcome.persisted;
            return Ok(outcome);
        }
        let stored = self.entries(database)?;
        for (key, version) in acked {
            match stored.get(key) {
                None => outcome.lost += 1,
                Some(stored) if stored < version => outcome.regressed += 1,
                Some(_) => outcome.persisted += 1,
            }
        }
        Ok(outcome)
    }

    pub(super) fn entries(&self, database: &str) -> Result<HashMap<String, i64>> {
        let rows = self.pg.psql(database, "SELECT key, version FROM entries WHERE NOT deleted")?;
        Ok(rows
            .lines()
            .filter_map(|line| line.split_once('|'))
            .filter_map(|(key, version)| Some((key.to_owned(), version.parse().ok()?)))
            .collect())
    }

    /// Keys a GET serves at a version the database does not hold: the
    /// cache showing a write that was never persisted.
    pub(super) fn phantoms(&self, scenario: Scenario, database: &str, ledger: &Ledger, api: &str) -> Result<usize> {
        if scenario.load == Load::Metadata {
            return Ok(0);
        }
        let attempted = ledger.attempted.lock().map_err(|_| anyhow::anyhow!("ledger poisoned"))?.clone();
        let stored = self.entries(database)?;
        let mut phantoms = 0;
        for key in attempted {
            let (status, body) = load::get(api, &format!("/api/v1/entries/{key}"))?;
            let served = (status == 200).then(|| load::version_of(&body)).flatten();
            if let Some(served) = served
                && stored.get(&key).is_none_or(|stored| *stored < served)
            {
                eprintln!("xtask: chaos: phantom {key}: served version {served}, stored {:?}", stored.get(&key));
                phantoms += 1;
            }
        }
        Ok(phantoms)
    }

    /// The processes' own accounting at quiescence: in-process,
    /// `enqueued = persisted + failed + depth + in flight`; with a stream,
    /// the api's acknowledgements = the worker's persisted + dead-lettered +
    /// the stream backlog (not checked where the worker restarted or Redis
    /// lost its consumer bookkeeping mid-flight, which replays entries).
    pub(super) fn accounting(
        &self,
        scenario: Scenario,
        api: &str,
        worker: Option<&str>,
        ledger: &Ledger,
    ) -> Result<Option<bool>> {
        if scenario.load == Load::Metadata
            || matches!(scenario.fault, Fault::WorkerKill | Fault::RedisKill | Fault::RedisPause)
        {
            return Ok(None);
        }
        let api_metrics = load::get(api, "/metrics")?.1;
        let acknowledged = metric(&api_metrics, "keel_entries_acknowledged_total", "");
        if scenario.load == Load::Entries && acknowledged != ledger.acks.load(Ordering::Acquire) as f64 {
            eprintln!(
                "xtask: chaos: api acknowledged {acknowledged}, writers saw {}",
                ledger.acks.load(Ordering::Acquire)
            );
            return Ok(Some(false));
        }
        let queue = "queue=\"entries\"";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let figures = match worker {
                Some(worker) => load::get(worker, "/metrics")?.1,
                None => load::get(api, "/metrics")?.1,
            };
            let handled = metric(&figures, "keel_write_behind_persisted_total", queue)
                + metric(&figures, "keel_write_behind_failed_total", queue)
                + metric(&figures, "keel_write_behind_queue_depth", queue)
                + metric(&figures, "keel_write_behind_in_flight", queue);
            if handled == acknowledged {
                return Ok(Some(true));
            }
            if Instant::now() > deadline {
                eprintln!(
                    "xtask: chaos: acknowledged {acknowledged} but persisted + dead-lettered + pending = {handled}"
                );
                return Ok(Some(false));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub(super) fn count(&self, database: &str, sql: &str) -> Result<u64> {
        Ok(self.pg.psql(database, sql)?.trim().parse().unwrap_or(0))
    }
}
