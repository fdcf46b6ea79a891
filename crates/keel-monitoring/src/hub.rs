//! What operators read: the captured logs and the stats documents, and the
//! events that announce new ones to every replica.

use std::sync::Arc;

use bytes::Bytes;
use keel_core::Shutdown;
use keel_store::{Bus, StoreError, Subscription};
use serde::{Deserialize, Serialize};

use crate::{LogQuery, LogRecord, LogSink, LogStore, SinkError, SinkFuture, StatsDocument, StatsStore};

/// The processes whose logs can be read.
pub const PROCESSES: [&str; 2] = ["api", "worker"];

/// One message on the monitoring channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MonitoringEvent {
    /// A process published its stats document.
    Stats {
        /// The document.
        stats: StatsDocument,
    },
    /// A process stored captured log records.
    Logs {
        /// The records, oldest first.
        records: Vec<LogRecord>,
    },
}

/// Logs, stats and their announcements; cloning shares it.
#[derive(Clone)]
pub struct MonitoringHub {
    logs: LogStore,
    stats: StatsStore,
    events: Bus,
    channel: Arc<str>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for MonitoringHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitoringHub").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl MonitoringHub {
    /// Reads logs from `logs` and stats from `stats`; new stats and log
    /// records travel on `channel` of `events` (the Redis bus in cluster
    /// mode, so a subscriber on any replica sees every process).
    /// Announcements run on `shutdown`'s tracker, and event streams end when
    /// it is triggered.
    pub fn new(logs: LogStore, stats: StatsStore, events: Bus, channel: &str, shutdown: Shutdown) -> Self {
        Self { logs, stats, events, channel: channel.into(), shutdown }
    }

    /// The bus channel of a namespace's monitoring events.
    pub fn channel(namespace: &str) -> String {
        format!("{namespace}:monitoring")
    }

    /// A sink that stores records in the log store, then announces them.
    pub fn log_sink(&self) -> Arc<dyn LogSink> {
        Arc::new(AnnouncingSink { inner: self.logs.sink(), events: self.events.clone(), channel: self.channel.clone() })
    }

    /// Announces a published stats document (in the background: the
    /// collector never waits for the bus).
    pub fn announce_stats(&self, document: &StatsDocument) {
        let Ok(payload) = serde_json::to_vec(&MonitoringEvent::Stats { stats: document.clone() }) else { return };
        let (events, channel) = (self.events.clone(), self.channel.clone());
        self.shutdown.spawn(async move {
            // No stream listening, or the bus briefly down: the document is in
            // the store either way.
            let _ = events.publish(&channel, Bytes::from(payload)).await;
        });
    }

    /// The newest records of each of `processes` that match `query`, newest
    /// first, at most `query.limit` in all.
    pub async fn recent(&self, processes: &[&str], query: &LogQuery) -> Result<Vec<LogRecord>, SinkError> {
        let mut records = Vec::new();
        for process in processes {
            records.extend(self.logs.recent(process, query).await?);
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.time_ms));
        records.truncate(query.limit);
        Ok(records)
    }

    /// Forgets the captured records of `process`.
    pub async fn clear(&self, process: &str) -> Result<(), SinkError> {
        self.logs.clear(process).await
    }

    /// The stats document of every live instance.
    pub async fn instances(&self) -> Result<Vec<StatsDocument>, SinkError> {
        self.stats.list().await
    }

    /// Every event from now on, until the process stops.
    pub async fn subscribe(&self) -> Result<MonitoringEvents, StoreError> {
        Ok(MonitoringEvents {
            subscription: self.events.subscribe(&self.channel).await?,
            shutdown: self.shutdown.clone(),
        })
    }
}

/// Events from [`MonitoringHub::subscribe`].
#[derive(Debug)]
pub struct MonitoringEvents {
    subscription: Subscription,
    shutdown: Shutdown,
}

impl MonitoringEvents {
    /// The next event; `None` once the bus closes, the process stops, or
    /// this reader fell so far behind that events were lost (a slow reader
    /// is dropped, counted in `keel_bus_lagged_total`, rather than buffered).
    /// Messages that are not events are skipped.
    pub async fn recv(&mut self) -> Option<MonitoringEvent> {
        loop {
            let payload = tokio::select! {
                payload = self.subscription.recv_or_lag() => payload.ok()??,
                () = self.shutdown.triggered() => return None,
            };
            if let Ok(event) = serde_json::from_slice(&payload) {
                return Some(event);
            }
        }
    }
}

struct AnnouncingSink {
    inner: Arc<dyn LogSink>,
    events: Bus,
    channel: Arc<str>,
}

impl LogSink for AnnouncingSink {
    fn push<'a>(&'a self, records: &'a [LogRecord]) -> SinkFuture<'a> {
        Box::pin(async move {
            self.inner.push(records).await?;
            // Stored is what counts: a failed announcement only means open
            // streams miss these records, which the log endpoint still serves.
            if let Ok(payload) = serde_json::to_vec(&MonitoringEvent::Logs { records: records.to_vec() }) {
                let _ = self.events.publish(&self.channel, Bytes::from(payload)).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_kind() {
        let logs = MonitoringEvent::Logs { records: vec![LogRecord::default()] };
        let text = serde_json::to_string(&logs).unwrap();
        assert!(text.starts_with(r#"{"kind":"logs","records":[{"#), "{text}");
        assert_eq!(serde_json::from_str::<MonitoringEvent>(&text).unwrap(), logs);
        assert!(serde_json::from_str::<MonitoringEvent>(r#"{"kind":"other"}"#).is_err());
    }
}
