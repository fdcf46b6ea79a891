//! Health aggregation with keel-health-status, served by a plain axum app:
//! a `tcp` check watches a listening socket, a `Must` group makes it
//! mandatory, and `/health` answers from the cached aggregate (one atomic
//! load per request) with 200 or 503.
//!
//! Run it with `cargo run -p keel-health-status --example tcp_check`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::time::Duration;

use axum::{Router, http::StatusCode, routing::get};
use keel_core::Status;
use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, checks};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The dependency to watch: any listening socket (a database, a broker).
    let dependency = TcpListener::bind("127.0.0.1:0").await?;
    let target = dependency.local_addr()?.to_string();

    let groups = MandatoryList::new(vec![Mandatory::new("storage", Mode::Must, ["db"])])?;
    let health = Health::new(groups, Mode::Should);
    health.register_shared(ComponentSpec::new("db").interval(Duration::from_millis(50)), checks::tcp(target))?;

    let probe = health.clone();
    let app = Router::new().route(
        "/health",
        get(move || {
            let status = probe.cached_status();
            let code = if status == Status::Ko { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            async move { (code, status.to_string()) }
        }),
    );
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let address = server.local_addr()?;
    tokio::spawn(async move { axum::serve(server, app).await });

    // Components start KO; two successful checks reach OK.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health.cached_status() != Status::Ok {
        assert!(tokio::time::Instant::now() < deadline, "db never became OK: {:?}", health.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let answer = get_health(address).await?;
    assert!(answer.starts_with("HTTP/1.0 200") && answer.ends_with("OK"), "{answer}");
    println!("{}", answer.lines().next().unwrap_or_default());
    println!("db: {:?}", health.snapshot().components["db"].status);
    drop(dependency);
    Ok(())
}

async fn get_health(address: std::net::SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}
