//! The whole life of a Keel binary after argument parsing.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use keel_core::Shutdown;

use keel_http::{ServeError, serve_with_limits, starting_gate};

use crate::config::{CommonArgs, EXIT_SOFTWARE, EXIT_UNAVAILABLE};
use crate::{Role, Services, StartError, Startup};

/// Builds the runtime, binds `listen` at once, starts [`Services`] for
/// `role` (answering `/livez` and `/readyz` meanwhile), logs
/// `"<role> listening on http://<addr>"`, serves until SIGINT/SIGTERM,
/// drains, and returns the exit code: 0 clean, 64 configuration, 69
/// unavailable, 70 internal.
pub fn run_process(role: Role, listen: SocketAddr, args: &CommonArgs) -> ExitCode {
    let process = role.name();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(role, listen, args)),
        Err(err) => {
            eprintln!("{process}: cannot start the async runtime: {err}");
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

async fn run(role: Role, listen: SocketAddr, args: &CommonArgs) -> ExitCode {
    let (process, announce) = (role.name(), role.announce());
    let prepared = match Services::prepare(role, args) {
        Ok(prepared) => prepared,
        Err(err) => return fail(process, &err),
    };
    // Listen before the stores answer: /livez is 200 and /readyz 503 naming
    // what is missing while start-up waits for them.
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%listen, %err, "cannot listen");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
    let shutdown = Shutdown::new();
    if let Err(source) = shutdown.trigger_on_signals() {
        return fail(process, &StartError::Os { what: "install signal handlers", source });
    }
    let (startup, app) = (Startup::default(), Arc::new(OnceLock::new()));
    let grace = prepared.drain_config().grace;
    // On the tracker too: it ends (and is awaited below) before the drain.
    let server = shutdown.spawn(serve_with_limits(
        listener,
        starting_gate(startup.reporter(), app.clone()),
        shutdown.clone(),
        prepared.drain_config(),
        prepared.connection_limits(),
    ));
    let services = match Services::connect(prepared, shutdown.clone(), &startup).await {
        Ok(services) => services,
        Err(err) => {
            shutdown.trigger();
            let _ = server.await;
            return fail(process, &err);
        }
    };
    let _ = app.set(services.router());
    tracing::info!(mode = %services.mode(), %addr, "{process} {announce} http://{addr}");

    let served = server.await.unwrap_or_else(|err| Err(ServeError::Io(std::io::Error::other(err))));
    services.close().await;
    // Last, the tasks the queues and batchers ran until their close above,
    // and any other still on the tracker.
    let drained = shutdown.drain(shutdown.remaining(grace)).await;
    if let Err(err) = &drained {
        tracing::error!(%err, "background tasks outlived the shutdown");
    }
    let served = served.and(drained.map_err(|_| ServeError::GraceExpired(grace)));
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

fn fail(process: &str, err: &StartError) -> ExitCode {
    if !matches!(err, StartError::Stopped) {
        eprintln!("{process}: {err}");
    }
    err.exit_code()
}
