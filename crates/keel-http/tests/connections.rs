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
async fn connections_over_the_cap_are_closed_at_once_and_counted() {
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
    let mut over = TcpStream::connect(&server.addr).await.unwrap();
    let _ = over.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (answer, waited) = read_until_closed(&mut over).await;
    assert!(answer.is_empty() && waited < Duration::from_secs(1), "refused at once, unanswered: {answer:?}");
    assert!(telemetry.encode().unwrap().contains("keel_http_connections_refused_total 1"));
    // A slot freed is a slot usable.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(&server.addr).await.unwrap();
    assert!(request(&mut again, "/hello").await.starts_with("HTTP/1.1 200"));
    server.shutdown.trigger();
    drop(held);
    server.task.await.unwrap().unwrap();
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
