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
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use yaml_rust2::{Yaml, YamlLoader};

use crate::cmd::{on_path, run};

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

/// Every PromQL expression of the rules and dashboards, and the names that
/// recording rules define.
#[derive(Debug, Default)]
pub struct Queries {
    /// `(where, expression)`.
    pub exprs: Vec<(String, String)>,
    /// Names defined by `record:` rules.
    pub recorded: BTreeSet<String>,
}

impl Queries {
    /// Reads Prometheus rule files and Grafana dashboards.
    pub fn load(rules: &[PathBuf], dashboards: &[PathBuf]) -> Result<Self> {
        let mut queries = Queries::default();
        for file in rules {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let docs = YamlLoader::load_from_str(&text).with_context(|| format!("{}: invalid YAML", file.display()))?;
            for group in docs.iter().flat_map(|d| d["groups"].as_vec().cloned().unwrap_or_default()) {
                for rule in group["rules"].as_vec().cloned().unwrap_or_default() {
                    let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?").to_owned();
                    if let Some(record) = rule["record"].as_str() {
                        queries.recorded.insert(record.to_owned());
                    }
                    let expr = rule["expr"]
                        .as_str()
                        .with_context(|| format!("{}: rule {name} has no expr", file.display()))?;
                    queries.exprs.push((format!("{} {name}", file.display()), expr.to_owned()));
                }
            }
        }
        for file in dashboards {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let dashboard: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", file.display()))?;
            let mut exprs = Vec::new();
            collect_exprs(&dashboard, &mut exprs);
            if exprs.is_empty() {
                bail!("{}: a dashboard with no queries", file.display());
            }
            queries.exprs.extend(exprs.into_iter().map(|e| (file.display().to_string(), e)));
        }
        Ok(queries)
    }

    /// `where: name` for every metric name used but neither in `exported`,
    /// recorded, nor one Prometheus writes itself for each target (`up`).
    pub fn unknown(&self, exported: &BTreeSet<String>) -> Vec<String> {
        let mut unknown = Vec::new();
        for (place, expr) in &self.exprs {
            for name in metric_names(expr) {
                if !exported.contains(&name) && !self.recorded.contains(&name) && !PER_TARGET.contains(&name.as_str()) {
                    unknown.push(format!("{place}: {name}"));
                }
            }
        }
        unknown
    }
}

/// The series Prometheus writes for every scrape target.
pub const PER_TARGET: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

/// Every `"expr"` in a dashboard (panels, rows, templating queries aside).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// Words that are never metric names: binary operators, modifiers, and the
/// aggregation operators (which may be followed by `by (…)` rather than `(`).
const KEYWORDS: [&str; 23] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in `{…}` or `by (…)`), strings, or
/// Grafana variables (`$job`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Depth of `{…}` and of the parentheses after a label-list keyword.
    let (mut braces, mut label_parens) = (0usize, Vec::<usize>::new());
    let mut parens = 0usize;
    let mut expect_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => {
                // Range or subquery: skip to the closing bracket.
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            '(' => {
                parens += 1;
                if std::mem::take(&mut expect_label_list) {
                    label_parens.push(parens);
                }
            }
            ')' => {
                if label_parens.last() == Some(&parens) {
                    label_parens.pop();
                }
                parens = parens.saturating_sub(1);
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let preceded_by_number = start > 0 && (chars[start - 1].is_ascii_digit() || chars[start - 1] == '.');
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
                if matches!(word.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right") {
                    expect_label_list = true;
                } else if braces == 0
                    && label_parens.is_empty()
                    && !preceded_by_number
                    && next != Some('(')
                    && !KEYWORDS.contains(&word.as_str())
                    && !matches!(word.as_str(), "Inf" | "NaN" | "inf" | "nan")
                {
                    names.insert(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The series names a Prometheus text exposition offers (histograms as
/// their `_bucket`, `_sum` and `_count` series).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

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

/// A binary started for the check; killed when dropped.
struct Running {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Running {
    /// Starts `binary` on a free port, in cluster mode or embedded, and
    /// waits for `marker`.
    fn start(binary: &Path, listen_flag: &str, marker: &str, cluster: bool) -> Result<Running> {
        let dir = TempDir::new()?;
        let database = std::env::var("KEEL_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let redis = std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut command = Command::new(binary);
        command.args([listen_flag, "127.0.0.1:0", "--log-format", "json"]).current_dir(&dir.0);
        if cluster {
            command.env("DATABASE_URL", database).env("REDIS_URL", redis);
        } else {
            command.env_remove("DATABASE_URL").env_remove("REDIS_URL").env_remove("KEEL_DATA_DIR");
        }
        let mut child = command
            .env("KEEL_NAMESPACE", format!("deploy-check-{}", std::process::id()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let marker = marker.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if json["message"].as_str().is_some_and(|m| m.starts_with(&marker)) {
                    let _ = tx.send(Ok(json["addr"].as_str().unwrap_or_default().to_owned()));
                } else if json.is_null() || json["level"] == "ERROR" {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(addr)) => return Ok(Running { child, addr, _dir: dir }),
                Ok(Err(line)) => eprintln!("{}: {line}", binary.display()),
                Err(_) => {
                    let _ = child.kill();
                    bail!("{} did not start within 30s", binary.display());
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("keel-deploy-check-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET path` over a fresh connection: status and body.
/// A GET over HTTP/1.0: the server answers unchunked and closes.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}
