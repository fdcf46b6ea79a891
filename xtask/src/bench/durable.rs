//! The durable write path: sustained PUTs to the cluster api until every
//! acknowledged one is a row, against binary COPY of the same rows and
//! against the fair baseline's hand-written write-behind.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::servers::Postgres;

use super::cpu::{Counted, children_of_self, describe, per_write, snapshot};
use super::*;

/// A write path measured end to end: where the PUTs go, the table their rows
/// land in, and the processes charged for them.
pub(super) struct WritePath<'a> {
    /// Its name in the output.
    pub label: &'static str,
    /// The server's address.
    pub addr: &'a str,
    /// The PUT path, `{n}` replaced by a number per request.
    pub put: &'static str,
    /// The table its rows land in (`key` is the primary key).
    pub table: &'static str,
    /// The processes charged for its writes.
    pub counted: Vec<Counted>,
}

/// Sustained PUTs of distinct keys to `path`, then the time until every
/// acknowledged one is a row: rows persisted per second, from the first 202
/// to the last row. Every process of `counted` (and wrk) is charged the CPU
/// it used meanwhile, divided by the rows: CPU microseconds per persisted
/// write, process by process.
fn persisted(path: &WritePath<'_>, pg: &Postgres, dir: &Path) -> Result<Value> {
    let load = Load::send(path.addr, "PUT", path.put, r#"{"n":1}"#, true);
    let cpu_before = snapshot(&path.counted);
    // The rounds before left backlogs to persist: start on a quiet machine,
    // so their CPU is not charged to these rows.
    wait_until_quiet(Duration::from_secs(30));
    let wrk_before = children_of_self();
    let started = Instant::now();
    let round = wrk(&load, ROUND_SECONDS, dir)?;
    let wrk_micros = children_of_self().saturating_sub(wrk_before);
    let sent = (round.rps * ROUND_SECONDS as f64).round() as i64 - round.errors as i64;
    let count = || -> Result<i64> {
        let text = pg.psql("bench", &format!("SELECT count(*) FROM {} WHERE key LIKE 'durable-%'", path.table))?;
        text.trim().parse().with_context(|| format!("count: {text}"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rows = count()?;
    // wrk's rate times its duration is an estimate of the requests sent:
    // wait until the table stops growing at (or above) it.
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = count()?;
        if (now >= sent * 99 / 100 && now == rows) || Instant::now() > deadline {
            rows = now;
            break;
        }
        rows = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = per_write(&path.counted, &cpu_before, &snapshot(&path.counted), &[("wrk", wrk_micros)], rows);
    let per_second = rows as f64 / elapsed;
    eprintln!("xtask: bench: {}: {rows} rows in {elapsed:.1}s = {per_second:.0}/s", path.label);
    eprintln!("xtask: bench: {}: CPU µs per persisted write: {}", path.label, describe(&cpu));
    Ok(json!({"acknowledged_estimate": sent, "rows": rows, "seconds": elapsed, "rows_per_second": per_second,
              "put_rps": round.rps, "cpu": cpu}))
}

/// Keel's durable write path (cluster api + worker), then binary `COPY` of
/// the same rows, then the fair baseline's (one script per PUT, one consumer
/// with an `UNNEST` upsert) the same way.
pub(super) fn durable_write_path(
    keel: &WritePath<'_>,
    fair: &WritePath<'_>,
    pg: &Postgres,
    dir: &Path,
) -> Result<Value> {
    let mut measured = persisted(keel, pg, dir)?;
    let rows = measured["rows"].as_i64().unwrap_or_default();
    let copy_seconds = copy_baseline(pg)?;
    let copy_per_second = rows as f64 / copy_seconds.max(1e-6);
    eprintln!("xtask: bench: binary COPY of the same rows: {copy_seconds:.3}s = {copy_per_second:.0}/s");
    let fair = persisted(fair, pg, dir)?;
    let ratio = measured["rows_per_second"].as_f64().unwrap_or_default()
        / fair["rows_per_second"].as_f64().unwrap_or_default().max(1.0);
    measured["target_rows_per_second"] = json!(DURABLE_TARGET);
    measured["copy_seconds"] = json!(copy_seconds);
    measured["copy_rows_per_second"] = json!(copy_per_second);
    measured["fair"] = fair;
    measured["fair_ratio"] = json!(ratio);
    measured["fair_target"] = json!(FAIR_TARGET);
    Ok(measured)
}

/// Keel's persisted rows per second against the fair baseline's (issue 30).
pub(super) const FAIR_TARGET: f64 = 0.90;

/// Rows per second the durable write path must persist (issue 15).
pub(super) const DURABLE_TARGET: f64 = 20_000.0;

/// Seconds PostgreSQL alone takes for the rows the durable round persisted:
/// a binary `COPY` of them (written out by the server first) into an empty
/// table shaped like `entries`, its indexes included, as `psql`'s `\timing`
/// reads it (the statement's round trip, no process start).
pub(super) fn copy_baseline(pg: &Postgres) -> Result<f64> {
    let file = pg.data.join("bench-durable.copy");
    let file = path_text(&file).replace('\'', "''");
    pg.psql(
        "bench",
        &format!(
            "DROP TABLE IF EXISTS copy_baseline; CREATE TABLE copy_baseline (LIKE entries INCLUDING ALL); \
             COPY (SELECT * FROM entries WHERE key LIKE 'durable-%') TO '{file}' (FORMAT binary)"
        ),
    )?;
    let copy = format!("COPY copy_baseline FROM '{file}' (FORMAT binary)");
    let text = pg.psql_commands("bench", &["\\timing on", &copy])?;
    timing_seconds(&text).with_context(|| format!("no timing in psql's output: {text}"))
}

/// The last `Time: 12.345 ms` line of `psql`'s `\timing`, in seconds.
pub(super) fn timing_seconds(text: &str) -> Option<f64> {
    let line = text.lines().rev().find_map(|l| l.trim().strip_prefix("Time: "))?;
    let millis: f64 = line.split_whitespace().next()?.parse().ok()?;
    Some(millis / 1000.0)
}
