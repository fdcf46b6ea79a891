//! `cargo xtask deploy-check`: the files under `deploy/` are valid and only
//! name what Keel really serves.
//!
//! - `promtool check config`, `check rules` and `test rules` (Debian's
//!   `prometheus` package is installed when promtool is missing and this is a
//!   CI run as root);
//! - every Grafana dashboard is valid JSON;
//! - every metric named by an alert or recording rule or a dashboard query is
//!   exported by a running `api` or `worker` (both are started and scraped);
//! - every Kubernetes manifest parses, and each probe names a declared port
//!   and a path that the running binary answers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{on_path, run};

mod manifests;
mod queries;
mod running;
pub use manifests::*;
pub use queries::*;
pub(crate) use running::*;

/// Runs every check against the tree at `root`.
pub fn check(root: &Path) -> Result<()> {
    let deploy = root.join("deploy");
    let prometheus = deploy.join("prometheus");
    ensure_prometheus()?;
    run(Command::new("promtool").arg("check").arg("config").arg(prometheus.join("prometheus.yml")))?;
    let rules = files(&prometheus.join("rules"), "yml")?;
    run(Command::new("promtool").args(["check", "rules"]).args(&rules))?;
    let tests = files(&prometheus.join("tests"), "yml")?;
    run(Command::new("promtool").args(["test", "rules"]).args(&tests))?;
    untested_alerts(&rules, &tests)?;

    let queries = Queries::load(&rules, &files(&deploy.join("grafana/dashboards"), "json")?)?;
    let manifests = Manifest::load_dir(&deploy.join("k8s"))?;
    for manifest in &manifests {
        manifest.check_static()?;
    }
    check_termination_grace(&manifests)?;

    let binaries = crate::cmd::release_binaries(root)?;
    let api = Running::start(&binaries.api, "--listen", "api listening on", true)?;
    let worker = Running::start(&binaries.worker, "--admin-listen", "worker admin endpoints on", true)?;
    // The in-process queue's local log exists only on an api without Redis.
    let embedded = Running::start(&binaries.api, "--listen", "api listening on", false)?;
    let mut exported = BTreeSet::new();
    for running in [&api, &worker, &embedded] {
        // One request first, so the request histograms have a series.
        http_get(&running.addr, "/livez")?;
        let (status, body) = http_get(&running.addr, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics on {} answered {status}", running.addr);
        }
        exported.extend(exported_names(&body));
    }
    let unknown = queries.unknown(&exported);
    if !unknown.is_empty() {
        bail!("deploy files name metrics that neither api nor worker exports:\n  {}", unknown.join("\n  "));
    }
    for manifest in &manifests {
        for probe in &manifest.probes {
            let running = if probe.binary == "worker" { &worker } else { &api };
            let (status, _) = http_get(&running.addr, &probe.path)?;
            if status != 200 {
                bail!(
                    "{}: probe {} answered {status} on a running {}",
                    manifest.file.display(),
                    probe.path,
                    probe.binary
                );
            }
        }
    }
    crate::docs::check(root)?;
    eprintln!(
        "deploy-check: ok ({} rule and dashboard queries, {} metrics exported, {} probes)",
        queries.exprs.len(),
        exported.len(),
        manifests.iter().map(|m| m.probes.len()).sum::<usize>()
    );
    Ok(())
}

/// Fails unless every alert of `rules` is named by an `alertname:` of
/// `tests`.
fn untested_alerts(rules: &[PathBuf], tests: &[PathBuf]) -> Result<()> {
    let read = |files: &[PathBuf]| -> Result<String> {
        files.iter().map(|f| std::fs::read_to_string(f).with_context(|| f.display().to_string())).collect()
    };
    let (rules, tests) = (read(rules)?, read(tests)?);
    let tested: BTreeSet<&str> = tests.lines().filter_map(|l| l.trim().strip_prefix("alertname: ")).collect();
    let untested: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .filter(|alert| !tested.contains(alert))
        .collect();
    if !untested.is_empty() {
        bail!("alerts without a promtool test in deploy/prometheus/tests: {}", untested.join(", "));
    }
    Ok(())
}

/// Makes sure `promtool` and `prometheus` are installed: on a CI machine
/// (`CI` set, as root) Debian's `prometheus` package is installed when they
/// are missing.
pub fn ensure_prometheus() -> Result<()> {
    if on_path("promtool") && on_path("prometheus") {
        return Ok(());
    }
    let ci_as_root = std::env::var_os("CI").is_some() && std::env::var("USER").map_or(true, |u| u == "root");
    if ci_as_root && on_path("apt-get") {
        eprintln!("xtask: promtool/prometheus missing; installing Debian's prometheus package");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        // The package starts a server we do not want running.
        let _ = Command::new("pkill").args(["-x", "prometheus"]).status();
        return Ok(());
    }
    bail!("promtool and prometheus are not installed: `apt-get install prometheus` (Debian) or put them on PATH")
}

/// The files in `dir` ending with `.ext`, sorted.
pub fn files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    Ok(found)
}
