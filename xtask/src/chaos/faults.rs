//! Injecting a scenario's fault: stopping, pausing or killing a private
//! server or a process for the profile's fault time, and a Redis Cluster
//! failover.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::servers::{Binary, RedisCluster, signal};
use load::Ledger;

use super::*;

impl Lab {
    /// Breaks what `fault` names for the profile's fault time, then mends it.
    pub(super) fn inject(&mut self, fault: Fault, worker: Option<&mut Binary>) -> Result<()> {
        let hold = self.profile.fault;
        match fault {
            Fault::None
            | Fault::ConcurrentStart
            | Fault::Flood
            | Fault::Slowloris
            | Fault::Sigterm
            | Fault::MasterFailover
            | Fault::Kill9 { .. }
            | Fault::DiskFull
            | Fault::SecondProcess
            | Fault::StreamFlood
            | Fault::MonitoringFlood
            | Fault::TimedRevert => {
                std::thread::sleep(hold);
            }
            Fault::WorkerKill => {
                let worker = worker.context("worker-kill needs a worker")?;
                worker.kill()?;
                std::thread::sleep(hold);
                worker.restart()?;
            }
            Fault::PgStop => {
                self.pg.stop_fast()?;
                std::thread::sleep(hold);
                self.pg.up()?;
            }
            Fault::PgPause => {
                let pids = self.pg.pids()?;
                signal(&pids, "STOP")?;
                std::thread::sleep(hold);
                signal(&pids, "CONT")?;
            }
            Fault::RedisKill => {
                self.redis.kill()?;
                std::thread::sleep(hold);
                self.redis.up()?;
            }
            Fault::RedisPause => {
                let pid = self.redis.pid();
                signal(&pid, "STOP")?;
                std::thread::sleep(hold);
                signal(&pid, "CONT")?;
            }
        }
        Ok(())
    }

    /// The failover scenario: its own Redis Cluster, two apis writing with
    /// `--ack-replicas 1` and a worker; the master of partition 0's stream is
    /// killed mid-load, a settings change goes through the other api while
    /// it is down, the replica is promoted, the old master comes back as a
    /// replica. Judged like every scenario (lost, regressed, phantoms), plus
    /// the settings reaching both apis within 5 s of the cluster being whole.
    pub(super) fn failover(
        &self,
        scenario: Scenario,
        database: &str,
        envs: &[(&'static str, String)],
        log: &Path,
    ) -> Result<Outcome> {
        const TOKEN: &str = "chaos-admin-token-0001";
        let mut cluster = RedisCluster::start(&self.dir.join("redis-cluster"))?;
        let mut envs: Vec<(&'static str, String)> = envs.iter().filter(|(k, _)| *k != "REDIS_URL").cloned().collect();
        envs.extend([
            ("REDIS_URL", cluster.url()),
            ("KEEL_ACK_REPLICAS", "1".to_owned()),
            ("KEEL_ADMIN_TOKEN", TOKEN.to_owned()),
        ]);
        let namespace = envs.iter().find(|(k, _)| *k == "KEEL_NAMESPACE").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut api = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api"), log)?;
        let mut other = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-2"), log)?;
        let mut worker =
            Binary::spawn(&self.worker, "--admin-listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-worker"), log)?;
        for process in [&mut api, &mut other, &mut worker] {
            process.wait_ready(Duration::from_secs(60))?;
        }

        let (ledger, stop) = (Arc::new(Ledger::default()), Arc::new(AtomicBool::new(false)));
        let writers =
            load::spawn_writers(scenario.load, &api.addr, self.profile.writers, self.profile.rate, &ledger, &stop);
        std::thread::sleep(self.profile.warm_up);
        // Partition 0 is as busy as any: the writers' keys hash over all 16.
        let busy = format!("{namespace}:entries-stream:{{p0}}");
        let victim = cluster.master_of(&busy, 0)?;
        let victim_port = cluster.nodes[victim].port;
        let killed = Instant::now();
        cluster.nodes[victim].kill()?;
        let version = change_settings(&other.addr, TOKEN, Duration::from_secs(30))?;
        let asking = (victim + 1) % cluster.nodes.len();
        crate::servers::wait_until(Duration::from_secs(30), || {
            cluster.master_of(&busy, asking).is_ok_and(|m| m != victim) && cluster.healthy(Some(victim))
        })
        .with_context(|| {
            format!("the replica was not promoted; the cluster as node {asking} sees it:\n{}", cluster.describe(asking))
        })?;
        let promoted = killed.elapsed();
        if let Some(rest) = self.profile.fault.checked_sub(promoted) {
            std::thread::sleep(rest);
        }
        cluster.nodes[victim].up()?;
        crate::servers::wait_until(Duration::from_secs(30), || cluster.healthy(None))
            .context("the old master did not rejoin")?;
        let fault_end = Instant::now();
        let converged = crate::servers::wait_until(Duration::from_secs(5), || {
            [&api.addr, &other.addr].iter().all(|addr| {
                load::get(addr, "/api/v1/settings/monitoring")
                    .ok()
                    .and_then(|(_, body)| load::version_of(&body))
                    .is_some_and(|v| v >= version)
            })
        });
        let convergence = fault_end.elapsed();
        std::thread::sleep(self.profile.after);
        load::join(writers, &stop)?;
        // A refused write may still land later: its script can wait in the
        // Redis client for a reconnect. The apis stop before the streams are
        // drained, so nothing lands after the judgement, and a fresh api
        // serves the reads that judge phantoms.
        for process in [&mut api, &mut other] {
            process.stop();
        }
        worker.wait_ready(Duration::from_secs(60))?;
        let stopped = Instant::now();
        // Writes refused with 503 may still have landed (in the stream and
        // the cache): the streams must drain before phantoms are judged.
        // Asked of the streams themselves: the worker's gauge keeps its last
        // reading while a partition's master cannot answer, so it can read 0
        // over entries the new master holds.
        crate::servers::wait_until(Duration::from_secs(60), || {
            load::get(&worker.addr, "/metrics")
                .is_ok_and(|(_, text)| metric(&text, "keel_write_behind_queue_depth", "queue=\"entries\"") == 0.0)
                && cluster.stream_backlog(&namespace, CLUSTER_PARTITIONS) == Some(0)
        })
        .context("the entries streams did not drain")?;
        let mut judge = Binary::spawn(&self.api, "--listen", &with(&envs, "KEEL_INSTANCE_ID", "chaos-api-judge"), log)?;
        judge.wait_ready(Duration::from_secs(60))?;
        let mut outcome = self.settle(scenario, database, &ledger, &judge.addr)?;
        outcome.catch_up = stopped.elapsed();
        outcome.recovery = ledger.first_ack_after(fault_end).unwrap_or_default();
        outcome.dead_lettered = self.count(database, "SELECT count(*) FROM write_behind_dead_letters")?;
        outcome.note = format!(
            "master :{victim_port} of partition 0 killed; replica promoted in {:.1}s; settings v{version} on both apis {:.1}s after the cluster was whole; {} refusals (503) while it was not",
            promoted.as_secs_f64(),
            convergence.as_secs_f64(),
            ledger.refusals.load(Ordering::Acquire)
        );
        if converged.is_err() {
            outcome.failure = Some(format!("settings v{version} had not reached both apis 5 s after the failover"));
        }
        for process in [&mut worker, &mut judge] {
            process.stop();
        }
        Ok(outcome)
    }
}
