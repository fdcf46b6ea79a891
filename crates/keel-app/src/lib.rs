//! The composition root of Keel's `api` and `worker` binaries.
//!
//! This crate, and only this crate, reads flags, environment and files
//! ([`config`]). It wires storage by [`RunMode`] (SQLite and in-process
//! cache and bus when neither `DATABASE_URL` nor `REDIS_URL` is set;
//! PostgreSQL and Redis otherwise), decides by [`Role`] what a process
//! starts and serves, sets the health policy (database, Redis, settings,
//! batcher and entries checks), wires operator monitoring, and runs the
//! process from bind to drained exit ([`run_process`]).
//!
//! The functional crates (`keel-batcher`, `keel-write-behind`, ...) hold the
//! domain rules; `keel-http` adapts them to HTTP.
//!
//! # Example
//!
//! A binary is a few lines: parse the flags, run the role.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::process::ExitCode;
//!
//! use clap::Parser;
//! use keel_app::config::CommonArgs;
//! use keel_app::{Role, run_process};
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[arg(long, default_value = "127.0.0.1:8080")]
//!     listen: SocketAddr,
//!     #[command(flatten)]
//!     common: CommonArgs,
//! }
//!
//! fn main() -> ExitCode {
//!     match keel_app::config::parse_args::<Args>() {
//!         Ok(args) => run_process(Role::Api, args.listen, &args.common),
//!         Err(code) => code,
//!     }
//! }
//! ```

mod checks;
mod components;
pub mod config;
mod core;
mod error;
mod operators;
mod prepare;
mod process;
mod role;
mod router;
mod services;
mod startup;

pub use checks::STORAGE_GROUP;
pub use error::StartError;
pub use process::run_process;
pub use role::{Role, RunMode};
pub use services::{Prepared, Services};
pub use startup::Startup;

/// The code in `docs/ARCHITECTURE.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/ARCHITECTURE.md")]
pub struct ArchitectureGuide;

/// The code in `docs/OPERATIONS.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/OPERATIONS.md")]
pub struct OperationsGuide;
