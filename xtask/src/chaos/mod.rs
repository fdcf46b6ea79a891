//! `cargo xtask chaos`: the release `api` and `worker` against a private
//! PostgreSQL and Redis, one injected fault per scenario, and a comparison
//! of what was acknowledged with what is stored.

mod durability;
mod edge;
mod exposure;
mod faults;
mod judge;
pub(crate) mod load;
mod report;
mod settings;
mod special;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::servers::{Binary, Postgres, Redis};
use load::{Ledger, Load};
use report::{print_table, report_json};

/// What a scenario breaks while the writers run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    WorkerKill,
    PgStop,
    PgPause,
    RedisKill,
    RedisPause,
    ConcurrentStart,
    /// 64 KiB writes as fast as they go (embedded): memory must stay bounded.
    Flood,
    /// 1 200 half-sent requests (embedded): all closed, descriptors back.
    Slowloris,
    /// SIGTERM with a drain delay under keep-alive load: no resets.
    Sigterm,
    /// On a private Redis Cluster with `--ack-replicas 1`: SIGKILL the master
    /// of a busy partition, wait for its replica's promotion, bring the old
    /// master back as a replica; settings changed meanwhile must reach both
    /// apis within 5 s after.
    MasterFailover,
    /// No Redis: SIGKILL of the api under load, three times (embedded when
    /// `embedded`, else on PostgreSQL); every 202 must be stored.
    Kill9 {
        embedded: bool,
    },
    /// The embedded api's data directory fills up under load.
    DiskFull,
    /// A second api on the same data directory must exit 64.
    SecondProcess,
    /// 10 050 clients hold `/status/stream` (embedded, default flags): the
    /// probes are answered within 100 ms, clients past the caps get 503, and
    /// memory comes back once they leave.
    StreamFlood,
    /// 2 000 admin monitoring streams with `keel_http::request` at debug:
    /// each receives under 4 KiB in 10 s (no record fans out to all).
    MonitoringFlood,
    /// Two cluster apis: a timed settings value whose writer is SIGKILLed,
    /// and one that comes due while both are down, revert once each.
    TimedRevert,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    /// Redis Streams (api + worker) or the in-process queue (api alone).
    streams: bool,
    load: Load,
    fault: Fault,
}

const SCENARIOS: [Scenario; 21] = [
    Scenario { name: "worker-kill", streams: true, load: Load::Entries, fault: Fault::WorkerKill },
    Scenario { name: "pg-stop", streams: true, load: Load::Entries, fault: Fault::PgStop },
    Scenario { name: "pg-pause", streams: true, load: Load::Entries, fault: Fault::PgPause },
    Scenario { name: "redis-kill", streams: true, load: Load::Entries, fault: Fault::RedisKill },
    Scenario { name: "redis-pause", streams: true, load: Load::Entries, fault: Fault::RedisPause },
    Scenario { name: "client-reset", streams: true, load: Load::Reset, fault: Fault::None },
    Scenario { name: "in-process-pg-stop", streams: false, load: Load::Entries, fault: Fault::PgStop },
    Scenario { name: "metadata-pg-stop", streams: true, load: Load::Metadata, fault: Fault::PgStop },
    Scenario { name: "concurrent-start", streams: true, load: Load::Entries, fault: Fault::ConcurrentStart },
    Scenario { name: "embedded-flood", streams: false, load: Load::Entries, fault: Fault::Flood },
    Scenario { name: "slowloris", streams: false, load: Load::Entries, fault: Fault::Slowloris },
    Scenario { name: "sigterm-embedded", streams: false, load: Load::Entries, fault: Fault::Sigterm },
    Scenario { name: "sigterm-cluster", streams: true, load: Load::Entries, fault: Fault::Sigterm },
    Scenario { name: "cluster-failover", streams: true, load: Load::Entries, fault: Fault::MasterFailover },
    Scenario { name: "embedded-kill9", streams: false, load: Load::Entries, fault: Fault::Kill9 { embedded: true } },
    Scenario { name: "pg-only-kill9", streams: false, load: Load::Entries, fault: Fault::Kill9 { embedded: false } },
    Scenario { name: "disk-full", streams: false, load: Load::Entries, fault: Fault::DiskFull },
    Scenario { name: "second-process", streams: false, load: Load::Entries, fault: Fault::SecondProcess },
    Scenario { name: "stream-flood", streams: false, load: Load::Entries, fault: Fault::StreamFlood },
    Scenario { name: "monitoring-flood", streams: false, load: Load::Entries, fault: Fault::MonitoringFlood },
    Scenario { name: "timed-revert", streams: true, load: Load::Entries, fault: Fault::TimedRevert },
];

/// Durations and rates of one run.
#[derive(Clone, Copy, Debug)]
struct Profile {
    name: &'static str,
    warm_up: Duration,
    fault: Duration,
    after: Duration,
    rate: u32,
    writers: usize,
    /// How long the flood lasts.
    flood: Duration,
    /// The header-read timeout the slowloris scenario runs with.
    header_timeout: Duration,
}

const FULL: Profile = Profile {
    name: "full",
    warm_up: Duration::from_secs(2),
    fault: Duration::from_secs(10),
    after: Duration::from_secs(3),
    rate: 300,
    writers: 6,
    flood: Duration::from_secs(30),
    header_timeout: Duration::from_secs(10),
};
const SHORT: Profile = Profile {
    name: "short",
    warm_up: Duration::from_secs(1),
    fault: Duration::from_secs(4),
    after: Duration::from_secs(2),
    rate: 200,
    writers: 4,
    flood: Duration::from_secs(8),
    header_timeout: Duration::from_secs(2),
};

/// One row of the table.
#[derive(Debug, Default)]
struct Outcome {
    name: String,
    /// Writes answered 202.
    acknowledged: u64,
    /// Distinct keys (or agents) among them.
    keys: usize,
    persisted: usize,
    lost: usize,
    regressed: usize,
    dead_lettered: u64,
    phantoms: usize,
    /// From the end of the fault to the first 202 after it.
    recovery: Duration,
    /// From the writers' stop until the database held every acknowledged write.
    catch_up: Duration,
    /// `acknowledged = persisted + dead-lettered + pending`, from the
    /// processes' own metrics: `Some(false)` is a failure.
    accounting: Option<bool>,
    /// Figures of the edge scenarios.
    note: String,
    failure: Option<String>,
}

impl Outcome {
    fn bad(&self) -> bool {
        self.lost > 0
            || self.regressed > 0
            || self.phantoms > 0
            || self.failure.is_some()
            || self.accounting == Some(false)
    }
}

/// `cargo xtask chaos [--short] [--only NAME]`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut profile = FULL;
    let mut only = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--short" => profile = SHORT,
            "--only" => only = Some(rest.next().context("--only needs a scenario name")?.clone()),
            other => bail!("unknown chaos option {other:?} (use --short, --only NAME)"),
        }
    }
    let scenarios: Vec<Scenario> =
        SCENARIOS.iter().copied().filter(|s| only.as_deref().is_none_or(|o| o == s.name)).collect();
    if scenarios.is_empty() {
        bail!("no scenario named {only:?}");
    }
    let binaries = crate::cmd::release_binaries(root)?;
    let dir = root.join("target").join("chaos");
    std::fs::create_dir_all(&dir)?;
    let lab = Lab {
        pg: Postgres::start(&dir.join("postgres"))?,
        redis: Redis::start(&dir.join("redis"))?,
        api: binaries.api,
        worker: binaries.worker,
        dir: dir.clone(),
        profile,
    };
    eprintln!("xtask: chaos ({} profile): postgres :{}, redis :{}", profile.name, lab.pg.port, lab.redis.port);
    let mut lab = lab;
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        eprintln!("xtask: chaos: {} ...", scenario.name);
        let outcome = lab.run(scenario).unwrap_or_else(|err| Outcome {
            name: scenario.name.to_owned(),
            failure: Some(format!("{err:#}")),
            ..Outcome::default()
        });
        eprintln!("xtask: chaos: {} done{}", scenario.name, if outcome.bad() { ": FAILED" } else { "" });
        outcomes.push(outcome);
    }
    print_table(&outcomes);
    let report = dir.join("report.json");
    std::fs::write(&report, serde_json::to_string_pretty(&report_json(profile, &outcomes))?)?;
    eprintln!("xtask: chaos report written to {}", report.display());
    let failed: Vec<&str> = outcomes.iter().filter(|o| o.bad()).map(|o| o.name.as_str()).collect();
    if !failed.is_empty() {
        for o in outcomes.iter().filter(|o| o.failure.is_some()) {
            eprintln!("xtask: chaos: {}: {}", o.name, o.failure.as_deref().unwrap_or_default());
        }
        bail!("chaos scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

struct Lab {
    pg: Postgres,
    redis: Redis,
    api: PathBuf,
    worker: PathBuf,
    dir: PathBuf,
    profile: Profile,
}

impl Lab {
    fn run(&mut self, scenario: Scenario) -> Result<Outcome> {
        let database = format!("chaos_{}", scenario.name.replace('-', "_"));
        self.pg.recreate(&database)?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        // Each scenario its own data directory: a local log left by one
        // must not be replayed into the next one's database.
        let mut envs = vec![
            ("DATABASE_URL", self.pg.url(&database)),
            ("KEEL_NAMESPACE", format!("chaos-{}-{stamp}", scenario.name)),
            ("KEEL_DATA_DIR", self.data_dir(scenario.name)?.display().to_string()),
        ];
        if scenario.streams {
            envs.push(("REDIS_URL", self.redis.url()));
        }
        let log = self.dir.join(format!("{}.log", scenario.name));
        let _ = std::fs::remove_file(&log);
        match scenario.fault {
            Fault::ConcurrentStart => return self.concurrent_start(scenario, &envs, &log),
            Fault::Flood | Fault::Slowloris | Fault::Sigterm | Fault::StreamFlood | Fault::MonitoringFlood => {
                return self.edge(scenario, envs, &log);
            }
            Fault::MasterFailover => return self.failover(scenario, &database, &envs, &log),
            Fault::Kill9 { embedded } => return self.kill9(scenario, &database, &envs, embedded, &log),
            Fault::DiskFull => return self.disk_full(scenario, &envs, &log),
            Fault::SecondProcess => return self.second_process(scenario, &envs, &log),
            Fault::TimedRevert => return self.timed_revert(scenario, &envs, &log),
            _ => {}
        }
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), &log)?;
        let mut worker = if scenario.streams {
            let envs = with(&envs, "KEEL_INSTANCE_ID", "chaos-worker");
            Some(Binary::spawn(&self.worker, "--admin-listen", &envs, &log)?)
        } else {
            None
        };
        api.wait_ready(Duration::from_secs(60))?;
        if let Some(worker) = &mut worker {
            worker.wait_ready(Duration::from_secs(60))?;
        }

        let (ledger, stop) = (Arc::new(Ledger::default()), Arc::new(AtomicBool::new(false)));
        let writers =
            load::spawn_writers(scenario.load, &api.addr, self.profile.writers, self.profile.rate, &ledger, &stop);
        std::thread::sleep(self.profile.warm_up);
        let injected = self.inject(scenario.fault, worker.as_mut());
        let fault_end = Instant::now();
        let after = injected.map(|()| std::thread::sleep(self.profile.after));
        load::join(writers, &stop)?;
        after?;
        let stopped = Instant::now();
        if let Some(worker) = &mut worker {
            worker.wait_ready(Duration::from_secs(60))?;
        }
        let mut outcome = self.settle(scenario, &database, &ledger, &api.addr)?;
        outcome.catch_up = stopped.elapsed();
        outcome.recovery = ledger.first_ack_after(fault_end).unwrap_or_default();
        if scenario.load == Load::Reset {
            // Nobody saw a 202: count what was sent and what landed.
            let attempted = ledger.attempted.lock().map_err(|_| anyhow::anyhow!("ledger poisoned"))?.clone();
            let stored = self.entries(&database)?;
            outcome.keys = attempted.len();
            outcome.persisted = attempted.iter().filter(|k| stored.contains_key(*k)).count();
        }
        outcome.accounting = self.accounting(scenario, &api.addr, worker.as_ref().map(|w| w.addr.as_str()), &ledger)?;
        outcome.dead_lettered = self.count(&database, "SELECT count(*) FROM write_behind_dead_letters")?;
        if let Some(worker) = &mut worker {
            worker.stop();
        }
        api.stop();
        Ok(outcome)
    }
}

/// Sets `log_level` to `debug` in the `monitoring` document through `api`,
/// retrying while the store is unavailable; the version it got.
fn change_settings(api: &str, token: &str, limit: Duration) -> Result<i64> {
    let deadline = Instant::now() + limit;
    let auth = format!("Bearer {token}");
    let body = r#"{"enable_monitoring":true,"log_level":"debug"}"#;
    loop {
        let answer = load::request_with(api, "PUT", "/api/v1/settings/monitoring", &[("Authorization", &auth)], body);
        match answer {
            Ok((200, text)) => return load::version_of(&text).context("a settings answer without a version"),
            other if Instant::now() > deadline => bail!("the settings change was refused until the end: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn with(envs: &[(&'static str, String)], key: &'static str, value: &str) -> Vec<(&'static str, String)> {
    let mut envs = envs.to_vec();
    envs.push((key, value.to_owned()));
    envs
}

/// The value of the series `name{…labels…}` in a Prometheus exposition (0
/// when absent).
fn metric(exposition: &str, name: &str, label: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The admin token of the monitoring flood.
const MONITORING_TOKEN: &str = "chaos-monitoring-token";

/// Entry streams on a Redis Cluster: the api's default `--entries-partitions`
/// there.
const CLUSTER_PARTITIONS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_by_name_and_label_and_summed() {
        let text =
            "# HELP x\nkeel_a_total{queue=\"entries\"} 3\nkeel_a_total{queue=\"other\"} 4\nkeel_ab_total 9\nkeel_b 2\n";
        assert_eq!(metric(text, "keel_a_total", "queue=\"entries\""), 3.0);
        assert_eq!(metric(text, "keel_a_total", ""), 7.0);
        assert_eq!(metric(text, "keel_b", ""), 2.0);
        assert_eq!(metric(text, "keel_c", ""), 0.0);
    }

    #[test]
    fn an_outcome_with_any_loss_regression_or_phantom_fails() {
        assert!(!Outcome::default().bad());
        for outcome in [
            Outcome { lost: 1, ..Outcome::default() },
            Outcome { regressed: 1, ..Outcome::default() },
            Outcome { phantoms: 1, ..Outcome::default() },
            Outcome { accounting: Some(false), ..Outcome::default() },
        ] {
            assert!(outcome.bad(), "{outcome:?}");
        }
        assert_eq!(load::version_of("{\"key\":\"k\",\"version\":42}"), Some(42));
    }
}
