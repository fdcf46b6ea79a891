//! `cargo xtask bench http`: whole requests, Keel beside a bare axum
//! baseline, in the same run.
//!
//! Builds the release `api`, `worker` and `baseline`, starts a private
//! PostgreSQL and Redis (as `chaos` does), Keel in embedded mode and in
//! cluster mode (api + worker), and the baseline on the same Redis. wrk
//! (Debian's package, installed when missing) drives each comparison in
//! alternating rounds; the table gives medians, ratios, p50/p99 latency and
//! RSS, the JSON report goes to `target/bench/http.json`, and the command
//! fails when a ratio is below its target. Timing on a shared machine is
//! noisy, so this is not part of `cargo xtask ci`. The durable write path
//! also charges every process (api, worker, Redis, PostgreSQL, wrk) its CPU
//! time per persisted write. The settings propagation line starts a second
//! cluster api and follows one document from 1,000 Server-Sent Event
//! subscribers while it is written 200 times (`propagation.rs`).
//! `KEEL_BENCH_CONNECTIONS` runs wrk at another
//! concurrency than the 32 connections the targets are set for.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::servers::{Binary, Postgres, Redis};

mod cpu;
mod durable;
mod machine;
mod propagation;
mod wrk;
use durable::*;
use machine::*;
use wrk::*;

/// Seconds per wrk round.
const ROUND_SECONDS: u64 = 3;
/// Rounds per side of a comparison: five short ones, so that the medians
/// leave out two rounds a noisy neighbour slowed.
const ROUNDS: usize = 5;
/// wrk's concurrency: one thread (the other core serves), 32 connections.
const CONNECTIONS: &str = "32";

/// One load shape.
#[derive(Clone)]
struct Load {
    addr: String,
    method: &'static str,
    path: String,
    body: Option<String>,
    /// A key suffix that changes per request (`{n}` in the path).
    numbered: bool,
}

impl Load {
    fn get(addr: &str, path: &str) -> Self {
        Self { addr: addr.to_owned(), method: "GET", path: path.to_owned(), body: None, numbered: false }
    }

    fn send(addr: &str, method: &'static str, path: &str, body: &str, numbered: bool) -> Self {
        Self { addr: addr.to_owned(), method, path: path.to_owned(), body: Some(body.to_owned()), numbered }
    }
}

/// What one wrk round measured.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// One line of the table: Keel's load against its baseline's.
struct Comparison {
    name: &'static str,
    keel: Load,
    baseline: Load,
    baseline_name: &'static str,
    target: f64,
}

/// What a comparison measured.
struct Measured {
    name: &'static str,
    baseline_name: &'static str,
    keel: Vec<Round>,
    baseline: Vec<Round>,
    target: f64,
}

impl Measured {
    fn median(rounds: &[Round], pick: impl Fn(&Round) -> f64) -> f64 {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or_default()
    }

    fn ratio(&self) -> f64 {
        let baseline = Self::median(&self.baseline, |r| r.rps);
        if baseline > 0.0 { Self::median(&self.keel, |r| r.rps) / baseline } else { 0.0 }
    }

    fn errors(&self) -> u64 {
        self.keel.iter().chain(&self.baseline).map(|r| r.errors).sum()
    }

    fn met(&self) -> bool {
        self.ratio() >= self.target && self.errors() == 0
    }

    fn json(&self) -> Value {
        let side = |rounds: &[Round]| {
            json!({
                "rps_median": Self::median(rounds, |r| r.rps),
                "p50_ms_median": Self::median(rounds, |r| r.p50_ms),
                "p99_ms_median": Self::median(rounds, |r| r.p99_ms),
                "rounds": rounds.iter().map(|r| json!({"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors})).collect::<Vec<_>>(),
            })
        };
        json!({
            "name": self.name, "baseline": self.baseline_name, "target": self.target, "ratio": self.ratio(),
            "met": self.met(), "keel": side(&self.keel), "baseline_figures": side(&self.baseline),
        })
    }
}

/// Runs `cargo xtask bench http [FILTER]`: every comparison and the durable
/// write path, or only those whose name contains FILTER (`livez`, `PUT`,
/// `durable`, ...), to look at one with a profiler.
pub fn http(root: &Path, filter: Option<&str>) -> Result<()> {
    let wanted = |name: &str| filter.is_none_or(|f| name.to_lowercase().contains(&f.to_lowercase()));
    ensure_wrk()?;
    // The baseline on its own: built with api and worker, it would change
    // their dependencies' features and rebuild what `ci` already built.
    let binaries = crate::cmd::release_binaries(root)?;
    crate::cmd::cargo(root, &["build", "--release", "-p", "baseline"])?;
    let dir = root.join("target").join("bench");
    let _ = std::fs::remove_dir_all(dir.join("run"));
    std::fs::create_dir_all(dir.join("run"))?;
    let run = dir.join("run");
    let pg = Postgres::start(&run.join("postgres"))?;
    // Configured as deploy/compose runs it (append-only, synced every
    // second); `chaos` uses `always`.
    let redis = Redis::start_with_fsync(&run.join("redis"), "everysec")?;
    pg.recreate("bench")?;
    let baseline_bin = binaries.api.with_file_name("baseline");
    let config = status_config(&run, &pg, &redis)?;
    let token = ("KEEL_ADMIN_TOKEN", "bench-admin-token-0001".to_owned());
    let mut embedded = Binary::spawn(
        &binaries.api,
        "--listen",
        &[("KEEL_DATA_DIR", path_text(&run.join("data"))), token.clone()],
        &run.join("embedded.log"),
    )?;
    // The same embedded api with its entries queue in memory only: the
    // baseline of the local write-ahead log's cost.
    let mut in_memory = Binary::spawn(
        &binaries.api,
        "--listen",
        &[("KEEL_DATA_DIR", path_text(&run.join("data-memory"))), ("KEEL_LOCAL_LOG", "off".to_owned()), token.clone()],
        &run.join("embedded-memory.log"),
    )?;
    let cluster_env = [
        ("DATABASE_URL", pg.url("bench")),
        ("REDIS_URL", redis.url()),
        ("KEEL_CONFIG", path_text(&config)),
        token.clone(),
    ];
    let mut cluster = Binary::spawn(&binaries.api, "--listen", &cluster_env, &run.join("cluster-api.log"))?;
    // A second replica for the settings propagation line only.
    let mut replica = match wanted("settings propagation") {
        true => Some(Binary::spawn(&binaries.api, "--listen", &cluster_env, &run.join("cluster-api-2.log"))?),
        false => None,
    };
    let mut worker = Binary::spawn(&binaries.worker, "--admin-listen", &cluster_env, &run.join("worker.log"))?;
    // With PostgreSQL too: the fair baseline's consumer persists its stream.
    let baseline_env = [("REDIS_URL", redis.url()), ("DATABASE_URL", pg.url("bench"))];
    let mut baseline = Binary::spawn(&baseline_bin, "--listen", &baseline_env, &run.join("baseline.log"))?;
    for process in [&mut embedded, &mut in_memory, &mut cluster, &mut worker].into_iter().chain(replica.as_mut()) {
        process.wait_ready(Duration::from_secs(60))?;
    }
    crate::servers::wait_until(Duration::from_secs(20), || {
        crate::chaos::load::get(&baseline.addr, "/livez").is_ok_and(|(status, _)| status == 200)
    })?;
    // Start-up work (migrations, pools, first checks, a fresh database's
    // own) would land in the first rounds: measure on a quiet machine.
    let settled = wait_until_quiet(Duration::from_secs(30));
    eprintln!("xtask: bench: machine quiet after {:.1} s", settled.as_secs_f64());
    let mut chosen = comparisons(&embedded.addr, &in_memory.addr, &cluster.addr, &baseline.addr);
    chosen.retain(|c| wanted(c.name));
    let measured = compare(&chosen, &run)?;
    let log = local_log_figures(&embedded.addr)?;
    let durable = if wanted("durable write path") {
        let (redis_pids, pg_pids) = (redis.pid(), pg.pids()?);
        let keel = durable::WritePath {
            label: "durable write path",
            addr: &cluster.addr,
            put: "/api/v1/entries/durable-{n}",
            table: "entries",
            counted: vec![
                cpu::Counted { name: "api", pids: vec![cluster.pid()] },
                cpu::Counted { name: "worker", pids: vec![worker.pid()] },
                cpu::Counted { name: "Redis", pids: redis_pids.clone() },
                cpu::Counted { name: "PostgreSQL", pids: pg_pids.clone() },
            ],
        };
        let fair = durable::WritePath {
            label: "fair baseline",
            addr: &baseline.addr,
            put: "/fair/entries/durable-{n}",
            table: "fair_entries",
            counted: vec![
                cpu::Counted { name: "baseline", pids: vec![baseline.pid()] },
                cpu::Counted { name: "Redis", pids: redis_pids },
                cpu::Counted { name: "PostgreSQL", pids: pg_pids },
            ],
        };
        durable_write_path(&keel, &fair, &pg, &run)?
    } else {
        json!(null)
    };
    let propagation = match &replica {
        Some(replica) => propagation::settings_propagation([&cluster.addr, &replica.addr], &token.1)?,
        None => json!(null),
    };
    let rss: Vec<(&str, u64)> =
        [("api (embedded)", &embedded), ("api (cluster)", &cluster), ("worker", &worker), ("baseline", &baseline)]
            .into_iter()
            .map(|(name, process)| (name, rss_kib(process.pid())))
            .collect();
    for process in
        [&mut embedded, &mut in_memory, &mut cluster, &mut worker, &mut baseline].into_iter().chain(replica.as_mut())
    {
        let _ = process.kill();
    }
    print_table(&measured, &durable, &rss);
    if !propagation.is_null() {
        for (label, side) in [
            ("subscribers on the writer's replica", "writer_replica"),
            ("subscribers on the other replica", "other_replica"),
            ("counted from the request sent, not its answer", "from_request"),
        ] {
            let figures = &propagation[side];
            eprintln!(
                "settings propagation, {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                figures["p50_ms"].as_f64().unwrap_or(f64::NAN),
                figures["p99_ms"].as_f64().unwrap_or(f64::NAN),
                figures["max_ms"].as_f64().unwrap_or(f64::NAN),
            );
        }
        eprintln!(
            "\nsettings propagation ({} SSE subscribers on 2 cluster replicas, {} writes on one): p50 {:.2} ms, p99 \
             {:.2} ms (target ≤ {} ms), max {:.2} ms; {} versions missed, {} out of order",
            propagation["subscribers"],
            propagation["writes"],
            propagation["p50_ms"].as_f64().unwrap_or(f64::NAN),
            propagation["p99_ms"].as_f64().unwrap_or(f64::NAN),
            propagation::P99_TARGET_MS,
            propagation["max_ms"].as_f64().unwrap_or(f64::NAN),
            propagation["missed"],
            propagation["out_of_order"],
        );
    }
    eprintln!(
        "local write-ahead log (embedded, fsync): {} appends in {} group commits, {:.1} writes per fdatasync",
        log["appends"],
        log["syncs"],
        log["writes_per_sync"].as_f64().unwrap_or_default()
    );
    let report = json!({
        "machine": machine(),
        "round_seconds": ROUND_SECONDS, "rounds": ROUNDS, "connections": connections(),
        "comparisons": measured.iter().map(Measured::json).collect::<Vec<_>>(),
        "durable": durable,
        "local_log": log,
        "settings_propagation": propagation,
        "rss_kib": rss.iter().map(|(n, kib)| json!({"process": n, "kib": kib})).collect::<Vec<_>>(),
    });
    let path = dir.join("http.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("xtask: bench report written to {}", path.display());
    let mut missed: Vec<&str> = measured.iter().filter(|m| !m.met()).map(|m| m.name).collect();
    if durable["rows_per_second"].as_f64().is_some_and(|r| r < DURABLE_TARGET) {
        missed.push("durable write path");
    }
    if durable["fair_ratio"].as_f64().is_some_and(|r| r < durable::FAIR_TARGET) {
        missed.push("durable write path against the fair baseline");
    }
    if !propagation.is_null() && !propagation::met(&propagation) {
        missed.push("settings propagation");
    }
    if !missed.is_empty() {
        bail!("below target: {}", missed.join(", "));
    }
    Ok(())
}

/// The local log's appends and group commits since the embedded api started.
fn local_log_figures(api: &str) -> Result<Value> {
    let (_, text) = crate::chaos::load::get(api, "/metrics")?;
    let read = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (appends, syncs) = (read("keel_local_log_appends_total"), read("keel_local_log_syncs_total"));
    Ok(json!({"appends": appends, "syncs": syncs, "writes_per_sync": appends / syncs.max(1.0)}))
}

/// The comparisons and their targets (issue 15; the local log's, issue 27).
fn comparisons(embedded: &str, in_memory: &str, cluster: &str, baseline: &str) -> Vec<Comparison> {
    let metadata: Vec<String> = (0..10).map(|i| format!(r#"{{"key":"k{i}","value":"v{i}"}}"#)).collect();
    let metadata = format!(r#"{{"metadata":[{}]}}"#, metadata.join(","));
    let agent = "/api/v1/agents/7f1c1a52-8d0e-4c1b-9d55-3c4c1d0b6a11/metadata";
    vec![
        Comparison {
            name: "GET /livez",
            keel: Load::get(embedded, "/livez"),
            baseline: Load::get(baseline, "/livez"),
            baseline_name: "bare axum",
            target: 0.85,
        },
        Comparison {
            name: "PUT /api/v1/entries/{key} (cluster)",
            keel: Load::send(cluster, "PUT", "/api/v1/entries/bench-{n}", r#"{"n":1}"#, true),
            baseline: Load::send(baseline, "PUT", "/entries/bench-{n}", r#"{"n":1}"#, true),
            baseline_name: "axum + one XADD",
            // Context, not a target: what persistence costs (issue 30).
            target: 0.0,
        },
        Comparison {
            name: "PUT /api/v1/entries/{key} (cluster, fair)",
            keel: Load::send(cluster, "PUT", "/api/v1/entries/fair-{n}", r#"{"n":1}"#, true),
            baseline: Load::send(baseline, "PUT", "/fair/entries/fair-{n}", r#"{"n":1}"#, true),
            baseline_name: "hand-written write-behind",
            target: 0.90,
        },
        Comparison {
            name: "PUT /api/v1/entries/{key} (embedded, local log fsync)",
            keel: Load::send(embedded, "PUT", "/api/v1/entries/bench-{n}", r#"{"n":1}"#, true),
            baseline: Load::send(in_memory, "PUT", "/api/v1/entries/bench-{n}", r#"{"n":1}"#, true),
            baseline_name: "the same, --local-log off",
            target: 0.80,
        },
        Comparison {
            name: "GET /api/v1/settings/monitoring",
            keel: Load::get(cluster, "/api/v1/settings/monitoring"),
            baseline: Load::get(cluster, "/livez"),
            baseline_name: "Keel /livez",
            target: 0.85,
        },
        Comparison {
            name: "GET /status (10 components)",
            keel: Load::get(cluster, "/status"),
            baseline: Load::get(cluster, "/livez"),
            baseline_name: "Keel /livez",
            target: 0.6,
        },
        Comparison {
            name: "POST /api/v1/agents/{id}/metadata (10 keys)",
            keel: Load::send(cluster, "POST", agent, &metadata, false),
            baseline: Load::get(cluster, "/livez"),
            baseline_name: "Keel /livez",
            target: 0.6,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ http://127.0.0.1:1/livez\n  1 threads and 32 connections\n  Latency Distribution\n     50%  250.00us\n     75%  300.00us\n     90%  400.00us\n     99%    1.20ms\n  123456 requests in 5.00s, 12.34MB read\n  Non-2xx or 3xx responses: 7\nRequests/sec:  24691.20\nTransfer/sec:      2.47MB\n";
        let round = parse_wrk(text).unwrap();
        assert!((round.rps - 24691.2).abs() < 1e-6);
        assert!((round.p50_ms - 0.25).abs() < 1e-9 && (round.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(round.errors, 7);
        assert_eq!(latency_ms("2.00s"), Some(2000.0));
    }

    #[test]
    fn numbered_paths_change_per_request() {
        let script = lua(&Load::send("a", "PUT", "/entries/k-{n}", "{}", true));
        assert!(script.contains(r#""/entries/k-" .. counter .. """#), "{script}");
        assert!(script.contains("request = function()"), "{script}");
    }

    #[test]
    fn reads_psql_timing() {
        assert_eq!(timing_seconds("Timing is on.\nCOPY 80616\nTime: 212.500 ms\n"), Some(0.2125));
        assert_eq!(timing_seconds("Time: 1503.000 ms (00:01.503)"), Some(1.503));
        assert_eq!(timing_seconds("COPY 3\n"), None);
    }

    #[test]
    fn static_loads_are_built_once_by_wrk() {
        let script = lua(&Load::get("a", "/livez"));
        assert!(!script.contains("request"), "{script}");
        assert!(script.contains(r#"wrk.path = "/livez""#), "{script}");
        assert!(script.contains(r#"wrk.method = "GET""#) && script.contains("wrk.body = nil"), "{script}");
        assert!(script.contains(r#"["Authorization"] = "Bearer bench-admin-token-0001""#), "{script}");
        let post = lua(&Load::send("a", "POST", "/m", r#"{"k":1}"#, false));
        assert!(post.contains(r#"wrk.body = "{\"k\":1}""#), "{post}");
    }
}
