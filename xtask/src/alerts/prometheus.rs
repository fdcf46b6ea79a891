//! A private Prometheus and the little of its HTTP API the harness reads.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::rules::scaled_rules;
use crate::deploy::http_get;
use crate::servers::{free_port, wait_until};

/// One active alert: its name, instance (if any), job and state.
pub(super) type Active = (String, Option<String>, String, String);

/// A Prometheus of our own, on a free port.
pub(super) struct Prometheus {
    pub(super) addr: String,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus evaluating `rules` (scaled) over `apis` (job
    /// `keel-api`) and `worker` (job `keel-worker`).
    pub(super) fn start(rules: &str, dir: &Path, apis: &[&str], worker: &str) -> Result<Self> {
        let rules_dir = dir.join("rules");
        std::fs::create_dir_all(&rules_dir)?;
        std::fs::write(rules_dir.join("keel.yml"), scaled_rules(rules)?)?;
        let quoted = |targets: &[&str]| targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 900ms\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: keel-api\n    static_configs:\n      - targets: [{}]\n\
             \x20 - job_name: keel-worker\n    static_configs:\n      - targets: [{}]\n",
            rules_dir.join("keel.yml").display(),
            quoted(apis),
            quoted(&[worker]),
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start prometheus")?;
        let prometheus = Self { addr, child };
        wait_until(Duration::from_secs(60), || http_get(&prometheus.addr, "/-/ready").is_ok_and(|(s, _)| s == 200))
            .context("prometheus did not become ready (target/alerts/prometheus.log)")?;
        Ok(prometheus)
    }

    /// `(alertname, instance, job, state)` of every active alert.
    pub(super) fn alerts(&self) -> Result<Vec<Active>> {
        let (status, body) = http_get(&self.addr, "/api/v1/alerts")?;
        if status != 200 {
            bail!("prometheus /api/v1/alerts answered {status}");
        }
        let value: serde_json::Value = serde_json::from_str(&body).context("prometheus alerts")?;
        Ok(value["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let label = |name: &str| a["labels"][name].as_str().map(str::to_owned);
                (
                    label("alertname").unwrap_or_default(),
                    label("instance"),
                    label("job").unwrap_or_default(),
                    a["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// The series `query` returns now (`None`: the query failed).
    fn query(&self, query: &str) -> Option<Vec<serde_json::Value>> {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", encode(query))).ok()?;
        if status != 200 {
            return None;
        }
        let mut value: serde_json::Value = serde_json::from_str(&body).ok()?;
        value["data"]["result"].as_array_mut().map(std::mem::take)
    }

    /// How many series `query` returns now.
    pub(super) fn query_count(&self, query: &str) -> Option<usize> {
        self.query(query).map(|series| series.len())
    }

    /// The value of the first series `query` returns now.
    pub(super) fn query_value(&self, query: &str) -> Option<f64> {
        self.query(query)?.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
