//! `worker`: Keel's background process for cluster mode.
//!
//! It needs both `DATABASE_URL` and `REDIS_URL` (it consumes work that `api`
//! replicas produce into shared storage) and exits 64 without them. It serves
//! `/livez`, `/readyz` and `/metrics` on `--admin-listen`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use keel_http::cli::{CommonArgs, EXIT_CONFIG, EXIT_SOFTWARE, EXIT_UNAVAILABLE};
use keel_http::{Services, app_router, serve};

/// Keel background worker.
#[derive(Parser, Debug)]
#[command(name = "worker", version, about)]
struct Args {
    /// Address of the admin endpoints (/livez, /readyz, /metrics).
    #[arg(long, env = "KEEL_ADMIN_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:9091")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = match keel_http::cli::parse_args::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let missing: Vec<&str> = [("DATABASE_URL", &args.common.database_url), ("REDIS_URL", &args.common.redis_url)]
        .into_iter()
        .filter(|(_, v)| v.as_deref().is_none_or(|v| v.trim().is_empty()))
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "worker: cluster mode required: set {} (in embedded mode `api` does the worker's duties itself)",
            missing.join(" and ")
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(err) => {
            eprintln!("worker: cannot start the async runtime: {err}");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let services = match Services::start("worker", &args.common).await {
        Ok(services) => services,
        Err(err) => {
            eprintln!("worker: {err}");
            return err.exit_code();
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.admin_listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(listen = %args.admin_listen, %err, "cannot listen");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| args.admin_listen.to_string(), |a| a.to_string());
    tracing::info!(mode = %services.mode, %addr, "worker admin endpoints on http://{addr}");

    match serve(listener, app_router(&services), services.shutdown.clone(), services.drain_config()).await {
        Ok(()) => {
            tracing::info!("worker stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(%err, "worker stopped with an error");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}
