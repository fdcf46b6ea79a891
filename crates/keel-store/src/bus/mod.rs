//! Publish/subscribe of byte payloads on named channels.

mod fanout;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::sync::Arc;

use bytes::Bytes;
use keel_telemetry::MeterSource;
use opentelemetry::KeyValue;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::StoreError;
use crate::metrics::StoreMetrics;
use fanout::Fanout;

/// Which transport a [`Bus`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusBackend {
    /// Within this process only.
    Memory,
    /// Redis pub/sub.
    Redis,
    /// PostgreSQL `LISTEN`/`NOTIFY`.
    Postgres,
}

impl BusBackend {
    /// `memory`, `redis` or `postgres`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BusBackend::Memory => "memory",
            BusBackend::Redis => "redis",
            BusBackend::Postgres => "postgres",
        }
    }
}

/// A publish/subscribe bus. Delivery is at most once: a message published
/// while a subscriber is disconnected is not replayed, so consumers that need
/// every change pair the bus with a periodic poll.
///
/// Cloning shares the bus; background tasks stop when the last clone drops.
#[derive(Clone, Debug)]
pub struct Bus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    fanout: Arc<Fanout>,
    metrics: StoreMetrics,
    backend: BusBackend,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Debug)]
enum Transport {
    Memory,
    #[cfg(feature = "redis")]
    Redis(redis::RedisBus),
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgBus),
}

/// Messages a local subscriber can fall behind by before it starts missing them.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The largest payload `NOTIFY` accepts (8000 bytes, less the terminator).
#[cfg(feature = "postgres")]
pub(crate) const PG_MAX_PAYLOAD: usize = 7999;

impl Bus {
    /// An in-process bus.
    pub fn memory(telemetry: &dyn MeterSource) -> Self {
        Self::build(
            Transport::Memory,
            BusBackend::Memory,
            Arc::new(Fanout::default()),
            telemetry,
            CancellationToken::new(),
        )
    }

    /// A bus on Redis pub/sub. Subscriptions use a dedicated connection that
    /// re-subscribes after reconnecting; publishing uses `store`. The
    /// subscriber's task runs on `shutdown`'s tracker and ends when shutdown
    /// starts or the last clone of the bus is dropped.
    #[cfg(feature = "redis")]
    pub async fn redis(
        store: &crate::RedisStore,
        shutdown: &keel_core::Shutdown,
        telemetry: &dyn MeterSource,
    ) -> Result<Self, StoreError> {
        let fanout = Arc::new(Fanout::default());
        let cancel = shutdown.token().child_token();
        let metrics = StoreMetrics::new(telemetry);
        let transport = redis::RedisBus::connect(store, fanout.clone(), metrics, shutdown, cancel.clone()).await?;
        Ok(Self::build(Transport::Redis(transport), BusBackend::Redis, fanout, telemetry, cancel))
    }

    /// A bus on PostgreSQL `LISTEN`/`NOTIFY`. Subscriptions use a dedicated
    /// connection to `database`'s URL that re-`LISTEN`s after reconnecting;
    /// payloads must be UTF-8 and at most 7999 bytes. The listener's task
    /// runs on `shutdown`'s tracker and ends when shutdown starts or the last
    /// clone of the bus is dropped.
    #[cfg(feature = "postgres")]
    pub async fn postgres(
        database: &crate::Database,
        shutdown: &keel_core::Shutdown,
        telemetry: &dyn MeterSource,
    ) -> Result<Self, StoreError> {
        let pool = database.postgres().ok_or_else(|| StoreError::InvalidUrl {
            what: "database",
            reason: "the postgres bus needs a postgres database".into(),
        })?;
        let fanout = Arc::new(Fanout::default());
        let cancel = shutdown.token().child_token();
        let metrics = StoreMetrics::new(telemetry);
        let transport =
            postgres::PgBus::start(database.url(), pool.clone(), fanout.clone(), metrics, shutdown, cancel.clone())
                .await?;
        Ok(Self::build(Transport::Postgres(transport), BusBackend::Postgres, fanout, telemetry, cancel))
    }

    fn build(
        transport: Transport,
        backend: BusBackend,
        fanout: Arc<Fanout>,
        telemetry: &dyn MeterSource,
        cancel: CancellationToken,
    ) -> Self {
        Self { inner: Arc::new(Inner { transport, fanout, metrics: StoreMetrics::new(telemetry), backend, cancel }) }
    }

    /// The transport in use.
    pub fn backend(&self) -> BusBackend {
        self.inner.backend
    }

    /// The name of the dedicated subscriber connection, as shown by Redis
    /// `CLIENT LIST` or PostgreSQL `pg_stat_activity.application_name`.
    pub fn connection_name(&self) -> Option<String> {
        match &self.inner.transport {
            Transport::Memory => None,
            #[cfg(feature = "redis")]
            Transport::Redis(r) => Some(r.connection_name()),
            #[cfg(feature = "postgres")]
            Transport::Postgres(p) => Some(p.connection_name().to_owned()),
        }
    }

    /// Changes each time the subscriber connection comes back after a loss
    /// (messages published meanwhile were missed): a subscriber that must
    /// not miss state re-reads it then. Never changes on the in-process bus.
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.fanout.reconnects()
    }

    /// Publishes `payload` on `channel` to every subscriber, in this process
    /// and (for Redis and PostgreSQL) in every other one.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), StoreError> {
        validate_channel(channel)?;
        match &self.inner.transport {
            Transport::Memory => self.inner.fanout.dispatch(channel, payload),
            #[cfg(feature = "redis")]
            Transport::Redis(r) => r.publish(channel, payload).await?,
            #[cfg(feature = "postgres")]
            Transport::Postgres(p) => p.publish(channel, payload).await?,
        }
        self.inner.metrics.bus_published.add(1, &[KeyValue::new("backend", self.inner.backend.as_str())]);
        Ok(())
    }

    /// Subscribes to `channel`. Messages published after this returns are
    /// delivered (subject to reconnections, see [`Bus`]).
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, StoreError> {
        validate_channel(channel)?;
        let (rx, first) = self.inner.fanout.subscribe(channel, SUBSCRIBER_BUFFER);
        if first {
            match &self.inner.transport {
                Transport::Memory => {}
                #[cfg(feature = "redis")]
                Transport::Redis(r) => r.subscribe(channel).await?,
                #[cfg(feature = "postgres")]
                Transport::Postgres(p) => p.listen(channel).await?,
            }
        }
        Ok(Subscription {
            rx,
            lagged: self.inner.metrics.bus_lagged.clone(),
            backend: self.inner.backend,
            _bus: self.clone(),
        })
    }
}

/// Channel names are restricted to what every backend accepts unquoted in
/// spirit and within PostgreSQL's 63-byte identifier limit.
fn validate_channel(channel: &str) -> Result<(), StoreError> {
    let ok = !channel.is_empty()
        && channel.len() <= 63
        && channel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok { Ok(()) } else { Err(StoreError::InvalidChannel(channel.to_owned())) }
}

/// Messages from one channel. Dropping it unsubscribes locally.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Bytes>,
    lagged: opentelemetry::metrics::Counter<u64>,
    backend: BusBackend,
    // Keeps the bus (and its listener task) alive while someone listens.
    _bus: Bus,
}

impl Subscription {
    /// The next message; `None` once the bus has shut down. A subscriber that
    /// falls more than 1024 messages behind skips the oldest and the skip is
    /// counted in `keel_bus_lagged_total`.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.rx.recv().await {
                Ok(payload) => return Some(payload),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bus subscriber fell behind");
                    self.lagged.add(missed, &[KeyValue::new("backend", self.backend.as_str())]);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next message; `Ok(None)` once the bus has shut down, `Err(missed)`
    /// when this subscriber fell more than 1024 messages behind (counted in
    /// `keel_bus_lagged_total`, not logged): for a reader that should be
    /// dropped rather than skip ahead, and whose log records could feed the
    /// very stream that lags.
    pub async fn recv_or_lag(&mut self) -> Result<Option<Bytes>, u64> {
        match self.rx.recv().await {
            Ok(payload) => Ok(Some(payload)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.lagged.add(missed, &[KeyValue::new("backend", self.backend.as_str())]);
                Err(missed)
            }
            Err(broadcast::error::RecvError::Closed) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_validated() {
        for good in ["a", "keel:settings", "agent-metadata.v1", &"x".repeat(63)] {
            assert!(validate_channel(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "quote\"", "semi;colon", &"x".repeat(64), "é"] {
            assert!(matches!(validate_channel(bad), Err(StoreError::InvalidChannel(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn memory_bus_delivers_to_every_subscriber_of_a_channel_only() {
        let telemetry = keel_telemetry::Telemetry::new("test").unwrap();
        let bus = Bus::memory(&telemetry);
        let mut a1 = bus.subscribe("a").await.unwrap();
        let mut a2 = bus.subscribe("a").await.unwrap();
        let mut b = bus.subscribe("b").await.unwrap();
        bus.publish("a", Bytes::from_static(b"x")).await.unwrap();
        bus.publish("b", Bytes::from_static(b"y")).await.unwrap();
        assert_eq!(a1.recv().await.unwrap(), "x");
        assert_eq!(a2.recv().await.unwrap(), "x");
        assert_eq!(b.recv().await.unwrap(), "y");
        assert!(a1.rx.try_recv().is_err(), "no cross-talk");
    }

    #[tokio::test]
    async fn slow_subscribers_skip_and_count() {
        let telemetry = keel_telemetry::Telemetry::new("test").unwrap();
        let bus = Bus::memory(&telemetry);
        let mut sub = bus.subscribe("c").await.unwrap();
        for i in 0..(SUBSCRIBER_BUFFER + 10) {
            bus.publish("c", Bytes::from(i.to_string())).await.unwrap();
        }
        assert_eq!(sub.recv().await.unwrap(), "10");
        assert!(telemetry.encode().unwrap().contains("keel_bus_lagged_total{backend=\"memory\"} 10"));
    }
}
