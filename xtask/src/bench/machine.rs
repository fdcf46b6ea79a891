//! The machine and its processes: a quiet start, resident memory, the
//! configuration for `/status`, the printed table, wrk installed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::cmd::on_path;
use crate::servers::{Postgres, Redis};

use super::*;

/// A config for the cluster api with five more tcp checks (on the private
/// PostgreSQL and Redis ports), so `/status` has 10 components.
pub(super) fn status_config(dir: &Path, pg: &Postgres, redis: &Redis) -> Result<PathBuf> {
    let redis_port = redis.url().rsplit(':').next().unwrap_or_default().to_owned();
    let mut text = String::new();
    for i in 0..5 {
        let port = if i % 2 == 0 { pg.port.to_string() } else { redis_port.clone() };
        text.push_str(&format!(
            "[[health.checks]]\nname = \"tcp-{i}\"\nkind = \"tcp\"\ntarget = \"127.0.0.1:{port}\"\ninterval = \"5s\"\n\n"
        ));
    }
    let path = dir.join("keel.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Waits until the CPUs were at least 90 % idle over a second, or `limit`
/// passed; returns how long that took.
pub(super) fn wait_until_quiet(limit: Duration) -> Duration {
    /// Idle and total jiffies of all CPUs, from `/proc/stat`.
    pub(super) fn jiffies() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // idle + iowait count as idle.
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some((idle, fields.iter().sum()))
    }
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let Some((idle_before, total_before)) = jiffies() else { break };
        std::thread::sleep(Duration::from_secs(1));
        let Some((idle_after, total_after)) = jiffies() else { break };
        let total = total_after.saturating_sub(total_before).max(1);
        if idle_after.saturating_sub(idle_before) * 10 >= total * 9 {
            break;
        }
    }
    started.elapsed()
}

pub(super) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_owned()))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub(super) fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu": model})
}

pub(super) fn print_table(measured: &[Measured], durable: &Value, rss: &[(&str, u64)]) {
    eprintln!("\n| request | Keel req/s | p50 / p99 ms | baseline | baseline req/s | ratio | target | |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    for m in measured {
        let (k, b) = (&m.keel, &m.baseline);
        eprintln!(
            "| {} | {:.0} | {:.2} / {:.2} | {} | {:.0} | {:.2}× | {} | {} |",
            m.name,
            Measured::median(k, |r| r.rps),
            Measured::median(k, |r| r.p50_ms),
            Measured::median(k, |r| r.p99_ms),
            m.baseline_name,
            Measured::median(b, |r| r.rps),
            m.ratio(),
            if m.target > 0.0 { format!("≥ {:.2}×", m.target) } else { "context".to_owned() },
            if m.errors() == 0 && m.target == 0.0 {
                "—"
            } else if m.met() {
                "met"
            } else if m.errors() > 0 {
                "ERRORS"
            } else {
                "BELOW"
            },
        );
    }
    if !durable.is_null() {
        let persisted = durable["rows_per_second"].as_f64().unwrap_or_default();
        let copied = durable["copy_rows_per_second"].as_f64().unwrap_or_default();
        eprintln!(
            "\ndurable write path (cluster api + worker): {} rows persisted at {persisted:.0} rows/s (target \
             {DURABLE_TARGET:.0}); binary COPY of the same rows {copied:.0} rows/s ({:.2}×)",
            durable["rows"],
            persisted / copied.max(1.0),
        );
        eprintln!("CPU µs per persisted write: {}", super::cpu::describe(&durable["cpu"]));
        let fair = &durable["fair"];
        eprintln!(
            "fair baseline (hand-written write-behind, same Redis and PostgreSQL): {} rows persisted at {:.0} rows/s; \
             Keel {:.2}× of it (target {:.2}×)",
            fair["rows"],
            fair["rows_per_second"].as_f64().unwrap_or_default(),
            durable["fair_ratio"].as_f64().unwrap_or_default(),
            durable["fair_target"].as_f64().unwrap_or_default(),
        );
        eprintln!("fair baseline CPU µs per persisted write: {}", super::cpu::describe(&fair["cpu"]));
    }
    for (name, kib) in rss {
        eprintln!("RSS {name}: {:.1} MiB", *kib as f64 / 1024.0);
    }
}

pub(super) fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// wrk from Debian's packages when it is missing (as root).
pub(super) fn ensure_wrk() -> Result<()> {
    if on_path("wrk") {
        return Ok(());
    }
    if crate::services::install("wrk")? && on_path("wrk") {
        return Ok(());
    }
    bail!("wrk is not installed: apt-get install wrk")
}
