//! `cargo xtask alerts`: Keel's alert rules evaluated by a real Prometheus
//! against the release `api` and `worker`, each alert driven by the fault
//! its runbook names.
//!
//! Prometheus (Debian's package) scrapes a cluster-mode api, its worker and
//! a PostgreSQL-only api every second and evaluates a copy of
//! `deploy/prometheus/rules/keel.yml` in which every `for:`, every range
//! window and the two thresholds that are durations (the backlog's oldest
//! age, settings staleness) are divided by [`SCALE`]; the settings poll is
//! divided likewise. One substitution is not a scaling: `KeelHighMemory`'s
//! 1 GiB becomes [`MEMORY_THRESHOLD`], which the fault (a backlog of large
//! writes held by the PostgreSQL-only api) crosses.
//!
//! Each scenario injects a fault into the private PostgreSQL / Redis or a
//! binary, waits until every alert it should raise is firing (within the
//! alert's scaled `for` plus the lead its condition needs plus a margin),
//! fails on any alert it should not raise, recovers, and waits until every
//! alert is inactive again. A healthy period comes first and must raise
//! nothing. The table printed at the end (and `target/alerts/report.json`)
//! gives, per alert, the fault and when it went pending, firing and resolved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::servers::{Binary, Postgres, Redis, wait_until};
use prometheus::Prometheus;
use traffic::Traffic;

mod report;
mod scenarios;
mod watch;

use report::{print_table, report};
mod prometheus;
mod rules;
mod traffic;

/// `for:`, range windows and duration thresholds are divided by this.
pub const SCALE: u64 = 30;
/// `KeelHighMemory`'s threshold in the harness (the rules say 1 GiB): an
/// idle api holds about 55 MB, one replaying a database outage's backlog
/// about 130 MB.
const MEMORY_THRESHOLD: u64 = 192 << 20;
/// The PostgreSQL-only api's local log bound: below the in-process queue's
/// 16 MiB, so a database outage can bring the log near it.
const LOCAL_LOG_MAX_BYTES: u64 = 12 << 20;
/// The PostgreSQL-only api's in-process cache: room for the memory fault.
const CACHE_MAX_BYTES: &str = "256MiB";
/// Slack on top of each alert's scaled `for` and lead.
const MARGIN: Duration = Duration::from_secs(20);
/// How long every alert gets to resolve after recovery.
const RESOLVE_WITHIN: Duration = Duration::from_secs(150);

/// What must happen before an alert's expression can hold, in seconds of
/// the harness (after scaling), beyond its scaled `for`.
const LEADS: &[(&str, u64, &str)] = &[
    ("KeelHighErrorRatio", 10, "the 10 s window fills with errors"),
    ("KeelHighLatencyP95", 35, "slow requests (a 5 s pool wait, or the 30 s request timeout) complete"),
    ("KeelErrorBudgetFastBurn", 10, "the 10 s and 2 min windows pass 14.4 %"),
    ("KeelErrorBudgetSlowBurn", 10, "the 1 min and 12 min windows pass 6 %"),
    ("KeelWorkerDown", 2, "a failed scrape"),
    ("KeelHealthComponentKO", 10, "the health check times out"),
    ("KeelRedisDown", 10, "the redis check fails"),
    ("KeelDatabasePoolExhausted", 10, "requests queue for a connection"),
    ("KeelHighMemory", 60, "3 000 large values are written and cached"),
    ("KeelBatcherDropping", 5, "the batcher's channel fills"),
    ("KeelWriteBehindDeadLetters", 10, "a poison write is retried six times, then dead-lettered"),
    ("KeelWriteBehindBacklog", 5, "the oldest waiting write passes 2 s"),
    ("KeelLocalLogNearFull", 30, "the local log is filled past 80 %"),
    ("KeelSettingsStale", 25, "a refresh fails (10 s poll), then 10 s unconfirmed"),
];

/// Who raised an alert: a binary (by its instance) or, for job-wide
/// alerts, the job.
type Who = &'static str;
const API: Who = "api";
const WORKER: Who = "worker";
const API_PG: Who = "api-pg";
const ANY: Who = "*";

/// One scenario: a fault in phases, then the recovery.
struct Scenario {
    name: &'static str,
    phases: Vec<Phase>,
    /// Alerts allowed (not required) anywhere in the scenario: the fault's
    /// consequences that are true but not what it proves.
    allow: Vec<(&'static str, Who)>,
}

impl Scenario {
    /// Whether an alert may be active during the scenario.
    fn allows(&self, alert: &str, who: &str) -> bool {
        self.phases
            .iter()
            .flat_map(|p| &p.expect)
            .chain(&self.allow)
            .any(|(a, w)| *a == alert && (*w == ANY || *w == who))
    }
}

impl Scenario {
    /// A scenario of one phase.
    fn single(name: &'static str, fault: &'static str, expect: Vec<(&'static str, Who)>, hold: Duration) -> Self {
        Self { name, phases: vec![Phase { fault, expect, hold }], allow: Vec::new() }
    }

    /// The same, also allowing `allow`.
    fn allowing(mut self, allow: Vec<(&'static str, Who)>) -> Self {
        self.allow = allow;
        self
    }
}

struct Phase {
    fault: &'static str,
    expect: Vec<(&'static str, Who)>,
    /// Observe at least this long (so an alert that must *not* fire had
    /// the time to).
    hold: Duration,
}

/// When one alert of one scenario changed state, from the scenario's
/// first fault.
#[derive(Default, Clone)]
struct Seen {
    pending: Option<Duration>,
    firing: Option<Duration>,
    resolved: Option<Duration>,
}

struct Row {
    scenario: &'static str,
    fault: String,
    alert: String,
    who: String,
    verdict: &'static str,
    seen: Seen,
    recovered_at: Option<Duration>,
}

/// Runs the alert scenarios.
pub fn run(root: &Path) -> Result<()> {
    crate::deploy::ensure_prometheus()?;
    let binaries = crate::cmd::release_binaries(root)?;
    let dir = root.join("target").join("alerts");
    let _ = std::fs::remove_dir_all(dir.join("tsdb"));
    std::fs::create_dir_all(&dir)?;
    let mut lab = Lab::start(root, &dir, &binaries.api, &binaries.worker)?;
    let mut rows = Vec::new();
    let result = lab.scenarios(&mut rows);
    lab.traffic.stop();
    print_table(&rows);
    result?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report(&rows))?)?;
    let failures: Vec<&str> = lab.failures.iter().map(String::as_str).collect();
    if !failures.is_empty() {
        bail!("alerts: {}", failures.join("\n  "));
    }
    eprintln!("xtask: alerts ok (report: {})", dir.join("report.json").display());
    Ok(())
}

struct Lab {
    /// First, so it stops before the servers it talks to (fields drop in
    /// order).
    traffic: Traffic,
    pg: Postgres,
    redis: Redis,
    api: Binary,
    worker: Binary,
    api_pg: Binary,
    prometheus: Prometheus,
    who: BTreeMap<String, Who>,
    /// The workspace, and its rule file as written.
    root: PathBuf,
    rules: String,
    failures: Vec<String>,
}

impl Lab {
    fn start(root: &Path, dir: &Path, api_binary: &Path, worker_binary: &Path) -> Result<Self> {
        let pg = Postgres::start(&dir.join("postgres"))?;
        let redis = Redis::start(&dir.join("redis"))?;
        pg.recreate("alerts")?;
        pg.recreate("alerts_pg")?;
        let config = dir.join("keel.toml");
        std::fs::write(
            &config,
            format!("[settings]\npoll_interval = \"{}s\"\nretry_interval = \"1s\"\n", 300 / SCALE),
        )?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let common = |database: &str, data: &str, id: &str| -> Vec<(&'static str, String)> {
            let _ = std::fs::remove_dir_all(dir.join(data));
            vec![
                ("DATABASE_URL", pg.url(database)),
                ("KEEL_NAMESPACE", format!("alerts-{stamp}")),
                ("KEEL_DATA_DIR", dir.join(data).display().to_string()),
                ("KEEL_CONFIG", config.display().to_string()),
                ("KEEL_INSTANCE_ID", id.to_owned()),
            ]
        };
        let mut cluster = common("alerts", "api-data", "alerts-api");
        cluster.push(("REDIS_URL", redis.url()));
        let log = dir.join("binaries.log");
        let _ = std::fs::remove_file(&log);
        let mut api = Binary::spawn(api_binary, "--listen", &cluster, &log)?;
        cluster.retain(|(k, _)| *k != "KEEL_INSTANCE_ID");
        cluster.push(("KEEL_INSTANCE_ID", "alerts-worker".to_owned()));
        let mut worker = Binary::spawn(worker_binary, "--admin-listen", &cluster, &log)?;
        let mut alone = common("alerts_pg", "api-pg-data", "alerts-api-pg");
        alone.push(("KEEL_LOCAL_LOG_MAX_BYTES", LOCAL_LOG_MAX_BYTES.to_string()));
        alone.push(("KEEL_CACHE_MAX_BYTES", CACHE_MAX_BYTES.to_owned()));
        let mut api_pg = Binary::spawn(api_binary, "--listen", &alone, &log)?;
        for binary in [&mut api, &mut worker, &mut api_pg] {
            binary.wait_ready(Duration::from_secs(60))?;
        }
        let who: BTreeMap<String, Who> =
            [(api.addr.clone(), API), (worker.addr.clone(), WORKER), (api_pg.addr.clone(), API_PG)].into();
        let rules = std::fs::read_to_string(root.join("deploy/prometheus/rules/keel.yml"))?;
        let prometheus = Prometheus::start(&rules, dir, &[&api.addr, &api_pg.addr], &worker.addr)?;
        eprintln!(
            "xtask: alerts: prometheus {} (scale 1/{SCALE}), api {}, worker {}, api-pg {}, postgres :{}, redis :{}",
            prometheus.addr, api.addr, worker.addr, api_pg.addr, pg.port, redis.port
        );
        let traffic = Traffic::start(&api.addr);
        // Every target scraped, and the rules evaluated over some traffic.
        wait_until(Duration::from_secs(60), || prometheus.query_count("up == 1") == Some(3))
            .context("prometheus does not scrape all three binaries")?;
        std::thread::sleep(Duration::from_secs(5));
        let root = root.to_path_buf();
        Ok(Self { pg, redis, api, worker, api_pg, prometheus, traffic, who, root, rules, failures: Vec::new() })
    }
}
