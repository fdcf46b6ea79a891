//! The producer: appends (waiting while the stream is at capacity), and
//! appends batched with their cache entries into one script call.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use keel_store::{Appended, CachedAppend, RedisStore, StoreError};
use serde::Serialize;

use super::{BACKLOG_FRESH, DurableConfig, DurableError};

/// Appends items to the stream.
#[derive(Debug, Clone)]
pub struct DurableProducer {
    redis: RedisStore,
    config: Arc<DurableConfig>,
    /// Last measured backlog, when, and appends since: the length is only
    /// measured again when it could be near capacity or is stale.
    known: Arc<std::sync::Mutex<Known>>,
    /// The cached appends waiting for the task that sends them, started by
    /// the first one.
    batches: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<Waiting>>>,
    /// Cancelled by [`DurableProducer::close`]: the task answers what is
    /// queued and ends.
    closed: tokio_util::sync::CancellationToken,
}

/// One [`DurableProducer::enqueue_cached`] append waiting for the task
/// that sends it, and where its outcome goes.
struct Waiting {
    append: CachedAppend,
    /// When the caller gives up: bounds the replicas' `WAIT`.
    deadline: tokio::time::Instant,
    reply: tokio::sync::oneshot::Sender<Result<Appended, DurableError>>,
}

/// Where [`send_cached_appends`] sends and how many replicas it waits for.
struct Target {
    redis: RedisStore,
    stream: String,
    capacity: u64,
    ack_replicas: u32,
}

/// How far the Redis clock may lag the caller's before an append Redis runs
/// after its caller gave up could still land: the script's deadline is the
/// caller's timeout less this margin (or less a quarter of the timeout, if
/// that is smaller).
pub const CLOCK_MARGIN: Duration = Duration::from_millis(250);

/// The Unix-milliseconds deadline the enqueue script compares with Redis's
/// own clock, for a caller that gives up `timeout` from now.
fn script_deadline(timeout: Duration) -> i64 {
    let margin = CLOCK_MARGIN.min(timeout / 4);
    let at = std::time::SystemTime::now() + timeout.saturating_sub(margin);
    let millis = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    i64::try_from(millis).unwrap_or(i64::MAX)
}

/// Appends one script call takes at most.
const APPENDS_PER_CALL: usize = 64;
/// Appends waiting for a call, at most (further callers wait for room).
const APPENDS_WAITING: usize = 1024;

/// Sends the appends queued on `appends`: whatever queued while the last
/// call was in flight goes in the next one, so under load one script call
/// (and one Lua call's overhead on Redis) serves many writes, and a lone
/// write is sent at once. With `ack_replicas`, one `WAIT` after each call
/// covers every append of it (a replica that has the last one has them all).
/// An append whose caller stopped waiting before its call was sent is not
/// sent. Ends when every producer is gone, or once `closed` is cancelled and
/// what was queued before has been answered.
async fn send_cached_appends(
    target: Target,
    mut appends: tokio::sync::mpsc::Receiver<Waiting>,
    closed: tokio_util::sync::CancellationToken,
) {
    let Target { redis, stream, capacity, ack_replicas } = target;
    let mut run = Vec::with_capacity(APPENDS_PER_CALL);
    loop {
        let received = tokio::select! {
            received = appends.recv_many(&mut run, APPENDS_PER_CALL) => received,
            // No further sends; those already queued are still received.
            () = closed.cancelled(), if !appends.is_closed() => {
                appends.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        run.retain(|waiting: &Waiting| !waiting.reply.is_closed());
        if run.is_empty() {
            continue;
        }
        // The WAIT lasts until the first of the run's callers gives up.
        let first_deadline = run.iter().map(|w| w.deadline).min();
        let (sent, replies): (Vec<CachedAppend>, Vec<_>) = run.drain(..).map(|w| (w.append, w.reply)).unzip();
        match redis.append_cached(&stream, capacity, sent).await {
            Ok(outcomes) => {
                let appended = outcomes.iter().any(|o| matches!(o, Appended::Id(_)));
                let replicated = match first_deadline {
                    Some(deadline) if ack_replicas > 0 && appended => {
                        Some(replicated(&redis, &stream, ack_replicas, deadline).await)
                    }
                    _ => None,
                };
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let answer = match (&outcome, &replicated) {
                        (Appended::Id(_), Some(Err(err))) => Err(copy_of(err)),
                        _ => Ok(outcome),
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                let err = DurableError::Redis(err);
                for reply in replies {
                    let _ = reply.send(Err(copy_of(&err)));
                }
            }
        }
    }
}

/// The same error for each caller of a run (a Redis error is cloned, any
/// other store error becomes its message).
fn copy_of(err: &DurableError) -> DurableError {
    match err {
        DurableError::NotReplicated { acked, wanted } => DurableError::NotReplicated { acked: *acked, wanted: *wanted },
        DurableError::Redis(StoreError::Redis(err)) => DurableError::Redis(StoreError::Redis(err.clone())),
        other => DurableError::Protocol(other.to_string()),
    }
}

/// Whether the stream's server has passed everything appended so far to
/// `wanted` replicas, waiting until `deadline` at most.
async fn replicated(
    redis: &RedisStore,
    stream: &str,
    wanted: u32,
    deadline: tokio::time::Instant,
) -> Result<(), DurableError> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    match redis.wait_replicas(stream, wanted, left).await {
        Ok(acked) if acked >= wanted => Ok(()),
        Ok(acked) => Err(DurableError::NotReplicated { acked, wanted }),
        Err(err) => Err(DurableError::Redis(err)),
    }
}

#[derive(Debug)]
struct Known {
    backlog: u64,
    at: Option<tokio::time::Instant>,
    appended: u64,
}

impl DurableProducer {
    /// A producer for `config.stream`.
    pub fn new(redis: RedisStore, config: DurableConfig) -> Self {
        let known = Known { backlog: 0, at: None, appended: 0 };
        Self {
            redis,
            config: Arc::new(config),
            known: Arc::new(std::sync::Mutex::new(known)),
            batches: Arc::default(),
            closed: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Stops taking [`enqueue_cached`](Self::enqueue_cached) appends (they
    /// fail with [`DurableError::Protocol`]) and lets the task that sends
    /// them end once it has answered those already queued. Every clone
    /// shares the close.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the last measurement proves there is room, without asking Redis.
    fn room_known(&self) -> bool {
        let known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.at.is_some_and(|at| at.elapsed() < BACKLOG_FRESH) && known.backlog + known.appended < self.config.capacity
    }

    async fn measure(&self) -> Result<u64, DurableError> {
        let backlog = self.backlog().await?;
        *self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Known { backlog, at: Some(tokio::time::Instant::now()), appended: 0 };
        Ok(backlog)
    }

    /// The stream's length: the backlog, since consumers delete what they
    /// persist.
    pub async fn backlog(&self) -> Result<u64, DurableError> {
        Ok(self.redis.timed("XLEN", self.redis.client().xlen::<u64, _>(&self.config.stream)).await?)
    }

    /// Appends `item`, waiting while the stream is at capacity. The length
    /// is measured when the last reading is older than 100 ms or could be
    /// near capacity, so concurrent producers overshoot by at most what they
    /// append in that window.
    pub async fn enqueue<T: Serialize>(&self, item: &T) -> Result<String, DurableError> {
        while !self.room_known() && self.measure().await? >= self.config.capacity {
            tokio::time::sleep(self.config.idle_poll).await;
        }
        self.append(item).await
    }

    /// Appends `item`, or answers [`DurableError::Full`].
    pub async fn try_enqueue<T: Serialize>(&self, item: &T) -> Result<String, DurableError> {
        if !self.room_known() && self.measure().await? >= self.config.capacity {
            return Err(DurableError::Full);
        }
        self.append(item).await
    }

    /// Appends `item` and, in the same script, sets `cache_key` to
    /// `version:cached` (for `ttl`) unless it holds a version at least as
    /// high: one round trip, and the cache can never show a write that is
    /// not in the stream. While the stream is at capacity it waits (polling
    /// every `idle_poll`) up to `timeout`, then answers
    /// [`DurableError::Full`] having changed nothing.
    ///
    /// A refused append does not land later: Redis itself refuses one it
    /// runs after the caller's `timeout` (less [`CLOCK_MARGIN`], or a
    /// quarter of the timeout if smaller, by Redis's clock) with
    /// [`DurableError::Late`], so a script stuck behind a paused or frozen
    /// Redis cannot store a write whose caller was answered with an error.
    /// That holds while the Redis clock lags the caller's by less than the
    /// margin; an append Redis runs in time but whose answer reaches the
    /// caller after it gave up can still land (the reply's one trip).
    ///
    /// Appends made while another is on its way to Redis go together in the
    /// next script call (up to 64), each still its own all-or-nothing unit.
    /// The first call starts the task that sends them on the current tokio
    /// runtime: use the producer (and its clones) on that runtime.
    pub async fn enqueue_cached<T: Serialize>(
        &self,
        item: &T,
        cache_key: &str,
        version: i64,
        cached: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<String, DurableError> {
        let item = serde_json::to_string(item).map_err(|err| DurableError::Encode(err.to_string()))?;
        let append = CachedAppend {
            cache_key: cache_key.to_owned(),
            item,
            version,
            cached: cached.to_owned(),
            ttl,
            deadline_ms: script_deadline(timeout),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut full = false;
        loop {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if self.appends().send(Waiting { append: append.clone(), deadline, reply }).await.is_err() {
                return Err(DurableError::Protocol("the enqueue task has stopped".to_owned()));
            }
            let added =
                answer.await.map_err(|_| DurableError::Protocol("the enqueue task dropped an append".to_owned()))??;
            match added {
                Appended::Id(id) => return Ok(id),
                Appended::Full => full = true,
                // Waiting for room ran past the script's deadline.
                Appended::Late if full => return Err(DurableError::Full),
                Appended::Late => return Err(DurableError::Late),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(DurableError::Full);
            }
            tokio::time::sleep(self.config.idle_poll.min(deadline - now)).await;
        }
    }

    /// The queue of [`Self::enqueue_cached`]'s appends, and the task that
    /// sends them, started on first use.
    fn appends(&self) -> &tokio::sync::mpsc::Sender<Waiting> {
        self.batches.get_or_init(|| {
            let (queue, appends) = tokio::sync::mpsc::channel(APPENDS_WAITING);
            let target = Target {
                redis: self.redis.clone(),
                stream: self.config.stream.clone(),
                capacity: self.config.capacity,
                ack_replicas: self.config.ack_replicas,
            };
            let task = send_cached_appends(target, appends, self.closed.clone());
            keel_core::Shutdown::spawn_on(self.config.tasks.as_ref(), task);
            queue
        })
    }

    async fn append<T: Serialize>(&self, item: &T) -> Result<String, DurableError> {
        let json = serde_json::to_string(item).map_err(|err| DurableError::Encode(err.to_string()))?;
        let add =
            self.redis.client().xadd::<String, _, _, _, _>(&self.config.stream, false, None::<()>, "*", ("item", json));
        let id = self.redis.timed("XADD", add).await?;
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).appended += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_now(deadline: i64) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        deadline - i64::try_from(now).unwrap()
    }

    /// At the default enqueue timeout (2 s) Redis refuses an append it runs
    /// later than 1.75 s from now; a short timeout keeps three quarters.
    #[test]
    fn the_script_deadline_is_the_timeout_less_the_clock_margin() {
        // `DEFAULT_ENQUEUE_TIMEOUT` (the entries feature's).
        let default = from_now(script_deadline(Duration::from_secs(2)));
        assert!((1_740..=1_750).contains(&default), "{default}");
        let short = from_now(script_deadline(Duration::from_millis(400)));
        assert!((290..=300).contains(&short), "{short}");
    }
}
