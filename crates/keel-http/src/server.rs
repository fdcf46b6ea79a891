//! Serving a router with Keel's shutdown sequence.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keel_core::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the server winds down.
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// After shutdown starts, keep accepting for this long while `/readyz`
    /// answers 503, so load balancers notice before connections are refused.
    pub drain_delay: Duration,
    /// The whole budget, counted from when shutdown starts: the drain delay,
    /// in-flight requests, background tasks and (in the binaries) the
    /// final flushes of queues and batchers all fit in it.
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

/// What one client may hold: connections that do not finish their request
/// head in time, or stay idle between requests, are closed; beyond
/// `max_connections` new connections are closed at once.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Longest wait for a request's head (line and headers): 10 s.
    pub header_read_timeout: Duration,
    /// Longest idle time of a keep-alive connection between requests: 60 s.
    pub keep_alive_idle: Duration,
    /// Connections served at once: 10 000.
    pub max_connections: usize,
    /// Counts connections refused for being over `max_connections`.
    pub refused: Option<opentelemetry::metrics::Counter<u64>>,
}

impl ConnectionLimits {
    /// The counter of refused connections (`keel_http_connections_refused_total`) on `meter`.
    pub fn refused_counter(meter: &opentelemetry::metrics::Meter) -> opentelemetry::metrics::Counter<u64> {
        meter
            .u64_counter(keel_telemetry::names::HTTP_CONNECTIONS_REFUSED)
            .with_description("Connections closed at once for being over --max-connections")
            .build()
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(60),
            max_connections: 10_000,
            refused: None,
        }
    }
}

/// Serves `router` until `shutdown` is triggered (by the program, or by a
/// signal once [`Shutdown::trigger_on_signals`] was called), then: waits
/// `drain_delay` (readiness already reports 503, and every response carries
/// `Connection: close` so keep-alive clients move elsewhere), stops
/// accepting, lets in-flight requests finish, and waits for background
/// tasks, all within `grace`. Connections are held to the default
/// [`ConnectionLimits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: DrainConfig,
) -> Result<(), ServeError> {
    serve_with_limits(listener, router, shutdown, drain, ConnectionLimits::default()).await
}

/// [`serve`] with explicit [`ConnectionLimits`].
pub async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: DrainConfig,
    limits: ConnectionLimits,
) -> Result<(), ServeError> {
    // Behind an Arc: the closure is cloned for every request, and cloning a
    // Shutdown takes its token's lock.
    let closing = Arc::new(shutdown.clone());
    let router = router
        .layer(tower::util::MapResponseLayer::new(move |mut response: axum::response::Response| {
            if closing.is_triggered() {
                // Answered, then closed: the client's next request goes to a
                // replica that is not about to stop listening.
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }))
        // Handlers (and the layers on them) become services once, here,
        // instead of on every request.
        .with_state(());
    let stop_accepting = async {
        shutdown.triggered().await;
        tokio::time::sleep(drain.drain_delay.min(shutdown.remaining(drain.grace))).await;
    };
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(stop_accepting);
    loop {
        let accepted = tokio::select! {
            () = &mut stop_accepting => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors or a connection reset before accept:
                // keep serving the others.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Some(refused) = &limits.refused {
                refused.add(1, &[]);
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = IdleTimeout::new(TokioIo::new(stream), limits.keep_alive_idle);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    // Connections accepted last may not have had their request read yet:
    // give them a moment to be answered (each answer says Connection: close)
    // before idle connections are closed under them.
    let settle = shutdown.remaining(drain.grace).min(Duration::from_millis(500));
    let all_free = connections.acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX));
    let _ = tokio::time::timeout(settle, all_free).await;
    // In-flight requests finish; idle keep-alive connections close now.
    if tokio::time::timeout(shutdown.remaining(drain.grace), graceful.shutdown()).await.is_err() {
        return Err(ServeError::GraceExpired(drain.grace));
    }
    shutdown.drain(shutdown.remaining(drain.grace)).await.map_err(|_| ServeError::GraceExpired(drain.grace))
}

/// A connection's IO that fails reads once nothing was read or written for
/// `idle`: an idle keep-alive connection (or a client that stopped
/// mid-request) is closed. A response being written counts as activity.
///
/// Activity only stamps the time; the timer is moved to the last activity
/// when it fires, so a busy connection costs no timer re-registration per
/// read or write.
struct IdleTimeout<T> {
    io: T,
    idle: Duration,
    last_active: tokio::time::Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(io: T, idle: Duration) -> Self {
        Self { io, idle, last_active: tokio::time::Instant::now(), deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn active(&mut self) {
        self.last_active = tokio::time::Instant::now();
    }

    /// Ready once `idle` passed since the last activity.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.deadline.as_mut().poll(cx));
            let due = self.last_active + self.idle;
            if due <= tokio::time::Instant::now() {
                return Poll::Ready(());
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.active();
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if result.is_ready() {
            self.active();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            self.active();
        }
        result
    }
}
