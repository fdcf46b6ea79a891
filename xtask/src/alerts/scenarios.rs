//! The scenarios: each alert rule with the fault its runbook names, the
//! phases that drive it and what else may fire meanwhile.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::chaos::load::request;
use crate::servers::signal;
use traffic::{fill_local_log, fill_memory, flood_metadata};

use super::*;

impl Lab {
    pub(super) fn scenarios(&mut self, rows: &mut Vec<Row>) -> Result<()> {
        // The error-ratio alerts and latency are the api job's (no instance).
        let errors =
            |who| vec![("KeelHighErrorRatio", who), ("KeelErrorBudgetFastBurn", who), ("KeelErrorBudgetSlowBurn", who)];

        // 1. Healthy: nothing at all.
        let healthy = Scenario::single("healthy", "none (light traffic)", vec![], Duration::from_secs(60));
        rows.extend(self.scenario(&healthy, |_, _| Ok(()), |_| Ok(()))?);
        self.check_dashboards()?;

        // 2. PostgreSQL frozen (SIGSTOP), Redis healthy: waiters, slow reads,
        // a full batcher; no settings staleness on the cluster binaries.
        let mut allow = errors("keel-api");
        allow.extend([
            ("KeelWriteBehindBacklog", ANY),
            ("KeelDatabasePoolExhausted", ANY),
            ("KeelHealthComponentKO", ANY),
            // The PostgreSQL-only api has no shared cache: with its
            // database frozen it cannot confirm its settings.
            ("KeelSettingsStale", API_PG),
        ]);
        let freeze = Scenario::single(
            "pg-freeze",
            "PostgreSQL SIGSTOP; uncached reads; metadata flood",
            vec![
                ("KeelDatabasePoolExhausted", API),
                ("KeelHighLatencyP95", "keel-api"),
                ("KeelHealthComponentKO", API),
                ("KeelBatcherDropping", API),
            ],
            // Long enough for a settings refresh to fail and staleness to
            // pass its threshold, had a frozen database alone made the
            // cluster binaries stale.
            Duration::from_secs(40),
        )
        .allowing(allow);
        rows.extend(self.scenario(
            &freeze,
            |lab, _| {
                signal(&lab.pg.pids()?, "STOP")?;
                lab.traffic.uncached.store(true, Ordering::Relaxed);
                flood_metadata(&lab.api.addr)
            },
            |lab| {
                lab.traffic.uncached.store(false, Ordering::Relaxed);
                signal(&lab.pg.pids()?, "CONT")
            },
        )?);

        // 3. PostgreSQL stopped: first with only writes and cached reads
        // (the health endpoints' 503s must not count as errors), then with
        // reads the database must answer.
        let stop = Scenario {
            name: "pg-stop",
            phases: vec![
                Phase {
                    fault: "PostgreSQL stopped; writes, cached reads, /status polled; 10 MB to the PG-only api",
                    expect: vec![
                        ("KeelHealthComponentKO", API),
                        ("KeelHealthComponentKO", WORKER),
                        ("KeelWriteBehindBacklog", API),
                        ("KeelWriteBehindBacklog", API_PG),
                        ("KeelLocalLogNearFull", API_PG),
                    ],
                    hold: Duration::from_secs(25),
                },
                Phase {
                    fault: "PostgreSQL stopped; uncached reads answered 503",
                    expect: errors("keel-api"),
                    hold: Duration::ZERO,
                },
            ],
            allow: vec![
                ("KeelWriteBehindBacklog", WORKER),
                ("KeelHealthComponentKO", API_PG),
                ("KeelSettingsStale", API_PG),
            ],
        };
        rows.extend(self.scenario(
            &stop,
            |lab, phase| {
                if phase == 0 {
                    lab.pg.stop_fast()?;
                    fill_local_log(&lab.api_pg.addr)
                } else {
                    // What the first phase proved: health endpoints answered
                    // 503 throughout and no error alert went off.
                    let query = "sum(increase(http_server_request_duration_seconds_count\
                                 {job=\"keel-api\",http_route=~\"/status.*|/readyz\",http_response_status_code=\"503\"}[20s]))";
                    let answered = lab.prometheus.query_value(query).unwrap_or(0.0);
                    eprintln!("xtask: alerts: pg-stop: health endpoints answered {answered:.0} 503s in the last 20 s; no error alert");
                    if answered < 10.0 {
                        bail!("the health endpoints answered only {answered:.0} 503s: the phase proved nothing");
                    }
                    lab.traffic.uncached.store(true, Ordering::Relaxed);
                    Ok(())
                }
            },
            |lab| {
                lab.traffic.uncached.store(false, Ordering::Relaxed);
                lab.pg.up()
            },
        )?);

        // 4. An outsized workload: the PostgreSQL-only api's in-process
        // cache (256 MiB here) filled with large values.
        let memory = Scenario::single(
            "memory",
            "3 000 writes of 60 KB to the PG-only api (cache 256 MiB)",
            vec![("KeelHighMemory", API_PG)],
            Duration::ZERO,
        )
        // Some 9 MB/s of writes against a 12 MiB log: between two
        // checkpoints the log is near its bound, truly.
        .allowing(vec![("KeelLocalLogNearFull", API_PG)]);
        rows.extend(self.scenario(
            &memory,
            |lab, _| fill_memory(&lab.api_pg.addr),
            // The runbook's step: out of rotation, restarted.
            |lab| {
                lab.api_pg.kill()?;
                lab.api_pg.restart()?;
                lab.api_pg.wait_ready(Duration::from_secs(60))
            },
        )?);

        // 5. The worker killed while writes continue.
        let worker = Scenario::single(
            "worker-kill",
            "worker SIGKILL; writes continue",
            vec![("KeelWorkerDown", WORKER), ("KeelWriteBehindBacklog", API)],
            Duration::ZERO,
        );
        rows.extend(self.scenario(
            &worker,
            |lab, _| lab.worker.kill(),
            |lab| {
                lab.worker.restart()?;
                lab.worker.wait_ready(Duration::from_secs(60))
            },
        )?);

        // 6. Redis killed, then PostgreSQL too: settings can no longer be
        // confirmed anywhere.
        let mut allow = errors("keel-api");
        allow.extend([
            // Writes wait the 2 s enqueue timeout before their 503.
            ("KeelHighLatencyP95", "keel-api"),
            ("KeelHealthComponentKO", ANY),
            ("KeelWriteBehindBacklog", ANY),
            ("KeelDatabasePoolExhausted", ANY),
            ("KeelSettingsStale", API_PG),
        ]);
        let redis = Scenario {
            name: "redis-kill",
            phases: vec![
                Phase {
                    fault: "Redis SIGKILL",
                    expect: vec![("KeelRedisDown", API), ("KeelRedisDown", WORKER)],
                    hold: Duration::ZERO,
                },
                Phase {
                    fault: "Redis and PostgreSQL down",
                    expect: vec![("KeelSettingsStale", API), ("KeelSettingsStale", WORKER)],
                    hold: Duration::ZERO,
                },
            ],
            allow,
        };
        rows.extend(self.scenario(
            &redis,
            |lab, phase| if phase == 0 { lab.redis.kill() } else { lab.pg.stop_fast() },
            |lab| {
                lab.pg.up()?;
                lab.redis.up()
            },
        )?);

        // 7. The database refuses some values for good.
        let poison = Scenario::single(
            "dead-letters",
            "a CHECK constraint refuses 5 written values",
            vec![("KeelWriteBehindDeadLetters", WORKER)],
            Duration::ZERO,
        );
        rows.extend(self.scenario(
            &poison,
            |lab, _| {
                lab.pg.psql(
                    "alerts",
                    "ALTER TABLE entries ADD CONSTRAINT alerts_poison CHECK (value::text NOT LIKE '%poison%') NOT VALID",
                )?;
                for i in 0..5 {
                    let (status, body) =
                        request(&lab.api.addr, "PUT", &format!("/api/v1/entries/poison-{i}"), "{\"poison\":true}")?;
                    if status != 202 {
                        bail!("PUT poison-{i} answered {status}: {body}");
                    }
                }
                Ok(())
            },
            |lab| lab.pg.psql("alerts", "ALTER TABLE entries DROP CONSTRAINT alerts_poison").map(drop),
        )?);
        Ok(())
    }
}
