//! The metadata sink and notifier against real PostgreSQL, and SQLite.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_batcher::{BatchSink, Batcher, BatcherConfig, DbMetadataSink, MetadataKey, MetadataNotifier, MetadataValue};
use keel_store::testing::TempDatabase;
use keel_store::{Bus, Database, DbConfig};
use keel_telemetry::Telemetry;
use uuid::Uuid;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn entry(agent: Uuid, key: &str, value: &str, secs: u64) -> (MetadataKey, MetadataValue) {
    (
        MetadataKey { agent_id: agent, key: key.into() },
        MetadataValue { value: value.into(), error: String::new(), collected_at: at(secs) },
    )
}

async fn guard_semantics(database: Database) {
    database.run_migrations().await.unwrap();
    let sink = DbMetadataSink::new(database);
    let agent = Uuid::new_v4();
    sink.write(&[entry(agent, "cpu", "10%", 20), entry(agent, "mem", "1G", 20)]).await.unwrap();
    // An older batch applied after a newer one (another replica) changes nothing.
    sink.write(&[entry(agent, "cpu", "99%", 10)]).await.unwrap();
    // Equal and newer timestamps win.
    sink.write(&[entry(agent, "mem", "2G", 20), entry(agent, "disk", "5G", 30)]).await.unwrap();
    let rows = sink.load(agent).await.unwrap();
    let summary: Vec<(&str, &str, SystemTime)> =
        rows.iter().map(|r| (r.key.as_str(), r.value.as_str(), r.collected_at)).collect();
    assert_eq!(summary, [("cpu", "10%", at(20)), ("disk", "5G", at(30)), ("mem", "2G", at(20))]);
    assert!(sink.load(Uuid::new_v4()).await.unwrap().is_empty());

    // A batch of the batcher's default size (500 rows) keeps the same guard:
    // of the second batch, the older third changes nothing, the equal and
    // newer thirds win.
    let agents: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let big = |value: &str, secs: fn(usize) -> u64| -> Vec<(MetadataKey, MetadataValue)> {
        (0..BatcherConfig::default().max_batch_size)
            .map(|i| entry(agents[i % agents.len()], &format!("k{i:03}"), value, secs(i)))
            .collect()
    };
    sink.write(&big("first", |_| 20)).await.unwrap();
    sink.write(&big("second", |i| [10, 20, 30][i % 3])).await.unwrap();
    let mut seen = 0;
    for agent in &agents {
        for row in sink.load(*agent).await.unwrap() {
            let i: usize = row.key[1..].parse().unwrap();
            let expected = [("first", at(20)), ("second", at(20)), ("second", at(30))][i % 3];
            assert_eq!((row.value.as_str(), row.collected_at), expected, "{}", row.key);
            seen += 1;
        }
    }
    assert_eq!(seen, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upserts_never_regress_a_newer_value() {
    let temp = TempDatabase::create("meta_guard").await;
    guard_semantics(temp.connect(&Telemetry::new("t").unwrap()).await).await;
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upserts_never_regress_a_newer_value() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::new("t").unwrap();
    let db =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    guard_semantics(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_delivers_every_agent_id_in_one_round_trip() {
    let temp = TempDatabase::create("meta_notify").await;
    let telemetry = Telemetry::new("t").unwrap();
    let database = temp.connect(&telemetry).await;
    let bus = Bus::postgres(&database, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    let channel = MetadataNotifier::channel("test");
    let mut listener = bus.subscribe(&channel).await.unwrap();
    let mut changed = MetadataNotifier::subscribe(&bus, &channel).await.unwrap();
    let agents: BTreeSet<Uuid> = (0..400).map(|_| Uuid::new_v4()).collect();
    MetadataNotifier::postgres(database.clone(), channel).notify(agents.iter().copied()).await.unwrap();

    for _ in 0..2 {
        let payload = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
        assert!(payload.len() <= 8000, "each chunk fits a NOTIFY payload");
    }
    let mut received = BTreeSet::new();
    while received.len() < agents.len() {
        received.insert(tokio::time::timeout(Duration::from_secs(5), changed.recv()).await.unwrap().unwrap());
    }
    assert_eq!(received, agents, "two chunks (363 + 37) carry all 400 ids");
    drop((listener, bus, database));
    temp.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batcher_writes_to_postgres_and_notifies_the_touched_agents() {
    let temp = TempDatabase::create("meta_e2e").await;
    let telemetry = Telemetry::new("t").unwrap();
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.unwrap();
    let bus = Bus::postgres(&database, &keel_core::Shutdown::new(), &telemetry).await.unwrap();
    let channel = MetadataNotifier::channel("e2e");
    let mut listener = MetadataNotifier::subscribe(&bus, &channel).await.unwrap();
    let sink = Arc::new(DbMetadataSink::new(database.clone()));
    let notifier = Arc::new(MetadataNotifier::postgres(database.clone(), channel));
    let batcher = Batcher::start_with("metadata", BatcherConfig::default(), sink.clone(), Some(notifier)).unwrap();
    batcher.instrument(&telemetry);

    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (agent, key, value, secs) in [(a, "cpu", "1", 1), (a, "cpu", "3", 3), (a, "cpu", "2", 2), (b, "up", "yes", 1)] {
        let (k, v) = entry(agent, key, value, secs);
        batcher.add(k, v).unwrap();
    }
    batcher.shutdown().await;
    assert_eq!(sink.load(a).await.unwrap()[0].value, "3");
    assert_eq!(sink.load(b).await.unwrap()[0].value, "yes");
    let mut notified = BTreeSet::new();
    for _ in 0..2 {
        notified.insert(tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.unwrap().unwrap());
    }
    assert_eq!(notified, BTreeSet::from([a, b]));
    let text = telemetry.encode().unwrap();
    assert!(text.contains("keel_batcher_flushed_total{batcher=\"metadata\"} 2"), "{text}");
    assert!(text.contains("keel_batcher_batches_total{batcher=\"metadata\",reason=\"shutdown\"} 1"), "{text}");
    drop((listener, bus, database));
    temp.drop_database().await;
}
