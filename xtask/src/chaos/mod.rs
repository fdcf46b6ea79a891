//! `cargo xtask chaos`: the release `api` and `worker` against a private
//! PostgreSQL and Redis, one injected fault per scenario, and a comparison
//! of what was acknowledged with what is stored.

mod durability;
mod edge;
mod exposure;
pub(crate) mod load;
pub(crate) mod servers;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use load::{Ledger, Load};
use servers::{Binary, Postgres, Redis, RedisCluster, signal};

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
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    /// Redis Streams (api + worker) or the in-process queue (api alone).
    streams: bool,
    load: Load,
    fault: Fault,
}

const SCENARIOS: [Scenario; 20] = [
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

    /// Breaks what `fault` names for the profile's fault time, then mends it.
    fn inject(&mut self, fault: Fault, worker: Option<&mut Binary>) -> Result<()> {
        let hold = self.profile.fault;
        match fault {
            Fault::None
            | Fault::ConcurrentStart
            | Fault::Flood
            | Fault::Slowloris
            | Fault::Sigterm
            | Fault::MasterFailover
            | Fault::Kill9 { .. }
            | Fault::DiskFull
            | Fault::SecondProcess
            | Fault::StreamFlood
            | Fault::MonitoringFlood => {
                std::thread::sleep(hold);
            }
            Fault::WorkerKill => {
                let worker = worker.context("worker-kill needs a worker")?;
                worker.kill()?;
                std::thread::sleep(hold);
                worker.restart()?;
            }
            Fault::PgStop => {
                self.pg.stop_fast()?;
                std::thread::sleep(hold);
                self.pg.up()?;
            }
            Fault::PgPause => {
                let pids = self.pg.pids()?;
                signal(&pids, "STOP")?;
                std::thread::sleep(hold);
                signal(&pids, "CONT")?;
            }
            Fault::RedisKill => {
                self.redis.kill()?;
                std::thread::sleep(hold);
                self.redis.up()?;
            }
            Fault::RedisPause => {
                let pid = self.redis.pid();
                signal(&pid, "STOP")?;
                std::thread::sleep(hold);
                signal(&pid, "CONT")?;
            }
        }
        Ok(())
    }

    /// The failover scenario: its own Redis Cluster, two apis writing with
    /// `--ack-replicas 1` and a worker; the master of partition 0's stream is
    /// killed mid-load, a settings change goes through the other api while
    /// it is down, the replica is promoted, the old master comes back as a
    /// replica. Judged like every scenario (lost, regressed, phantoms), plus
    /// the settings reaching both apis within 5 s of the cluster being whole.
    fn failover(
        &self,
        scenario: Scenario,
        database: &str,
        envs: &[(&'static str, String)],
        log: &Path,
    ) -> Result<Outcome> {
        const TOKEN: &str = "chaos-admin-token-0001";
        let mut cluster = RedisCluster::start(&self.dir.join("redis-cluster"))?;
        let mut envs: Vec<(&'static str, String)> = envs.iter().filter(|(k, _)| *k != "REDIS_URL").cloned().collect();
        envs.extend([
            ("REDIS_URL", cluster.url()),
            ("KEEL_ACK_REPLICAS", "1".to_owned()),
            ("KEEL_ADMIN_TOKEN", TOKEN.to_owned()),
        ]);
        let namespace = envs.iter().find(|(k, _)| *k == "KEEL_NAMESPACE").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        let mut other = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-2"), log)?;
        let mut worker =
            Binary::spawn(&self.worker, "--admin-listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-worker"), log)?;
        for process in [&mut api, &mut other, &mut worker] {
            process.wait_ready(Duration::from_secs(60))?;
        }

        let (ledger, stop) = (Arc::new(Ledger::default()), Arc::new(AtomicBool::new(false)));
        let writers =
            load::spawn_writers(scenario.load, &api.addr, self.profile.writers, self.profile.rate, &ledger, &stop);
        std::thread::sleep(self.profile.warm_up);
        // Partition 0 is as busy as any: the writers' keys hash over all 16.
        let busy = format!("{namespace}:entries-stream:{{p0}}");
        let victim = cluster.master_of(&busy, 0)?;
        let victim_port = cluster.nodes[victim].port;
        let killed = Instant::now();
        cluster.nodes[victim].kill()?;
        let version = change_settings(&other.addr, TOKEN, Duration::from_secs(30))?;
        let asking = (victim + 1) % cluster.nodes.len();
        servers::wait_until(Duration::from_secs(30), || {
            cluster.master_of(&busy, asking).is_ok_and(|m| m != victim) && cluster.healthy(Some(victim))
        })
        .with_context(|| {
            format!("the replica was not promoted; the cluster as node {asking} sees it:\n{}", cluster.describe(asking))
        })?;
        let promoted = killed.elapsed();
        if let Some(rest) = self.profile.fault.checked_sub(promoted) {
            std::thread::sleep(rest);
        }
        cluster.nodes[victim].up()?;
        servers::wait_until(Duration::from_secs(30), || cluster.healthy(None))
            .context("the old master did not rejoin")?;
        let fault_end = Instant::now();
        let converged = servers::wait_until(Duration::from_secs(5), || {
            [&api.addr, &other.addr].iter().all(|addr| {
                load::get(addr, "/api/v1/settings/monitoring")
                    .ok()
                    .and_then(|(_, body)| load::version_of(&body))
                    .is_some_and(|v| v >= version)
            })
        });
        let convergence = fault_end.elapsed();
        std::thread::sleep(self.profile.after);
        load::join(writers, &stop)?;
        // A refused write may still land later: its script can wait in the
        // Redis client for a reconnect. The apis stop before the streams are
        // drained, so nothing lands after the judgement, and a fresh api
        // serves the reads that judge phantoms.
        for process in [&mut api, &mut other] {
            process.stop();
        }
        worker.wait_ready(Duration::from_secs(60))?;
        let stopped = Instant::now();
        // Writes refused with 503 may still have landed (in the stream and
        // the cache): the streams must drain before phantoms are judged.
        // Asked of the streams themselves: the worker's gauge keeps its last
        // reading while a partition's master cannot answer, so it can read 0
        // over entries the new master holds.
        servers::wait_until(Duration::from_secs(60), || {
            load::get(&worker.addr, "/metrics")
                .is_ok_and(|(_, text)| metric(&text, "keel_write_behind_queue_depth", "queue=\"entries\"") == 0.0)
                && cluster.stream_backlog(&namespace, CLUSTER_PARTITIONS) == Some(0)
        })
        .context("the entries streams did not drain")?;
        let mut judge = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-judge"), log)?;
        judge.wait_ready(Duration::from_secs(60))?;
        let mut outcome = self.settle(scenario, database, &ledger, &judge.addr)?;
        outcome.catch_up = stopped.elapsed();
        outcome.recovery = ledger.first_ack_after(fault_end).unwrap_or_default();
        outcome.dead_lettered = self.count(database, "SELECT count(*) FROM write_behind_dead_letters")?;
        outcome.note = format!(
            "master :{victim_port} of partition 0 killed; replica promoted in {:.1}s; settings v{version} on both apis {:.1}s after the cluster was whole; {} refusals (503) while it was not",
            promoted.as_secs_f64(),
            convergence.as_secs_f64(),
            ledger.refusals.load(Ordering::Acquire)
        );
        if converged.is_err() {
            outcome.failure = Some(format!("settings v{version} had not reached both apis 5 s after the failover"));
        }
        for process in [&mut worker, &mut judge] {
            process.stop();
        }
        Ok(outcome)
    }

    /// Waits (up to 90 s) until every acknowledged write is stored, then
    /// compares.
    fn settle(&self, scenario: Scenario, database: &str, ledger: &Ledger, api: &str) -> Result<Outcome> {
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

    fn compare(&self, scenario: Scenario, database: &str, acked: &HashMap<String, i64>) -> Result<Outcome> {
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

    fn entries(&self, database: &str) -> Result<HashMap<String, i64>> {
        let rows = self.pg.psql(database, "SELECT key, version FROM entries WHERE NOT deleted")?;
        Ok(rows
            .lines()
            .filter_map(|line| line.split_once('|'))
            .filter_map(|(key, version)| Some((key.to_owned(), version.parse().ok()?)))
            .collect())
    }

    /// Keys a GET serves at a version the database does not hold: the
    /// cache showing a write that was never persisted.
    fn phantoms(&self, scenario: Scenario, database: &str, ledger: &Ledger, api: &str) -> Result<usize> {
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
    fn accounting(&self, scenario: Scenario, api: &str, worker: Option<&str>, ledger: &Ledger) -> Result<Option<bool>> {
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

    /// The edge scenarios: one process under a hostile load, judged by its
    /// own figures.
    fn edge(&self, scenario: Scenario, mut envs: Vec<(&'static str, String)>, log: &Path) -> Result<Outcome> {
        let config = self.dir.join(format!("{}.toml", scenario.name));
        std::fs::write(
            &config,
            format!(
                "[http]\ndrain_delay = \"2s\"\nshutdown_grace = \"10s\"\nheader_read_timeout = \"{}s\"\n",
                self.profile.header_timeout.as_secs()
            ),
        )?;
        envs.push(("KEEL_CONFIG", config.display().to_string()));
        if !scenario.streams {
            envs.retain(|(k, _)| *k != "DATABASE_URL");
        }
        if scenario.fault == Fault::MonitoringFlood {
            envs.push(("KEEL_ADMIN_TOKEN", MONITORING_TOKEN.to_owned()));
            envs.push(("KEEL_MAX_STREAMS", "2500".to_owned()));
        }
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        let mut worker = match scenario.streams {
            true => {
                Some(Binary::spawn(&self.worker, "--admin-listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-w"), log)?)
            }
            false => None,
        };
        api.wait_ready(Duration::from_secs(60))?;
        if let Some(worker) = &mut worker {
            worker.wait_ready(Duration::from_secs(60))?;
        }
        let mut outcome = Outcome { name: scenario.name.to_owned(), ..Outcome::default() };
        let started = Instant::now();
        let result = match scenario.fault {
            Fault::Flood => edge::flood(&api, 8, self.profile.flood, 256 << 20).map(|(answered, peak, after)| {
                outcome.acknowledged = answered;
                format!("{answered} writes of 64 KiB; RSS peak {} MiB, after {} MiB", peak >> 20, after >> 20)
            }),
            Fault::Slowloris => edge::slowloris(&api, 1_200, self.profile.header_timeout + Duration::from_secs(2)).map(
                |(slowest, baseline, peak, after)| {
                    format!(
                        "1200 half-sent: all closed by {:.1}s; fds {baseline} → {peak} → {after}",
                        slowest.as_secs_f64()
                    )
                },
            ),
            Fault::StreamFlood => exposure::stream_flood(&api, 10_050, 250).and_then(|flood| {
                let (before, peak, after) = flood.rss;
                let note = format!(
                    "10050 clients: {} streams, {} refused (503), {} unanswered; {}/20 probes under 100 ms (slowest {:.0} ms); RSS {} → {} → {} MiB",
                    flood.streams,
                    flood.refused,
                    flood.unanswered,
                    flood.probes_ok,
                    flood.slowest_probe.as_secs_f64() * 1000.0,
                    before >> 20,
                    peak >> 20,
                    after >> 20
                );
                let bad = flood.probes_ok < 20
                    || flood.streams > 1000
                    || flood.refused == 0
                    || flood.unanswered > 0
                    || after as f64 > before as f64 * 1.2;
                if bad { bail!("{note}") } else { Ok(note) }
            }),
            Fault::MonitoringFlood => {
                let level = r#"{"enable_monitoring":true,"log_level":"info,keel_http::request=debug"}"#;
                let auth = format!("Bearer {MONITORING_TOKEN}");
                let answer = load::request_with(&api.addr, "PUT", "/api/v1/settings/monitoring", &[("Authorization", &auth)], level)?;
                if answer.0 != 200 {
                    bail!("cannot set the log level: {answer:?}");
                }
                exposure::monitoring_flood(&api, MONITORING_TOKEN, 2_000, 100, Duration::from_secs(10)).and_then(
                    |(opened, average, most)| {
                        let note = format!(
                            "{opened} monitoring streams at keel_http::request=debug: {average} bytes per client in 10 s (most {most})"
                        );
                        if average >= 4096 { bail!("{note}") } else { Ok(note) }
                    },
                )
            }
            _ => edge::sigterm_under_load(&mut api, 16, Duration::from_secs(2)).and_then(|(answered, resets, code)| {
                outcome.acknowledged = answered;
                let note = format!("{answered} answered, {resets} resets, exit {code:?} (drain 2s)");
                if resets > 0 || code != Some(0) {
                    bail!("{note}");
                }
                Ok(note)
            }),
        };
        outcome.catch_up = started.elapsed();
        match result {
            Ok(note) => outcome.note = note,
            Err(err) => outcome.failure = Some(format!("{err:#}")),
        }
        if let Some(worker) = &mut worker {
            worker.stop();
        }
        api.stop();
        Ok(outcome)
    }

    fn count(&self, database: &str, sql: &str) -> Result<u64> {
        Ok(self.pg.psql(database, sql)?.trim().parse().unwrap_or(0))
    }

    /// Three `api` and one `worker` started in the same instant on an empty
    /// database: all must become ready.
    fn concurrent_start(&self, scenario: Scenario, envs: &[(&'static str, String)], log: &Path) -> Result<Outcome> {
        let started = Instant::now();
        let mut processes = Vec::new();
        for i in 0..3 {
            let envs = with(envs, "KEEL_INSTANCE_ID", &format!("chaos-api-{i}"));
            processes.push(Binary::spawn(&self.api, "--listen", &envs, log)?);
        }
        processes.push(Binary::spawn(&self.worker, "--admin-listen", &with(envs, "KEEL_INSTANCE_ID", "chaos-w"), log)?);
        let mut failure = None;
        for process in &mut processes {
            if let Err(err) = process.wait_ready(Duration::from_secs(60)) {
                failure.get_or_insert(format!("{err:#}"));
            }
        }
        let catch_up = started.elapsed();
        for process in &mut processes {
            process.stop();
        }
        Ok(Outcome { name: scenario.name.to_owned(), catch_up, failure, ..Outcome::default() })
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

fn print_table(outcomes: &[Outcome]) {
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

fn report_json(profile: Profile, outcomes: &[Outcome]) -> serde_json::Value {
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
