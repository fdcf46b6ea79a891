//! The in-memory write-behind queue with paused time.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_write_behind::{
    DeadLetter, DeadLetters, EnqueueError, FullMode, Keyed, Metrics, RepoError, RepoFuture, Repository, WriteBehind,
    WriteBehindConfig,
};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
struct Item {
    key: &'static str,
    value: u32,
}

impl Keyed for Item {
    type Key = &'static str;
    fn key(&self) -> &'static str {
        self.key
    }
}

fn item(key: &'static str, value: u32) -> Item {
    Item { key, value }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    /// Fail the first n calls.
    FailFirst(u32),
    Always,
    /// Fail any batch holding the key "poison".
    Poison,
    /// Unreachable (a transient failure) while `down` is set.
    Down,
    Hang,
}

/// A repository that records successful writes (with their time) and every call.
struct Repo {
    mode: Mode,
    calls: Mutex<Vec<Vec<Item>>>,
    written: Mutex<Vec<(Duration, Vec<Item>)>>,
    letters: Mutex<Vec<DeadLetter<Item>>>,
    start: Instant,
    down: std::sync::atomic::AtomicBool,
    /// The dead-letter sink is unreachable while set.
    letters_down: std::sync::atomic::AtomicBool,
}

impl Repo {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode,
            calls: Mutex::default(),
            written: Mutex::default(),
            letters: Mutex::default(),
            start: Instant::now(),
            down: std::sync::atomic::AtomicBool::new(mode == Mode::Down),
            letters_down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn written(&self) -> Vec<(Duration, Vec<Item>)> {
        self.written.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// How many calls wrote `key` on its own.
    fn attempts_of(&self, key: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|c| c.len() == 1 && c[0].key == key).count()
    }
}

impl Repository<Item> for Repo {
    fn upsert_many<'a>(&'a self, items: &'a [Item]) -> RepoFuture<'a> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(items.to_vec());
            calls.len() as u32
        };
        let at = self.start.elapsed();
        Box::pin(async move {
            let fail = match self.mode {
                Mode::Ok => false,
                Mode::FailFirst(n) => call <= n,
                Mode::Always => true,
                Mode::Poison => items.iter().any(|i| i.key == "poison"),
                Mode::Down => {
                    if self.down.load(std::sync::atomic::Ordering::Acquire) {
                        return Err(RepoError::transient("connection refused"));
                    }
                    false
                }
                Mode::Hang => std::future::pending().await,
            };
            if fail {
                return Err(RepoError::permanent("value refused"));
            }
            self.written.lock().unwrap().push((at, items.to_vec()));
            Ok(())
        })
    }
}

impl DeadLetters<Item> for Repo {
    fn store<'a>(&'a self, letters: &'a [DeadLetter<Item>]) -> RepoFuture<'a> {
        if self.letters_down.load(std::sync::atomic::Ordering::Acquire) {
            return Box::pin(async { Err(RepoError::transient("connection refused")) });
        }
        self.letters.lock().unwrap().extend_from_slice(letters);
        Box::pin(async { Ok(()) })
    }
}

fn config(batch_size: usize) -> WriteBehindConfig {
    WriteBehindConfig {
        batch_size,
        flush_interval: Duration::from_secs(1),
        jitter: 0.0,
        ..WriteBehindConfig::default()
    }
}

fn start(config: WriteBehindConfig, repo: &Arc<Repo>) -> WriteBehind<Item> {
    WriteBehind::start(config, repo.clone(), repo.clone()).unwrap()
}

fn assert_balanced(m: Metrics) {
    assert_eq!(
        m.enqueued,
        m.persisted + m.failed + m.queue_depth + m.in_flight,
        "enqueued = persisted + failed + queue_depth + in_flight: {m:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn backpressure_holds_capacity_and_a_cancelled_enqueue_counts_nothing() {
    let repo = Repo::new(Mode::Hang);
    let queue = start(WriteBehindConfig { capacity: 4, ..config(2) }, &repo);
    for i in 0..4 {
        queue.enqueue(item("k", i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await; // a batch is now stuck in the repository
    let waiting = tokio::time::timeout(Duration::from_secs(5), queue.enqueue(item("k", 5))).await;
    assert!(waiting.is_err(), "the fifth enqueue waits for room");
    assert_eq!(queue.try_enqueue(item("k", 6)), Err(EnqueueError::Full));
    let m = queue.metrics();
    assert_eq!((m.enqueued, m.queue_depth + m.in_flight), (4, 4), "{m:?}");
    assert_balanced(m);

    let reject =
        start(WriteBehindConfig { capacity: 1, full_mode: FullMode::Reject, ..config(2) }, &Repo::new(Mode::Hang));
    reject.enqueue(item("a", 1)).await.unwrap();
    assert_eq!(reject.enqueue(item("b", 1)).await, Err(EnqueueError::Full));
}

#[tokio::test(start_paused = true)]
async fn full_batches_go_at_once_and_the_rest_after_the_interval() {
    let repo = Repo::new(Mode::Ok);
    let queue = start(config(4), &repo);
    for i in 0..10 {
        queue.enqueue(item("k", i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let sizes: Vec<(Duration, usize)> = repo.written().into_iter().map(|(t, b)| (t, b.len())).collect();
    assert_eq!(sizes, [(Duration::ZERO, 4), (Duration::ZERO, 4)], "2.5 batches: two right away");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sizes: Vec<(Duration, usize)> = repo.written().into_iter().map(|(t, b)| (t, b.len())).collect();
    assert_eq!(sizes[2], (Duration::from_secs(1), 2), "the rest one interval after it was queued");
    assert_balanced(queue.metrics());
}

#[tokio::test(start_paused = true)]
async fn a_single_item_waits_for_the_interval() {
    let repo = Repo::new(Mode::Ok);
    let queue = start(config(500), &repo);
    queue.enqueue(item("k", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(repo.written().is_empty());
    assert_eq!(queue.metrics().oldest_age, Duration::from_millis(999));
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(repo.written().len(), 1);
    assert_eq!(queue.metrics().persisted, 1);
}

#[tokio::test(start_paused = true)]
async fn fewer_failures_than_the_limit_persist_once_with_the_retries_counted() {
    let repo = Repo::new(Mode::FailFirst(3));
    let queue = start(WriteBehindConfig { max_retries: 5, ..config(10) }, &repo);
    queue.enqueue(item("k", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.retries, m.failed, m.batches), (1, 3, 0, 1), "{m:?}");
    assert_eq!(m.failing_for, Duration::ZERO, "a success clears the failure clock");
    assert_eq!(repo.written().len(), 1, "written exactly once");
    assert_balanced(m);
}

#[tokio::test(start_paused = true)]
async fn always_refused_items_are_tried_alone_max_plus_one_times_then_dead_lettered() {
    let repo = Repo::new(Mode::Always);
    let queue = start(WriteBehindConfig { max_retries: 3, ..config(4) }, &repo);
    for key in ["a", "b", "c", "d"] {
        queue.enqueue(item(key, 1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    for key in ["a", "b", "c", "d"] {
        assert_eq!(repo.attempts_of(key), 4, "{key} is tried alone max_retries + 1 times");
    }
    let letters = repo.letters.lock().unwrap().clone();
    assert_eq!(letters.len(), 4);
    assert!(letters.iter().all(|l| l.attempts == 4 && l.error == "value refused"));
    let calls = repo.calls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(repo.calls(), calls, "the flusher stops retrying");
    let m = queue.metrics();
    assert_eq!(m.failing_for, Duration::ZERO, "a store that answers (even no) is not failing");
    assert_eq!((m.failed, m.persisted, m.in_flight, m.retries), (4, 0, 0, 12));
    assert_balanced(m);
}

#[tokio::test(start_paused = true)]
async fn one_poison_item_does_not_hold_back_its_batch() {
    let repo = Repo::new(Mode::Poison);
    let queue = start(WriteBehindConfig { max_retries: 2, ..config(8) }, &repo);
    for key in ["a", "b", "c", "poison", "e", "f", "g", "h"] {
        queue.enqueue(item(key, 1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut persisted: Vec<&str> = repo.written().iter().flat_map(|(_, b)| b.iter().map(|i| i.key)).collect();
    persisted.sort();
    assert_eq!(persisted, ["a", "b", "c", "e", "f", "g", "h"]);
    assert_eq!(repo.letters.lock().unwrap()[0].item.key, "poison");
    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed), (7, 1));
    assert_balanced(m);
}

#[tokio::test(start_paused = true)]
async fn coalescing_keeps_the_last_write_per_key() {
    let repo = Repo::new(Mode::Ok);
    let queue = start(WriteBehindConfig { coalesce: true, ..config(500) }, &repo);
    for (key, value) in [("a", 1), ("a", 2), ("b", 1), ("a", 3)] {
        queue.enqueue(item(key, value)).await.unwrap();
    }
    let m = queue.metrics();
    assert_eq!((m.enqueued, m.coalesced, m.queue_depth), (2, 2, 2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(repo.written()[0].1, [item("a", 3), item("b", 1)], "queue order kept, newest values");
    assert_balanced(queue.metrics());
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_everything_queued() {
    let repo = Repo::new(Mode::Ok);
    let queue = start(WriteBehindConfig { flush_interval: Duration::from_secs(3600), ..config(100) }, &repo);
    for i in 0..250 {
        queue.enqueue(item("k", i)).await.unwrap();
    }
    queue.shutdown().await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.queue_depth, m.in_flight), (250, 0, 0));
    assert_balanced(m);
    assert_eq!(queue.enqueue(item("late", 1)).await, Err(EnqueueError::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_that_runs_out_of_time_dead_letters_the_rest() {
    let repo = Repo::new(Mode::Hang);
    let queue = start(WriteBehindConfig { shutdown_timeout: Duration::from_secs(5), ..config(2) }, &repo);
    for i in 0..5 {
        queue.enqueue(item("k", i)).await.unwrap();
    }
    let started = Instant::now();
    queue.shutdown().await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed, m.queue_depth, m.in_flight), (0, 5, 0, 0), "{m:?}");
    assert_balanced(m);
    let letters = repo.letters.lock().unwrap().clone();
    // Items still queued are dead-lettered; those inside an abandoned write
    // cannot be (they may yet land) and are counted failed.
    assert!(!letters.is_empty() && letters.len() < 5, "{} dead letters", letters.len());
    assert!(letters.iter().all(|l| l.error == "not written before the shutdown timeout"));
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_is_exported_as_opentelemetry_metrics() {
    let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
    let repo = Repo::new(Mode::Ok);
    let queue = start(config(500), &repo);
    queue.instrument(&telemetry, "entries");
    for i in 0..3 {
        queue.enqueue(item("k", i)).await.unwrap();
    }
    let text = telemetry.encode().unwrap();
    assert!(text.contains("keel_write_behind_enqueued_total{queue=\"entries\"} 3"), "{text}");
    assert!(text.contains("keel_write_behind_queue_depth{queue=\"entries\"} 3"), "{text}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = telemetry.encode().unwrap();
    assert!(text.contains("keel_write_behind_persisted_total{queue=\"entries\"} 3"), "{text}");
    assert!(text.contains("keel_write_behind_batches_total{queue=\"entries\"} 1"), "{text}");
    assert!(text.contains("keel_write_behind_oldest_age_seconds{queue=\"entries\"} 0"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_store_down_for_thirty_seconds_loses_and_dead_letters_nothing_at_the_defaults() {
    let repo = Repo::new(Mode::Down);
    let queue = start(WriteBehindConfig::default(), &repo);
    for i in 0..500 {
        queue.enqueue(item(["a", "b", "c", "d", "e"][i % 5], i as u32)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed, m.in_flight, m.retries), (0, 0, 500, 0), "{m:?}");
    assert!(m.failing_for >= Duration::from_secs(28), "unreachable since the first write: {:?}", m.failing_for);
    assert!(repo.calls() < 20, "the whole batch waits with backoff, it is not split: {} calls", repo.calls());
    assert!(repo.calls.lock().unwrap().iter().all(|c| c.len() == 500));
    repo.down.store(false, std::sync::atomic::Ordering::Release);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed, m.in_flight, m.queue_depth), (500, 0, 0, 0), "{m:?}");
    assert_eq!(m.failing_for, Duration::ZERO);
    assert!(repo.letters.lock().unwrap().is_empty());
    assert_balanced(m);
}

#[tokio::test(start_paused = true)]
async fn one_poison_item_among_499_good_is_the_only_dead_letter_at_the_defaults() {
    let repo = Repo::new(Mode::Poison);
    let queue = start(WriteBehindConfig::default(), &repo);
    for i in 0..500u32 {
        let key = if i == 321 { "poison" } else { ["a", "b", "c"][i as usize % 3] };
        queue.enqueue(item(key, i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.failed, m.in_flight), (499, 1, 0), "{m:?}");
    // Splitting is not an attempt: only the poison item's own tries count.
    assert_eq!(m.retries, 5);
    let letters = repo.letters.lock().unwrap().clone();
    assert_eq!((letters.len(), letters[0].item.key, letters[0].attempts), (1, "poison", 6));
    assert_balanced(m);
}

#[tokio::test(start_paused = true)]
async fn an_item_whose_dead_letter_cannot_be_stored_stays_in_flight_until_it_can() {
    let repo = Repo::new(Mode::Poison);
    repo.letters_down.store(true, std::sync::atomic::Ordering::Release);
    let queue = start(WriteBehindConfig { max_retries: 1, ..config(10) }, &repo);
    queue.enqueue(item("poison", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let m = queue.metrics();
    assert_eq!((m.failed, m.in_flight), (0, 1), "not given up while its dead letter is unstored: {m:?}");
    assert!(m.dead_letter_errors > 1, "the dead-letter sink is tried again: {m:?}");
    repo.letters_down.store(false, std::sync::atomic::Ordering::Release);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let m = queue.metrics();
    assert_eq!((m.failed, m.in_flight), (1, 0), "{m:?}");
    assert_eq!(repo.letters.lock().unwrap().len(), 1);
    assert_balanced(m);
}

#[derive(Clone, Debug, PartialEq)]
struct Heavy(u32);

impl Keyed for Heavy {
    type Key = u32;
    fn key(&self) -> u32 {
        self.0
    }
    fn weight(&self) -> usize {
        1_000
    }
}

struct Sink(Mutex<Vec<Heavy>>);

impl Repository<Heavy> for Sink {
    fn upsert_many<'a>(&'a self, items: &'a [Heavy]) -> RepoFuture<'a> {
        self.0.lock().unwrap().extend_from_slice(items);
        Box::pin(async { Ok(()) })
    }
}

impl DeadLetters<Heavy> for Sink {
    fn store<'a>(&'a self, _letters: &'a [DeadLetter<Heavy>]) -> RepoFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn the_byte_bound_holds_writes_back_until_room_is_freed() {
    let sink = Arc::new(Sink(Mutex::default()));
    let config = WriteBehindConfig {
        max_bytes: Some(5_000),
        flush_interval: Duration::from_secs(10),
        ..WriteBehindConfig::default()
    };
    let queue = WriteBehind::start(config, sink.clone(), sink.clone()).unwrap();
    for i in 0..5 {
        queue.enqueue(Heavy(i)).await.unwrap();
    }
    assert_eq!(queue.metrics().bytes, 5_000);
    assert_eq!(queue.try_enqueue(Heavy(5)), Err(EnqueueError::Full), "no byte room although item room is plenty");
    // A waiting enqueue that is cancelled counts nothing.
    assert!(tokio::time::timeout(Duration::from_secs(1), queue.enqueue(Heavy(6))).await.is_err());
    assert_eq!((queue.metrics().enqueued, queue.metrics().bytes), (5, 5_000));
    // The flush frees the room and the next enqueue goes through.
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.enqueue(Heavy(7)).await }
    });
    tokio::time::sleep(Duration::from_secs(11)).await;
    waiting.await.unwrap().unwrap();
    queue.shutdown().await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.bytes), (6, 0), "{m:?}");
    assert_eq!(sink.0.lock().unwrap().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn shutdown_within_spends_only_what_is_left_of_the_budget() {
    let repo = Repo::new(Mode::Hang);
    let queue = start(WriteBehindConfig { shutdown_timeout: Duration::from_secs(30), ..config(2) }, &repo);
    for i in 0..5 {
        queue.enqueue(item("k", i)).await.unwrap();
    }
    let started = Instant::now();
    queue.shutdown_within(Duration::from_secs(4)).await;
    assert_eq!(started.elapsed(), Duration::from_secs(4), "the process's remaining budget, not the 30 s timeout");
    assert_balanced(queue.metrics());
}

/// An outage with a handful of writes shows its age: the items being
/// retried count, not only those still queued (the Backlog alert reads it).
#[tokio::test(start_paused = true)]
async fn the_oldest_age_covers_items_being_retried() {
    let repo = Repo::new(Mode::Down);
    let queue = start(WriteBehindConfig::default(), &repo);
    for key in ["a", "b", "c"] {
        queue.enqueue(item(key, 1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(90)).await;
    let m = queue.metrics();
    assert_eq!((m.queue_depth, m.in_flight), (0, 3), "{m:?}");
    assert!(m.oldest_age >= Duration::from_secs(89), "the retried batch's age: {m:?}");
    repo.down.store(false, std::sync::atomic::Ordering::Release);
    tokio::time::sleep(WriteBehindConfig::default().backoff_max * 2).await;
    let m = queue.metrics();
    assert_eq!((m.persisted, m.oldest_age), (3, Duration::ZERO), "{m:?}");
}
