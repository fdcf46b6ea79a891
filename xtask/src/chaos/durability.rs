//! The in-process queue's local write-ahead log under faults: SIGKILL of an
//! embedded or PostgreSQL-only api under load, a full disk, and a second
//! process on the same data directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::load::{self, Ledger, Load};
use super::{Lab, Outcome, Scenario, metric, with};
use crate::servers::Binary;

/// SIGKILL rounds per kill scenario.
const ROUNDS: usize = 3;
/// Writers of the kill and disk-full scenarios.
const WRITERS: usize = 8;

impl Lab {
    /// A fresh data directory for `scenario` under the lab.
    pub(super) fn data_dir(&self, scenario: &str) -> Result<PathBuf> {
        let data = self.dir.join(format!("data-{scenario}"));
        match std::fs::remove_dir_all(&data) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("cannot clear {}", data.display()));
            }
            _ => {}
        }
        Ok(data)
    }

    /// Eight writers against an api without Redis (embedded when `embedded`,
    /// else on the lab's PostgreSQL), SIGKILLed at a random moment, three
    /// rounds; restarted on the same data directory each time. Every 202
    /// must be stored afterwards.
    pub(super) fn kill9(
        &self,
        scenario: Scenario,
        database: &str,
        envs: &[(&'static str, String)],
        embedded: bool,
        log: &Path,
    ) -> Result<Outcome> {
        let mut envs = envs.to_vec();
        if embedded {
            envs.retain(|(k, _)| *k != "DATABASE_URL");
        }
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        api.wait_ready(Duration::from_secs(60))?;
        let ledger = Arc::new(Ledger::default());
        let mut replayed = 0.0;
        let started = Instant::now();
        for round in 0..ROUNDS {
            let stop = Arc::new(AtomicBool::new(false));
            let writers = load::spawn_writers(Load::Entries, &api.addr, WRITERS, self.profile.rate, &ledger, &stop);
            // Somewhere in the second or third second of writing.
            std::thread::sleep(Duration::from_millis(1000 + random_below(2000)));
            api.kill()?;
            load::join(writers, &stop)?;
            api.restart()?;
            api.wait_ready(Duration::from_secs(60)).with_context(|| format!("restart after kill {}", round + 1))?;
            replayed += metric(&load::get(&api.addr, "/metrics")?.1, "keel_local_log_replayed_records_total", "");
        }
        let drained = self.drained(&api.addr, Duration::from_secs(60));
        let mut outcome = match (embedded, drained) {
            (_, Err(err)) => Outcome { failure: Some(format!("{err:#}")), ..Outcome::default() },
            (false, Ok(())) => self.settle(scenario, database, &ledger, &api.addr)?,
            (true, Ok(())) => {
                // What SQLite holds, read through a fresh process (empty
                // cache): stop this one (it drains), start it again.
                api.stop();
                api.restart()?;
                api.wait_ready(Duration::from_secs(60))?;
                compare_served(&api.addr, &ledger)?
            }
        };
        outcome.name = scenario.name.to_owned();
        outcome.acknowledged = ledger.acks.load(Ordering::Acquire);
        outcome.catch_up = started.elapsed();
        outcome.dead_lettered = dead_lettered(&api.addr)?;
        outcome.note = format!(
            "{ROUNDS} SIGKILLs under {WRITERS} writers; {replayed} records replayed from the local log after them; {} refusals while down",
            ledger.refusals.load(Ordering::Acquire)
        );
        if outcome.dead_lettered > 0 {
            outcome.failure.get_or_insert(format!("{} writes dead-lettered", outcome.dead_lettered));
        }
        api.stop();
        Ok(outcome)
    }

    /// The embedded api with its data directory on a 20 MB tmpfs that a
    /// ballast file fills while the writers run: clients get 503 (never a
    /// 202 that is lost), `local_log` or `entries` fails, nothing is
    /// dead-lettered, and writes resume once the ballast is gone.
    pub(super) fn disk_full(&self, scenario: Scenario, envs: &[(&'static str, String)], log: &Path) -> Result<Outcome> {
        let mut outcome = Outcome { name: scenario.name.to_owned(), ..Outcome::default() };
        let mount = self.dir.join("disk-full");
        let _ = std::process::Command::new("umount").arg(&mount).stderr(std::process::Stdio::null()).status();
        std::fs::create_dir_all(&mount)?;
        if !is_root() {
            outcome.note = "skipped: mounting a 20 MB tmpfs needs root".into();
            eprintln!("xtask: chaos: disk-full {}", outcome.note);
            return Ok(outcome);
        }
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
            .arg(&mount)
            .status()
            .context("mount")?;
        if !mounted.success() {
            bail!("cannot mount a tmpfs at {}", mount.display());
        }
        let result = self.disk_full_on(&mount, envs, log, &mut outcome);
        let _ = std::process::Command::new("umount").arg(&mount).status();
        if let Err(err) = result {
            outcome.failure = Some(format!("{err:#}"));
        }
        Ok(outcome)
    }

    fn disk_full_on(
        &self,
        mount: &Path,
        envs: &[(&'static str, String)],
        log: &Path,
        outcome: &mut Outcome,
    ) -> Result<()> {
        let config = self.dir.join("disk-full.toml");
        std::fs::write(&config, "[write_behind]\nko_after = \"1s\"\n")?;
        let mut envs: Vec<(&'static str, String)> =
            envs.iter().filter(|(k, _)| !matches!(*k, "DATABASE_URL" | "KEEL_DATA_DIR")).cloned().collect();
        envs.push(("KEEL_DATA_DIR", mount.join("data").display().to_string()));
        envs.push(("KEEL_CONFIG", config.display().to_string()));
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        api.wait_ready(Duration::from_secs(60))?;
        let (ledger, stop) = (Arc::new(Ledger::default()), Arc::new(AtomicBool::new(false)));
        let writers = load::spawn_writers(Load::Entries, &api.addr, WRITERS, self.profile.rate, &ledger, &stop);
        std::thread::sleep(self.profile.warm_up);
        let ballast = mount.join("ballast");
        let filled = fill(&ballast)?;
        let refusals_before = ledger.refusals.load(Ordering::Acquire);
        let full_from = Instant::now();
        let mut failed_seen = None;
        while full_from.elapsed() < self.profile.fault.max(Duration::from_secs(4)) {
            let (_, body) = load::get(&api.addr, "/readyz?verbose")?;
            if failed_seen.is_none()
                && let Some(line) = body.lines().find(|l| l.starts_with("[-]local_log") || l.starts_with("[-]entries"))
            {
                failed_seen = Some(line.to_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let refused = ledger.refusals.load(Ordering::Acquire) - refusals_before;
        std::fs::remove_file(&ballast)?;
        let fault_end = Instant::now();
        std::thread::sleep(self.profile.after.max(Duration::from_secs(2)));
        load::join(writers, &stop)?;
        outcome.recovery = ledger.first_ack_after(fault_end).unwrap_or_default();
        self.drained(&api.addr, Duration::from_secs(60))?;
        outcome.dead_lettered = dead_lettered(&api.addr)?;
        api.stop();
        api.restart()?;
        api.wait_ready(Duration::from_secs(60))?;
        let judged = compare_served(&api.addr, &ledger)?;
        api.stop();
        outcome.acknowledged = ledger.acks.load(Ordering::Acquire);
        (outcome.keys, outcome.persisted, outcome.lost, outcome.regressed) =
            (judged.keys, judged.persisted, judged.lost, judged.regressed);
        outcome.note = format!(
            "ballast of {} MiB filled the 20 MB disk for {:.1}s: {refused} writes answered 503; health: {}",
            filled >> 20,
            fault_end.duration_since(full_from).as_secs_f64(),
            failed_seen.as_deref().unwrap_or("never failed")
        );
        if refused == 0 {
            bail!("no write was refused while the disk was full: {}", outcome.note);
        }
        if failed_seen.is_none() {
            bail!("neither local_log nor entries failed while the disk was full");
        }
        if outcome.dead_lettered > 0 {
            bail!("{} writes dead-lettered for a full disk", outcome.dead_lettered);
        }
        if ledger.first_ack_after(fault_end).is_none() {
            bail!("no write was acknowledged after the disk had room again");
        }
        Ok(())
    }

    /// A second api on a data directory another api holds exits 64 naming
    /// the directory.
    pub(super) fn second_process(
        &self,
        scenario: Scenario,
        envs: &[(&'static str, String)],
        log: &Path,
    ) -> Result<Outcome> {
        let mut envs = envs.to_vec();
        envs.retain(|(k, _)| *k != "DATABASE_URL");
        let mut first = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        first.wait_ready(Duration::from_secs(60))?;
        let second_log = self.dir.join("second-process.err");
        let _ = std::fs::remove_file(&second_log);
        let mut second =
            Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-2"), &second_log)?;
        let code = second.wait_exit(Duration::from_secs(20))?;
        let said = std::fs::read_to_string(&second_log).unwrap_or_default();
        let line = said.lines().last().unwrap_or_default().to_owned();
        let ready = load::get(&first.addr, "/readyz").is_ok_and(|(status, _)| status == 200);
        first.stop();
        let mut outcome =
            Outcome { name: scenario.name.to_owned(), note: format!("exit {code:?}: {line}"), ..Outcome::default() };
        if code != Some(64) || !line.contains("entries-log") {
            outcome.failure = Some(format!("the second api did not exit 64 naming the log: {}", outcome.note));
        } else if !ready {
            outcome.failure = Some("the first api stopped being ready".into());
        }
        Ok(outcome)
    }

    /// Waits until the api's in-process queue holds nothing.
    fn drained(&self, api: &str, limit: Duration) -> Result<()> {
        let queue = "queue=\"entries\"";
        crate::servers::wait_until(limit, || {
            load::get(api, "/metrics").is_ok_and(|(_, text)| {
                metric(&text, "keel_write_behind_queue_depth", queue)
                    + metric(&text, "keel_write_behind_in_flight", queue)
                    == 0.0
            })
        })
        .context("the entries queue did not drain")
    }
}

/// Every acknowledged key as `api` serves it (a process that has taken no
/// write since it started reads the database): lost, regressed, persisted.
fn compare_served(api: &str, ledger: &Ledger) -> Result<Outcome> {
    let acked: HashMap<String, i64> = ledger.acked.lock().map_err(|_| anyhow::anyhow!("ledger poisoned"))?.clone();
    let mut outcome = Outcome { keys: acked.len(), ..Outcome::default() };
    for (key, version) in &acked {
        let (status, body) = load::get(api, &format!("/api/v1/entries/{key}"))?;
        match (status, load::version_of(&body)) {
            (200, Some(served)) if served >= *version => outcome.persisted += 1,
            (200, Some(_)) => outcome.regressed += 1,
            (404, _) => outcome.lost += 1,
            (status, _) => bail!("GET {key} answered {status}: {body}"),
        }
    }
    Ok(outcome)
}

fn dead_lettered(api: &str) -> Result<u64> {
    Ok(metric(&load::get(api, "/metrics")?.1, "keel_write_behind_failed_total", "queue=\"entries\"") as u64)
}

/// Writes `path` until the disk refuses; the bytes written.
fn fill(path: &Path) -> Result<u64> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0xa5u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(28) => break,
            Err(err) => return Err(err).context("filling the disk"),
        }
    }
    let _ = file.sync_all();
    Ok(written)
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A number below `bound` that differs from run to run.
fn random_below(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) % bound.max(1)
}
