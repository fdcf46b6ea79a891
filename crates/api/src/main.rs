//! `api`: the Keel reference HTTP service.
//!
//! Runs in embedded mode (SQLite under `--data-dir`, in-process cache and bus)
//! unless `DATABASE_URL` / `REDIS_URL` are set. In embedded mode it also does
//! the worker's duties in-process.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use keel_http::cli::CommonArgs;

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
    match keel_http::cli::parse_args::<Args>() {
        Ok(args) => keel_http::run_process("api", args.listen, &args.common, "listening on"),
        Err(code) => code,
    }
}
