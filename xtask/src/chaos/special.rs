//! The scenarios judged by their own measure rather than by the ledger: the
//! edge cases under a hostile load, and a concurrent start.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::servers::Binary;

use super::*;

impl Lab {
    /// The edge scenarios: one process under a hostile load, judged by its
    /// own figures.
    pub(super) fn edge(
        &self,
        scenario: Scenario,
        mut envs: Vec<(&'static str, String)>,
        log: &Path,
    ) -> Result<Outcome> {
        let config = self.dir.join(format!("{}.toml", scenario.name));
        std::fs::write(
            &config,
            format!(
                "[http]\ndrain_delay = \"2s\"\nshutdown_grace = \"10s\"\nheader_read_timeout = \"{}s\"\n",
                self.profile.header_timeout.as_secs()
            ),
        )?;
        envs.push(("KEEL_CONFIG", config.display().to_string()));
        if !scenario.streams {
            envs.retain(|(k, _)| *k != "DATABASE_URL");
        }
        if scenario.fault == Fault::MonitoringFlood {
            envs.push(("KEEL_ADMIN_TOKEN", MONITORING_TOKEN.to_owned()));
            envs.push(("KEEL_MAX_STREAMS", "2500".to_owned()));
        }
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        let mut worker = match scenario.streams {
            true => {
                Some(Binary::spawn(&self.worker, "--admin-listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-w"), log)?)
            }
            false => None,
        };
        api.wait_ready(Duration::from_secs(60))?;
        if let Some(worker) = &mut worker {
            worker.wait_ready(Duration::from_secs(60))?;
        }
        let mut outcome = Outcome { name: scenario.name.to_owned(), ..Outcome::default() };
        let started = Instant::now();
        let result = match scenario.fault {
            Fault::Flood => edge::flood(&api, 8, self.profile.flood, 256 << 20).map(|(answered, peak, after)| {
                outcome.acknowledged = answered;
                format!("{answered} writes of 64 KiB; RSS peak {} MiB, after {} MiB", peak >> 20, after >> 20)
            }),
            Fault::Slowloris => edge::slowloris(&api, 1_200, self.profile.header_timeout + Duration::from_secs(2)).map(
                |(slowest, baseline, peak, after)| {
                    format!(
                        "1200 half-sent: all closed by {:.1}s; fds {baseline} → {peak} → {after}",
                        slowest.as_secs_f64()
                    )
                },
            ),
            Fault::StreamFlood => exposure::stream_flood(&api, 10_050, 250).and_then(|flood| {
                let (before, peak, after) = flood.rss;
                let note = format!(
                    "10050 clients: {} streams, {} refused (503), {} unanswered; {}/20 probes under 100 ms (slowest {:.0} ms); RSS {} → {} → {} MiB",
                    flood.streams,
                    flood.refused,
                    flood.unanswered,
                    flood.probes_ok,
                    flood.slowest_probe.as_secs_f64() * 1000.0,
                    before >> 20,
                    peak >> 20,
                    after >> 20
                );
                let bad = flood.probes_ok < 20
                    || flood.streams > 1000
                    || flood.refused == 0
                    || flood.unanswered > 0
                    || after as f64 > before as f64 * 1.2;
                if bad { bail!("{note}") } else { Ok(note) }
            }),
            Fault::MonitoringFlood => {
                let level = r#"{"enable_monitoring":true,"log_level":"info,keel_http::request=debug"}"#;
                let auth = format!("Bearer {MONITORING_TOKEN}");
                let answer = load::request_with(&api.addr, "PUT", "/api/v1/settings/monitoring", &[("Authorization", &auth)], level)?;
                if answer.0 != 200 {
                    bail!("cannot set the log level: {answer:?}");
                }
                exposure::monitoring_flood(&api, MONITORING_TOKEN, 2_000, 100, Duration::from_secs(10)).and_then(
                    |(opened, average, most)| {
                        let note = format!(
                            "{opened} monitoring streams at keel_http::request=debug: {average} bytes per client in 10 s (most {most})"
                        );
                        if average >= 4096 { bail!("{note}") } else { Ok(note) }
                    },
                )
            }
            _ => edge::sigterm_under_load(&mut api, 16, Duration::from_secs(2)).and_then(|(answered, resets, code)| {
                outcome.acknowledged = answered;
                let note = format!("{answered} answered, {resets} resets, exit {code:?} (drain 2s)");
                if resets > 0 || code != Some(0) {
                    bail!("{note}");
                }
                Ok(note)
            }),
        };
        outcome.catch_up = started.elapsed();
        match result {
            Ok(note) => outcome.note = note,
            Err(err) => outcome.failure = Some(format!("{err:#}")),
        }
        if let Some(worker) = &mut worker {
            worker.stop();
        }
        api.stop();
        Ok(outcome)
    }

    /// Three `api` and one `worker` started in the same instant on an empty
    /// database: all must become ready.
    pub(super) fn concurrent_start(
        &self,
        scenario: Scenario,
        envs: &[(&'static str, String)],
        log: &Path,
    ) -> Result<Outcome> {
        let started = Instant::now();
        let mut processes = Vec::new();
        for i in 0..3 {
            let envs = with(envs, "KEEL_INSTANCE_ID", &format!("chaos-api-{i}"));
            processes.push(Binary::spawn(&self.api, "--listen", &envs, log)?);
        }
        processes.push(Binary::spawn(&self.worker, "--admin-listen", &with(envs, "KEEL_INSTANCE_ID", "chaos-w"), log)?);
        let mut failure = None;
        for process in &mut processes {
            if let Err(err) = process.wait_ready(Duration::from_secs(60)) {
                failure.get_or_insert(format!("{err:#}"));
            }
        }
        let catch_up = started.elapsed();
        for process in &mut processes {
            process.stop();
        }
        Ok(Outcome { name: scenario.name.to_owned(), catch_up, failure, ..Outcome::default() })
    }
}
