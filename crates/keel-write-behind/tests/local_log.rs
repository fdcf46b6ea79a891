//! Crash consistency of the local write-ahead log, over a simulated disk
//! that keeps only what was synced when the power goes and tears the last
//! unsynced write at a random byte; then the log behind a real queue, on a
//! real directory.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_write_behind::{
    DeadLetter, DeadLetters, EnqueueError, Keyed, LocalLog, LocalLogConfig, LocalLogError, LogCore, RepoError,
    RepoFuture, Repository, Storage, WriteBehind, WriteBehindConfig,
};
use proptest::prelude::*;

#[derive(Clone, Default, Debug)]
struct SimFile {
    /// What survives a power loss.
    synced: Vec<u8>,
    /// What reads see now.
    data: Vec<u8>,
    /// Whether the file's directory entry is durable.
    durable: bool,
}

#[derive(Default, Debug)]
struct Disk {
    files: BTreeMap<String, SimFile>,
    /// Operations left before the power goes (`None`: never).
    power_left: Option<usize>,
    /// The power is gone: every operation fails.
    dead: bool,
    /// Where, as a fraction of its length, the write the power cuts is torn.
    tear: f64,
    /// The next append writes this many bytes, then fails (a full disk).
    fail_append_after: Option<usize>,
    /// Truncation fails (after a failed append, the log must roll instead).
    fail_truncate: bool,
}

impl Disk {
    fn tick(&mut self) -> io::Result<bool> {
        if self.dead {
            return Err(io::Error::other("power lost"));
        }
        match &mut self.power_left {
            Some(0) => {
                self.dead = true;
                Ok(true)
            }
            Some(n) => {
                *n -= 1;
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// The disk as it is found after the power came back: synced bytes, a
    /// prefix of what was not synced (the torn write), no unsynced files.
    fn after_power_loss(&self, keep_unsynced: f64) -> Disk {
        let files = self
            .files
            .iter()
            .filter(|(_, f)| f.durable)
            .map(|(name, f)| {
                let mut data = f.synced.clone();
                if f.data.len() > f.synced.len() && f.data.starts_with(&f.synced) {
                    let extra = &f.data[f.synced.len()..];
                    data.extend_from_slice(&extra[..(extra.len() as f64 * keep_unsynced) as usize]);
                }
                (name.clone(), SimFile { synced: data.clone(), data, durable: true })
            })
            .collect();
        Disk { files, ..Disk::default() }
    }
}

#[derive(Clone, Default)]
struct SimStorage(Arc<Mutex<Disk>>);

impl SimStorage {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.0.lock().unwrap()
    }
}

impl Storage for SimStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let disk = self.disk();
        if disk.dead {
            return Err(io::Error::other("power lost"));
        }
        Ok(disk.files.keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let disk = self.disk();
        disk.files.get(name).map(|f| f.data.clone()).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut disk = self.disk();
        let cut = disk.tick()?;
        let tear = disk.tear;
        if let Some(written) = disk.fail_append_after.take() {
            let file = disk.files.entry(name.to_owned()).or_default();
            file.data.extend_from_slice(&data[..written.min(data.len())]);
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        let file = disk.files.entry(name.to_owned()).or_default();
        if cut {
            file.data.extend_from_slice(&data[..(data.len() as f64 * tear) as usize]);
            return Err(io::Error::other("power lost"));
        }
        file.data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.tick()? {
            return Err(io::Error::other("power lost"));
        }
        let file = disk.files.get_mut(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.synced = file.data.clone();
        file.durable = true;
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.tick()? || disk.fail_truncate {
            return Err(io::Error::other("cannot truncate"));
        }
        let file = disk.files.get_mut(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.data.truncate(len as usize);
        file.synced = file.data.clone();
        file.durable = true;
        Ok(())
    }

    fn replace(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.tick()? {
            return Err(io::Error::other("power lost"));
        }
        disk.files.insert(name.to_owned(), SimFile { synced: data.to_vec(), data: data.to_vec(), durable: true });
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut disk = self.disk();
        if disk.tick()? {
            return Err(io::Error::other("power lost"));
        }
        disk.files.remove(name);
        Ok(())
    }
}

/// A unique payload of `len` bytes (at least 8) for record `id`.
fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    p.resize(len.max(8), (id % 251) as u8);
    p
}

#[derive(Debug, Clone)]
enum Op {
    /// Appends a group of records of these sizes.
    Append(Vec<usize>),
    /// Marks this share of the outstanding records done (oldest first or
    /// scattered) and checkpoints.
    Done { share: f64, scattered: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(1usize..300, 1..6).prop_map(Op::Append),
        1 => (0.0..1.0f64, any::<bool>()).prop_map(|(share, scattered)| Op::Done { share, scattered }),
    ]
}

/// What the model of one run expects after the crash.
struct Run {
    /// Acknowledged records in order, and whether each is done.
    acked: Vec<(u64, Vec<u8>, bool)>,
    /// Every payload ever handed to an append.
    submitted: HashSet<Vec<u8>>,
}

fn drive(storage: &SimStorage, core: &mut LogCore, ops: &[Op], first_id: u64) -> Run {
    let mut run = Run { acked: Vec::new(), submitted: HashSet::new() };
    let mut id = first_id;
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let group: Vec<Vec<u8>> = sizes
                    .iter()
                    .map(|&len| {
                        id += 1;
                        payload(id, len)
                    })
                    .collect();
                run.submitted.extend(group.iter().cloned());
                match core.append(&group) {
                    Ok(positions) => {
                        run.acked.extend(positions.into_iter().zip(group).map(|(p, g)| (p, g, false)));
                    }
                    Err(_) if storage.disk().dead => break,
                    Err(err) => panic!("append failed without a fault: {err}"),
                }
            }
            Op::Done { share, scattered } => {
                let open: Vec<usize> = (0..run.acked.len()).filter(|&i| !run.acked[i].2).collect();
                let n = (open.len() as f64 * share) as usize;
                let chosen: Vec<usize> =
                    if *scattered { open.iter().copied().step_by(2).take(n).collect() } else { open[..n].to_vec() };
                for i in chosen {
                    run.acked[i].2 = true;
                }
                let candidate = run.acked.iter().find(|(_, _, done)| !done).map_or(core.head(), |(p, _, _)| *p);
                if core.checkpoint(candidate).is_err() && storage.disk().dead {
                    break;
                }
            }
        }
    }
    run
}

fn check_recovery(run: &Run, recovered: &[(u64, Vec<u8>)]) -> Result<(), TestCaseError> {
    let positions: Vec<u64> = recovered.iter().map(|(p, _)| *p).collect();
    prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "recovered out of order: {positions:?}");
    for (position, bytes) in recovered {
        prop_assert!(run.submitted.contains(bytes), "recovered bytes never appended at {position}");
    }
    let found: HashMap<u64, &Vec<u8>> = recovered.iter().map(|(p, b)| (*p, b)).collect();
    for (position, bytes, done) in &run.acked {
        if !done {
            prop_assert_eq!(found.get(position).copied(), Some(bytes), "acknowledged record at {} lost", position);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("KEEL_LOG_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    /// Power lost after any operation, mid-append included: recovery
    /// delivers every acknowledged record not yet done, in order, whole,
    /// and nothing that was never appended; the log then takes appends and
    /// recovers them again.
    #[test]
    fn a_power_loss_keeps_every_acknowledged_record(
        ops in proptest::collection::vec(op(), 1..40),
        power_after in 0usize..120,
        tear in 0.0..1.0f64,
        keep_unsynced in 0.0..1.0f64,
        segment_bytes in 64u64..2048,
    ) {
        let storage = SimStorage::default();
        {
            let mut disk = storage.disk();
            disk.power_left = Some(power_after);
            disk.tear = tear;
        }
        let (mut core, recovery) = match LogCore::open(Box::new(storage.clone()), segment_bytes) {
            Ok(opened) => opened,
            // The power went during the first start: nothing was acknowledged.
            Err(_) => return Ok(()),
        };
        prop_assert!(recovery.records.is_empty());
        let run = drive(&storage, &mut core, &ops, 0);
        drop(core);

        let found = SimStorage(Arc::new(Mutex::new(storage.disk().after_power_loss(keep_unsynced))));
        let (mut core, recovery) = LogCore::open(Box::new(found.clone()), segment_bytes).expect("recovery");
        prop_assert!(recovery.corrupt.is_empty(), "a torn write was reported as corruption: {:?}", recovery.corrupt);
        prop_assert_eq!(recovery.missing_bytes, 0);
        check_recovery(&run, &recovery.records)?;

        // The log goes on: new records land after what was recovered, and
        // a clean restart finds old and new.
        let more = vec![payload(1_000_000, 40), payload(1_000_001, 9)];
        let positions = core.append(&more).expect("append after recovery");
        prop_assert!(positions[0] >= recovery.records.last().map_or(0, |(p, b)| p + 8 + b.len() as u64));
        drop(core);
        let again = SimStorage(Arc::new(Mutex::new(found.disk().after_power_loss(0.0))));
        let (_, second) = LogCore::open(Box::new(again), segment_bytes).expect("second recovery");
        prop_assert!(second.corrupt.is_empty());
        let mut expected = recovery.records.clone();
        expected.extend(positions.into_iter().zip(more));
        prop_assert_eq!(second.records, expected);
    }

    /// A failed append (a full disk) acknowledges nothing of its group and
    /// leaves the log whole, whether or not its partial bytes could be cut.
    #[test]
    fn a_failed_append_leaves_no_corruption(
        before in proptest::collection::vec(proptest::collection::vec(1usize..200, 1..4), 1..8),
        written in 0usize..400,
        truncate_fails in any::<bool>(),
        segment_bytes in 64u64..1024,
    ) {
        let storage = SimStorage::default();
        let (mut core, _) = LogCore::open(Box::new(storage.clone()), segment_bytes).expect("open");
        let ops: Vec<Op> = before.iter().cloned().map(Op::Append).collect();
        let mut run = drive(&storage, &mut core, &ops, 0);
        {
            let mut disk = storage.disk();
            disk.fail_append_after = Some(written);
            disk.fail_truncate = truncate_fails;
        }
        let refused = vec![payload(500_000, 120), payload(500_001, 30)];
        prop_assert!(core.append(&refused).is_err());
        storage.disk().fail_truncate = false;
        let after = vec![payload(600_000, 50)];
        let positions = core.append(&after).expect("append after the disk has room again");
        run.acked.extend(positions.into_iter().zip(after.clone()).map(|(p, b)| (p, b, false)));
        run.submitted.extend(after);
        drop(core);
        let found = SimStorage(Arc::new(Mutex::new(storage.disk().after_power_loss(0.0))));
        let (_, recovery) = LogCore::open(Box::new(found), segment_bytes).expect("recovery");
        prop_assert!(recovery.corrupt.is_empty(), "{:?}", recovery.corrupt);
        let recovered: Vec<&Vec<u8>> = recovery.records.iter().map(|(_, b)| b).collect();
        for r in &refused {
            prop_assert!(!recovered.contains(&r), "a refused record was recovered");
        }
        check_recovery(&run, &recovery.records)?;
    }
}

/// A log of `n` records of 40 bytes in segments of `segment_bytes`, fully synced.
fn written_log(n: u64, segment_bytes: u64) -> (SimStorage, Vec<(u64, Vec<u8>)>) {
    let storage = SimStorage::default();
    let (mut core, _) = LogCore::open(Box::new(storage.clone()), segment_bytes).expect("open");
    let mut records = Vec::new();
    for id in 0..n {
        let p = payload(id, 40);
        let positions = core.append(std::slice::from_ref(&p)).expect("append");
        records.push((positions[0], p));
    }
    (storage, records)
}

#[test]
fn a_flipped_bit_mid_log_is_counted_kept_and_skipped() {
    let (storage, records) = written_log(20, 200);
    let segments: Vec<String> = storage.disk().files.keys().filter(|n| n.ends_with(".wal")).cloned().collect();
    assert!(segments.len() >= 4, "{segments:?}");
    {
        let mut disk = storage.disk();
        let file = disk.files.get_mut(&segments[1]).expect("a segment");
        file.data[20] ^= 0x08;
    }
    let (_, recovery) = LogCore::open(Box::new(storage.clone()), 200).expect("recovery");
    assert_eq!(recovery.corrupt.len(), 1, "{:?}", recovery.corrupt);
    assert_eq!(recovery.records.len(), records.len() - 1);
    let damaged = recovery.corrupt[0].0;
    let expected: Vec<(u64, Vec<u8>)> = records.into_iter().filter(|(p, _)| *p != damaged).collect();
    assert_eq!(recovery.records, expected, "every other record, in order");
}

#[test]
fn a_missing_segment_is_reported_and_the_rest_delivered() {
    let (storage, records) = written_log(20, 200);
    let segments: Vec<String> = storage.disk().files.keys().filter(|n| n.ends_with(".wal")).cloned().collect();
    storage.disk().files.remove(&segments[1]);
    let (_, recovery) = LogCore::open(Box::new(storage.clone()), 200).expect("recovery");
    assert!(recovery.missing_bytes > 0);
    assert!(recovery.corrupt.is_empty());
    let base: u64 = segments[1].trim_end_matches(".wal").parse().expect("a base");
    let next: u64 = segments[2].trim_end_matches(".wal").parse().expect("a base");
    let expected: Vec<(u64, Vec<u8>)> = records.into_iter().filter(|(p, _)| *p < base || *p >= next).collect();
    assert_eq!(recovery.records, expected);
}

#[test]
fn a_checkpoint_past_the_end_replays_everything_that_is_left() {
    let (storage, records) = written_log(10, 1 << 20);
    {
        let (mut core, _) = LogCore::open(Box::new(storage.clone()), 1 << 20).expect("open");
        core.checkpoint(records[6].0).expect("checkpoint");
    }
    // Something outside the log cut its file to three records.
    {
        let mut disk = storage.disk();
        let segment = disk.files.values_mut().find(|f| f.data.len() > 100).expect("the segment");
        segment.data.truncate(3 * 48);
        segment.synced = segment.data.clone();
    }
    let (mut core, recovery) = LogCore::open(Box::new(storage.clone()), 1 << 20).expect("recovery");
    assert!(recovery.checkpoint_reset);
    assert_eq!(recovery.records, records[..3].to_vec());
    // The checkpoint was written again: a new record is not skipped next time.
    let positions = core.append(&[payload(99, 40)]).expect("append");
    drop(core);
    let (_, again) = LogCore::open(Box::new(storage), 1 << 20).expect("recovery");
    assert_eq!(again.records.last().map(|(p, _)| *p), Some(positions[0]));
    assert_eq!(again.records.len(), 4);
}

#[test]
fn segments_are_removed_only_behind_a_durable_checkpoint() {
    let (storage, records) = written_log(30, 200);
    let (mut core, recovery) = LogCore::open(Box::new(storage.clone()), 200).expect("open");
    assert_eq!(recovery.records.len(), 30);
    let before = core.segments();
    // The power goes while the checkpoint is being replaced: no segment may
    // have been removed, and everything is still delivered.
    storage.disk().power_left = Some(0);
    assert!(core.checkpoint(records[20].0).is_err());
    assert_eq!(storage.disk().files.keys().filter(|n| n.ends_with(".wal")).count(), before);
    let found = SimStorage(Arc::new(Mutex::new(storage.disk().after_power_loss(0.0))));
    let (mut core, recovery) = LogCore::open(Box::new(found.clone()), 200).expect("recovery");
    assert_eq!(recovery.records, records);
    let freed = core.checkpoint(records[20].0).expect("checkpoint");
    assert!(freed > 0 && core.segments() < before);
    let (_, recovery) = LogCore::open(Box::new(found), 200).expect("recovery");
    assert_eq!(recovery.records, records[20..].to_vec());
}

// ---- the log behind a real queue, on a real directory ----

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Item {
    key: String,
    value: u64,
}

impl Keyed for Item {
    type Key = String;
    fn key(&self) -> String {
        self.key.clone()
    }
}

/// A table that can be switched to refuse every write as unreachable.
#[derive(Default)]
struct Table {
    rows: Mutex<Vec<Item>>,
    down: std::sync::atomic::AtomicBool,
}

impl Repository<Item> for Table {
    fn upsert_many<'a>(&'a self, items: &'a [Item]) -> RepoFuture<'a> {
        Box::pin(async move {
            if self.down.load(std::sync::atomic::Ordering::Acquire) {
                return Err(RepoError::transient("connection refused"));
            }
            self.rows.lock().unwrap().extend_from_slice(items);
            Ok(())
        })
    }
}

impl DeadLetters<Item> for Table {
    fn store<'a>(&'a self, _letters: &'a [DeadLetter<Item>]) -> RepoFuture<'a> {
        Box::pin(async { Err(RepoError::transient("no dead letters here")) })
    }
}

fn item(i: u64) -> Item {
    Item { key: format!("k{i}"), value: i }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn acknowledged_items_survive_a_crash_and_are_replayed_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LocalLogConfig::new(dir.path().join("log"));
    // First life: the store is down, so nothing is persisted; then the
    // process dies (its runtime is dropped with every task in it).
    let first = runtime();
    first.block_on(async {
        let table = Arc::new(Table::default());
        table.down.store(true, std::sync::atomic::Ordering::Release);
        let log = LocalLog::open(config.clone()).expect("open");
        let queue =
            WriteBehind::start_logged(WriteBehindConfig::default(), table.clone(), table, log.clone()).expect("start");
        let writes = (0..500).map(|i| queue.enqueue(item(i)));
        for answer in futures_util::future::join_all(writes).await {
            answer.expect("acknowledged");
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 500);
        assert!(stats.syncs < 500, "appends share syncs: {} syncs", stats.syncs);
        // A second process on the same directory is refused, naming the holder.
        let second = LocalLog::open(config.clone()).expect_err("locked");
        assert!(matches!(&second, LocalLogError::Locked(m) if m.contains(&std::process::id().to_string())), "{second}");
    });
    // Dropping the runtime drops every task in it, and with them the log.
    drop(first);

    let second = runtime();
    second.block_on(async {
        let table = Arc::new(Table::default());
        // The writer thread lets the log (and its lock) go within a
        // checkpoint interval of its last handle.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let log = loop {
            match LocalLog::open(config.clone()) {
                Ok(log) => break log,
                Err(LocalLogError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("open after the crash: {err}"),
            }
        };
        assert_eq!(log.stats().replayed, 500);
        let queue = WriteBehind::start_logged(WriteBehindConfig::default(), table.clone(), table.clone(), log.clone())
            .expect("start");
        tokio::time::timeout(Duration::from_secs(10), async {
            while table.rows.lock().unwrap().len() < 500 || queue.recovering() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the replayed items are persisted");
        let mut values: Vec<u64> = table.rows.lock().unwrap().iter().map(|i| i.value).collect();
        values.sort_unstable();
        assert_eq!(values, (0..500).collect::<Vec<_>>());
        queue.shutdown().await;
    });
    drop(second);
    // Everything was persisted and checkpointed: a third start replays nothing.
    let third = runtime();
    third.block_on(async {
        let log = LocalLog::open(config).expect("open");
        assert_eq!(log.stats().replayed, 0);
    });
}

#[test]
fn a_log_at_its_bound_refuses_after_the_wait_and_frees_room_as_items_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    rt.block_on(async {
        let table = Arc::new(Table::default());
        table.down.store(true, std::sync::atomic::Ordering::Release);
        let config = LocalLogConfig { max_bytes: 1 << 20, ..LocalLogConfig::new(dir.path()) };
        let log = LocalLog::open(config).expect("open");
        let queue = WriteBehind::start_logged(WriteBehindConfig::default(), table.clone(), table.clone(), log.clone())
            .expect("start");
        let big = |i: u64| Item { key: format!("k{i}"), value: i };
        let mut accepted = 0u64;
        let refused = loop {
            let mut padded = big(accepted);
            padded.key = format!("{}-{}", padded.key, "x".repeat(4000));
            match queue.enqueue_within(padded, Duration::from_millis(200)).await {
                Ok(()) => accepted += 1,
                Err(err) => break err,
            }
            assert!(accepted < 1000, "the bound never held");
        };
        assert_eq!(refused, EnqueueError::Full);
        assert!(log.stats().bytes <= 1 << 20, "{:?}", log.stats());
        assert_eq!(queue.metrics().enqueued, accepted, "a refused item is not queued");
        // The store returns: the backlog persists, the checkpoint frees
        // segments and writes are taken again.
        table.down.store(false, std::sync::atomic::Ordering::Release);
        let mut padded = big(accepted);
        padded.key = format!("{}-{}", padded.key, "x".repeat(4000));
        queue.enqueue_within(padded, Duration::from_secs(30)).await.expect("room again");
        queue.shutdown().await;
        assert_eq!(table.rows.lock().unwrap().len() as u64, accepted + 1);
    });
}

/// A shutdown that runs out of time while the store is away dead-letters
/// nothing and counts nothing as failed: the items stay in the log and are
/// replayed at the next start.
#[test]
fn a_shutdown_that_times_out_leaves_items_in_the_log_not_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LocalLogConfig::new(dir.path().join("log"));
    let first = runtime();
    first.block_on(async {
        let table = Arc::new(Table::default());
        table.down.store(true, std::sync::atomic::Ordering::Release);
        let log = LocalLog::open(config.clone()).expect("open");
        let queue = WriteBehind::start_logged(WriteBehindConfig::default(), table.clone(), table, log).expect("start");
        for i in 0..50 {
            queue.enqueue(item(i)).await.expect("acknowledged");
        }
        queue.shutdown_within(Duration::from_millis(300)).await;
        let m = queue.metrics();
        assert_eq!(m.failed, 0, "{m:?}");
        assert_eq!(m.persisted, 0, "{m:?}");
    });
    drop(first);
    let second = runtime();
    second.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let log = loop {
            match LocalLog::open(config.clone()) {
                Ok(log) => break log,
                Err(LocalLogError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("open after the shutdown: {err}"),
            }
        };
        assert_eq!(log.stats().replayed, 50);
    });
}
