//! Settings propagation to clients that are not Keel processes: two cluster
//! api replicas, 1,000 Server-Sent Event subscribers of
//! `/api/v1/settings/monitoring/stream` split across them, 200 writes on
//! one replica. Each subscriber notes when each version's event reached it;
//! the latency is that instant less the instant the writer read the write's
//! 200 answer (an event that arrived first counts as 0: on the writer's own
//! replica most do, as the version is installed before the answer is
//! sent). Figures are given for all subscribers and for each replica.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// Subscribers, split evenly across the replicas.
pub(super) const SUBSCRIBERS: usize = 1000;
/// Writes, all on the first replica.
const WRITES: i64 = 200;
/// Between two writes: 40 writes a second, far above what operators do,
/// and still slow enough that no version is merged into the next.
const WRITE_INTERVAL: Duration = Duration::from_millis(25);
/// The target for the 99th percentile (issue 32).
pub(super) const P99_TARGET_MS: f64 = 50.0;
/// Streams one client address may hold is 32: each address takes fewer.
const PER_ADDRESS: usize = 30;
const DOCUMENT: &str = "/api/v1/settings/monitoring";

/// What one subscriber saw: each version with when it arrived.
type Seen = Vec<(i64, Instant)>;

/// Runs the measurement against `replicas` (writing to the first) and
/// returns its figures.
pub(super) fn settings_propagation(replicas: [&str; 2], token: &str) -> Result<Value> {
    let (status, body) = crate::chaos::load::get(replicas[0], DOCUMENT)?;
    if status != 200 {
        bail!("GET {DOCUMENT}: {status} {body}");
    }
    let start: i64 = serde_json::from_str::<Value>(&body)?["version"].as_i64().context("no version")?;
    let last = start + WRITES;
    let connected = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let addr = replicas[i % 2].to_owned();
            let local = [127, 0, 0, u8::try_from(2 + i / PER_ADDRESS).unwrap_or(250)];
            let (connected, stop) = (connected.clone(), stop.clone());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || subscribe(&addr, local, start, last, &connected, &stop))
        })
        .collect::<std::io::Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Acquire) < SUBSCRIBERS {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Release);
            bail!("only {} of {SUBSCRIBERS} subscribers connected", connected.load(Ordering::Acquire));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let document = r#"{"enable_monitoring":true,"log_level":"info"}"#;
    let authorization = format!("Bearer {token}");
    let mut answered = Vec::with_capacity(WRITES as usize);
    let mut sent = Vec::with_capacity(WRITES as usize);
    for _ in 0..WRITES {
        let next = Instant::now() + WRITE_INTERVAL;
        let sent_at = Instant::now();
        let headers = [("Authorization", authorization.as_str())];
        let (status, body) = crate::chaos::load::request_with(replicas[0], "PUT", DOCUMENT, &headers, document)?;
        let at = Instant::now();
        if status != 200 {
            bail!("PUT {DOCUMENT}: {status} {body}");
        }
        let version = serde_json::from_str::<Value>(&body)?["version"].as_i64().context("no version")?;
        answered.push((version, at));
        sent.push((version, sent_at));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // Every subscriber ends on its own once it has the last version; the
    // rest are stopped after 10 s.
    let waited = Instant::now();
    let seen: Vec<Seen> = {
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(10));
                stop.store(true, Ordering::Release);
            })
        };
        let seen = subscribers.into_iter().map(|s| s.join().unwrap_or_default()).collect();
        drop(stopper);
        seen
    };
    eprintln!(
        "xtask: bench: settings propagation: {SUBSCRIBERS} subscribers, {WRITES} writes; subscribers joined {:.0} ms \
         after the last answer",
        waited.elapsed().as_secs_f64() * 1e3
    );
    // Subscriber i followed replica i % 2: the writer's own, then the other.
    let on = |replica: usize| -> Vec<Seen> { seen.iter().skip(replica).step_by(2).cloned().collect() };
    let mut all = figures(&answered, &seen, start, last);
    all["writer_replica"] = figures(&answered, &on(0), start, last);
    all["other_replica"] = figures(&answered, &on(1), start, last);
    // From the moment the write was sent: what a user of the writer sees.
    all["from_request"] = figures(&sent, &seen, start, last);
    Ok(all)
}

/// One subscriber: opens the stream from `local` with `Last-Event-ID` =
/// `start` (nothing until the next version) and reads until `last`.
fn subscribe(addr: &str, local: [u8; 4], start: i64, last: i64, connected: &AtomicUsize, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::new();
    let Ok(stream) = open(addr, local, start) else { return seen };
    connected.fetch_add(1, Ordering::AcqRel);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Acquire) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                if let Some(id) = line.strip_prefix("id:").and_then(|v| v.trim().parse::<i64>().ok()) {
                    seen.push((id, Instant::now()));
                    if id >= last {
                        break;
                    }
                }
            }
            // The read timeout: look at the stop flag again.
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    seen
}

fn open(addr: &str, local: [u8; 4], start: i64) -> Result<TcpStream> {
    let target: SocketAddr = addr.parse()?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((local, 0)).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(10))?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_millis(250)))?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {DOCUMENT}/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nLast-Event-ID: {start}\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    // The head, up to the blank line, before counting the subscriber in.
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => bail!("closed before the head"),
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
            Err(_) if Instant::now() < deadline => {}
            Err(err) => return Err(err.into()),
        }
    }
    if !head.starts_with("HTTP/1.1 200") {
        bail!("stream refused: {head}");
    }
    // Chunked framing: chunk sizes are lines of their own and never start
    // with "id:", so reading lines of the raw stream finds every event id.
    Ok(stream)
}

/// Latency percentiles and the versions missed or out of order.
fn figures(answered: &[(i64, Instant)], seen: &[Seen], start: i64, last: i64) -> Value {
    let answered_at: std::collections::HashMap<i64, Instant> = answered.iter().copied().collect();
    let mut latencies = Vec::new();
    let (mut missed, mut out_of_order) = (0u64, 0u64);
    for subscriber in seen {
        let mut previous = start;
        for (version, at) in subscriber {
            if *version <= previous {
                out_of_order += 1;
            }
            previous = previous.max(*version);
            if let Some(answer) = answered_at.get(version) {
                latencies.push(at.saturating_duration_since(*answer).as_secs_f64() * 1e3);
            }
        }
        let distinct: std::collections::HashSet<i64> = subscriber.iter().map(|(v, _)| *v).collect();
        missed += (start + 1..=last).filter(|v| !distinct.contains(v)).count() as u64;
    }
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied().unwrap_or(f64::NAN)
    };
    json!({
        "subscribers": seen.len(), "writes": answered.len(), "events": latencies.len(),
        "p50_ms": percentile(0.50), "p99_ms": percentile(0.99), "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "missed": missed, "out_of_order": out_of_order, "p99_target_ms": P99_TARGET_MS,
    })
}

/// True when the figures meet the target and nothing was missed.
pub(super) fn met(figures: &Value) -> bool {
    figures["p99_ms"].as_f64().is_some_and(|p| p <= P99_TARGET_MS)
        && figures["missed"] == 0
        && figures["out_of_order"] == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_missed_and_out_of_order_versions_are_counted() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let answered = [(11, ms(0)), (12, ms(100))];
        let seen = vec![
            vec![(11, ms(5)), (12, ms(110))],
            // Saw 12 before the writer read its answer; never saw 11.
            vec![(12, ms(90))],
            vec![(12, ms(120)), (11, ms(130))],
        ];
        let figures = figures(&answered, &seen, 10, 12);
        assert_eq!((figures["missed"].as_u64(), figures["out_of_order"].as_u64()), (Some(1), Some(1)));
        assert_eq!(figures["events"], 5);
        assert_eq!(figures["p50_ms"], 10.0);
        assert_eq!(figures["max_ms"], 130.0);
        assert!(!met(&figures));
    }
}
