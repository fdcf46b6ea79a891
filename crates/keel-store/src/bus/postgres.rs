use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt as _;
use opentelemetry::KeyValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::PG_MAX_PAYLOAD;
use super::fanout::Fanout;
use crate::metrics::StoreMetrics;
use crate::{PgPool, StoreError};

/// How often an idle listener proves its connection is still alive; a
/// half-open TCP connection would otherwise go unnoticed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Reconnect timing: 50 ms doubling to 5 s, with jitter so listeners of a
/// fleet do not reconnect in step.
const BACKOFF: keel_core::Backoff = keel_core::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

pub(super) struct PgBus {
    pool: PgPool,
    commands: mpsc::UnboundedSender<(String, oneshot::Sender<()>)>,
    name: String,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus").field("name", &self.name).finish_non_exhaustive()
    }
}

impl PgBus {
    pub(super) async fn start(
        url: &str,
        pool: PgPool,
        fanout: Arc<Fanout>,
        metrics: StoreMetrics,
        shutdown: &keel_core::Shutdown,
        cancel: CancellationToken,
    ) -> Result<Self, StoreError> {
        let (url, name) = with_application_name(url);
        // Fail fast on a bad URL or unreachable server; later failures are
        // retried by the listener.
        let first = AsyncPgConnection::establish(&url)
            .await
            .map_err(|err| StoreError::Connect { backend: "postgres", reason: err.to_string() })?;
        let (commands, rx) = mpsc::unbounded_channel();
        let listener = Listener { url, fanout, metrics, cancel, channels: BTreeSet::new(), commands: rx };
        shutdown.spawn(listener.run(first));
        Ok(Self { pool, commands, name })
    }

    pub(super) fn connection_name(&self) -> &str {
        &self.name
    }

    /// Completes once the listener has issued `LISTEN` (or, while it is
    /// disconnected, recorded the channel for the next connection).
    pub(super) async fn listen(&self, channel: &str) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.commands.send((channel.to_owned(), ack)).map_err(|_| StoreError::BusClosed)?;
        done.await.map_err(|_| StoreError::BusClosed)
    }

    pub(super) async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), StoreError> {
        let text = std::str::from_utf8(&payload)
            .map_err(|_| StoreError::Payload { backend: "postgres", reason: "payload is not valid UTF-8".into() })?;
        if text.len() > PG_MAX_PAYLOAD {
            return Err(StoreError::Payload {
                backend: "postgres",
                reason: format!("{} bytes exceeds the {PG_MAX_PAYLOAD}-byte NOTIFY limit", text.len()),
            });
        }
        let mut conn = self.pool.get().await.map_err(|err| StoreError::Pool(err.to_string()))?;
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(channel)
            .bind::<Text, _>(text)
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

fn with_application_name(url: &str) -> (String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(existing) = url.split(['?', '&']).find_map(|part| part.strip_prefix("application_name=")) {
        return (url.to_owned(), existing.to_owned());
    }
    let name = format!("keel-bus-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}application_name={name}"), name)
}

struct Listener {
    url: String,
    fanout: Arc<Fanout>,
    metrics: StoreMetrics,
    cancel: CancellationToken,
    channels: BTreeSet<String>,
    commands: mpsc::UnboundedReceiver<(String, oneshot::Sender<()>)>,
}

enum Event {
    Cancelled,
    Lost(String),
    Listen(String, oneshot::Sender<()>),
    KeepAlive,
}

impl Listener {
    async fn run(mut self, first: AsyncPgConnection) {
        let mut conn = Some(first);
        let mut attempt = 0;
        loop {
            let mut current = match conn.take() {
                Some(c) => c,
                None => match self.reconnect(&mut attempt).await {
                    Some(c) => {
                        self.fanout.reconnected();
                        c
                    }
                    None => return,
                },
            };
            match self.serve(&mut current).await {
                None => return,
                Some(reason) => {
                    tracing::warn!(%reason, "postgres bus listener lost its connection; reconnecting");
                    self.metrics.bus_reconnects.add(1, &[KeyValue::new("backend", "postgres")]);
                }
            }
        }
    }

    /// Connects with capped exponential backoff, accepting subscriptions in
    /// the meantime. `None` when cancelled.
    async fn reconnect(&mut self, attempt: &mut u32) -> Option<AsyncPgConnection> {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                () = tokio::time::sleep(BACKOFF.delay(*attempt + 1)) => {}
                Some((channel, ack)) = self.commands.recv() => {
                    self.channels.insert(channel);
                    let _ = ack.send(());
                    continue;
                }
            }
            match AsyncPgConnection::establish(&self.url).await {
                Ok(mut conn) => {
                    let listens: String = self.channels.iter().map(|c| format!("LISTEN \"{c}\";")).collect();
                    match conn.batch_execute(&listens).await {
                        Ok(()) => {
                            *attempt = 0;
                            return Some(conn);
                        }
                        Err(err) => tracing::warn!(%err, "postgres bus could not re-listen"),
                    }
                }
                Err(err) => tracing::debug!(%err, "postgres bus reconnect failed"),
            }
            *attempt += 1;
        }
    }

    /// Serves one connection until it fails (`Some(reason)`) or the bus is
    /// cancelled (`None`).
    async fn serve(&mut self, conn: &mut AsyncPgConnection) -> Option<String> {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        loop {
            let event = {
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                loop {
                    tokio::select! {
                        () = self.cancel.cancelled() => break Event::Cancelled,
                        _ = keepalive.tick() => break Event::KeepAlive,
                        command = self.commands.recv() => match command {
                            Some((channel, ack)) => break Event::Listen(channel, ack),
                            None => break Event::Cancelled,
                        },
                        next = notifications.next() => match next {
                            Some(Ok(n)) => self.fanout.dispatch(&n.channel, Bytes::from(n.payload)),
                            Some(Err(err)) => break Event::Lost(err.to_string()),
                            None => break Event::Lost("connection closed".into()),
                        },
                    }
                }
            };
            match event {
                Event::Cancelled => return None,
                Event::Lost(reason) => return Some(reason),
                Event::KeepAlive => {
                    if let Err(err) = conn.batch_execute("SELECT 1").await {
                        return Some(err.to_string());
                    }
                }
                Event::Listen(channel, ack) => {
                    let result = conn.batch_execute(&format!("LISTEN \"{channel}\"")).await;
                    self.channels.insert(channel);
                    let _ = ack.send(());
                    if let Err(err) = result {
                        // The channel is recorded; the next connection listens.
                        return Some(err.to_string());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_is_added_once() {
        let (url, name) = with_application_name("postgres://h/db");
        assert!(url.starts_with("postgres://h/db?application_name=keel-bus-"), "{url}");
        assert!(url.ends_with(&name));
        let (url, name) = with_application_name("postgres://h/db?sslmode=disable&application_name=mine");
        assert_eq!(name, "mine");
        assert!(url.ends_with("application_name=mine"));
        let (url, _) = with_application_name("postgres://h/db?sslmode=disable");
        assert!(url.contains("sslmode=disable&application_name=keel-bus-"), "{url}");
    }
}
