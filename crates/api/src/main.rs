//! `api`: the Keel reference HTTP service.
//!
//! Runs in embedded mode (SQLite under `--data-dir`, in-process cache and bus)
//! unless `DATABASE_URL` / `REDIS_URL` are set. In embedded mode it also does
//! the worker's duties in-process.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use keel_app::config::{CommonArgs, parse_args};
use keel_app::{Role, run_process};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    match parse_args::<Args>() {
        Ok(args) => run_process(Role::Api, args.listen, &args.common),
        Err(code) => code,
    }
}
