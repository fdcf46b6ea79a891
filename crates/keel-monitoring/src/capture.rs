use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

use crate::{LogRecord, Redactor};

/// Why a sink could not take records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// A boxed sink future.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Where captured records go (a Redis list, the in-process ring).
pub trait LogSink: Send + Sync + 'static {
    /// Stores `records` (oldest first).
    fn push<'a>(&'a self, records: &'a [LogRecord]) -> SinkFuture<'a>;
}

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// `api` or `worker`.
    pub process: String,
    /// This instance.
    pub instance: String,
    /// Records buffered between the layer and the sink (10 000).
    pub buffer: usize,
    /// Capture starts on.
    pub enabled: bool,
    /// Events whose target starts with one of these are never captured: the
    /// Redis client's own logs would otherwise feed back into the sink that
    /// writes to Redis (default `fred`, `redis_protocol`).
    pub ignore_targets: Vec<String>,
}

impl CaptureConfig {
    /// Defaults for `process` and `instance`.
    pub fn new(process: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            process: process.into(),
            instance: instance.into(),
            buffer: 10_000,
            enabled: true,
            ignore_targets: vec!["fred".into(), "redis_protocol".into()],
        }
    }
}

struct Shared {
    enabled: AtomicBool,
    dropped: AtomicU64,
    captured: AtomicU64,
    ignore_targets: Vec<String>,
    queue: Arc<ArrayQueue<RawEvent>>,
    /// Emptied text buffers the drain hands back, so the logging thread
    /// neither allocates nor frees memory owned by another thread.
    spare: Arc<ArrayQueue<String>>,
}

/// Who captured, and what to hide: applied by the drain, off the logging
/// thread.
struct Identity {
    process: String,
    instance: String,
    redactor: Redactor,
}

/// Fields kept inline in a [`RawEvent`]; more spill into a vector.
const INLINE_FIELDS: usize = 12;

/// What the logging thread hands over: only what cannot be had later, in as
/// few allocations as possible (one, for up to [`INLINE_FIELDS`] fields):
/// every value, the message included, is written into one string and
/// located by `(name, start, end)`. Level and target live in the event's
/// `'static` metadata, field names are `'static` too; process, instance and
/// redaction are added by the drain.
struct RawEvent {
    time_ms: u64,
    metadata: &'static tracing::Metadata<'static>,
    text: String,
    inline: [(&'static str, usize, usize); INLINE_FIELDS],
    len: usize,
    spilled: Vec<(&'static str, String)>,
}

impl RawEvent {
    fn push(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        if self.len < INLINE_FIELDS {
            let start = self.text.len();
            write(&mut self.text);
            self.inline[self.len] = (name, start, self.text.len());
            self.len += 1;
        } else {
            let mut value = String::new();
            write(&mut value);
            self.spilled.push((name, value));
        }
    }
}

impl Visit for RawEvent {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), |text| text.push_str(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        self.push(field.name(), |text| {
            let _ = write!(text, "{value:?}");
        });
    }
}

/// The receiving end of a capture's buffer, for [`Capture::drain`].
pub struct Records {
    queue: Arc<ArrayQueue<RawEvent>>,
    spare: Arc<ArrayQueue<String>>,
    identity: Arc<Identity>,
}

impl fmt::Debug for Records {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records").field("buffered", &self.queue.len()).finish()
    }
}

impl Records {
    fn record(&self, raw: RawEvent) -> LogRecord {
        let mut message = String::new();
        let mut fields = std::collections::BTreeMap::new();
        let text = &raw.text;
        let inline = raw.inline[..raw.len].iter().map(|&(name, start, end)| (name, text[start..end].to_owned()));
        for (name, value) in inline.chain(raw.spilled) {
            if name == "message" {
                message = value;
            } else {
                fields.insert(name.to_owned(), value);
            }
        }
        let mut text = raw.text;
        // Kept only when small: one huge message must not pin its buffer. A
        // full pool just frees it.
        if text.capacity() <= 4096 {
            text.clear();
            let _ = self.spare.push(text);
        }
        let mut record = LogRecord {
            time_ms: raw.time_ms,
            level: raw.metadata.level().as_str().to_owned(),
            target: raw.metadata.target().to_owned(),
            message,
            process: self.identity.process.clone(),
            instance: self.identity.instance.clone(),
            fields,
        };
        self.identity.redactor.apply(&mut record);
        record
    }
}

/// The capture switch and counters; cloning shares them. Records flow to
/// the receiver returned by [`Capture::new`] until every clone (and every
/// layer) is dropped.
#[derive(Clone)]
pub struct Capture {
    shared: Arc<Shared>,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("enabled", &self.is_enabled())
            .field("captured", &self.captured())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Capture {
    /// A capture and the receiving end of its buffer.
    pub fn new(config: CaptureConfig, redactor: Redactor) -> (Self, Records) {
        // Preallocated and lock-free: a full buffer refuses at once, and
        // pushing never allocates or wakes anyone.
        let queue = Arc::new(ArrayQueue::new(config.buffer.max(1)));
        let spare = Arc::new(ArrayQueue::new(config.buffer.clamp(1, 1024)));
        let shared = Shared {
            enabled: AtomicBool::new(config.enabled),
            dropped: AtomicU64::new(0),
            captured: AtomicU64::new(0),
            ignore_targets: config.ignore_targets,
            queue: queue.clone(),
            spare: spare.clone(),
        };
        let identity = Identity { process: config.process, instance: config.instance, redactor };
        (Self { shared: Arc::new(shared) }, Records { queue, spare, identity: Arc::new(identity) })
    }

    /// The `tracing` layer feeding this capture.
    pub fn layer(&self) -> CaptureLayer {
        CaptureLayer { capture: self.clone() }
    }

    /// Turns capture on or off (takes effect for the next event).
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether capture is on.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Records handed to the buffer.
    pub fn captured(&self) -> u64 {
        self.shared.captured.load(Ordering::Relaxed)
    }

    /// Records dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Every `interval`, moves what the buffer holds to `sink` in batches of
    /// up to `batch`, until every [`Capture`] and layer is dropped. A failing sink loses that
    /// batch (logging never blocks the application), and the count is
    /// returned when the drain ends.
    ///
    /// The drain polls rather than waits: a waiting receiver would make every
    /// logged event wake it on another thread, which costs the logging thread
    /// more than building the record does.
    pub async fn drain(records: Records, sink: Arc<dyn LogSink>, batch: usize, interval: Duration) -> u64 {
        Self::drain_until(records, sink, batch, interval, std::future::pending()).await
    }

    /// [`drain`](Self::drain) that also ends when `stop` completes, after
    /// storing what the buffer holds at that moment (the global subscriber
    /// keeps the buffer open for the life of the process).
    pub async fn drain_until(
        records: Records,
        sink: Arc<dyn LogSink>,
        batch: usize,
        interval: Duration,
        stop: impl Future<Output = ()>,
    ) -> u64 {
        let batch = batch.max(1);
        let mut lost = 0u64;
        let mut pending = Vec::with_capacity(batch);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                () = &mut stop => true,
            };
            // Closed once every capture and layer is gone: only this end holds
            // the queue. Checked before draining, so nothing pushed earlier is
            // left behind.
            let closed = Arc::strong_count(&records.queue) == 1;
            // What was buffered at the tick, batch by batch, never waiting for
            // more: a producer outpacing the sink cannot hold up the next tick
            // or the stop.
            let mut left = records.queue.len();
            while left > 0 {
                let take = left.min(batch);
                left -= take;
                pending.extend(std::iter::from_fn(|| records.queue.pop()).take(take).map(|e| records.record(e)));
                if let Err(err) = sink.push(&pending).await {
                    lost += pending.len() as u64;
                    // Not through tracing: this very layer would capture it.
                    eprintln!("keel-monitoring: cannot store {} log records: {err}", pending.len());
                }
                pending.clear();
            }
            if stopping || closed {
                return lost;
            }
        }
    }
}

/// The `tracing` layer of a [`Capture`].
#[derive(Clone, Debug)]
pub struct CaptureLayer {
    capture: Capture,
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let shared = &self.capture.shared;
        if !shared.enabled.load(Ordering::Relaxed) {
            return;
        }
        let metadata = event.metadata();
        if shared.ignore_targets.iter().any(|prefix| metadata.target().starts_with(prefix.as_str()))
            || metadata.fields().field(keel_core::UNCAPTURED_FIELD).is_some()
        {
            return;
        }
        // Full buffer: drop before doing any work for this record (a race with
        // another thread filling the last slot is caught by the push below).
        if shared.queue.is_full() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut raw = RawEvent {
            time_ms: u64::try_from(keel_core::unix_millis(std::time::SystemTime::now())).unwrap_or_default(),
            metadata,
            text: shared.spare.pop().unwrap_or_else(|| String::with_capacity(128)),
            inline: [("", 0, 0); INLINE_FIELDS],
            len: 0,
            spilled: Vec::new(),
        };
        event.record(&mut raw);
        if shared.queue.push(raw).is_ok() {
            shared.captured.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
