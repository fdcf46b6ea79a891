//! The consumer: claims what a silent member left pending, reads new
//! entries, persists them through the repository, then acknowledges and
//! deletes them in one script.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use keel_store::{RedisStore, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::persist::{Counters, Persister, RetryPolicy};
use crate::{DeadLetters, Metrics, Repository};

use super::{BACKLOG_FRESH, DurableConfig, DurableError};

/// Reads the stream as one member of the consumer group and persists what
/// it reads.
pub struct DurableConsumer<T> {
    redis: RedisStore,
    config: DurableConfig,
    repository: Arc<dyn Repository<T>>,
    dead_letters: Arc<dyn DeadLetters<T>>,
    counters: Counters,
    instruments: std::sync::Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
    /// Until this consumer's own unacknowledged entries (from before a
    /// restart) are handled, reads start at `0` instead of `>`.
    recovering: std::sync::atomic::AtomicBool,
    /// The stream's length when last measured: entries not yet acknowledged.
    backlog: std::sync::atomic::AtomicU64,
    /// When the backlog was last measured and abandoned entries last looked
    /// for: neither needs a round trip on every poll.
    checked: std::sync::Mutex<Checked>,
}

#[derive(Debug, Default)]
struct Checked {
    backlog: Option<tokio::time::Instant>,
    claim: Option<tokio::time::Instant>,
}

impl<T> std::fmt::Debug for DurableConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableConsumer").field("consumer", &self.config.consumer).finish_non_exhaustive()
    }
}

type Entry = (String, Option<String>);

impl<T> DurableConsumer<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Joins (creating if needed) the consumer group.
    pub async fn new(
        redis: RedisStore,
        config: DurableConfig,
        repository: Arc<dyn Repository<T>>,
        dead_letters: Arc<dyn DeadLetters<T>>,
    ) -> Result<Self, DurableError> {
        let create = redis.client().xgroup_create::<(), _, _, _>(&config.stream, &config.group, "0", true);
        match redis.timed("XGROUP", create).await {
            Ok(()) => {}
            Err(StoreError::Redis(err)) if err.details().contains("BUSYGROUP") => {}
            Err(err) => return Err(err.into()),
        }
        Ok(Self {
            redis,
            config,
            repository,
            dead_letters,
            counters: Counters::default(),
            instruments: std::sync::Mutex::default(),
            recovering: std::sync::atomic::AtomicBool::new(true),
            backlog: std::sync::atomic::AtomicU64::new(0),
            checked: std::sync::Mutex::default(),
        })
    }

    /// Exports [`metrics`](Self::metrics) as the same OpenTelemetry
    /// instruments as an in-process queue, labelled `queue = name`, so the
    /// alerts and dashboards read a worker like an embedded api.
    pub fn instrument(self: &Arc<Self>, telemetry: &dyn keel_telemetry::MeterSource, name: &str) {
        Self::instrument_all(std::slice::from_ref(self), telemetry, name);
    }

    /// [`instrument`](Self::instrument) for the consumers of every partition
    /// of one queue, exported as one: their figures added up (one series
    /// each, not one per consumer with the same labels).
    pub fn instrument_all(consumers: &[Arc<Self>], telemetry: &dyn keel_telemetry::MeterSource, name: &str) {
        let Some(first) = consumers.first() else { return };
        // Weak: the meter provider outlives consumers and must not keep them alive.
        let weak: Vec<std::sync::Weak<Self>> = consumers.iter().map(Arc::downgrade).collect();
        // The depth and age come from the queue's StreamBacklog, measured
        // on its own timer (this consumer may be stuck retrying).
        let handles = crate::queue::export_metrics(
            telemetry,
            name,
            move || weak.iter().filter_map(std::sync::Weak::upgrade).map(|c| c.metrics()).reduce(|a, b| a.plus(&b)),
            false,
        );
        first.instruments.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(handles);
    }

    /// Persists what this consumer handled so far.
    pub fn metrics(&self) -> Metrics {
        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Acquire);
        Metrics {
            enqueued: load(&c.persisted) + load(&c.failed) + load(&self.backlog),
            persisted: load(&c.persisted),
            failed: load(&c.failed),
            retries: load(&c.retries),
            batches: load(&c.batches),
            dead_letter_errors: load(&c.dead_letter_errors),
            failing_for: c.failing_for(),
            capacity: self.config.capacity,
            queue_depth: load(&self.backlog),
            ..Metrics::default()
        }
    }

    /// Polls until `stop` is cancelled; entries being written when it is
    /// are finished first. Redis errors are logged and retried.
    pub async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            match self.poll(Some(&stop)).await {
                Ok(0) => {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(self.config.idle_poll) => {}
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    // After a failure (a Redis failover among them) read this
                    // consumer's own pending entries first: what it read from
                    // a master that died before its XACK reached the replica
                    // is pending again on the promoted one.
                    self.recovering.store(true, std::sync::atomic::Ordering::Release);
                    tracing::warn!(%err, "durable queue poll failed; retrying");
                    tokio::time::sleep(self.config.idle_poll * 10).await;
                }
            }
        }
    }

    /// One round: claim abandoned entries, else read new ones; persist and
    /// acknowledge them. Returns how many entries were handled.
    /// An entry is acknowledged only once it is persisted or its dead letter
    /// is stored: while the database is unreachable this waits for it.
    pub async fn poll_once(&self) -> Result<usize, DurableError> {
        self.poll(None).await
    }

    async fn poll(&self, stop: Option<&CancellationToken>) -> Result<usize, DurableError> {
        let (measure, claim) = self.due();
        if measure {
            let backlog = self.redis.timed("XLEN", self.redis.client().xlen::<u64, _>(&self.config.stream)).await?;
            self.backlog.store(backlog, std::sync::atomic::Ordering::Release);
        }
        let mut entries = if claim { self.claim().await? } else { Vec::new() };
        if entries.is_empty() {
            entries = self.read_new().await?;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let n = entries.len();
        self.handle(entries, stop).await?;
        Ok(n)
    }

    /// Whether this poll measures the backlog (a gauge: at most every
    /// [`BACKLOG_FRESH`]) and looks for abandoned entries (at most four times
    /// per visibility timeout: none can be claimed sooner after it went
    /// silent). Marks what is due as done.
    fn due(&self) -> (bool, bool) {
        let now = tokio::time::Instant::now();
        let claim_every = self.config.visibility_timeout / 4;
        let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = |at: Option<tokio::time::Instant>, every: Duration| at.is_none_or(|at| now - at >= every);
        let (measure, claim) = (stale(checked.backlog, BACKLOG_FRESH), stale(checked.claim, claim_every));
        if measure {
            checked.backlog = Some(now);
        }
        if claim {
            checked.claim = Some(now);
        }
        (measure, claim)
    }

    async fn claim(&self) -> Result<Vec<Entry>, DurableError> {
        let idle = self.config.visibility_timeout.as_millis().to_string();
        let args = vec![
            self.config.stream.clone(),
            self.config.group.clone(),
            self.config.consumer.clone(),
            idle,
            "0-0".to_owned(),
            "COUNT".to_owned(),
            self.config.batch_size.to_string(),
        ];
        let reply: Value =
            self.redis.timed("XAUTOCLAIM", self.redis.client().custom(fred::cmd!("XAUTOCLAIM"), args)).await?;
        // [next-cursor, [[id, [field, value, ...]] | nil, ...], (deleted ids)]
        let mut parts = into_array(reply)?.into_iter();
        let cursor = parts.next().and_then(|c| c.as_string());
        let claimed = parts.next().map(into_array).transpose()?.unwrap_or_default();
        let entries = parse_entries(claimed)?;
        if !entries.is_empty() {
            tracing::warn!(entries = entries.len(), "claimed entries abandoned by another consumer");
        }
        if cursor.is_some_and(|c| c != "0-0") || entries.len() >= self.config.batch_size {
            // More may be waiting: look again on the next poll.
            self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).claim = None;
        }
        Ok(entries)
    }

    /// This consumer's own unacknowledged entries first (after a restart),
    /// then new ones.
    async fn read_new(&self) -> Result<Vec<Entry>, DurableError> {
        use std::sync::atomic::Ordering;
        if self.recovering.load(Ordering::Acquire) {
            let own = self.read_from("0").await?;
            if !own.is_empty() {
                tracing::warn!(entries = own.len(), "resuming entries this consumer read before it stopped");
                return Ok(own);
            }
            self.recovering.store(false, Ordering::Release);
        }
        self.read_from(">").await
    }

    async fn read_from(&self, from: &str) -> Result<Vec<Entry>, DurableError> {
        let args = vec![
            "GROUP".to_owned(),
            self.config.group.clone(),
            self.config.consumer.clone(),
            "COUNT".to_owned(),
            self.config.batch_size.to_string(),
            "STREAMS".to_owned(),
            self.config.stream.clone(),
            from.to_owned(),
        ];
        let reply: Value =
            self.redis.timed("XREADGROUP", self.redis.client().custom(fred::cmd!("XREADGROUP"), args)).await?;
        if matches!(reply, Value::Null) {
            return Ok(Vec::new());
        }
        // [[stream, [[id, [field, value, ...]], ...]]]
        let mut entries = Vec::new();
        for stream in into_array(reply)? {
            let mut pair = into_array(stream)?.into_iter();
            let _name = pair.next();
            let items = pair.next().map(into_array).transpose()?.unwrap_or_default();
            entries.extend(parse_entries(items)?);
        }
        Ok(entries)
    }

    async fn handle(&self, entries: Vec<Entry>, stop: Option<&CancellationToken>) -> Result<(), DurableError> {
        let mut ids: Vec<String> = Vec::with_capacity(entries.len());
        let mut items = Vec::with_capacity(entries.len());
        let mut item_ids = Vec::with_capacity(entries.len());
        for (id, payload) in entries {
            match payload.as_deref().map(serde_json::from_str::<T>) {
                Some(Ok(item)) => {
                    items.push(item);
                    item_ids.push(id);
                }
                Some(Err(err)) => {
                    // Nothing can persist it; keep the evidence in the log and count it.
                    tracing::error!(%id, reason = %err, "durable queue entry does not decode; dropping it");
                    self.counters.failed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    ids.push(id);
                }
                // A pending id whose entry is gone was deleted after it was
                // persisted: acknowledging it is all that is left to do.
                None => {
                    tracing::debug!(%id, "pending entry already deleted");
                    ids.push(id);
                }
            }
        }
        let persister = Persister {
            repository: &*self.repository,
            dead_letters: &*self.dead_letters,
            policy: RetryPolicy {
                max_retries: self.config.max_retries,
                backoff: keel_core::Backoff::new(self.config.backoff_initial, self.config.backoff_max)
                    .with_jitter(self.config.jitter),
            },
            counters: &self.counters,
            stop,
        };
        if !items.is_empty() {
            let unfinished = persister.write(items, &|_: &[_]| {}).await;
            if !unfinished.is_empty() {
                // Stopping: what is neither persisted nor dead-lettered stays
                // pending, for this consumer after a restart or another one.
                tracing::warn!(entries = unfinished.len(), "stopping; unfinished entries stay pending in the stream");
            }
            let mut keep = vec![true; item_ids.len()];
            for index in unfinished {
                keep[index] = false;
            }
            ids.extend(item_ids.into_iter().zip(keep).filter_map(|(id, keep)| keep.then_some(id)));
        }
        // Persisted or dead-lettered: either way done. Acknowledge and delete
        // in one script: a consumer killed between two separate commands
        // would leave entries acknowledged but never deleted (stuck in the
        // backlog for good) or deleted but still pending.
        static ACK_AND_DELETE: std::sync::LazyLock<keel_store::Script> = std::sync::LazyLock::new(|| {
            keel_store::Script::from_lua(
                "redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2)) return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))",
            )
        });
        // Lua's `unpack` takes a few thousand values at most; chunks keep
        // any configured batch size within it.
        const IDS_PER_SCRIPT: usize = 1_000;
        for chunk in ids.chunks(IDS_PER_SCRIPT) {
            let mut args: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
            args.push(self.config.group.clone().into());
            args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            let _: u64 = self.redis.run_script(&ACK_AND_DELETE, vec![self.config.stream.clone()], args).await?;
        }
        Ok(())
    }
}

fn into_array(value: Value) -> Result<Vec<Value>, DurableError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        other => Err(DurableError::Protocol(format!("expected an array, got {other:?}"))),
    }
}

/// `[[id, [field, value, ...]] | nil, ...]` → (id, the `item` field).
fn parse_entries(items: Vec<Value>) -> Result<Vec<Entry>, DurableError> {
    let mut entries = Vec::with_capacity(items.len());
    for entry in items {
        let mut pair = into_array(entry)?.into_iter();
        let Some(id) = pair.next().and_then(|v| v.as_string()) else { continue };
        let fields = pair.next().map(into_array).transpose()?.unwrap_or_default();
        let mut payload = None;
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            if name.as_str().as_deref() == Some("item") {
                payload = value.as_string();
            }
        }
        entries.push((id, payload));
    }
    Ok(entries)
}
