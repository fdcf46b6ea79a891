//! CPU time per process from `/proc/PID/stat`: what each process of the
//! durable write path spent per persisted write.

use serde_json::{Value, json};

/// One process (or group of processes, summed) whose CPU time is counted.
pub(super) struct Counted {
    /// The name in the table.
    pub name: &'static str,
    /// Its processes; the first one's reaped children are counted too (a
    /// PostgreSQL backend that ends is accounted to the postmaster).
    pub pids: Vec<u32>,
}

/// Microseconds of user + system CPU `pid` has used, with its reaped
/// children's when `children`.
fn cpu_micros(pid: u32, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may hold spaces, so count after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14–17 of the line, 11–14 here.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let mut total = ticks(11)? + ticks(12)?;
    if children {
        total += ticks(13)? + ticks(14)?;
    }
    Some(total * 1_000_000 / clock_ticks())
}

/// `sysconf(_SC_CLK_TCK)`, as `getconf` reads it (100 on Linux).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The CPU microseconds each of `counted` has used so far.
pub(super) fn snapshot(counted: &[Counted]) -> Vec<u64> {
    counted.iter().map(|c| c.pids.iter().enumerate().filter_map(|(i, &pid)| cpu_micros(pid, i == 0)).sum()).collect()
}

/// This process's reaped children's CPU microseconds (a load generator run
/// with `Command::output` is counted here once it has ended).
pub(super) fn children_of_self() -> u64 {
    let own = cpu_micros(std::process::id(), true).unwrap_or(0);
    own.saturating_sub(cpu_micros(std::process::id(), false).unwrap_or(0))
}

/// Per process: CPU microseconds per write between `before` and `after`,
/// then the sum, as JSON (`[{"process", "us_per_write"}…]`).
pub(super) fn per_write(
    counted: &[Counted],
    before: &[u64],
    after: &[u64],
    extra: &[(&str, u64)],
    writes: i64,
) -> Value {
    let writes = writes.max(1) as f64;
    let mut rows: Vec<(String, f64)> = counted
        .iter()
        .zip(before.iter().zip(after))
        .map(|(c, (b, a))| (c.name.to_owned(), a.saturating_sub(*b) as f64 / writes))
        .collect();
    rows.extend(extra.iter().map(|(name, micros)| ((*name).to_owned(), *micros as f64 / writes)));
    let all: f64 = rows.iter().map(|(_, us)| us).sum();
    json!({
        "processes": rows.iter().map(|(name, us)| json!({"process": name, "us_per_write": us})).collect::<Vec<_>>(),
        "all_us_per_write": all,
    })
}

/// The table's line for `cpu` (from [`per_write`]).
pub(super) fn describe(cpu: &Value) -> String {
    let parts: Vec<String> = cpu["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{} {:.1}", p["process"].as_str().unwrap_or("?"), p["us_per_write"].as_f64().unwrap_or(0.0)))
        .collect();
    format!("{} — all {:.1}", parts.join(", "), cpu["all_us_per_write"].as_f64().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_the_split_sums() {
        let spin = (0..5_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        let mine = cpu_micros(std::process::id(), false).unwrap();
        assert!(mine > 0, "a process that just computed used some CPU");
        let counted = [Counted { name: "self", pids: vec![std::process::id()] }];
        let cpu = per_write(&counted, &[0], &[2_000], &[("load", 1_000)], 100);
        assert_eq!(cpu["processes"][0]["us_per_write"], 20.0);
        assert_eq!(cpu["processes"][1]["us_per_write"], 10.0);
        assert_eq!(cpu["all_us_per_write"], 30.0);
        assert_eq!(describe(&cpu), "self 20.0, load 10.0 — all 30.0");
    }
}
