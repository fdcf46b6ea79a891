//! The in-process queue on a local write-ahead log: an item is acknowledged
//! once its record is durable, and what the log holds at start is replayed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::{
    DeadLetters, EnqueueError, FullMode, Keyed, Repository, Shared, WriteBehind, WriteBehindConfig, WriteBehindError,
};
use crate::LocalLog;

fn encode<T: Serialize>(item: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(item).map_err(|err| format!("cannot encode the item for the local log: {err}"))
}

impl<T> WriteBehind<T>
where
    T: Keyed + Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// Starts a queue whose items are appended to `log` (and synced) before
    /// [`enqueue`](Self::enqueue) answers `Ok`, and replays what `log` held
    /// at open: nothing acknowledged is lost to a crash. Items are records
    /// of JSON; one the log cannot decode at replay is kept beside the log
    /// and counted as corrupt. A shutdown leaves unwritten items in the log
    /// for the next start instead of dead-lettering them. Coalescing is not
    /// available with a log.
    pub fn start_logged(
        config: WriteBehindConfig,
        repository: Arc<dyn Repository<T>>,
        dead_letters: Arc<dyn DeadLetters<T>>,
        log: LocalLog,
    ) -> Result<Self, WriteBehindError> {
        Self::validate(&config)?;
        if config.coalesce {
            return Err(WriteBehindError::Config("coalescing is not available with a local log".into()));
        }
        let recovered = log.take_recovered();
        log.start().map_err(|err| WriteBehindError::Start(err.to_string()))?;
        let shared = Arc::new(Shared::new(config, Some((log.clone(), encode::<T>))));
        let queue = Self::run(shared.clone(), repository, dead_letters);
        if !recovered.is_empty() {
            tracing::info!(records = recovered.len(), "replaying the local log");
            let tasks = shared.config.tasks.clone();
            keel_core::Shutdown::spawn_on(tasks.as_ref(), replay(shared, log, recovered));
        }
        Ok(queue)
    }
}

/// Queues the records found at open, taking room like any item (so memory
/// stays bounded); undecodable ones are kept beside the log.
async fn replay<T>(shared: Arc<Shared<T>>, log: LocalLog, records: Vec<(u64, Vec<u8>)>)
where
    T: Keyed + DeserializeOwned + Send + Sync + 'static,
{
    for (position, payload) in records {
        let item: T = match serde_json::from_slice(&payload) {
            Ok(item) => item,
            Err(err) => {
                log.quarantine(position, payload, err.to_string()).await;
                continue;
            }
        };
        let Ok(permit) = shared.room.acquire().await else { return };
        if shared.charge_waiting(item.weight() as u64).await.is_err() {
            return;
        }
        permit.forget();
        shared.push(item, Some(position));
    }
}

impl<T> WriteBehind<T>
where
    T: Keyed + Clone + Send + Sync + 'static,
{
    /// The local log, if the queue has one.
    pub fn local_log(&self) -> Option<&LocalLog> {
        self.shared.log.as_ref().map(|(log, _)| log)
    }

    /// Whether writes replayed from the local log at start may not be
    /// persisted yet (a reader that misses in the store cannot call them
    /// absent).
    pub fn recovering(&self) -> bool {
        self.local_log().is_some_and(LocalLog::recovering)
    }

    pub(super) async fn enqueue_logged(
        &self,
        item: T,
        log: &LocalLog,
        encode: fn(&T) -> Result<Vec<u8>, String>,
        limit: Option<Duration>,
    ) -> Result<(), EnqueueError> {
        if self.shared.closing.is_cancelled() {
            return Err(EnqueueError::Closed);
        }
        let payload = encode(&item).map_err(EnqueueError::Log)?;
        let weight = item.weight() as u64;
        // Waiting for room (items, bytes, the log's bound) is what `limit`
        // bounds; cancelled here, nothing was taken.
        let room = async {
            let permit = match self.shared.config.full_mode {
                FullMode::Wait => self.shared.room.acquire().await.map_err(|_| EnqueueError::Closed)?,
                FullMode::Reject => self.shared.room.try_acquire().map_err(|_| EnqueueError::Full)?,
            };
            self.shared.charge_waiting(weight).await?;
            let reservation = log.reserve(crate::log::record_bytes(payload.len())).await;
            Ok::<_, EnqueueError>((permit, reservation))
        };
        let (permit, reservation) = match limit {
            Some(limit) => tokio::time::timeout(limit, room).await.unwrap_or(Err(EnqueueError::Full))?,
            None => room.await?,
        };
        // From here the item belongs to the log writer: it is queued once
        // durable, or its room is given back, whether or not this caller
        // still waits.
        permit.forget();
        let (answered, answer) = oneshot::channel();
        let shared = self.shared.clone();
        log.submit(
            payload,
            reservation,
            Box::new(move |result| {
                let outcome = match result {
                    Ok(position) => {
                        shared.push(item, Some(position));
                        Ok(())
                    }
                    Err(message) => {
                        shared.release(weight);
                        shared.room.add_permits(1);
                        Err(EnqueueError::Log(message))
                    }
                };
                let _ = answered.send(outcome);
            }),
        );
        answer.await.unwrap_or(Err(EnqueueError::Closed))
    }
}
