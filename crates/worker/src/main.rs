//! `worker`: Keel's background process for cluster mode.
//!
//! It needs both `DATABASE_URL` and `REDIS_URL` (it consumes work that `api`
//! replicas produce into shared storage) and exits 64 without them. It serves
//! `/livez`, `/readyz`, `/status` and `/metrics` on `--admin-listen`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use keel_app::config::{CommonArgs, EXIT_CONFIG, parse_args};
use keel_app::{Role, run_process};

/// Keel background worker.
#[derive(Parser, Debug)]
#[command(name = "worker", version, about)]
struct Args {
    /// Address of the admin endpoints (/livez, /readyz, /status, /metrics).
    #[arg(long, env = "KEEL_ADMIN_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:9091")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = match parse_args::<Args>() {
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
    run_process(Role::Worker, args.admin_listen, &args.common)
}
