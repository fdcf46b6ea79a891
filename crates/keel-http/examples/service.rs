//! A service of your own on keel-http (feature `health`): your routes
//! behind Keel's middleware (request ids, timeouts, body limits, panics
//! answered as JSON errors, golden-signal metrics), beside `/metrics` and
//! the health probes, served with a graceful drain on shutdown.
//!
//! Run it with `cargo run -p keel-http --features health --example service`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::time::Duration;

use axum::{Router, extract::Path, routing::get};
use keel_core::Shutdown;
use keel_health_status::{ComponentSpec, Health, MandatoryList, Mode, Report, StatusCodes};
use keel_http::{AppInfo, DrainConfig, HttpMetrics, MiddlewareConfig, health_api, metrics_api, middleware, serve};
use keel_telemetry::Telemetry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = Telemetry::new("example")?;
    let shutdown = Shutdown::new();
    let health = Health::new(MandatoryList::default(), Mode::Must);
    health.register(ComponentSpec::new("self").interval(Duration::from_millis(20)), || async { Report::ok() })?;

    let routes =
        Router::new().route("/hello/{name}", get(|Path(name): Path<String>| async move { format!("hello {name}") }));
    let app = middleware::apply(routes, &MiddlewareConfig::default(), &HttpMetrics::new(&telemetry))
        .merge(axum::Router::from(metrics_api(telemetry.clone())))
        .merge(axum::Router::from(health_api(
            health.clone(),
            AppInfo::build("example"),
            StatusCodes::default(),
            shutdown.clone(),
        )));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(serve(listener, app, shutdown.clone(), DrainConfig::default()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !fetch(address, "/readyz").await?.starts_with("HTTP/1.0 200") {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hello = fetch(address, "/hello/ada").await?;
    assert!(hello.to_ascii_lowercase().contains("x-request-id") && hello.ends_with("hello ada"), "{hello}");
    let metrics = fetch(address, "/metrics").await?;
    assert!(metrics.contains("http_route=\"/hello/{name}\""), "{metrics}");
    println!("ready; /hello/ada answered {:?}", hello.lines().last().unwrap_or_default());

    shutdown.trigger();
    server.await??;
    println!("drained and stopped");
    Ok(())
}

/// One HTTP/1.0 GET, the whole answer (status line, headers, body).
async fn fetch(address: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: example\r\n\r\n").as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}
