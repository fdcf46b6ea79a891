//! Hostile clients against the api's exposure: thousands of held streams
//! must not starve the probes, and monitoring streams must cost O(n).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::edge::rss;
use crate::servers::Binary;

/// A connection from `127.0.0.<2 + i % addresses>` (all loopback), so
/// per-address limits see many clients.
fn connect_from(api: &str, i: usize, addresses: usize) -> Result<TcpStream> {
    let target: SocketAddr = api.parse().context("api address")?;
    let a = i % addresses.max(1);
    let source = Ipv4Addr::new(127, 0, (a / 250) as u8, (2 + a % 250) as u8);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// The status code of the response `stream` starts with (0: none came).
fn status_of(stream: &mut TcpStream) -> u16 {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    std::str::from_utf8(&head[..got]).ok().and_then(|t| t.get(9..12)).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// `GET /livez` on a new connection: its status and how long the answer took.
fn probe(api: &str) -> (u16, Duration) {
    let started = Instant::now();
    let answered = TcpStream::connect(api).ok().and_then(|mut s| {
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").ok()?;
        Some(status_of(&mut s))
    });
    (answered.unwrap_or(0), started.elapsed())
}

/// What the stream flood found.
pub(crate) struct Flood {
    pub(crate) streams: usize,
    pub(crate) refused: usize,
    pub(crate) unanswered: usize,
    pub(crate) probes_ok: usize,
    pub(crate) slowest_probe: Duration,
    pub(crate) rss: (u64, u64, u64),
}

/// `clients` connections from `addresses` loopback addresses each open
/// `GET /status/stream` and hold it; then 20 probes; then every connection
/// closes and the api's memory must come back (within 20 % of before,
/// within 30 s).
pub(crate) fn stream_flood(api: &Binary, clients: usize, addresses: usize) -> Result<Flood> {
    // A first, smaller wave warms what a process allocates once (allocator
    // arenas and thread caches, the runtime's buffers): what is measured is
    // what the flood itself keeps.
    let warm: Vec<TcpStream> = (0..clients / 5)
        .map(|i| {
            let mut stream = connect_from(&api.addr, i, addresses)?;
            stream.write_all(b"GET /status/stream HTTP/1.1\r\nHost: warm\r\n\r\n")?;
            Ok(stream)
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(1));
    drop(warm);
    std::thread::sleep(Duration::from_secs(3));
    let before = rss(api.pid())?;
    let mut held = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut stream = connect_from(&api.addr, i, addresses).with_context(|| format!("client {i}"))?;
        stream.write_all(b"GET /status/stream HTTP/1.1\r\nHost: flood\r\n\r\n")?;
        held.push(stream);
    }
    let (mut streams, mut refused, mut unanswered) = (0, 0, 0);
    for stream in &mut held {
        match status_of(stream) {
            200 => streams += 1,
            503 => refused += 1,
            _ => unanswered += 1,
        }
    }
    let peak = rss(api.pid())?;
    let probes: Vec<(u16, Duration)> = (0..20).map(|_| probe(&api.addr)).collect();
    let probes_ok = probes.iter().filter(|(status, took)| *status == 200 && *took < Duration::from_millis(100)).count();
    let slowest_probe = probes.iter().map(|(_, took)| *took).max().unwrap_or_default();
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = rss(api.pid())?;
    while after as f64 > before as f64 * 1.2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = rss(api.pid())?;
    }
    Ok(Flood { streams, refused, unanswered, probes_ok, slowest_probe, rss: (before, peak, after) })
}

/// `clients` admin monitoring streams opened evenly over `over` from
/// `addresses` loopback addresses, each read until the window ends; the
/// bytes each received, on average and at most.
pub(crate) fn monitoring_flood(
    api: &Binary,
    token: &str,
    clients: usize,
    addresses: usize,
    over: Duration,
) -> Result<(usize, u64, u64)> {
    let started = Instant::now();
    let request =
        format!("GET /api/v1/monitoring/stream HTTP/1.1\r\nHost: flood\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut held: Vec<(TcpStream, u64)> = Vec::with_capacity(clients);
    let mut buf = vec![0u8; 64 << 10];
    let drain = |held: &mut Vec<(TcpStream, u64)>, buf: &mut [u8]| {
        for (stream, received) in held.iter_mut() {
            while let Ok(n) = stream.read(buf) {
                if n == 0 {
                    break;
                }
                *received += n as u64;
            }
        }
    };
    for i in 0..clients {
        let mut stream = connect_from(&api.addr, i, addresses)?;
        stream.write_all(request.as_bytes())?;
        stream.set_nonblocking(true)?;
        held.push((stream, 0));
        // Opened evenly over the window; read as they come. With a record
        // fanned out to every stream per stream opened, the later clients
        // would receive one record per earlier client.
        if i % 100 == 99 {
            drain(&mut held, &mut buf);
            let due = over * u32::try_from(i + 1).unwrap_or(u32::MAX) / u32::try_from(clients).unwrap_or(1);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    while started.elapsed() < over {
        drain(&mut held, &mut buf);
        std::thread::sleep(Duration::from_millis(100));
    }
    drain(&mut held, &mut buf);
    let opened = held.iter().filter(|(_, received)| *received > 0).count();
    let total: u64 = held.iter().map(|(_, received)| received).sum();
    let most = held.iter().map(|(_, received)| *received).max().unwrap_or(0);
    if opened == 0 {
        bail!("no monitoring stream answered");
    }
    Ok((opened, total / held.len() as u64, most))
}
