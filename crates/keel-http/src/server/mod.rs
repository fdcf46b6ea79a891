//! Serving a router with Keel's shutdown sequence.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::response::{IntoResponse as _, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use keel_core::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

mod io;

use io::ConnectionIo;

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
/// head in time, or stay idle between requests, are closed.
///
/// Beyond `max_connections`, up to [`PROBE_RESERVE`] more connections are
/// still accepted, for one request each: `/livez` and `/readyz` are answered
/// as usual (a probe is never starved by clients holding every connection),
/// anything else gets 503 with `Retry-After` and the JSON error body, and
/// the connection is closed after the answer. Past the reserve too, new
/// connections are closed at once.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Longest wait for a request's head (line and headers), counted from
    /// its first byte, and for the first request from the connection's
    /// start: 10 s.
    pub header_read_timeout: Duration,
    /// Longest time a connection may go with nothing read or written (a
    /// keep-alive connection between requests): 60 s.
    pub keep_alive_idle: Duration,
    /// Connections served at once: 10 000.
    pub max_connections: usize,
    /// Counts connections refused for being over `max_connections`.
    pub refused: Option<opentelemetry::metrics::Counter<u64>>,
    /// The Server-Sent Event streams every request may open
    /// ([`crate::StreamSlot`]): one gate for the whole server.
    pub streams: crate::StreamGate,
}

/// Connections accepted past `max_connections` to answer probes (and 503
/// to anything else).
pub const PROBE_RESERVE: usize = 64;

/// The paths an over-the-cap connection is still served: the probes.
const PROBES: [&str; 2] = ["/livez", "/readyz"];

/// The longest an over-the-cap connection may take to send its request head.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The address of the client a request came from, as the stream gate counts
/// it (the server hands it to every request with the gate; a router called
/// without the server has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl ConnectionLimits {
    /// The counter of refused connections (`keel_http_connections_refused_total`) on `meter`.
    pub fn refused_counter(meter: &opentelemetry::metrics::Meter) -> opentelemetry::metrics::Counter<u64> {
        meter
            .u64_counter(keel_telemetry::names::HTTP_CONNECTIONS_REFUSED)
            .with_description("Connections over --max-connections: answered 503 (probes excepted) or closed at once")
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
            streams: crate::StreamGate::default(),
        }
    }
}

/// Serves `router` until `shutdown` is triggered (by the program, or by a
/// signal once [`Shutdown::trigger_on_signals`] was called), then: waits
/// `drain_delay` (readiness already reports 503, and every response carries
/// `Connection: close` so keep-alive clients move elsewhere), stops
/// accepting, lets in-flight requests finish, and drains `shutdown` (waits
/// for every task on its tracker), all within `grace`. Connections are held
/// to the default [`ConnectionLimits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: DrainConfig,
) -> Result<(), ServeError> {
    // Handlers (and the layers on them) become services once, here,
    // instead of on every request.
    serve_with_limits(listener, router.with_state(()), shutdown.clone(), drain, ConnectionLimits::default()).await?;
    shutdown.drain(shutdown.remaining(drain.grace)).await.map_err(|_| ServeError::GraceExpired(drain.grace))
}

/// [`serve`] with explicit [`ConnectionLimits`], for any service that is
/// always ready: a [`Router`], or the [`crate::StartingGate`] in front of one.
///
/// A `Router` is served as given: call `.with_state(())` on it first (as
/// [`serve`] does), or axum turns its handlers into services again on every
/// request.
///
/// Unlike [`serve`], this returns once the last connection has ended and
/// leaves `shutdown`'s tracker to the caller: close what the background
/// tasks serve (queues, batchers) first, then [`Shutdown::drain`] what is
/// left of the grace period.
pub async fn serve_with_limits<S>(
    listener: TcpListener,
    app: S,
    shutdown: Shutdown,
    drain: DrainConfig,
    limits: ConnectionLimits,
) -> Result<(), ServeError>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    // Set once shutdown starts (by the accept loop, which wakes on it): one
    // atomic load per response instead of the token's lock.
    let closing = Arc::new(AtomicBool::new(false));
    let stop_accepting = async {
        shutdown.triggered().await;
        closing.store(true, Ordering::Relaxed);
        tokio::time::sleep(drain.drain_delay.min(shutdown.remaining(drain.grace))).await;
    };
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
    let reserve_limits = ConnectionLimits {
        header_read_timeout: limits.header_read_timeout.min(RESERVE_HEADER_TIMEOUT),
        keep_alive_idle: limits.keep_alive_idle.min(RESERVE_HEADER_TIMEOUT),
        ..limits.clone()
    };
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // The connection's IO keeps the header-read deadline (see
    // `ConnectionIo`): hyper's own arms a timer for every request.
    builder.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    tokio::pin!(stop_accepting);
    loop {
        let accepted = tokio::select! {
            () = &mut stop_accepting => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors or a connection reset before accept:
                // keep serving the others.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (permit, over_cap) = match connections.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => {
                if let Some(refused) = &limits.refused {
                    refused.add(1, &[]);
                }
                match reserve.clone().try_acquire_owned() {
                    Ok(permit) => (permit, true),
                    Err(_) => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let exchange = Arc::new(Exchange {
            heads: AtomicU64::new(0),
            in_request: AtomicBool::new(false),
            closing: closing.clone(),
            over_cap,
            connection: Arc::new(crate::streams::Connected {
                peer: ClientAddr(peer),
                streams: limits.streams.clone(),
                shutdown: shutdown.clone(),
            }),
        });
        let io =
            ConnectionIo::new(TokioIo::new(stream), if over_cap { &reserve_limits } else { &limits }, exchange.clone());
        let service = ConnectionService { app: app.clone(), exchange };
        let connection = graceful.watch(builder.serve_connection(io, service));
        // On the tracker: the drain below also waits for the last
        // connection's task to let go of its permit.
        shutdown.spawn(async move {
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
    // Each connection's task lets go of its permit as it ends: all of them
    // back means no connection task is left.
    let ended = async {
        let _ = connections.acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX)).await;
        let _ = reserve.acquire_many(PROBE_RESERVE as u32).await;
    };
    tokio::time::timeout(shutdown.remaining(drain.grace), ended)
        .await
        .map_err(|_| ServeError::GraceExpired(drain.grace))
}

/// What a connection's IO and its service share.
#[derive(Debug)]
struct Exchange {
    /// Requests whose head was read (the service was called for them).
    heads: AtomicU64,
    /// A request is being handled: what is read now is its body.
    in_request: AtomicBool,
    /// Shutdown started: responses say `Connection: close`.
    closing: Arc<AtomicBool>,
    /// Accepted past `max_connections`: probes only, one request.
    over_cap: bool,
    /// Who is at the other end.
    /// Who is at the other end, and the server's stream gate: one pointer
    /// handed to every request of the connection.
    connection: Arc<crate::streams::Connected>,
}

/// The application as one connection's service: marks where requests start
/// and end for [`ConnectionIo`], and adds `Connection: close` while
/// draining.
#[derive(Clone)]
struct ConnectionService<S> {
    app: S,
    exchange: Arc<Exchange>,
}

impl<S> hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for ConnectionService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn call(&self, mut request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.exchange.heads.fetch_add(1, Ordering::Relaxed);
        self.exchange.in_request.store(true, Ordering::Relaxed);
        if self.exchange.over_cap && !PROBES.contains(&request.uri().path()) {
            let refusal = crate::ApiError::overloaded("too many connections: retry later").into_response();
            return Answer { inner: None, refusal: Some(refusal), exchange: self.exchange.clone() };
        }
        request.extensions_mut().insert(self.exchange.connection.clone());
        // Always ready (see `serve_with_limits`).
        let inner = self.app.clone().call(request.map(axum::body::Body::new));
        Answer { inner: Some(inner), refusal: None, exchange: self.exchange.clone() }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ConnectionService`].
    struct Answer<F> {
        #[pin]
        inner: Option<F>,
        // An answer made without the application (over the connection cap).
        refusal: Option<Response>,
        exchange: Arc<Exchange>,
    }
}

impl<F: std::future::Future<Output = Result<Response, Infallible>>> std::future::Future for Answer<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match (this.inner.as_pin_mut(), this.refusal.take()) {
            (_, Some(refusal)) => refusal,
            (Some(inner), None) => {
                let Ok(response) = std::task::ready!(inner.poll(cx));
                response
            }
            (None, None) => crate::ApiError::internal("answered twice").into_response(),
        };
        this.exchange.in_request.store(false, Ordering::Relaxed);
        if this.exchange.closing.load(Ordering::Relaxed) || this.exchange.over_cap {
            // Answered, then closed: the client's next request goes to a
            // replica that is not about to stop listening.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
