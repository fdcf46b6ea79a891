//! Writers that record every acknowledgement, over plain HTTP/1.1.

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(15);

/// One request on its own connection (`Connection: close`): the status and
/// the body.
pub(crate) fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    request_with(addr, method, path, &[], body)
}

/// [`request`] with extra headers.
pub(crate) fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(raw(addr, method, path, headers, body).as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status")?;
    Ok((status, body.to_owned()))
}

pub(crate) fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    request(addr, "GET", path, "")
}

fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends a whole PUT, then resets the connection at once (SO_LINGER 0),
/// as a client that gives up would.
pub(crate) fn put_and_reset(addr: &str, path: &str, body: &str) -> Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(raw(addr, "PUT", path, &[], body).as_bytes())?;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// What the writers were told.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Per key, the highest version answered 202.
    pub(crate) acked: Mutex<HashMap<String, i64>>,
    /// Every key a write was sent for.
    pub(crate) attempted: Mutex<HashSet<String>>,
    pub(crate) acks: AtomicU64,
    pub(crate) refusals: AtomicU64,
    /// When each acknowledgement arrived.
    pub(crate) times: Mutex<Vec<Instant>>,
}

impl Ledger {
    fn ack(&self, key: &str, version: i64) {
        let mut acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = acked.entry(key.to_owned()).or_insert(version);
        *slot = (*slot).max(version);
        self.acks.fetch_add(1, Ordering::AcqRel);
        self.times.lock().unwrap_or_else(PoisonError::into_inner).push(Instant::now());
    }

    /// How long after `at` the first acknowledgement came (zero when
    /// acknowledgements never stopped).
    pub(crate) fn first_ack_after(&self, at: Instant) -> Option<Duration> {
        let times = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        let last_before = times.iter().rev().find(|t| **t <= at);
        let first_after = times.iter().find(|t| **t > at)?;
        // Acknowledged within the last 100 ms before the end: never stopped.
        if last_before.is_some_and(|t| at.duration_since(*t) < Duration::from_millis(100)) {
            return Some(Duration::ZERO);
        }
        Some(first_after.duration_since(at))
    }

    fn attempt(&self, key: &str) {
        self.attempted.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned());
    }
}

/// What the writers send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Load {
    /// `PUT /api/v1/entries/{key}`, 50 keys per writer, rewritten.
    Entries,
    /// The same, each request reset by the client right after sending.
    Reset,
    /// `POST /api/v1/agents/{id}/metadata`, each agent written once.
    Metadata,
}

/// `writers` threads sending `rate` requests per second in all to `addr`
/// until `stop`.
pub(crate) fn spawn_writers(
    load: Load,
    addr: &str,
    writers: usize,
    rate: u32,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let interval = Duration::from_secs_f64(writers as f64 / f64::from(rate.max(1)));
    (0..writers)
        .map(|w| {
            let (addr, ledger, stop) = (addr.to_owned(), ledger.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    write_once(load, &addr, w, i, &ledger);
                    i += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .collect()
}

fn write_once(load: Load, addr: &str, writer: usize, i: u64, ledger: &Ledger) {
    match load {
        Load::Entries | Load::Reset => {
            let key = format!("w{writer}-k{}", i % 50);
            let body = format!("{{\"writer\":{writer},\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(64));
            ledger.attempt(&key);
            if load == Load::Reset {
                let _ = put_and_reset(addr, &format!("/api/v1/entries/{key}"), &body);
                return;
            }
            match request(addr, "PUT", &format!("/api/v1/entries/{key}"), &body) {
                Ok((202, answer)) => match version_of(&answer) {
                    Some(version) => ledger.ack(&key, version),
                    None => eprintln!("chaos: 202 without a version: {answer}"),
                },
                _ => {
                    ledger.refusals.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        Load::Metadata => {
            let agent = format!("00000000-0000-4000-8000-{:04x}{:08x}", writer, i);
            let body = format!("{{\"metadata\":[{{\"key\":\"build\",\"value\":\"v{i}\"}}]}}");
            ledger.attempt(&agent);
            match request(addr, "POST", &format!("/api/v1/agents/{agent}/metadata"), &body) {
                Ok((202, answer)) if answer.contains("\"accepted\":1") => ledger.ack(&agent, 0),
                _ => {
                    ledger.refusals.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }
}

/// The `version` of a `{"key","version"}` answer.
pub(crate) fn version_of(answer: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_str(answer).ok()?;
    value.get("version")?.as_i64()
}

/// Stops `writers` and waits for them.
pub(crate) fn join(writers: Vec<std::thread::JoinHandle<()>>, stop: &AtomicBool) -> Result<()> {
    stop.store(true, Ordering::Release);
    for writer in writers {
        if writer.join().is_err() {
            bail!("a writer thread panicked");
        }
    }
    Ok(())
}
