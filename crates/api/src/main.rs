//! `api`: the Keel reference HTTP service.
//!
//! Runs in embedded mode (SQLite under `--data-dir`, in-process cache and bus)
//! unless `DATABASE_URL` / `REDIS_URL` are set. In embedded mode it also does
//! the worker's duties in-process.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use keel_http::cli::{CommonArgs, EXIT_SOFTWARE, EXIT_UNAVAILABLE};
use keel_http::{Services, app_router, serve};

/// Keel API server.
#[derive(Parser, Debug)]
#[command(name = "api", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "KEEL_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = match keel_http::cli::parse_args::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(err) => {
            eprintln!("api: cannot start the async runtime: {err}");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let services = match Services::start("api", &args.common).await {
        Ok(services) => services,
        Err(err) => {
            eprintln!("api: {err}");
            return err.exit_code();
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(listen = %args.listen, %err, "cannot listen");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| args.listen.to_string(), |a| a.to_string());
    tracing::info!(mode = %services.mode, %addr, "api listening on http://{addr}");

    match serve(listener, app_router(&services), services.shutdown.clone(), services.drain_config()).await {
        Ok(()) => {
            tracing::info!("api stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(%err, "api stopped with an error");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}
