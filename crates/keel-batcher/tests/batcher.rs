//! The batcher's behaviour with paused time (no sleeps that hope).

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_batcher::{AddError, BatchSink, Batcher, BatcherConfig, BatcherStats, SinkError, SinkFuture, Stamped};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
struct Item {
    label: &'static str,
    at: u64,
}

impl Stamped for Item {
    fn stamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.at)
    }
}

fn item(label: &'static str, at: u64) -> Item {
    Item { label, at }
}

#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    Fail,
    Hang,
}

/// One recorded write: when (since the sink was made) and what.
type Write = (Duration, Vec<(String, Item)>);

/// Records every write (with its time) and behaves as scripted, then Ok.
struct Sink {
    writes: Mutex<Vec<Write>>,
    script: Mutex<VecDeque<Behaviour>>,
    start: Instant,
    /// Refused (a permanent failure) in any batch, always.
    poison: Mutex<Option<&'static str>>,
}

impl Sink {
    fn new(script: &[Behaviour]) -> Arc<Self> {
        Arc::new(Self {
            writes: Mutex::new(Vec::new()),
            script: Mutex::new(script.iter().copied().collect()),
            start: Instant::now(),
            poison: Mutex::new(None),
        })
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    fn times(&self) -> Vec<Duration> {
        self.writes().into_iter().map(|(t, _)| t).collect()
    }

    /// The latest value written per key.
    fn table(&self) -> HashMap<String, Item> {
        let mut table = HashMap::new();
        for (_, batch) in self.writes() {
            for (k, v) in batch {
                table.insert(k, v);
            }
        }
        table
    }
}

impl BatchSink<String, Item> for Sink {
    fn write<'a>(&'a self, batch: &'a [(String, Item)]) -> SinkFuture<'a> {
        let behaviour = self.script.lock().unwrap().pop_front().unwrap_or(Behaviour::Ok);
        let at = self.start.elapsed();
        let poison = *self.poison.lock().unwrap();
        Box::pin(async move {
            if let Some(poison) = poison.filter(|p| batch.iter().any(|(k, _)| k == p)) {
                return Err(SinkError::permanent(format!("value of {poison} refused")));
            }
            match behaviour {
                Behaviour::Ok => {
                    let mut sorted = batch.to_vec();
                    sorted.sort_by(|a, b| a.0.cmp(&b.0));
                    self.writes.lock().unwrap().push((at, sorted));
                    Ok(())
                }
                Behaviour::Fail => Err(SinkError::transient("database unavailable")),
                Behaviour::Hang => std::future::pending().await,
            }
        })
    }
}

fn config(max: usize) -> BatcherConfig {
    BatcherConfig { max_batch_size: max, channel_multiplier: 5, ..BatcherConfig::default() }
}

fn start(config: BatcherConfig, sink: &Arc<Sink>) -> Batcher<String, Item> {
    Batcher::start("test", config, sink.clone()).unwrap()
}

/// Lets the owner task take everything from the channel.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn assert_accounted(stats: BatcherStats) {
    assert_eq!(
        stats.offered,
        stats.flushed + stats.deduplicated + stats.dropped() + stats.pending,
        "offered = flushed + deduplicated + dropped + pending: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn never_blocks_with_a_stalled_sink_and_counts_exact_drops() {
    let sink = Sink::new(&[Behaviour::Hang]);
    let batcher = start(BatcherConfig { max_batch_size: 2, channel_multiplier: 2, ..BatcherConfig::default() }, &sink);
    batcher.add("a".into(), item("a", 1)).unwrap();
    batcher.add("b".into(), item("b", 1)).unwrap();
    settle().await; // capacity flush: the sink now hangs
    let before = Instant::now();
    let results: Vec<_> = (0..10).map(|i| batcher.add(format!("k{i}"), item("k", 1))).collect();
    assert_eq!(Instant::now(), before, "add never waits");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4, "the channel holds 2 × 2");
    assert_eq!(results.iter().filter(|r| **r == Err(AddError::Full)).count(), 6);
    let stats = batcher.stats();
    assert_eq!((stats.dropped_full, stats.offered), (6, 12));
    assert_eq!(batcher.queue_depth(), 4);
    assert_accounted(stats);
}

/// `add_all` takes a whole run when the channel has room for it, and
/// otherwise takes what fits and drops (and counts) the rest, as one `add`
/// per item would; closed, it takes nothing.
#[tokio::test(start_paused = true)]
async fn add_all_takes_what_fits_and_counts_the_rest() {
    let sink = Sink::new(&[Behaviour::Hang]);
    let batcher = start(BatcherConfig { max_batch_size: 2, channel_multiplier: 2, ..BatcherConfig::default() }, &sink);
    let run = |from: usize, n: usize| (from..from + n).map(|i| (format!("k{i}"), item("k", 1))).collect::<Vec<_>>();
    assert_eq!(batcher.add_all(run(0, 2)), Ok(2));
    settle().await; // capacity flush: the sink now hangs
    assert_eq!(batcher.add_all(Vec::new()), Ok(0));
    assert_eq!(batcher.add_all(run(2, 3)), Ok(3));
    assert_eq!(batcher.add_all(run(5, 3)), Ok(1), "the channel holds 2 × 2");
    let stats = batcher.stats();
    assert_eq!((stats.dropped_full, stats.offered), (2, 8));
    assert_eq!(batcher.queue_depth(), 4);
    assert_accounted(stats);

    let closed = start(config(10), &Sink::new(&[]));
    closed.shutdown().await;
    assert_eq!(closed.add_all(run(8, 1)), Err(AddError::Closed));
}

#[tokio::test(start_paused = true)]
async fn the_newest_timestamp_wins_not_the_latest_arrival() {
    let sink = Sink::new(&[]);
    let batcher = start(config(10), &sink);
    for at in [2, 1, 3] {
        batcher.add("k".into(), item("v", at)).unwrap();
    }
    batcher.add("j".into(), item("second", 2)).unwrap();
    batcher.add("j".into(), item("first", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(5001)).await;
    let table = sink.table();
    assert_eq!(table["k"].at, 3);
    assert_eq!(table["j"], item("second", 2), "an older value arriving later is ignored");
    let stats = batcher.stats();
    assert_eq!((stats.flushed, stats.deduplicated), (2, 3));
    assert_accounted(stats);
}

#[tokio::test(start_paused = true)]
async fn ties_go_to_the_later_arrival() {
    let sink = Sink::new(&[]);
    let batcher = start(config(10), &sink);
    batcher.add("k".into(), item("earlier", 7)).unwrap();
    batcher.add("k".into(), item("later", 7)).unwrap();
    tokio::time::sleep(Duration::from_millis(5001)).await;
    assert_eq!(sink.table()["k"].label, "later");
}

#[tokio::test(start_paused = true)]
async fn capacity_counts_unique_keys_and_the_nth_key_flushes_once() {
    let sink = Sink::new(&[]);
    let batcher = start(config(3), &sink);
    for at in 0..5 {
        batcher.add("a".into(), item("a", at)).unwrap();
    }
    batcher.add("b".into(), item("b", 1)).unwrap();
    settle().await;
    assert!(sink.writes().is_empty(), "two unique keys (N-1) do not flush");
    batcher.add("c".into(), item("c", 1)).unwrap();
    settle().await;
    let writes = sink.writes();
    assert_eq!(writes.len(), 1, "the N-th key flushes once");
    assert_eq!(writes[0].1.len(), 3);
    assert_eq!(writes[0].0, Duration::from_millis(1), "at once, not on the timer");
}

/// Keys that reach the owner together past the capacity flush whole
/// batches at once; the remainder waits for the next capacity or the
/// interval, as when they arrive one by one (so 10 keys at a batch size of
/// 5 are written at once, all of them).
#[tokio::test(start_paused = true)]
async fn a_capacity_flush_writes_whole_batches_and_keeps_the_rest() {
    let sink = Sink::new(&[]);
    let batcher = start(config(4), &sink);
    for i in 0..10 {
        batcher.add(format!("k{i}"), item("v", 1)).unwrap();
    }
    settle().await;
    let writes = sink.writes();
    let sizes: Vec<usize> = writes.iter().map(|w| w.1.len()).collect();
    assert_eq!(sizes, [4, 4], "two whole batches at once");
    assert_eq!(batcher.stats().pending, 2, "the newest two wait");
    batcher.add("k10".into(), item("v", 1)).unwrap();
    batcher.add("k11".into(), item("v", 1)).unwrap();
    settle().await;
    assert_eq!(sink.writes().len(), 3, "the fourth key after them fills the next batch");
    assert_eq!(batcher.stats().pending, 0);

    let batcher = start(config(5), &sink);
    for i in 0..10 {
        batcher.add(format!("j{i}"), item("v", 1)).unwrap();
    }
    settle().await;
    assert_eq!(batcher.stats().flushed, 10, "nothing left for the interval");
}

#[tokio::test(start_paused = true)]
async fn a_capacity_flush_at_4s_moves_the_next_scheduled_flush_to_9s() {
    let sink = Sink::new(&[]);
    let batcher = start(config(2), &sink);
    tokio::time::sleep(Duration::from_secs(4)).await;
    batcher.add("a".into(), item("a", 1)).unwrap();
    batcher.add("b".into(), item("b", 1)).unwrap();
    settle().await;
    batcher.add("c".into(), item("c", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(4990)).await;
    assert_eq!(sink.times(), [Duration::from_secs(4)], "nothing at 5 s: the timer restarted");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sink.times(), [Duration::from_secs(4), Duration::from_secs(9)]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_tick_does_nothing() {
    let sink = Sink::new(&[]);
    let batcher = start(config(10), &sink);
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(sink.writes().is_empty());
    assert_eq!(batcher.stats(), BatcherStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_is_merged_back_and_retried_and_newer_values_win() {
    let sink = Sink::new(&[Behaviour::Fail, Behaviour::Fail]);
    let batcher = start(config(10), &sink);
    batcher.add("k".into(), item("old", 1)).unwrap();
    batcher.add("other".into(), item("other", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(5001)).await; // first write fails at 5 s
    batcher.add("k".into(), item("new", 2)).unwrap(); // arrives during the outage
    tokio::time::sleep(Duration::from_secs(2)).await; // retry at 5.2 s fails, at 5.6 s succeeds
    let writes = sink.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].0, Duration::from_millis(5600), "backoff 200 ms then 400 ms");
    let table = sink.table();
    assert_eq!((table["k"].label, table["other"].label), ("new", "other"));
    let stats = batcher.stats();
    assert_eq!((stats.flushed, stats.pending, stats.dropped()), (2, 0, 0));
    assert_accounted(stats);
}

#[tokio::test(start_paused = true)]
async fn defaults_ride_out_a_sixty_second_outage_without_dropping_anything() {
    // The sink is unreachable for 60 s: with the default configuration
    // (batches of 500, 200 ms doubling to 10 s) every retry fails until then.
    let sink = Sink::new(&[]);
    let batcher = start(BatcherConfig::default(), &sink);
    *sink.script.lock().unwrap() = std::iter::repeat_n(Behaviour::Fail, 1_000).collect();
    let started = Instant::now();
    for i in 0..1_200u64 {
        batcher.add(format!("k{i}"), item("v", i)).unwrap();
        if i % 100 == 0 {
            settle().await;
        }
    }
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stats = batcher.stats();
        assert_eq!((stats.dropped(), stats.flushed), (0, 0), "nothing dropped or written during the outage");
    }
    sink.script.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let stats = batcher.stats();
    assert_eq!((stats.flushed, stats.dropped(), stats.pending), (1_200, 0, 0), "{stats:?}");
    assert_eq!(sink.table().len(), 1_200);
    assert_accounted(stats);
}

#[tokio::test(start_paused = true)]
async fn one_refused_key_is_dropped_as_rejected_and_the_rest_flushed() {
    let sink = Sink::new(&[]);
    *sink.poison.lock().unwrap() = Some("k250");
    let batcher = start(BatcherConfig::default(), &sink);
    for i in 0..500u64 {
        batcher.add(format!("k{i}"), item("v", i)).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = batcher.stats();
    assert_eq!((stats.flushed, stats.dropped_rejected, stats.dropped(), stats.pending), (499, 1, 1, 0), "{stats:?}");
    let table = sink.table();
    assert_eq!(table.len(), 499);
    assert!(!table.contains_key("k250"));
    assert_accounted(stats);
}

#[tokio::test(start_paused = true)]
async fn at_the_key_bound_new_adds_are_refused_not_accepted_and_lost() {
    let sink = Sink::new(&[Behaviour::Fail; 1_000]);
    let config = BatcherConfig { max_pending_keys: 20, channel_multiplier: 1, ..config(10) };
    let batcher = start(config, &sink);
    let mut refused = 0;
    for i in 0..100u64 {
        if batcher.add(format!("k{i}"), item("v", i)) == Err(AddError::Full) {
            refused += 1;
        }
        settle().await;
    }
    // 20 keys held by the owner, 10 waiting in the channel, the rest refused.
    assert_eq!(refused, 70);
    let stats = batcher.stats();
    assert_eq!((stats.dropped_full, stats.pending), (70, 30), "{stats:?}");
    assert_accounted(stats);
}

#[tokio::test(start_paused = true)]
async fn twenty_concurrent_producers_on_three_keys_leave_three_newest_rows() {
    let sink = Sink::new(&[]);
    let batcher = start(config(500), &sink);
    let tasks: Vec<_> = (0..20u64)
        .map(|p| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                for step in 0..50u64 {
                    for key in ["x", "y", "z"] {
                        batcher.add(key.into(), item("v", step * 100 + p)).unwrap();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    batcher.shutdown().await;
    let table = sink.table();
    assert_eq!(table.len(), 3);
    for key in ["x", "y", "z"] {
        assert_eq!(table[key].at, 49 * 100 + 19, "{key} holds the newest value");
    }
    assert_accounted(batcher.stats());
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_items_still_in_the_channel() {
    let sink = Sink::new(&[]);
    let batcher = start(config(500), &sink);
    for i in 0..300 {
        batcher.add(format!("k{i}"), item("v", 1)).unwrap();
    }
    // No yield: the owner has not taken them yet.
    assert_eq!(batcher.queue_depth(), 300);
    batcher.shutdown().await;
    assert_eq!(sink.table().len(), 300);
    let stats = batcher.stats();
    assert_eq!((stats.flushed, stats.pending, stats.dropped()), (300, 0, 0));
    assert_eq!(batcher.add("late".into(), item("v", 1)), Err(AddError::Closed));
}

#[tokio::test(start_paused = true)]
async fn on_the_owners_tracker_a_drain_waits_for_the_final_flush() {
    let (sink, tasks) = (Sink::new(&[]), keel_core::Shutdown::new());
    let batcher = start(BatcherConfig { tasks: Some(tasks.clone()), ..config(500) }, &sink);
    batcher.add("a".into(), item("a", 1)).unwrap();
    let early = tasks.drain(Duration::from_secs(1)).await;
    assert_eq!(early.map_err(|e| e.remaining), Err(1), "the owner task runs until the batcher is shut down");
    batcher.shutdown().await;
    tasks.drain(Duration::from_secs(1)).await.unwrap();
    assert_eq!(sink.table().len(), 1, "the item was flushed before the drain ended");
}

#[tokio::test(start_paused = true)]
async fn a_hung_sink_makes_shutdown_return_after_the_final_flush_timeout() {
    let sink = Sink::new(&[Behaviour::Hang]);
    let batcher = start(config(500), &sink);
    batcher.add("a".into(), item("a", 1)).unwrap();
    batcher.add("b".into(), item("b", 1)).unwrap();
    let started = Instant::now();
    batcher.shutdown().await;
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    let stats = batcher.stats();
    assert_eq!((stats.dropped_shutdown, stats.pending), (2, 0), "what could not be written is counted");
    assert_accounted(stats);
}

#[tokio::test(start_paused = true)]
async fn shutdown_within_spends_only_what_is_left_of_the_budget() {
    let sink = Sink::new(&[Behaviour::Hang]);
    let batcher = start(config(500), &sink);
    batcher.add("a".into(), item("a", 1)).unwrap();
    let started = Instant::now();
    batcher.shutdown_within(Duration::from_secs(3)).await;
    assert_eq!(started.elapsed(), Duration::from_secs(3), "the process's remaining budget, not the 15 s timeout");
    assert_eq!(batcher.stats().dropped_shutdown, 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_configuration_is_a_typed_error() {
    let sink = Sink::new(&[]);
    for bad in [
        BatcherConfig { max_batch_size: 0, ..BatcherConfig::default() },
        BatcherConfig { max_pending_keys: 10, ..BatcherConfig::default() },
    ] {
        let err = Batcher::<String, Item>::start("t", bad, sink.clone()).unwrap_err();
        assert!(err.to_string().starts_with("invalid batcher configuration"), "{err}");
    }
}
