use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
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
    process: String,
    instance: String,
    redactor: Redactor,
    ignore_targets: Vec<String>,
    tx: mpsc::Sender<LogRecord>,
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
    pub fn new(config: CaptureConfig, redactor: Redactor) -> (Self, mpsc::Receiver<LogRecord>) {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let shared = Shared {
            enabled: AtomicBool::new(config.enabled),
            dropped: AtomicU64::new(0),
            captured: AtomicU64::new(0),
            process: config.process,
            instance: config.instance,
            redactor,
            ignore_targets: config.ignore_targets,
            tx,
        };
        (Self { shared: Arc::new(shared) }, rx)
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

    /// Moves records from `records` to `sink` in batches of up to `batch`,
    /// at least every `interval`, until the channel closes. A failing sink
    /// loses that batch (logging never blocks the application), and the
    /// count is returned when the drain ends.
    pub async fn drain(
        records: mpsc::Receiver<LogRecord>,
        sink: Arc<dyn LogSink>,
        batch: usize,
        interval: Duration,
    ) -> u64 {
        Self::drain_until(records, sink, batch, interval, std::future::pending()).await
    }

    /// [`drain`](Self::drain) that also ends when `stop` completes, after
    /// storing what the buffer holds at that moment (the global subscriber
    /// keeps the channel open for the life of the process).
    pub async fn drain_until(
        mut records: mpsc::Receiver<LogRecord>,
        sink: Arc<dyn LogSink>,
        batch: usize,
        interval: Duration,
        stop: impl Future<Output = ()>,
    ) -> u64 {
        let mut lost = 0u64;
        let mut pending = Vec::with_capacity(batch);
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            let closed = tokio::select! {
                received = records.recv_many(&mut pending, batch), if !stopping => received == 0,
                () = tokio::time::sleep(interval), if !pending.is_empty() && !stopping => false,
                () = &mut stop, if !stopping => {
                    stopping = true;
                    false
                }
            };
            if stopping {
                // What was captured before the stop, then no more.
                let held = records.len();
                records.recv_many(&mut pending, held).await;
            }
            let closed = closed || stopping;
            if !pending.is_empty() && (closed || pending.len() >= batch || records.is_empty()) {
                if let Err(err) = sink.push(&pending).await {
                    lost += pending.len() as u64;
                    // Not through tracing: this very layer would capture it.
                    eprintln!("keel-monitoring: cannot store {} log records: {err}", pending.len());
                }
                pending.clear();
            }
            if closed {
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

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let shared = &self.capture.shared;
        if !shared.enabled.load(Ordering::Relaxed) {
            return;
        }
        let metadata = event.metadata();
        if shared.ignore_targets.iter().any(|prefix| metadata.target().starts_with(prefix.as_str())) {
            return;
        }
        // Full buffer: drop before doing any work for this record.
        let Ok(permit) = shared.tx.try_reserve() else {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let mut record = LogRecord {
            time_ms: u64::try_from(keel_core::unix_millis(std::time::SystemTime::now())).unwrap_or_default(),
            level: metadata.level().to_string(),
            target: metadata.target().to_owned(),
            message: visitor.message,
            process: shared.process.clone(),
            instance: shared.instance.clone(),
            fields: visitor.fields,
        };
        shared.redactor.apply(&mut record);
        permit.send(record);
        shared.captured.fetch_add(1, Ordering::Relaxed);
    }
}
