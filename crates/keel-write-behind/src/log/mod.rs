//! The local write-ahead log behind the in-process queue: a write is
//! acknowledged only once its record is on disk (`fdatasync`), so a SIGKILL
//! or a power loss loses nothing that was acknowledged.
//!
//! - Records carry their length and a CRC-32C; segments are named by the
//!   position of their first byte.
//! - Appends that arrive while a sync runs share the next one (group
//!   commit): one writer thread takes every waiting record, writes them with
//!   one `write` and one `fdatasync`, then answers them all. A thread of its
//!   own rather than a blocking task per group: the log's I/O never waits
//!   for a runtime worker, and a group costs no task hand-over.
//! - A record is done once the queue persisted or dead-lettered it. The
//!   checkpoint (the position before which every record is done) is made
//!   durable, and only then are the segments before it removed.
//! - At start the log is replayed from the checkpoint; a torn tail is cut, a
//!   record that fails its check elsewhere is kept as a file beside the log
//!   (`corrupt-<position>.bin`), counted, and the rest is still delivered.
//! - The directory is locked (`flock`) for the life of the process.
//! - Bounded: at `max_bytes` appends wait for room.

mod core;
mod figures;
mod record;
mod storage;
mod writer;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::Histogram;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::core::{LogCore, Recovery};
pub use self::storage::{DirStorage, Storage};
pub use figures::LocalLogStats;

/// Local log settings.
#[derive(Debug, Clone)]
pub struct LocalLogConfig {
    /// The directory (created if missing; locked for this process).
    pub dir: PathBuf,
    /// Bytes the log may hold (1 GiB); appends wait for room beyond it.
    pub max_bytes: u64,
    /// Bytes per segment file before the next one starts (64 MiB, at most an
    /// eighth of `max_bytes` so persisted segments free room steadily).
    pub segment_bytes: u64,
    /// Longest time between checkpoints while records are being persisted (1 s).
    pub checkpoint_interval: Duration,
}

impl LocalLogConfig {
    /// Defaults in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

/// Why the log could not be opened or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalLogError {
    /// Another process holds the directory.
    #[error("{0}")]
    Locked(String),
    /// Reading, writing or syncing failed.
    #[error("local log: {0}")]
    Io(String),
    /// Invalid settings.
    #[error("invalid local log configuration: {0}")]
    Config(String),
}

/// Bytes a record of `payload` bytes takes in the log.
pub(crate) fn record_bytes(payload: usize) -> u64 {
    (payload + record::HEADER) as u64
}

/// What a submitter is told: the record's position, or why it was not written.
type Answer = Box<dyn FnOnce(Result<u64, String>) + Send>;

struct Submission {
    payload: Vec<u8>,
    answer: Answer,
}

/// Records appended and not yet done, and the head once they were registered.
#[derive(Default)]
struct Outstanding {
    positions: BTreeSet<u64>,
    head: u64,
}

struct Shared {
    config: LocalLogConfig,
    core: Arc<Mutex<LogCore>>,
    submissions: Mutex<Vec<Submission>>,
    /// Wakes the writer thread: new submissions, a segment to free, closing.
    wake: std::sync::Condvar,
    room: Notify,
    outstanding: Mutex<Outstanding>,
    /// Bytes on disk and bytes promised to appends on their way.
    disk: AtomicU64,
    reserved: AtomicU64,
    segments: AtomicU64,
    /// The oldest segment is freed once the checkpoint reaches this.
    next_release: AtomicU64,
    /// The durable checkpoint.
    durable: AtomicU64,
    appends: AtomicU64,
    syncs: AtomicU64,
    append_errors: AtomicU64,
    replayed: AtomicU64,
    corrupt: AtomicU64,
    failing: Mutex<Option<String>>,
    /// Where the records replayed at start end: until the checkpoint passes
    /// it, some acknowledged writes may be in the log alone.
    recovered_end: AtomicU64,
    recovered: Mutex<Vec<(u64, Vec<u8>)>>,
    sync_duration: OnceLock<Histogram<f64>>,
    closing: CancellationToken,
    stopped: CancellationToken,
    running: AtomicBool,
    _lock: storage::DirLock,
}

/// A local write-ahead log; cloning shares it. Give it to
/// `WriteBehind::start_logged`, which acknowledges an item only once its
/// record is durable and replays the log at start.
#[derive(Clone)]
pub struct LocalLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLog").field("dir", &self.shared.config.dir).field("stats", &self.stats()).finish()
    }
}

/// Bytes promised to one append until it is written (or fails).
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
        self.shared.room.notify_waiters();
    }
}

impl LocalLog {
    /// Locks and opens the log in `config.dir` (created if missing) and
    /// recovers it: what the checkpoint does not cover is kept for the queue
    /// to replay, a torn tail is cut, corrupt records are kept as files
    /// beside the log and counted. Blocks (file I/O): call it at start-up.
    pub fn open(config: LocalLogConfig) -> Result<Self, LocalLogError> {
        if config.max_bytes < 1 << 20 {
            return Err(LocalLogError::Config("max_bytes must be at least 1MiB".into()));
        }
        if config.checkpoint_interval.is_zero() {
            return Err(LocalLogError::Config("checkpoint_interval must be positive".into()));
        }
        let io = |what: &str, err: std::io::Error| LocalLogError::Io(format!("{what} {}: {err}", config.dir.display()));
        std::fs::create_dir_all(&config.dir).map_err(|err| io("cannot create", err))?;
        let lock = storage::DirLock::acquire(&config.dir).map_err(LocalLogError::Locked)?;
        let segment_bytes = config.segment_bytes.clamp(64 << 10, config.max_bytes / 8);
        let (mut core, recovery) = LogCore::open(Box::new(DirStorage::new(&config.dir)), segment_bytes)
            .map_err(|err| io("cannot recover", err))?;
        for (position, bytes) in &recovery.corrupt {
            tracing::error!(position, bytes = bytes.len(), "a corrupt record in the local log is kept beside it");
            core.keep(&format!("corrupt-{position:020}.bin"), bytes)
                .map_err(|err| io("cannot keep a record in", err))?;
        }
        if recovery.torn_bytes > 0 {
            tracing::warn!(bytes = recovery.torn_bytes, "cut a torn append from the local log's tail");
        }
        if recovery.missing_bytes > 0 || recovery.checkpoint_reset {
            tracing::error!(
                missing = recovery.missing_bytes,
                checkpoint_reset = recovery.checkpoint_reset,
                "the local log's files were changed outside it; replaying all that is left"
            );
        }
        let head = core.head();
        let outstanding = Outstanding { positions: recovery.records.iter().map(|(p, _)| *p).collect(), head };
        let shared = Arc::new(Shared {
            disk: AtomicU64::new(core.bytes()),
            segments: AtomicU64::new(core.segments() as u64),
            next_release: AtomicU64::new(core.next_release().unwrap_or(u64::MAX)),
            durable: AtomicU64::new(core.durable_checkpoint()),
            config: LocalLogConfig { segment_bytes, ..config },
            core: Arc::new(Mutex::new(core)),
            submissions: Mutex::default(),
            wake: std::sync::Condvar::new(),
            room: Notify::new(),
            outstanding: Mutex::new(outstanding),
            reserved: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            append_errors: AtomicU64::new(0),
            replayed: AtomicU64::new(recovery.records.len() as u64),
            corrupt: AtomicU64::new(recovery.corrupt.len() as u64),
            failing: Mutex::new(None),
            recovered_end: AtomicU64::new(recovery.records.last().map_or(0, |(p, _)| p + 1)),
            recovered: Mutex::new(recovery.records),
            sync_duration: OnceLock::new(),
            closing: CancellationToken::new(),
            stopped: CancellationToken::new(),
            running: AtomicBool::new(false),
            _lock: lock,
        });
        Ok(Self { shared })
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.shared.config.dir
    }

    /// Whether records replayed at start may still be in the log alone
    /// (not yet persisted by the queue).
    pub fn recovering(&self) -> bool {
        let end = self.shared.recovered_end.load(Ordering::Acquire);
        end > 0 && self.shared.candidate() < end
    }

    /// The records to replay, once (taken by the queue at start).
    pub(crate) fn take_recovered(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut *self.shared.recovered.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Keeps a record the queue cannot decode as a dead letter beside the
    /// log, counts it, and marks it done.
    pub(crate) async fn quarantine(&self, position: u64, payload: Vec<u8>, reason: String) {
        tracing::error!(position, %reason, "a record in the local log cannot be decoded; kept beside the log");
        self.shared.corrupt.fetch_add(1, Ordering::AcqRel);
        let core = self.shared.core.clone();
        let kept = tokio::task::spawn_blocking(move || {
            core.lock().unwrap_or_else(PoisonError::into_inner).keep(&format!("corrupt-{position:020}.bin"), &payload)
        })
        .await;
        if !matches!(kept, Ok(Ok(()))) {
            tracing::error!(position, "cannot keep the undecodable record; it stays in the log");
            return;
        }
        self.done(&[position]);
    }

    /// Starts the writer thread (once). It ends at [`close`](Self::close),
    /// or within `checkpoint_interval` of the last handle being dropped.
    pub(crate) fn start(&self) -> Result<(), LocalLogError> {
        if !self.shared.running.swap(true, Ordering::AcqRel) {
            let shared = Arc::downgrade(&self.shared);
            std::thread::Builder::new()
                .name("keel-local-log".into())
                .spawn(move || Shared::write_loop(&shared))
                .map_err(|err| LocalLogError::Io(format!("cannot start the log writer: {err}")))?;
        }
        Ok(())
    }

    /// Waits until `bytes` more fit under the bound (or the log is empty).
    pub(crate) async fn reserve(&self, bytes: u64) -> Reservation {
        let shared = &self.shared;
        loop {
            let freed = shared.room.notified();
            let taken = shared.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                let used = shared.disk.load(Ordering::Acquire) + reserved;
                (used == 0 || used + bytes <= shared.config.max_bytes).then_some(reserved + bytes)
            });
            if taken.is_ok() {
                return Reservation { shared: shared.clone(), bytes };
            }
            freed.await;
        }
    }

    /// Hands `payload` to the writer; `answer` is called with its position
    /// once it is durable, or with the error, whether or not the caller
    /// still waits.
    pub(crate) fn submit(&self, payload: Vec<u8>, reservation: Reservation, answer: Answer) {
        if self.shared.closing.is_cancelled() {
            answer(Err("the local log is closed".into()));
            return;
        }
        let answer: Answer = Box::new(move |result| {
            drop(reservation);
            answer(result);
        });
        self.shared.submissions.lock().unwrap_or_else(PoisonError::into_inner).push(Submission { payload, answer });
        self.shared.wake.notify_one();
    }

    /// Marks records done (persisted or dead-lettered).
    pub(crate) fn done(&self, positions: &[u64]) {
        if positions.is_empty() {
            return;
        }
        {
            let mut outstanding = self.shared.outstanding.lock().unwrap_or_else(PoisonError::into_inner);
            for position in positions {
                outstanding.positions.remove(position);
            }
        }
        if self.shared.candidate() >= self.shared.next_release.load(Ordering::Acquire) {
            // Taken so the writer cannot miss it between check and wait.
            let _queue = self.shared.submissions.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_one();
        }
    }

    /// Stops the writer after it answered what was submitted and made a
    /// last checkpoint; later appends fail.
    pub async fn close(&self) {
        {
            // Under the submissions lock: the writer cannot miss the wake-up
            // between its check and its wait.
            let _queue = self.shared.submissions.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.closing.cancel();
            self.shared.wake.notify_one();
        }
        if self.shared.running.load(Ordering::Acquire) {
            self.shared.stopped.cancelled().await;
        }
    }
}
