//! The whole life of a Keel binary after argument parsing.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::cli::{CommonArgs, EXIT_SOFTWARE, EXIT_UNAVAILABLE};
use crate::{Services, app_router, serve};

/// Builds the runtime, starts [`Services`], binds `listen`, logs
/// `"<process> <announce> http://<addr>"`, serves until SIGINT/SIGTERM, drains,
/// and returns the exit code: 0 clean, 64 configuration, 69 unavailable, 70
/// internal.
pub fn run_process(process: &'static str, listen: SocketAddr, args: &CommonArgs, announce: &'static str) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(process, listen, args, announce)),
        Err(err) => {
            eprintln!("{process}: cannot start the async runtime: {err}");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

async fn run(process: &'static str, listen: SocketAddr, args: &CommonArgs, announce: &'static str) -> ExitCode {
    let services = match Services::start(process, args).await {
        Ok(services) => services,
        Err(err) => {
            eprintln!("{process}: {err}");
            return err.exit_code();
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%listen, %err, "cannot listen");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
    tracing::info!(mode = %services.mode, %addr, "{process} {announce} http://{addr}");

    let served = serve(listener, app_router(&services), services.shutdown.clone(), services.drain_config()).await;
    services.close().await;
    match served {
        Ok(()) => {
            tracing::info!("{process} stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(%err, "{process} stopped with an error");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}
