//! Bounds on Server-Sent Event streams: how many a process serves, how many
//! one client address may hold, and how long one lasts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableGauge};

use crate::{ApiError, ClientAddr};

/// How many streams, for whom, for how long.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Streams served at once by the process (`--max-streams`, 1 000).
    pub max_streams: usize,
    /// Streams one client address may hold (32).
    pub per_client: usize,
    /// A stream ends after this long (`--stream-max-age`, 1 h); clients
    /// reconnect.
    pub max_age: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self { max_streams: 1000, per_client: 32, max_age: Duration::from_secs(3600) }
    }
}

/// Counts the open streams of a process against its [`StreamLimits`];
/// cloning shares it. Every SSE endpoint opens its stream through the same
/// gate, so the limits hold across endpoints.
///
/// ```
/// use keel_http::{StreamGate, StreamLimits};
/// let gate = StreamGate::new(StreamLimits { max_streams: 1, ..StreamLimits::default() });
/// let first = gate.open(None).expect("room for one");
/// assert_eq!(gate.open(None).unwrap_err().status(), 503);
/// drop(first);
/// assert_eq!(gate.open_count(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct StreamGate {
    inner: Arc<Gate>,
}

#[derive(Debug)]
struct Gate {
    limits: StreamLimits,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    refused: OnceLock<Counter<u64>>,
    gauge: OnceLock<ObservableGauge<u64>>,
}

impl Default for StreamGate {
    fn default() -> Self {
        Self::new(StreamLimits::default())
    }
}

impl StreamGate {
    /// A gate with `limits`.
    pub fn new(limits: StreamLimits) -> Self {
        let inner = Gate {
            limits,
            open: AtomicUsize::new(0),
            per_client: Mutex::default(),
            refused: OnceLock::new(),
            gauge: OnceLock::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Exports `keel_http_streams_open` and
    /// `keel_http_streams_refused_total{reason="process"|"client"}`.
    pub fn instrument(&self, telemetry: &dyn keel_telemetry::MeterSource) {
        let meter = telemetry.meter("keel-http");
        let _ = self.inner.refused.set(
            meter
                .u64_counter(keel_telemetry::names::HTTP_STREAMS_REFUSED)
                .with_description("SSE streams refused (503) by --max-streams or the per-client limit")
                .build(),
        );
        let gate = Arc::downgrade(&self.inner);
        let _ = self.inner.gauge.set(
            meter
                .u64_observable_gauge(keel_telemetry::names::HTTP_STREAMS_OPEN)
                .with_description("SSE streams open")
                .with_callback(move |g| {
                    if let Some(gate) = gate.upgrade() {
                        g.observe(gate.open.load(Ordering::Acquire) as u64, &[]);
                    }
                })
                .build(),
        );
    }

    /// The limits.
    pub fn limits(&self) -> &StreamLimits {
        &self.inner.limits
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Takes a place for one stream of `client`, or answers why not (503
    /// with `Retry-After`, counted).
    pub fn open(&self, client: Option<ClientAddr>) -> Result<StreamPermit, ApiError> {
        let gate = &self.inner;
        let taken = gate.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < gate.limits.max_streams).then_some(open + 1)
        });
        if taken.is_err() {
            return Err(self.refuse("process", format!("too many streams: {} open", gate.limits.max_streams)));
        }
        let address = client.map(|c| c.0.ip());
        if let Some(address) = address {
            let mut per_client = gate.per_client.lock().unwrap_or_else(PoisonError::into_inner);
            let held = per_client.entry(address).or_insert(0);
            if *held >= gate.limits.per_client {
                drop(per_client);
                gate.open.fetch_sub(1, Ordering::AcqRel);
                return Err(self
                    .refuse("client", format!("too many streams from one address: {} open", gate.limits.per_client)));
            }
            *held += 1;
        }
        Ok(StreamPermit { gate: self.inner.clone(), address })
    }

    fn refuse(&self, reason: &'static str, message: String) -> ApiError {
        if let Some(refused) = self.inner.refused.get() {
            refused.add(1, &[KeyValue::new("reason", reason)]);
        }
        ApiError::overloaded(message)
    }

    /// `stream` as a bounded stream: it holds `permit` until it ends, and
    /// ends at the gate's `max_age` or when `stop` fires (shutdown).
    pub fn bound<S, F>(
        &self,
        permit: StreamPermit,
        stream: S,
        stop: F,
    ) -> impl Stream<Item = S::Item> + Send + use<S, F>
    where
        S: Stream + Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use futures_util::StreamExt as _;
        let max_age = self.inner.limits.max_age;
        let end = Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(max_age) => {}
                () = stop => {}
            }
        });
        Held { inner: Box::pin(stream.take_until(end)), _permit: permit }
    }
}

/// The gate and client of a request, to open a stream with
/// ([`StreamSlot::open`]): the server puts both in every request (the gate
/// from [`crate::ConnectionLimits::streams`]); a router called without the
/// server uses one default gate per process.
#[derive(Debug, Clone)]
pub struct StreamSlot {
    gate: StreamGate,
    client: Option<ClientAddr>,
    shutdown: Option<keel_core::Shutdown>,
}

impl StreamSlot {
    /// Takes a place for the stream, or the 503 to answer.
    pub fn open(&self) -> Result<(StreamGate, StreamPermit), ApiError> {
        Ok((self.gate.clone(), self.gate.open(self.client)?))
    }

    /// Resolves once the server serving the request starts shutting down
    /// (never for a router called without the server): a stream ends then,
    /// instead of holding its connection, and the drain, for the whole
    /// grace period.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static + use<> {
        let token = self.shutdown.as_ref().map(keel_core::Shutdown::token);
        async move {
            match token {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for StreamSlot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        static FALLBACK: OnceLock<StreamGate> = OnceLock::new();
        Ok(match parts.extensions.get::<Arc<Connected>>() {
            Some(connected) => Self {
                gate: connected.streams.clone(),
                client: Some(connected.peer),
                shutdown: Some(connected.shutdown.clone()),
            },
            None => Self { gate: FALLBACK.get_or_init(StreamGate::default).clone(), client: None, shutdown: None },
        })
    }
}

/// What the server puts in every request: its connection's peer, the
/// server's gate and its shutdown (one shared pointer per connection).
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) peer: ClientAddr,
    pub(crate) streams: StreamGate,
    pub(crate) shutdown: keel_core::Shutdown,
}

/// One stream's place at the gate; released when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    gate: Arc<Gate>,
    address: Option<IpAddr>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            let mut per_client = self.gate.per_client.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(held) = per_client.get_mut(&address) {
                *held -= 1;
                if *held == 0 {
                    per_client.remove(&address);
                }
            }
        }
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that holds its permit.
struct Held<S> {
    inner: Pin<Box<S>>,
    _permit: StreamPermit,
}

impl<S: Stream> Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: [u8; 4]) -> Option<ClientAddr> {
        Some(ClientAddr(std::net::SocketAddr::from((ip, 1000))))
    }

    #[test]
    fn the_process_and_each_address_are_bounded_and_places_come_back() {
        let gate = StreamGate::new(StreamLimits { max_streams: 3, per_client: 2, ..StreamLimits::default() });
        let a1 = gate.open(client([127, 0, 0, 2])).unwrap();
        let _a2 = gate.open(client([127, 0, 0, 2])).unwrap();
        let refused = gate.open(client([127, 0, 0, 2])).unwrap_err();
        assert_eq!((refused.status().as_u16(), refused.code()), (503, "overloaded"));
        let _b1 = gate.open(client([127, 0, 0, 3])).unwrap();
        assert_eq!(gate.open(client([127, 0, 0, 4])).unwrap_err().status(), 503, "the process is full");
        assert_eq!(gate.open_count(), 3);
        drop(a1);
        assert!(gate.open(client([127, 0, 0, 2])).is_ok(), "a place of that address came back");
        assert_eq!(gate.open_count(), 2, "the permit of that last open was dropped at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bound_stream_ends_at_its_age_and_gives_its_place_back() {
        use futures_util::StreamExt as _;
        let limits = StreamLimits { max_age: Duration::from_secs(60), ..StreamLimits::default() };
        let gate = StreamGate::new(limits);
        let permit = gate.open(None).unwrap();
        let ticks = futures_util::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Some((n, n + 1))
        });
        let items: Vec<u32> = gate.bound(permit, ticks, std::future::pending()).collect().await;
        assert_eq!(items.len(), 5, "ticks at 10..50 s, ended at 60 s");
        assert_eq!(gate.open_count(), 0);
    }
}
