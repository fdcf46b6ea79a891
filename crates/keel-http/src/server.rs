//! Serving a router with Keel's shutdown sequence.

use std::time::Duration;

use axum::Router;
use keel_core::Shutdown;
use tokio::net::TcpListener;

/// How the server winds down.
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// After shutdown starts, keep accepting for this long while `/readyz`
    /// answers 503, so load balancers notice before connections are refused.
    pub drain_delay: Duration,
    /// Then allow this long for in-flight requests and background tasks.
    pub grace: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { drain_delay: Duration::ZERO, grace: Duration::from_secs(10) }
    }
}

/// Why serving ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server failed while running.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// In-flight requests or background tasks outlived the grace period.
    #[error("shutdown did not complete within {0:?}")]
    GraceExpired(Duration),
}

/// Serves `router` until `shutdown` is triggered (by the program, or by a
/// signal once [`Shutdown::trigger_on_signals`] was called), then: waits `drain_delay` (readiness already reports 503), stops
/// accepting, lets in-flight requests finish, and waits for background tasks,
/// all within `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: DrainConfig,
) -> Result<(), ServeError> {
    let stop_accepting = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.triggered().await;
            tokio::time::sleep(drain.drain_delay).await;
        }
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(stop_accepting);
    let mut server = std::pin::pin!(server.into_future());

    // Run until shutdown starts (or the server fails on its own).
    tokio::select! {
        result = &mut server => {
            shutdown.trigger();
            result?;
        }
        () = shutdown.triggered() => {
            let limit = drain.drain_delay + drain.grace;
            match tokio::time::timeout(limit, &mut server).await {
                Ok(result) => result?,
                Err(_) => return Err(ServeError::GraceExpired(drain.grace)),
            }
        }
    }
    shutdown.drain(drain.grace).await.map_err(|_| ServeError::GraceExpired(drain.grace))
}
