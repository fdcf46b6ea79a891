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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::chaos::load::request;
use crate::servers::{Binary, Postgres, Redis, signal, wait_until};
use prometheus::Prometheus;
use rules::budget;
use traffic::{Traffic, fill_local_log, fill_memory, flood_metadata};

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

    fn scenarios(&mut self, rows: &mut Vec<Row>) -> Result<()> {
        // The error-ratio alerts and latency are the api job's (no instance).
        let errors =
            |who| vec![("KeelHighErrorRatio", who), ("KeelErrorBudgetFastBurn", who), ("KeelErrorBudgetSlowBurn", who)];

        // 1. Healthy: nothing at all.
        let healthy = Scenario::single("healthy", "none (light traffic)", vec![], Duration::from_secs(60));
        rows.extend(self.scenario(&healthy, |_, _| Ok(()), |_| Ok(()))?);
        self.check_dashboards()?;

        // 2. PostgreSQL frozen (SIGSTOP), Redis healthy: waiters, slow reads,
        // a full batcher; no settings staleness on the cluster binaries.
        let mut allow = errors("keel-api");
        allow.extend([
            ("KeelWriteBehindBacklog", ANY),
            ("KeelDatabasePoolExhausted", ANY),
            ("KeelHealthComponentKO", ANY),
            // The PostgreSQL-only api has no shared cache: with its
            // database frozen it cannot confirm its settings.
            ("KeelSettingsStale", API_PG),
        ]);
        let freeze = Scenario::single(
            "pg-freeze",
            "PostgreSQL SIGSTOP; uncached reads; metadata flood",
            vec![
                ("KeelDatabasePoolExhausted", API),
                ("KeelHighLatencyP95", "keel-api"),
                ("KeelHealthComponentKO", API),
                ("KeelBatcherDropping", API),
            ],
            // Long enough for a settings refresh to fail and staleness to
            // pass its threshold, had a frozen database alone made the
            // cluster binaries stale.
            Duration::from_secs(40),
        )
        .allowing(allow);
        rows.extend(self.scenario(
            &freeze,
            |lab, _| {
                signal(&lab.pg.pids()?, "STOP")?;
                lab.traffic.uncached.store(true, Ordering::Relaxed);
                flood_metadata(&lab.api.addr)
            },
            |lab| {
                lab.traffic.uncached.store(false, Ordering::Relaxed);
                signal(&lab.pg.pids()?, "CONT")
            },
        )?);

        // 3. PostgreSQL stopped: first with only writes and cached reads
        // (the health endpoints' 503s must not count as errors), then with
        // reads the database must answer.
        let stop = Scenario {
            name: "pg-stop",
            phases: vec![
                Phase {
                    fault: "PostgreSQL stopped; writes, cached reads, /status polled; 10 MB to the PG-only api",
                    expect: vec![
                        ("KeelHealthComponentKO", API),
                        ("KeelHealthComponentKO", WORKER),
                        ("KeelWriteBehindBacklog", API),
                        ("KeelWriteBehindBacklog", API_PG),
                        ("KeelLocalLogNearFull", API_PG),
                    ],
                    hold: Duration::from_secs(25),
                },
                Phase {
                    fault: "PostgreSQL stopped; uncached reads answered 503",
                    expect: errors("keel-api"),
                    hold: Duration::ZERO,
                },
            ],
            allow: vec![
                ("KeelWriteBehindBacklog", WORKER),
                ("KeelHealthComponentKO", API_PG),
                ("KeelSettingsStale", API_PG),
            ],
        };
        rows.extend(self.scenario(
            &stop,
            |lab, phase| {
                if phase == 0 {
                    lab.pg.stop_fast()?;
                    fill_local_log(&lab.api_pg.addr)
                } else {
                    // What the first phase proved: health endpoints answered
                    // 503 throughout and no error alert went off.
                    let query = "sum(increase(http_server_request_duration_seconds_count\
                                 {job=\"keel-api\",http_route=~\"/status.*|/readyz\",http_response_status_code=\"503\"}[20s]))";
                    let answered = lab.prometheus.query_value(query).unwrap_or(0.0);
                    eprintln!("xtask: alerts: pg-stop: health endpoints answered {answered:.0} 503s in the last 20 s; no error alert");
                    if answered < 10.0 {
                        bail!("the health endpoints answered only {answered:.0} 503s: the phase proved nothing");
                    }
                    lab.traffic.uncached.store(true, Ordering::Relaxed);
                    Ok(())
                }
            },
            |lab| {
                lab.traffic.uncached.store(false, Ordering::Relaxed);
                lab.pg.up()
            },
        )?);

        // 4. An outsized workload: the PostgreSQL-only api's in-process
        // cache (256 MiB here) filled with large values.
        let memory = Scenario::single(
            "memory",
            "3 000 writes of 60 KB to the PG-only api (cache 256 MiB)",
            vec![("KeelHighMemory", API_PG)],
            Duration::ZERO,
        )
        // Some 9 MB/s of writes against a 12 MiB log: between two
        // checkpoints the log is near its bound, truly.
        .allowing(vec![("KeelLocalLogNearFull", API_PG)]);
        rows.extend(self.scenario(
            &memory,
            |lab, _| fill_memory(&lab.api_pg.addr),
            // The runbook's step: out of rotation, restarted.
            |lab| {
                lab.api_pg.kill()?;
                lab.api_pg.restart()?;
                lab.api_pg.wait_ready(Duration::from_secs(60))
            },
        )?);

        // 5. The worker killed while writes continue.
        let worker = Scenario::single(
            "worker-kill",
            "worker SIGKILL; writes continue",
            vec![("KeelWorkerDown", WORKER), ("KeelWriteBehindBacklog", API)],
            Duration::ZERO,
        );
        rows.extend(self.scenario(
            &worker,
            |lab, _| lab.worker.kill(),
            |lab| {
                lab.worker.restart()?;
                lab.worker.wait_ready(Duration::from_secs(60))
            },
        )?);

        // 6. Redis killed, then PostgreSQL too: settings can no longer be
        // confirmed anywhere.
        let mut allow = errors("keel-api");
        allow.extend([
            // Writes wait the 2 s enqueue timeout before their 503.
            ("KeelHighLatencyP95", "keel-api"),
            ("KeelHealthComponentKO", ANY),
            ("KeelWriteBehindBacklog", ANY),
            ("KeelDatabasePoolExhausted", ANY),
            ("KeelSettingsStale", API_PG),
        ]);
        let redis = Scenario {
            name: "redis-kill",
            phases: vec![
                Phase {
                    fault: "Redis SIGKILL",
                    expect: vec![("KeelRedisDown", API), ("KeelRedisDown", WORKER)],
                    hold: Duration::ZERO,
                },
                Phase {
                    fault: "Redis and PostgreSQL down",
                    expect: vec![("KeelSettingsStale", API), ("KeelSettingsStale", WORKER)],
                    hold: Duration::ZERO,
                },
            ],
            allow,
        };
        rows.extend(self.scenario(
            &redis,
            |lab, phase| if phase == 0 { lab.redis.kill() } else { lab.pg.stop_fast() },
            |lab| {
                lab.pg.up()?;
                lab.redis.up()
            },
        )?);

        // 7. The database refuses some values for good.
        let poison = Scenario::single(
            "dead-letters",
            "a CHECK constraint refuses 5 written values",
            vec![("KeelWriteBehindDeadLetters", WORKER)],
            Duration::ZERO,
        );
        rows.extend(self.scenario(
            &poison,
            |lab, _| {
                lab.pg.psql(
                    "alerts",
                    "ALTER TABLE entries ADD CONSTRAINT alerts_poison CHECK (value::text NOT LIKE '%poison%') NOT VALID",
                )?;
                for i in 0..5 {
                    let (status, body) =
                        request(&lab.api.addr, "PUT", &format!("/api/v1/entries/poison-{i}"), "{\"poison\":true}")?;
                    if status != 202 {
                        bail!("PUT poison-{i} answered {status}: {body}");
                    }
                }
                Ok(())
            },
            |lab| lab.pg.psql("alerts", "ALTER TABLE entries DROP CONSTRAINT alerts_poison").map(drop),
        )?);
        Ok(())
    }

    /// Runs `scenario`: `inject(lab, phase)` starts each phase, `recover`
    /// ends the fault.
    fn scenario(
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
    fn observe(
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

    /// Every dashboard query returns a series for each job on a healthy
    /// deployment, unless its panel's description says why not.
    fn check_dashboards(&mut self) -> Result<()> {
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

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".to_owned(), |d| format!("{:.0}s", d.as_secs_f64()))
}

fn print_table(rows: &[Row]) {
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

fn report(rows: &[Row]) -> serde_json::Value {
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
