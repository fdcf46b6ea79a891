//! Scenarios at the edge: a flood of large writes against the embedded api's
//! memory, half-sent requests against its file descriptors, and SIGTERM
//! under keep-alive load against its connections.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::servers::Binary;

/// Resident memory of `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// Open file descriptors of `pid`.
pub(crate) fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

const MIB: u64 = 1 << 20;

/// 64 KiB PUTs to distinct keys from `writers` threads for `duration`,
/// sampling the api's RSS: it must stay under `limit` and not grow once the
/// flood stops. Returns (writes answered, peak RSS, RSS after).
pub(crate) fn flood(api: &Binary, writers: usize, duration: Duration, limit: u64) -> Result<(u64, u64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let value = format!("{{\"blob\":\"{}\"}}", "x".repeat(64 * 1024 - 16));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (addr, stop, answered, value) = (api.addr.clone(), stop.clone(), answered.clone(), value.clone());
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(&addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let sent = client.send("PUT", &format!("/api/v1/entries/flood-{w}-{i}"), &value);
                    if matches!(sent, Ok((202 | 503, _))) {
                        answered.fetch_add(1, Ordering::AcqRel);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < duration {
        peak = peak.max(rss(api.pid())?);
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Release);
    for handle in handles {
        let _ = handle.join();
    }
    peak = peak.max(rss(api.pid())?);
    std::thread::sleep(Duration::from_secs(3));
    let after = rss(api.pid())?;
    if peak > limit {
        bail!("RSS peaked at {} MiB, over the {} MiB bound (after: {} MiB)", peak / MIB, limit / MIB, after / MIB);
    }
    if after > peak {
        bail!("RSS grew after the flood: {} MiB → {} MiB", peak / MIB, after / MIB);
    }
    Ok((answered.load(Ordering::Acquire), peak, after))
}

/// Opens `count` connections that send half a request line and wait. All
/// must be closed by the server within `limit`, and the api's descriptors
/// must return to their baseline. Returns (slowest close, baseline fds, peak
/// fds, fds after).
pub(crate) fn slowloris(api: &Binary, count: usize, limit: Duration) -> Result<(Duration, usize, usize, usize)> {
    type Open = Vec<Option<(TcpStream, Instant)>>;
    let baseline = fds(api.pid())?;
    let started = Instant::now();
    let open: Arc<std::sync::Mutex<Open>> = Arc::default();
    let opening = Arc::new(AtomicBool::new(true));
    // Watches every connection while more are opened, so each close is
    // timed from its own open.
    let watcher = std::thread::spawn({
        let (open, opening) = (open.clone(), opening.clone());
        move || -> Duration {
            let mut slowest = Duration::ZERO;
            let mut buf = [0u8; 64];
            loop {
                let still_opening = opening.load(Ordering::Acquire);
                let mut streams = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for slot in streams.iter_mut() {
                    let Some((stream, opened)) = slot else { continue };
                    if matches!(stream.read(&mut buf), Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted))
                    {
                        continue;
                    }
                    // Closed by the server (EOF or reset).
                    slowest = slowest.max(opened.elapsed());
                    *slot = None;
                }
                let all_closed = streams.iter().all(Option::is_none);
                drop(streams);
                if (!still_opening && all_closed) || started.elapsed() > limit * 3 + Duration::from_secs(30) {
                    return slowest;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut peak = 0;
    for i in 0..count {
        let mut stream = TcpStream::connect(&api.addr)?;
        stream.write_all(b"GET /livez HT")?;
        stream.set_nonblocking(true)?;
        open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Some((stream, Instant::now())));
        if i % 100 == 99 {
            peak = peak.max(fds(api.pid())?);
        }
    }
    opening.store(false, Ordering::Release);
    let slowest = watcher.join().map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
    let left = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().filter(|s| s.is_some()).count();
    if left > 0 {
        bail!("{left} half-sent connections still open after {:?}", started.elapsed());
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = fds(api.pid())?;
    if slowest > limit {
        bail!("the slowest half-sent connection was closed after {slowest:?}, over {limit:?}");
    }
    if after > baseline + 4 {
        bail!("descriptors did not return to baseline: {baseline} → {peak} → {after}");
    }
    Ok((slowest, baseline, peak, after))
}

/// Keep-alive clients send requests; SIGTERM is sent after `before`. A
/// client told `Connection: close` moves to another replica (it stops
/// sending here), as clients behind a load balancer do once readiness drops;
/// a request written on an established connection that gets no complete
/// answer is a reset. Returns (answered, resets, exit code).
pub(crate) fn sigterm_under_load(
    api: &mut Binary,
    clients: usize,
    before: Duration,
) -> Result<(u64, u64, Option<i32>)> {
    let closed = Arc::new(AtomicBool::new(false));
    let (answered, resets) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, closed, answered, resets) = (api.addr.clone(), closed.clone(), answered.clone(), resets.clone());
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(&addr);
                let mut i = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !closed.load(Ordering::Acquire) && Instant::now() < deadline {
                    let body = format!("{{\"client\":{c},\"i\":{i}}}");
                    match client.send("PUT", &format!("/api/v1/entries/term-{c}-{}", i % 20), &body) {
                        Ok((_, close)) => {
                            answered.fetch_add(1, Ordering::AcqRel);
                            if close {
                                break;
                            }
                        }
                        Err(Failure::Refused) => closed.store(true, Ordering::Release),
                        Err(Failure::Reset(err)) => {
                            eprintln!("xtask: chaos: reset after the request was sent: {err}");
                            resets.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(before);
    api.terminate()?;
    let code = api.wait_exit(Duration::from_secs(60))?;
    closed.store(true, Ordering::Release);
    for handle in handles {
        let _ = handle.join();
    }
    Ok((answered.load(Ordering::Acquire), resets.load(Ordering::Acquire), code))
}

/// Why a keep-alive request got no answer.
enum Failure {
    /// No connection could be made (the listener is closed): the request
    /// never reached the server.
    Refused,
    /// The request was sent on a connection and no complete answer came.
    Reset(String),
}

/// A minimal HTTP/1.1 keep-alive client that honours `Connection: close`.
struct KeepAlive {
    addr: String,
    stream: Option<TcpStream>,
}

impl KeepAlive {
    fn new(addr: &str) -> Self {
        Self { addr: addr.to_owned(), stream: None }
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, bool), Failure> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).map_err(|_| Failure::Refused)?;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else { return Err(Failure::Refused) };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: chaos\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer =
            stream.write_all(request.as_bytes()).map_err(|e| e.to_string()).and_then(|()| read_response(stream));
        match answer {
            Ok((status, close)) => {
                if close {
                    self.stream = None;
                }
                Ok((status, close))
            }
            Err(err) => {
                self.stream = None;
                Err(Failure::Reset(err))
            }
        }
    }
}

/// Reads one response: (status, whether the server asked to close).
fn read_response(stream: &mut TcpStream) -> Result<(u16, bool), String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = read_some(stream, &mut buf)?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while data.len() < head_end + length {
        let n = read_some(stream, &mut buf)?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        data.extend_from_slice(&buf[..n]);
    }
    Ok((status, head.contains("connection: close")))
}

/// One `read`, retried when a signal to this process (a child exiting)
/// interrupts it: that is no answer from the server.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    loop {
        match stream.read(buf) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other.map_err(|e| e.to_string()),
        }
    }
}
