//! The Kubernetes manifests: each Deployment's probes and its termination
//! grace against the shutdown budget.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use yaml_rust2::{Yaml, YamlLoader};

use super::*;

/// A probe of a Deployment's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `api` or `worker`: the binary the container runs.
    pub binary: String,
    /// The HTTP path.
    pub path: String,
    /// The port, by name.
    pub port: String,
}

/// The documents of one manifest file and the probes in them.
#[derive(Debug)]
pub struct Manifest {
    /// The file.
    pub file: PathBuf,
    /// Every document.
    pub docs: Vec<Yaml>,
    /// Every probe of every container of every Deployment.
    pub probes: Vec<Probe>,
    /// Every declared container port name, per binary.
    pub ports: Vec<(String, String)>,
}

impl Manifest {
    /// Parses every `.yaml` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<Vec<Manifest>> {
        files(dir, "yaml")?.into_iter().map(|file| Manifest::load(&file)).collect()
    }

    /// Parses one file.
    pub fn load(file: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let docs = YamlLoader::load_from_str(&text).with_context(|| format!("{}: invalid YAML", file.display()))?;
        let (mut probes, mut ports) = (Vec::new(), Vec::new());
        for doc in docs.iter().filter(|d| d["kind"].as_str() == Some("Deployment")) {
            for container in doc["spec"]["template"]["spec"]["containers"].as_vec().cloned().unwrap_or_default() {
                let command = container["command"].as_vec().and_then(|c| c.first()?.as_str().map(str::to_owned));
                let binary = command.as_deref().and_then(|c| c.rsplit('/').next()).unwrap_or("").to_owned();
                for port in container["ports"].as_vec().cloned().unwrap_or_default() {
                    if let Some(name) = port["name"].as_str() {
                        ports.push((binary.clone(), name.to_owned()));
                    }
                }
                for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let get = &container[kind]["httpGet"];
                    if let Some(path) = get["path"].as_str() {
                        let port = get["port"].as_str().map(str::to_owned).unwrap_or_default();
                        probes.push(Probe { binary: binary.clone(), path: path.to_owned(), port });
                    }
                }
            }
        }
        Ok(Manifest { file: file.to_owned(), docs, probes, ports })
    }

    /// Every document has `apiVersion`, `kind` and `metadata.name`; every
    /// Deployment container runs `api` or `worker` and has the three probes,
    /// each on a declared port.
    pub fn check_static(&self) -> Result<()> {
        let place = self.file.display();
        for doc in &self.docs {
            for key in ["apiVersion", "kind"] {
                if doc[key].as_str().is_none() {
                    bail!("{place}: a document without {key}");
                }
            }
            if doc["metadata"]["name"].as_str().is_none() {
                bail!("{place}: a {} without metadata.name", doc["kind"].as_str().unwrap_or("?"));
            }
        }
        for probe in &self.probes {
            if !matches!(probe.binary.as_str(), "api" | "worker") {
                bail!("{place}: probe {} on a container that runs neither api nor worker", probe.path);
            }
            if !self.ports.contains(&(probe.binary.clone(), probe.port.clone())) {
                bail!(
                    "{place}: probe {} names port {:?}, which the container does not declare",
                    probe.path,
                    probe.port
                );
            }
        }
        let deployments = self.docs.iter().filter(|d| d["kind"].as_str() == Some("Deployment")).count();
        if self.probes.len() < deployments * 3 {
            bail!("{place}: every Deployment needs startup, liveness and readiness probes");
        }
        Ok(())
    }
}

/// Every Deployment's `terminationGracePeriodSeconds` covers the one
/// shutdown budget (`[http] shutdown_grace` of the ConfigMap's `keel.toml`),
/// so Kubernetes never kills a process still draining or flushing.
pub fn check_termination_grace(manifests: &[Manifest]) -> Result<()> {
    let docs = || manifests.iter().flat_map(|m| m.docs.iter().map(move |d| (m, d)));
    let config = docs()
        .find_map(|(_, d)| d["data"]["keel.toml"].as_str().map(str::to_owned))
        .context("no ConfigMap with a keel.toml")?;
    let grace = config
        .lines()
        .filter_map(|l| l.split('#').next()?.split_once('='))
        .find(|(k, _)| k.trim() == "shutdown_grace")
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .context("keel.toml in the ConfigMap sets no [http] shutdown_grace")?;
    let seconds = grace
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .with_context(|| format!("shutdown_grace {grace:?}: write whole seconds, e.g. \"25s\""))?;
    for (manifest, doc) in docs().filter(|(_, d)| d["kind"].as_str() == Some("Deployment")) {
        let period = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        if u64::try_from(period).unwrap_or(0) <= seconds {
            bail!(
                "{}: terminationGracePeriodSeconds {period} does not cover shutdown_grace {grace} (drain, requests and flushes)",
                manifest.file.display()
            );
        }
    }
    Ok(())
}
