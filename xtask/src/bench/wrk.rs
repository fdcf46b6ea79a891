//! The HTTP rounds: wrk with a Lua script per load, Keel and baseline
//! alternating, and wrk's report parsed.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::*;

/// Alternates Keel and baseline rounds for each comparison.
pub(super) fn compare(comparisons: &[Comparison], dir: &Path) -> Result<Vec<Measured>> {
    let mut all = Vec::new();
    for c in comparisons {
        // A short warm-up of both sides (connections, caches, JIT-free but
        // allocator and page-cache warm).
        wrk(&c.keel, 1, dir)?;
        wrk(&c.baseline, 1, dir)?;
        let (mut keel, mut baseline) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            keel.push(after_the_backlog(&c.keel, dir)?);
            baseline.push(after_the_backlog(&c.baseline, dir)?);
        }
        let m = Measured { name: c.name, baseline_name: c.baseline_name, keel, baseline, target: c.target };
        eprintln!("xtask: bench: {}: {:.2}× {}", c.name, m.ratio(), c.baseline_name);
        all.push(m);
    }
    Ok(all)
}

/// One round of `load`; a write load first waits (up to 10 s) for the machine
/// to be quiet, so that the worker or consumer persisting the previous
/// round's backlog does not share the cores with this one.
pub(super) fn after_the_backlog(load: &Load, dir: &Path) -> Result<Round> {
    if load.method != "GET" {
        wait_until_quiet(Duration::from_secs(10));
    }
    wrk(load, ROUND_SECONDS, dir)
}

/// wrk's connections: [`CONNECTIONS`], or `KEEL_BENCH_CONNECTIONS` to look
/// at a load at another concurrency (the report records which).
pub(super) fn connections() -> String {
    std::env::var("KEEL_BENCH_CONNECTIONS")
        .ok()
        .filter(|c| c.parse::<u32>().is_ok_and(|n| n > 0))
        .unwrap_or_else(|| CONNECTIONS.to_owned())
}

/// One wrk round of `load` for `seconds`.
pub(super) fn wrk(load: &Load, seconds: u64, dir: &Path) -> Result<Round> {
    let script = dir.join("request.lua");
    std::fs::write(&script, lua(load))?;
    let out = Command::new("wrk")
        .args(["-t1", "-c", &connections(), "-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{}", load.addr))
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output: {text}"))
}

/// The wrk script for `load`: method, path, headers and body.
///
/// A load whose path changes per request needs wrk's per-request Lua
/// `request()` (a string built in Lua for every request). Any other is
/// set once in wrk's `method`/`path`/`headers`/`body` fields, which wrk turns
/// into one request it sends again and again: the load generator then spends
/// what the servers it compares would otherwise be starved of on these two
/// shared cores (wrk's own advice for static requests).
pub(super) fn lua(load: &Load) -> String {
    let body = load.body.as_deref().map_or("nil".to_owned(), |b| format!("{b:?}"));
    let headers = r#"{["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench-admin-token-0001"}"#;
    if !load.numbered {
        return format!(
            "wrk.method = {:?}\nwrk.path = {:?}\nwrk.headers = {headers}\nwrk.body = {body}\n",
            load.method, load.path
        );
    }
    let (head, tail) = load.path.split_once("{n}").unwrap_or((&load.path, ""));
    format!(
        "counter = 0\n\
         local headers = {headers}\n\
         request = function()\n  counter = counter + 1\n  return wrk.format({:?}, {head:?} .. counter .. {tail:?}, headers, {body})\nend\n",
        load.method
    )
}

/// Requests/sec, the 50th and 99th latency percentiles, non-2xx answers
/// and socket errors, from wrk's `--latency` output.
pub(super) fn parse_wrk(text: &str) -> Option<Round> {
    let field = |prefix: &str| {
        text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).and_then(|rest| rest.split_whitespace().next())
    };
    let rps = field("Requests/sec:")?.parse().ok()?;
    let p50_ms = latency_ms(field("50%")?)?;
    let p99_ms = latency_ms(field("99%")?)?;
    let non_2xx: u64 = field("Non-2xx or 3xx responses:").and_then(|n| n.parse().ok()).unwrap_or(0);
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| rest.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Some(Round { rps, p50_ms, p99_ms, errors: non_2xx + socket })
}

/// `250.00us`, `1.20ms`, `2.00s` → milliseconds.
pub(super) fn latency_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}
