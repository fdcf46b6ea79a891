//! Durable mode: the queue is a Redis Stream read by a consumer group, so a
//! consumer killed at any moment loses nothing.
//!
//! Producers `XADD` (waiting while the stream is longer than the capacity).
//! Consumers claim entries another consumer left pending longer than the
//! visibility timeout (`XAUTOCLAIM`, looked for four times per timeout, not
//! on every poll), then read new ones (`XREADGROUP`),
//! persist them through the repository (idempotent: a version guard makes a
//! replay harmless), and only then `XACK` and `XDEL` them.

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

/// Durable-mode settings.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// The stream key.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// This consumer's name (stable per process, e.g. the instance id).
    pub consumer: String,
    /// Stream length above which producers wait (10 000).
    pub capacity: u64,
    /// Entries per read and per repository call (500).
    pub batch_size: usize,
    /// Entries pending this long on a silent consumer are claimed (30 s).
    pub visibility_timeout: Duration,
    /// Pause between polls when there is nothing to read, and between
    /// capacity checks of a waiting producer (50 ms).
    pub idle_poll: Duration,
    /// Retries of an item the store refuses on its own before it is
    /// dead-lettered (5). Transient failures are never counted here.
    pub max_retries: u32,
    /// First retry delay, doubled each time (100 ms)...
    pub backoff_initial: Duration,
    /// ...up to this (10 s).
    pub backoff_max: Duration,
    /// Random spread of each delay (0.2 = ±20 %).
    pub jitter: f64,
    /// Replicas an append must reach (`WAIT`) before
    /// [`DurableProducer::enqueue_cached`] succeeds (0: the master's answer
    /// is enough, and a failover can lose the last appends it took).
    pub ack_replicas: u32,
}

impl DurableConfig {
    /// Defaults for `stream`, `group` and `consumer`.
    pub fn new(stream: impl Into<String>, group: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            capacity: 10_000,
            batch_size: 500,
            visibility_timeout: Duration::from_secs(30),
            idle_poll: Duration::from_millis(50),
            max_retries: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            jitter: 0.2,
            ack_replicas: 0,
        }
    }
}

/// Why a durable operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] StoreError),
    /// The stream is at capacity (`try_enqueue`).
    #[error("the durable queue is full")]
    Full,
    /// The item cannot be serialized.
    #[error("cannot serialize the item: {0}")]
    Encode(String),
    /// Redis answered something unexpected.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The append reached fewer replicas than `ack_replicas` in time (it is
    /// in the stream, and may yet be persisted).
    #[error("the write reached {acked} of the {wanted} replicas it needs")]
    NotReplicated {
        /// Replicas that acknowledged it.
        acked: u32,
        /// `ack_replicas`.
        wanted: u32,
    },
    /// Redis ran the append after its deadline (the caller's timeout, less
    /// the clock margin of [`DurableProducer::enqueue_cached`]) and refused
    /// it: nothing was appended or cached.
    #[error("redis ran the append after its deadline; it was refused and nothing changed")]
    Late,
}

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
    batches: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<CachedAppend>>>,
}

/// One [`DurableProducer::enqueue_cached`] append, as its script call
/// takes it.
struct CachedAppend {
    cache_key: String,
    /// The item's JSON, its version, the cached copy, its time to live in
    /// milliseconds, and the deadline (Unix milliseconds) after which Redis
    /// must refuse the append.
    args: [Value; 5],
    /// The stream entry's id, or `None` when the stream was at capacity.
    reply: tokio::sync::oneshot::Sender<Result<Option<String>, DurableError>>,
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

/// The enqueue script over a run of appends (`KEYS[1]` the stream, then one
/// cache key per append; `ARGV[1]` the capacity, then five arguments per
/// append): each is appended and cached as one unit, in order, until the
/// stream is at capacity; it answers each append's entry id, `false` for
/// those that found no room, and `0` for those Redis runs after their
/// deadline (by its own clock), which change nothing.
const ENQUEUE_CACHED: &str = r#"
    local capacity = tonumber(ARGV[1])
    local length = redis.call('XLEN', KEYS[1])
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    local ids = {}
    for i = 2, #KEYS do
        local at = 2 + (i - 2) * 5
        if now > tonumber(ARGV[at + 4]) then
            ids[i - 1] = 0
        elseif length >= capacity then
            ids[i - 1] = false
        else
            local version = tonumber(ARGV[at + 1])
            local current = redis.call('GET', KEYS[i])
            local stored = current and tonumber(string.match(current, '^(-?%d+):'))
            if not (stored and stored >= version) then
                redis.call('SET', KEYS[i], ARGV[at + 1] .. ':' .. ARGV[at + 2], 'PX', ARGV[at + 3])
            end
            ids[i - 1] = redis.call('XADD', KEYS[1], '*', 'item', ARGV[at])
            length = length + 1
        end
    end
    return ids
"#;

/// Sends the appends queued on `appends`: whatever queued while the last
/// call was in flight goes in the next one, so under load one script call
/// (and one Lua call's overhead on Redis) serves many writes, and a lone
/// write is sent at once. An append whose caller stopped waiting before its
/// call was sent is not sent. Ends when every producer is gone.
async fn send_cached_appends(
    redis: RedisStore,
    stream: String,
    capacity: u64,
    mut appends: tokio::sync::mpsc::Receiver<CachedAppend>,
) {
    static SCRIPT: std::sync::LazyLock<keel_store::Script> =
        std::sync::LazyLock::new(|| keel_store::Script::from_lua(ENQUEUE_CACHED));
    let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
    let mut run = Vec::with_capacity(APPENDS_PER_CALL);
    while appends.recv_many(&mut run, APPENDS_PER_CALL).await > 0 {
        run.retain(|append: &CachedAppend| !append.reply.is_closed());
        if run.is_empty() {
            continue;
        }
        let mut keys = Vec::with_capacity(run.len() + 1);
        keys.push(stream.clone());
        let mut args = Vec::with_capacity(1 + 5 * run.len());
        args.push(Value::from(capacity));
        let mut replies = Vec::with_capacity(run.len());
        for append in run.drain(..) {
            keys.push(append.cache_key);
            args.extend(append.args);
            replies.push(append.reply);
        }
        match redis.run_script::<Vec<Value>>(&SCRIPT, keys, args).await {
            Ok(ids) if ids.len() == replies.len() => {
                for (reply, id) in replies.into_iter().zip(ids) {
                    let answer = match id {
                        Value::Integer(_) => Err(DurableError::Late),
                        id => Ok(id.into_string()),
                    };
                    let _ = reply.send(answer);
                }
            }
            Ok(ids) => {
                let why = format!("the enqueue script answered {} ids for {} appends", ids.len(), replies.len());
                for reply in replies {
                    let _ = reply.send(Err(DurableError::Protocol(why.clone())));
                }
            }
            Err(err) => {
                let shared = match err {
                    StoreError::Redis(err) => Ok(err),
                    other => Err(other.to_string()),
                };
                for reply in replies {
                    let err = match &shared {
                        Ok(err) => DurableError::Redis(StoreError::Redis(err.clone())),
                        Err(text) => DurableError::Protocol(text.clone()),
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}

#[derive(Debug)]
struct Known {
    backlog: u64,
    at: Option<tokio::time::Instant>,
    appended: u64,
}

/// How long a measured backlog is trusted.
const BACKLOG_FRESH: Duration = Duration::from_millis(100);

impl DurableProducer {
    /// A producer for `config.stream`.
    pub fn new(redis: RedisStore, config: DurableConfig) -> Self {
        let known = Known { backlog: 0, at: None, appended: 0 };
        Self { redis, config: Arc::new(config), known: Arc::new(std::sync::Mutex::new(known)), batches: Arc::default() }
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
        let json = serde_json::to_string(item).map_err(|err| DurableError::Encode(err.to_string()))?;
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let args: [Value; 5] =
            [json.into(), version.into(), cached.into(), millis.into(), script_deadline(timeout).into()];
        let deadline = tokio::time::Instant::now() + timeout;
        let mut full = false;
        loop {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let append = CachedAppend { cache_key: cache_key.to_owned(), args: args.clone(), reply };
            if self.appends().send(append).await.is_err() {
                return Err(DurableError::Protocol("the enqueue task has stopped".to_owned()));
            }
            let added =
                answer.await.map_err(|_| DurableError::Protocol("the enqueue task dropped an append".to_owned()))?;
            match added {
                Ok(Some(id)) => return self.replicated(id, deadline).await,
                Ok(None) => full = true,
                // Waiting for room ran past the script's deadline.
                Err(DurableError::Late) if full => return Err(DurableError::Full),
                Err(err) => return Err(err),
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
    fn appends(&self) -> &tokio::sync::mpsc::Sender<CachedAppend> {
        self.batches.get_or_init(|| {
            let (queue, appends) = tokio::sync::mpsc::channel(APPENDS_WAITING);
            let (redis, stream, capacity) = (self.redis.clone(), self.config.stream.clone(), self.config.capacity);
            tokio::spawn(send_cached_appends(redis, stream, capacity, appends));
            queue
        })
    }

    /// `id` once the stream's server has passed it to `ack_replicas`
    /// replicas, waiting until `deadline` at most.
    async fn replicated(&self, id: String, deadline: tokio::time::Instant) -> Result<String, DurableError> {
        let wanted = self.config.ack_replicas;
        if wanted == 0 {
            return Ok(id);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
        let acked = self.redis.wait_replicas(&self.config.stream, wanted, left).await?;
        if acked >= wanted { Ok(id) } else { Err(DurableError::NotReplicated { acked, wanted }) }
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
