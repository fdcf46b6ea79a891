//! The agent-metadata service: the rules for what an agent may submit
//! (key syntax, how many, clock skew, bytes the database cannot keep,
//! truncation), batched writes, reads, and the ids of agents whose metadata
//! changed, whichever replica wrote it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_core::Shutdown;
use keel_store::{Bus, StoreError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Batcher, DbMetadataSink, MetadataKey, MetadataNotifier, MetadataRow, MetadataValue};

/// Most keys accepted in one submission.
pub const MAX_KEYS: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest value kept, in bytes; longer values are truncated with a note.
pub const MAX_VALUE_LEN: usize = 2048;
/// How far in the future `collected_at` may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// One submitted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The key: 1–128 bytes of `[A-Za-z0-9_.-]`.
    pub key: String,
    /// The value (truncated to 2 048 bytes).
    pub value: String,
    /// Why collection failed, if it did (truncated to 2 048 bytes).
    pub error: Option<String>,
    /// When it was collected; now when absent.
    pub collected_at: Option<SystemTime>,
}

/// How many submitted keys were taken and how many dropped (batcher full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepted {
    /// Keys handed to the batcher.
    pub accepted: u64,
    /// Keys refused because the batcher was full.
    pub dropped: u64,
}

/// Why a submission or a read was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// More than [`MAX_KEYS`] keys.
    #[error("{0} keys in one request; at most {MAX_KEYS}")]
    TooMany(usize),
    /// A key breaks the key rules.
    #[error("metadata[{index}].key {key:?}: use 1-{MAX_KEY_LEN} characters from [A-Za-z0-9_.-]")]
    InvalidKey {
        /// Its position in the submission.
        index: usize,
        /// The key, cut to 200 bytes.
        key: String,
    },
    /// `collected_at` is more than [`MAX_CLOCK_SKEW`] ahead.
    #[error("metadata[{0}].collected_at is more than 5 minutes in the future")]
    InTheFuture(usize),
    /// A field holds U+0000, which the database cannot store.
    #[error("{0} contains U+0000, which cannot be stored")]
    Nul(String),
    /// The process is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The database did not answer a read.
    #[error("cannot read metadata: {0}")]
    Unavailable(String),
}

/// Everything the metadata endpoints need; cloning shares it.
#[derive(Clone)]
pub struct AgentMetadata {
    batcher: Batcher<MetadataKey, MetadataValue>,
    sink: Arc<DbMetadataSink>,
    changes: broadcast::Sender<Uuid>,
    stop: CancellationToken,
}

impl std::fmt::Debug for AgentMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetadata").field("batcher", &self.batcher).finish_non_exhaustive()
    }
}

impl AgentMetadata {
    /// Wires the service to `batcher` (writes), `sink` (reads) and the
    /// change notifications on `channel` of `bus`. Watches end when
    /// `shutdown` is triggered; the relay task runs on its tracker.
    pub async fn new(
        batcher: Batcher<MetadataKey, MetadataValue>,
        sink: Arc<DbMetadataSink>,
        bus: &Bus,
        channel: &str,
        shutdown: &Shutdown,
    ) -> Result<Self, StoreError> {
        let stop = shutdown.token();
        let (changes, _) = broadcast::channel(1024);
        let mut changed = MetadataNotifier::subscribe(bus, channel).await?;
        let fanout = changes.clone();
        let until = stop.clone();
        shutdown.spawn(async move {
            loop {
                let agent = tokio::select! {
                    agent = changed.recv() => agent,
                    () = until.cancelled() => return,
                };
                let Some(agent) = agent else { return };
                // No watcher is fine.
                let _ = fanout.send(agent);
            }
        });
        Ok(Self { batcher, sink, changes, stop })
    }

    /// The batcher behind the writes.
    pub fn batcher(&self) -> &Batcher<MetadataKey, MetadataValue> {
        &self.batcher
    }

    /// Cancelled when the process stops: watches end then.
    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// Ids of agents whose metadata changed from now on, on any replica.
    pub fn changes(&self) -> broadcast::Receiver<Uuid> {
        self.changes.subscribe()
    }

    /// Checks every item first (nothing is taken from a refused
    /// submission), truncates long values and errors with a note, and hands
    /// the keys to the batcher.
    pub fn submit(&self, agent_id: Uuid, items: Vec<Submitted>, now: SystemTime) -> Result<Accepted, MetadataError> {
        if items.len() > MAX_KEYS {
            return Err(MetadataError::TooMany(items.len()));
        }
        let mut entries = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            check(index, &item, now)?;
            let (value, error) = truncate(item.value, item.error);
            let collected_at = item.collected_at.unwrap_or(now);
            entries.push((MetadataKey { agent_id, key: item.key }, MetadataValue { value, error, collected_at }));
        }
        let offered = entries.len() as u64;
        match self.batcher.add_all(entries) {
            Ok(taken) => Ok(Accepted { accepted: taken as u64, dropped: offered - taken as u64 }),
            // `add_all` fails only once the batcher is closed.
            Err(_) => Err(MetadataError::ShuttingDown),
        }
    }

    /// The stored metadata of `agent_id`.
    pub async fn load(&self, agent_id: Uuid) -> Result<Vec<MetadataRow>, MetadataError> {
        self.sink.load(agent_id).await.map_err(|err| MetadataError::Unavailable(err.to_string()))
    }
}

fn check(index: usize, item: &Submitted, now: SystemTime) -> Result<(), MetadataError> {
    if !valid_key(&item.key) {
        return Err(MetadataError::InvalidKey { index, key: keel_core::clip(&item.key).into_owned() });
    }
    if item.collected_at.is_some_and(|at| at > now + MAX_CLOCK_SKEW) {
        return Err(MetadataError::InTheFuture(index));
    }
    if item.value.contains('\0') {
        return Err(MetadataError::Nul(format!("metadata[{index}].value")));
    }
    if item.error.as_deref().is_some_and(|e| e.contains('\0')) {
        return Err(MetadataError::Nul(format!("metadata[{index}].error")));
    }
    Ok(())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Cuts `value` and `error` to at most `MAX_VALUE_LEN` bytes each, on a
/// character boundary; a cut value is noted in the error.
fn truncate(value: String, error: Option<String>) -> (String, String) {
    let error = error.unwrap_or_default();
    let (value, cut_from) = cut(value);
    let error = match cut_from {
        None => error,
        Some(from) => {
            let note = format!("value truncated from {from} to {} bytes", value.len());
            if error.is_empty() { note } else { format!("{error}; {note}") }
        }
    };
    (value, cut(error).0)
}

/// `text` cut to `MAX_VALUE_LEN` bytes, and its length before when it was cut.
fn cut(mut text: String) -> (String, Option<usize>) {
    if text.len() <= MAX_VALUE_LEN {
        return (text, None);
    }
    let from = text.len();
    let mut end = MAX_VALUE_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, Some(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_truncation() {
        assert!(valid_key("cpu.load-1_m") && !valid_key("") && !valid_key("has space") && !valid_key(&"k".repeat(129)));
        let (value, error) = truncate("é".repeat(1500), None);
        assert!(value.len() <= MAX_VALUE_LEN && value.is_char_boundary(value.len()));
        assert_eq!(error, "value truncated from 3000 to 2048 bytes");
        let (value, error) = truncate("x".repeat(3000), Some("timeout".into()));
        assert_eq!((value.len(), error.as_str()), (2048, "timeout; value truncated from 3000 to 2048 bytes"));
        let (value, error) = truncate("ok".into(), Some("é".repeat(1500)));
        assert_eq!(value, "ok");
        assert!(error.len() <= MAX_VALUE_LEN && error.len() > 2040, "the error is bounded like the value");
    }

    #[test]
    fn a_bad_item_is_named_by_its_position() {
        let now = SystemTime::now();
        let item = |key: &str| Submitted { key: key.into(), value: "v".into(), error: None, collected_at: None };
        assert_eq!(check(0, &item("ok"), now), Ok(()));
        assert!(matches!(check(3, &item("bad key"), now), Err(MetadataError::InvalidKey { index: 3, .. })));
        let late = Submitted { collected_at: Some(now + MAX_CLOCK_SKEW + Duration::from_secs(1)), ..item("k") };
        assert_eq!(check(1, &late, now), Err(MetadataError::InTheFuture(1)));
        let nul = Submitted { error: Some("a\0".into()), ..item("k") };
        assert_eq!(
            check(2, &nul, now).map_err(|e| e.to_string()),
            Err("metadata[2].error contains U+0000, which cannot be stored".into())
        );
    }
}
