//! What the harness sends: steady light traffic, and the floods some faults
//! need.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};

use super::LOCAL_LOG_MAX_BYTES;
use crate::chaos::load::request;

/// One kind of steady request: `(addr, counter)`.
type Work = Box<dyn Fn(&str, u64) + Send>;

/// Light, steady traffic on the cluster api: writes and cached reads of 50
/// keys, `/status` polled; reads of keys never written when `uncached`.
pub(super) struct Traffic {
    stop: Arc<AtomicBool>,
    pub(super) uncached: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub(super) fn start(addr: &str) -> Self {
        let (stop, uncached) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let counter = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let spawn = |threads: &mut Vec<_>, every: Duration, work: Work| {
            let (addr, stop, counter) = (addr.to_owned(), stop.clone(), counter.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    work(&addr, counter.fetch_add(1, Ordering::Relaxed));
                    std::thread::sleep(every);
                }
            }));
        };
        spawn(
            &mut threads,
            Duration::from_millis(500),
            Box::new(|addr, i| {
                let key = format!("/api/v1/entries/steady-{}", i % 50);
                let _ = request(addr, "PUT", &key, &format!("{{\"n\":{i}}}"));
                let _ = request(addr, "GET", &key, "");
            }),
        );
        spawn(&mut threads, Duration::from_millis(500), Box::new(|addr, _| drop(request(addr, "GET", "/status", ""))));
        // Enough that, each held up to the 30 s request timeout by a frozen
        // database, over 5 % of requests are slow.
        for _ in 0..24 {
            let uncached = uncached.clone();
            spawn(
                &mut threads,
                Duration::from_millis(500),
                Box::new(move |addr, i| {
                    if uncached.load(Ordering::Relaxed) {
                        let _ = request(addr, "GET", &format!("/api/v1/entries/never-written-{i}"), "");
                    }
                }),
            );
        }
        Self { stop, uncached, threads }
    }

    /// Stops the traffic and waits for its threads (each ends with its
    /// current request, so stop it before the servers).
    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Stops the traffic, also when the harness fails half-way.
impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Metadata submissions of 64 keys for distinct agents until the api says
/// it dropped some (its batcher's channel is full).
pub(super) fn flood_metadata(addr: &str) -> Result<()> {
    let items: Vec<String> = (0..64).map(|k| format!("{{\"key\":\"k{k}\",\"value\":\"v\"}}")).collect();
    let body = format!("{{\"metadata\":[{}]}}", items.join(","));
    for agent in 0..400u32 {
        let path = format!("/api/v1/agents/00000000-0000-4000-8000-{agent:012}/metadata");
        let (status, answer) = request(addr, "POST", &path, &body)?;
        if status != 202 {
            bail!("metadata submission answered {status}: {answer}");
        }
        let reply: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        if reply["dropped"].as_u64().unwrap_or(0) > 0 {
            return Ok(());
        }
    }
    bail!("the batcher dropped nothing after 400 submissions of 64 keys")
}

/// Writes 60 KB values to the PostgreSQL-only api (its database stopped)
/// until its local log holds 85 % of its bound.
pub(super) fn fill_local_log(addr: &str) -> Result<()> {
    let body = format!("\"{}\"", "x".repeat(60_000));
    let target = LOCAL_LOG_MAX_BYTES * 85 / 100;
    for i in 0..1000u32 {
        let (status, answer) = request(addr, "PUT", &format!("/api/v1/entries/log-{i}"), &body)?;
        if status != 202 {
            bail!("a PUT to the PostgreSQL-only api answered {status}: {answer}");
        }
        if i % 50 == 0 && local_log_bytes(addr).is_some_and(|b| b >= target) {
            return Ok(());
        }
    }
    bail!("the local log did not reach {target} bytes")
}

/// 3 000 distinct 60 KB values written to the PostgreSQL-only api: its
/// in-process cache keeps them.
pub(super) fn fill_memory(addr: &str) -> Result<()> {
    let body = format!("\"{}\"", "y".repeat(60_000));
    for i in 0..3000u32 {
        let (status, answer) = request(addr, "PUT", &format!("/api/v1/entries/memory-{i}"), &body)?;
        if status != 202 {
            bail!("a PUT to the PostgreSQL-only api answered {status}: {answer}");
        }
    }
    Ok(())
}

/// `keel_local_log_bytes` of the api at `addr`.
fn local_log_bytes(addr: &str) -> Option<u64> {
    let (_, body) = request(addr, "GET", "/metrics", "").ok()?;
    body.lines()
        .find(|l| l.starts_with("keel_local_log_bytes{") || l.starts_with("keel_local_log_bytes "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}
