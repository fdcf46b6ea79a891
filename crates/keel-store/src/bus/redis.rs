use std::sync::Arc;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;

use super::fanout::Fanout;
use crate::metrics::StoreMetrics;
use crate::redis::{builder, wait_connected};
use crate::{RedisStore, StoreError};

/// On a Redis Cluster the bus uses sharded pub/sub (`SSUBSCRIBE`,
/// `SPUBLISH`, Redis 7): a message goes to the shard that owns its channel's
/// slot instead of every node. Standalone Redis keeps `SUBSCRIBE`/`PUBLISH`.
#[derive(Debug)]
pub(super) struct RedisBus {
    publisher: RedisStore,
    subscriber: SubscriberClient,
    sharded: bool,
}

impl RedisBus {
    pub(super) async fn connect(
        store: &RedisStore,
        fanout: Arc<Fanout>,
        metrics: StoreMetrics,
        shutdown: &keel_core::Shutdown,
        cancel: CancellationToken,
    ) -> Result<Self, StoreError> {
        let subscriber = builder(store.config())?.build_subscriber_client()?;
        subscriber.connect();
        wait_connected(&subscriber, store.config().connect_timeout).await?;
        // fred re-issues SUBSCRIBE for every tracked channel after a reconnect.
        let manager = subscriber.manage_subscriptions();

        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let client = subscriber.clone();
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    message = messages.recv() => match message {
                        Ok(message) => {
                            let payload = message.value.as_bytes().map(Bytes::copy_from_slice).unwrap_or_default();
                            fanout.dispatch(&message.channel, payload);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "redis bus receiver fell behind");
                            metrics.bus_lagged.add(missed, &[KeyValue::new("backend", "redis")]);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    server = reconnects.recv() => {
                        if server.is_ok() {
                            tracing::info!("redis bus subscriber reconnected");
                            fanout.reconnected();
                            metrics.bus_reconnects.add(1, &[KeyValue::new("backend", "redis")]);
                        }
                    }
                }
            }
            manager.abort();
            let _ = client.quit().await;
        });
        let sharded = store.is_cluster();
        Ok(Self { publisher: store.clone(), subscriber, sharded })
    }

    pub(super) fn connection_name(&self) -> String {
        self.subscriber.id().to_string()
    }

    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        if self.sharded {
            self.publisher.timed("SSUBSCRIBE", self.subscriber.ssubscribe(channel)).await
        } else {
            self.publisher.timed("SUBSCRIBE", self.subscriber.subscribe(channel)).await
        }
    }

    pub(super) async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), StoreError> {
        if self.sharded {
            let sent = self.publisher.client().spublish::<i64, _, _>(channel, payload);
            self.publisher.timed("SPUBLISH", sent).await.map(drop)
        } else {
            self.publisher.publish(channel, payload).await
        }
    }
}
