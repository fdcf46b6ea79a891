//! The server's hold on hostile or idle clients, over real sockets: header
//! read timeout, keep-alive idle timeout, the connection cap, and
//! `Connection: close` while draining.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use keel_core::Shutdown;
use keel_http::{ConnectionLimits, DrainConfig, serve_with_limits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

struct Server {
    addr: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), keel_http::ServeError>>,
}

async fn start(limits: ConnectionLimits, drain: DrainConfig) -> Server {
    let router = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .route("/echo", post(|body: String| async move { body.len().to_string() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve_with_limits(listener, router, shutdown.clone(), drain, limits));
    Server { addr, shutdown, task }
}

/// Reads until the peer closes (or 10 s pass); returns what came and when.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server never closed the connection"),
        }
    }
    (String::from_utf8_lossy(&all).into_owned(), started.elapsed())
}

/// One request on an open keep-alive connection; returns the response head
/// and body (bodies here are short and sent with a length).
async fn request(stream: &mut TcpStream, path: &str) -> String {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_read_timeout() {
    let limits = ConnectionLimits { header_read_timeout: Duration::from_millis(300), ..ConnectionLimits::default() };
    let server = start(limits, DrainConfig::default()).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        stream.write_all(b"GET /hello HT").await.unwrap();
        slow.push(stream);
    }
    for stream in &mut slow {
        let (_, waited) = read_until_closed(stream).await;
        assert!(waited < Duration::from_millis(2300), "held {waited:?}");
    }
    // Well-behaved clients are still served.
    let mut good = TcpStream::connect(&server.addr).await.unwrap();
    assert!(request(&mut good, "/hello").await.starts_with("HTTP/1.1 200"));
    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let limits = ConnectionLimits { header_read_timeout: Duration::from_millis(300), ..ConnectionLimits::default() };
    let server = start(limits, DrainConfig::default()).await;
    let mut silent = TcpStream::connect(&server.addr).await.unwrap();
    let (answer, waited) = read_until_closed(&mut silent).await;
    assert!(answer.is_empty(), "{answer}");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(2300), "held {waited:?}");
    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

/// The header deadline counts from a head's first byte: a keep-alive
/// connection may idle longer than it (up to the idle timeout), and a
/// second request trickled in after a good one is still cut off.
#[tokio::test]
async fn the_header_deadline_covers_each_head_and_not_the_idle_time_between_requests() {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(300),
        keep_alive_idle: Duration::from_secs(5),
        ..ConnectionLimits::default()
    };
    let server = start(limits, DrainConfig::default()).await;
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    assert!(request(&mut stream, "/hello").await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(request(&mut stream, "/hello").await.starts_with("HTTP/1.1 200"), "kept open past the header timeout");
    stream.write_all(b"GET /hel").await.unwrap();
    let (answer, waited) = read_until_closed(&mut stream).await;
    assert!(!answer.contains("200"), "{answer}");
    assert!(waited < Duration::from_millis(2300), "a trickled head is cut off within the header timeout: {waited:?}");
    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

/// A body slower than the header deadline is not cut off by it: only the
/// head is held to it.
#[tokio::test]
async fn a_slow_body_is_not_held_to_the_header_deadline() {
    let limits = ConnectionLimits { header_read_timeout: Duration::from_millis(300), ..ConnectionLimits::default() };
    let server = start(limits, DrainConfig::default()).await;
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n").await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"x").await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("10"), "{answer}");
    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let limits = ConnectionLimits { keep_alive_idle: Duration::from_millis(400), ..ConnectionLimits::default() };
    let server = start(limits, DrainConfig::default()).await;
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    assert!(request(&mut stream, "/hello").await.starts_with("HTTP/1.1 200"));
    // Active use keeps it open...
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(request(&mut stream, "/hello").await.starts_with("HTTP/1.1 200"));
    // ...idleness closes it.
    let (_, waited) = read_until_closed(&mut stream).await;
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(2400), "closed after {waited:?}");
    server.shutdown.trigger();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn over_the_cap_probes_are_answered_the_rest_refused_with_503_and_past_the_reserve_closed() {
    let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
    let refused = telemetry.meter("t").u64_counter("keel.http.connections.refused").build();
    let limits = ConnectionLimits { max_connections: 3, refused: Some(refused), ..ConnectionLimits::default() };
    let server = start(limits, DrainConfig::default()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        assert!(request(&mut stream, "/hello").await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // Over the cap: a probe is answered, then the connection closes.
    let mut probe = TcpStream::connect(&server.addr).await.unwrap();
    probe.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut probe).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "the probe reached the application (no /livez here): {answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // Anything else gets 503 with Retry-After and the JSON error body.
    let mut other = TcpStream::connect(&server.addr).await.unwrap();
    other.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let (answer, waited) = read_until_closed(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.contains(r#""code":"overloaded""#), "{answer}");
    assert!(waited < Duration::from_secs(1), "answered at once: {waited:?}");
    // Past the reserve too: closed at once, unanswered.
    let mut reserve = Vec::new();
    for _ in 0..keel_http::PROBE_RESERVE {
        reserve.push(TcpStream::connect(&server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut past = TcpStream::connect(&server.addr).await.unwrap();
    let _ = past.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (answer, waited) = read_until_closed(&mut past).await;
    assert!(answer.is_empty() && waited < Duration::from_secs(1), "closed at once, unanswered: {answer:?}");
    let counted = telemetry.encode().unwrap();
    assert!(
        counted.contains(&format!("keel_http_connections_refused_total {}", 3 + keel_http::PROBE_RESERVE)),
        "{counted}"
    );
    // A slot freed is a slot usable.
    drop(reserve);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(&server.addr).await.unwrap();
    assert!(request(&mut again, "/hello").await.starts_with("HTTP/1.1 200"));
    server.shutdown.trigger();
    drop(held);
    server.task.await.unwrap().unwrap();
}

/// Streams opened through the server's gate: one process limit and one per
/// client address, across endpoints; a refused client gets 503 and the
/// connection closes; a closed stream gives its place back.
#[tokio::test]
async fn streams_are_bounded_per_process_and_per_address() {
    use futures_util::StreamExt as _;
    let stream_route = get(|slot: keel_http::StreamSlot| async move {
        let (gate, permit) = slot.open()?;
        let ticks = futures_util::stream::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(axum::response::sse::Event::default().data("tick"))
        })
        .then(|event| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            event
        });
        Ok::<_, keel_http::ApiError>(axum::response::sse::Sse::new(gate.bound(permit, ticks, std::future::pending())))
    });
    let router = Router::new().route("/a/stream", stream_route.clone()).route("/b/stream", stream_route);
    let limits = keel_http::StreamLimits { max_streams: 3, per_client: 2, ..keel_http::StreamLimits::default() };
    let connection_limits =
        ConnectionLimits { streams: keel_http::StreamGate::new(limits), ..ConnectionLimits::default() };
    let gate = connection_limits.streams.clone();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = Shutdown::new();
    let task =
        tokio::spawn(serve_with_limits(listener, router, shutdown.clone(), DrainConfig::default(), connection_limits));
    let open = |from: [u8; 4], path: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
        let mut stream = socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await.unwrap().unwrap();
        (String::from_utf8_lossy(&head[..n]).into_owned(), stream)
    };
    let (first, a1) = open([127, 0, 0, 2], "/a/stream").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (second, _a2) = open([127, 0, 0, 2], "/b/stream").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let (third, mut a3) = open([127, 0, 0, 2], "/a/stream").await;
    assert!(third.starts_with("HTTP/1.1 503") && third.contains("from one address"), "{third}");
    assert!(third.to_ascii_lowercase().contains("connection: close") && third.contains("retry-after"), "{third}");
    read_until_closed(&mut a3).await;
    let (other, _b1) = open([127, 0, 0, 3], "/a/stream").await;
    assert!(other.starts_with("HTTP/1.1 200"), "another address: {other}");
    let (full, _) = open([127, 0, 0, 4], "/b/stream").await;
    assert!(
        full.starts_with("HTTP/1.1 503") && full.contains("too many streams: 3 open"),
        "the process is full: {full}"
    );
    assert_eq!(gate.open_count(), 3);
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gate.open_count() > 2 {
        assert!(Instant::now() < deadline, "a closed stream keeps its place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (back, _c) = open([127, 0, 0, 2], "/a/stream").await;
    assert!(back.starts_with("HTTP/1.1 200"), "{back}");
    shutdown.trigger();
    task.abort();
}

#[tokio::test]
async fn while_draining_responses_say_connection_close_and_are_answered() {
    let drain = DrainConfig { drain_delay: Duration::from_millis(600), grace: Duration::from_secs(5) };
    let server = start(ConnectionLimits::default(), drain).await;
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    let before = request(&mut stream, "/hello").await.to_ascii_lowercase();
    assert!(!before.contains("connection: close"), "{before}");
    server.shutdown.trigger();
    let during = request(&mut stream, "/hello").await.to_ascii_lowercase();
    assert!(during.starts_with("http/1.1 200") && during.contains("connection: close"), "{during}");
    let (_, _) = read_until_closed(&mut stream).await;
    // New connections are still accepted during the drain delay.
    let mut late = TcpStream::connect(&server.addr).await.unwrap();
    assert!(request(&mut late, "/hello").await.to_ascii_lowercase().contains("connection: close"));
    server.task.await.unwrap().unwrap();
    assert!(TcpStream::connect(&server.addr).await.is_err(), "the listener closes after the drain delay");
}
