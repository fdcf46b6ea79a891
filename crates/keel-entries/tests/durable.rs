//! Durable mode on a real Redis Stream, persisting into real PostgreSQL; every
//! test runs on standalone Redis, then on the local Redis Cluster.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fred::prelude::*;
use keel_entries::{DbEntries, EntryWrite};
use keel_store::RedisStore;
use keel_store::testing::{TempDatabase, redis_at, redis_urls, unique_prefix};
use keel_telemetry::Telemetry;
use keel_write_behind::{
    DbDeadLetters, DurableConfig, DurableConsumer, DurableError, DurableProducer, RepoFuture, Repository,
};
use serde_json::json;

fn write(key: usize, version: i64) -> EntryWrite {
    EntryWrite {
        key: format!("k{key}"),
        value: json!({"v": version}),
        version,
        updated_at_us: keel_core::unix_micros(SystemTime::now()),
        deleted: false,
    }
}

struct Hang;

impl Repository<EntryWrite> for Hang {
    fn upsert_many<'a>(&'a self, _items: &'a [EntryWrite]) -> RepoFuture<'a> {
        Box::pin(std::future::pending())
    }
}

async fn pending(redis: &RedisStore, stream: &str, group: &str) -> u64 {
    let summary: fred::types::Value =
        redis.client().custom(fred::cmd!("XPENDING"), vec![stream.to_owned(), group.to_owned()]).await.unwrap();
    match summary {
        fred::types::Value::Array(parts) => parts.first().and_then(|v| v.as_u64()).unwrap_or(0),
        _ => 0,
    }
}

/// A migrated database of its own and a connection to the Redis at `url`.
async fn setup(label: &str, url: &str) -> (TempDatabase, keel_store::Database, RedisStore) {
    let temp = TempDatabase::create(label).await;
    let telemetry = Telemetry::new("t").unwrap();
    let database = temp.connect(&telemetry).await;
    database.run_migrations().await.unwrap();
    (temp, database, redis_at(url, &telemetry).await)
}

/// Polls `consumer` until `target` entries are persisted (bounded).
async fn drain(consumer: &DurableConsumer<EntryWrite>, target: u64) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while consumer.metrics().persisted < target {
            if consumer.poll_once().await.unwrap() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {target} persisted", consumer.metrics().persisted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_flow_through_the_stream_into_postgres_and_the_stream_empties() {
    for url in redis_urls() {
        let (temp, database, store) = setup("wb_durable", &url).await;
        let stream = unique_prefix("stream");
        let config = DurableConfig { batch_size: 100, ..DurableConfig::new(&stream, "workers", "c1") };
        let producer = DurableProducer::new(store.clone(), config.clone());
        let entries = Arc::new(DbEntries::new(database.clone()));
        let consumer = DurableConsumer::new(
            store.clone(),
            config,
            entries.clone(),
            Arc::new(DbDeadLetters::new(database.clone(), "durable")),
        )
        .await
        .unwrap();
        for version in 1..=3 {
            for key in 0..200 {
                producer.enqueue(&write(key, version)).await.unwrap();
            }
        }
        drain(&consumer, 600).await;
        assert_eq!(producer.backlog().await.unwrap(), 0, "persisted entries are deleted from the stream");
        assert_eq!(pending(&store, &stream, "workers").await, 0);
        for key in 0..200 {
            assert_eq!(entries.get(&format!("k{key}")).await.unwrap().unwrap().version, 3);
        }
        let _: i64 = store.client().del(&stream).await.unwrap();
        drop((consumer, entries, database));
        temp.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_dead_consumer_are_claimed_and_persisted_by_another() {
    for url in redis_urls() {
        let (temp, database, store) = setup("wb_claim", &url).await;
        let stream = unique_prefix("claim");
        let base = DurableConfig {
            batch_size: 50,
            visibility_timeout: Duration::from_millis(300),
            ..DurableConfig::new(&stream, "workers", "doomed")
        };
        let producer = DurableProducer::new(store.clone(), base.clone());
        for key in 0..50 {
            producer.enqueue(&write(key, 1)).await.unwrap();
        }
        let letters = Arc::new(DbDeadLetters::new(database.clone(), "claim"));

        // The first consumer takes the batch and dies before acknowledging it.
        let doomed = DurableConsumer::new(store.clone(), base.clone(), Arc::new(Hang), letters.clone()).await.unwrap();
        let dying = tokio::spawn(async move { doomed.poll_once().await });
        tokio::time::timeout(Duration::from_secs(5), async {
            while pending(&store, &stream, "workers").await < 50 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the doomed consumer never read the batch");
        dying.abort();

        // Another consumer claims them once they have idled past the visibility timeout.
        let entries = Arc::new(DbEntries::new(database.clone()));
        let survivor = DurableConsumer::new(
            store.clone(),
            DurableConfig { consumer: "survivor".into(), ..base },
            entries.clone(),
            letters.clone(),
        )
        .await
        .unwrap();
        assert_eq!(survivor.poll_once().await.unwrap(), 0, "nothing is claimable before the visibility timeout");
        drain(&survivor, 50).await;
        assert_eq!(producer.backlog().await.unwrap(), 0);
        assert_eq!(pending(&store, &stream, "workers").await, 0);
        for key in 0..50 {
            assert!(entries.get(&format!("k{key}")).await.unwrap().is_some(), "k{key} lost");
        }
        assert_eq!(letters.count().await.unwrap(), 0);
        let _: i64 = store.client().del(&stream).await.unwrap();
        drop((survivor, entries, letters, database));
        temp.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_its_own_unacknowledged_entries_at_once() {
    for url in redis_urls() {
        let (temp, database, store) = setup("wb_resume", &url).await;
        let stream = unique_prefix("resume");
        // A long visibility timeout: only the restart path can recover these.
        let config = DurableConfig {
            visibility_timeout: Duration::from_secs(3600),
            ..DurableConfig::new(&stream, "workers", "w1")
        };
        let producer = DurableProducer::new(store.clone(), config.clone());
        for key in 0..20 {
            producer.enqueue(&write(key, 1)).await.unwrap();
        }
        let letters = Arc::new(DbDeadLetters::new(database.clone(), "resume"));
        let crashed =
            DurableConsumer::new(store.clone(), config.clone(), Arc::new(Hang), letters.clone()).await.unwrap();
        let running = tokio::spawn(async move { crashed.poll_once().await });
        tokio::time::timeout(Duration::from_secs(5), async {
            while pending(&store, &stream, "workers").await < 20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        running.abort();

        let entries = Arc::new(DbEntries::new(database.clone()));
        let restarted = DurableConsumer::new(store.clone(), config, entries.clone(), letters).await.unwrap();
        assert_eq!(restarted.poll_once().await.unwrap(), 20, "its own pending entries come back on the first poll");
        assert_eq!(restarted.metrics().persisted, 20);
        assert_eq!(pending(&store, &stream, "workers").await, 0);
        let _: i64 = store.client().del(&stream).await.unwrap();
        drop((restarted, entries, database));
        temp.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_wait_while_the_stream_is_at_capacity() {
    for url in redis_urls() {
        let telemetry = Telemetry::new("t").unwrap();
        let store = redis_at(&url, &telemetry).await;
        let stream = unique_prefix("full");
        let producer =
            DurableProducer::new(store.clone(), DurableConfig { capacity: 5, ..DurableConfig::new(&stream, "g", "c") });
        for key in 0..5 {
            producer.try_enqueue(&write(key, 1)).await.unwrap();
        }
        assert!(matches!(producer.try_enqueue(&write(5, 1)).await, Err(DurableError::Full)));
        let waiting = tokio::time::timeout(Duration::from_millis(300), producer.enqueue(&write(5, 1))).await;
        assert!(waiting.is_err(), "enqueue waits while the stream is full");
        assert_eq!(producer.backlog().await.unwrap(), 5, "and appended nothing while waiting");
        // Room appears (a consumer deleted what it persisted): the wait ends.
        let oldest: Vec<(String, std::collections::HashMap<String, String>)> =
            store.client().xrange(&stream, "-", "+", Some(1)).await.unwrap();
        let _: u64 = store.client().xdel(&stream, oldest[0].0.clone()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), producer.enqueue(&write(5, 1))).await.unwrap().unwrap();
        assert_eq!(producer.backlog().await.unwrap(), 5);
        let _: i64 = store.client().del(&stream).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_consumers_share_one_stream_without_duplicates_or_losses() {
    for url in redis_urls() {
        let (temp, database, store) = setup("wb_shared", &url).await;
        let stream = unique_prefix("shared");
        let config = DurableConfig { batch_size: 20, ..DurableConfig::new(&stream, "workers", "a") };
        let producer = DurableProducer::new(store.clone(), config.clone());
        for key in 0..400 {
            producer.enqueue(&write(key, 1)).await.unwrap();
        }
        let entries = Arc::new(DbEntries::new(database.clone()));
        let letters = Arc::new(DbDeadLetters::new(database.clone(), "shared"));
        let a = DurableConsumer::new(store.clone(), config.clone(), entries.clone(), letters.clone()).await.unwrap();
        let b = DurableConsumer::new(
            store.clone(),
            DurableConfig { consumer: "b".into(), ..config },
            entries.clone(),
            letters.clone(),
        )
        .await
        .unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let run = |consumer: Arc<DurableConsumer<EntryWrite>>| {
            tokio::spawn(async move {
                while consumer.poll_once().await.unwrap() > 0 {
                    tokio::task::yield_now().await;
                }
            })
        };
        let (ta, tb) = (run(a.clone()), run(b.clone()));
        ta.await.unwrap();
        tb.await.unwrap();
        let (pa, pb) = (a.metrics().persisted, b.metrics().persisted);
        assert_eq!(pa + pb, 400, "each entry handled exactly once: {pa} + {pb}");
        assert!(pa > 0 && pb > 0, "both consumers took a share: {pa} / {pb}");
        assert_eq!(producer.backlog().await.unwrap(), 0);
        let _: i64 = store.client().del(&stream).await.unwrap();
        drop((a, b, entries, letters, database));
        temp.drop_database().await;
    }
}

/// Counts what it is given; nothing may reach its dead-letter side.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl Repository<EntryWrite> for Count {
    fn upsert_many<'a>(&'a self, items: &'a [EntryWrite]) -> RepoFuture<'a> {
        self.0.fetch_add(items.len(), std::sync::atomic::Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

impl keel_write_behind::DeadLetters<EntryWrite> for Count {
    fn store<'a>(&'a self, letters: &'a [keel_write_behind::DeadLetter<EntryWrite>]) -> RepoFuture<'a> {
        panic!("nothing should be dead-lettered, got {}", letters.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_one_acknowledgement_script_is_fully_removed() {
    for url in redis_urls() {
        let telemetry = Telemetry::new("t").unwrap();
        let store = redis_at(&url, &telemetry).await;
        let stream = unique_prefix("big");
        let config =
            DurableConfig { batch_size: 9_000, capacity: 10_000, ..DurableConfig::new(&stream, "workers", "c1") };
        let producer = DurableProducer::new(store.clone(), config.clone());
        let count = Arc::new(Count::default());
        let consumer = DurableConsumer::new(store.clone(), config, count.clone(), count.clone()).await.unwrap();
        for key in 0..9_000 {
            producer.enqueue(&write(key, 1)).await.unwrap();
        }
        assert_eq!(consumer.poll_once().await.unwrap(), 9_000, "one read takes the whole batch");
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 9_000);
        assert_eq!(producer.backlog().await.unwrap(), 0, "every entry is deleted, across script chunks");
        assert_eq!(pending(&store, &stream, "workers").await, 0, "every entry is acknowledged");
        let _: i64 = store.client().del(&stream).await.unwrap();
    }
}

/// A poison entry (PostgreSQL refuses U+0000 in jsonb) whose dead letter
/// cannot be stored stays pending in the stream until it can; the good
/// entries of its batch are persisted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_dead_letter_cannot_be_stored_stays_pending_until_it_is() {
    for url in redis_urls() {
        use diesel_async::RunQueryDsl as _;
        let (temp, database, store) = setup("wb_dead_down", &url).await;
        let stream = unique_prefix("stream");
        let config = DurableConfig {
            max_retries: 1,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            ..DurableConfig::new(&stream, "workers", "c1")
        };
        let producer = DurableProducer::new(store.clone(), config.clone());
        let dead_letters = DbDeadLetters::new(database.clone(), "durable");
        let consumer = Arc::new(
            DurableConsumer::new(
                store.clone(),
                config,
                Arc::new(DbEntries::new(database.clone())),
                Arc::new(dead_letters.clone()),
            )
            .await
            .unwrap(),
        );
        for key in 0..10 {
            let mut item = write(key, 1);
            if key == 4 {
                item.value = json!({"v": "a\u{0}b"});
            }
            producer.enqueue(&item).await.unwrap();
        }
        let admin = |sql: &'static str| {
            let database = database.clone();
            async move {
                let mut conn = database.postgres_connection().await.unwrap().unwrap();
                diesel::sql_query(sql).execute(&mut conn).await.unwrap();
            }
        };
        // The dead-letter table is away: storing a letter fails for real.
        admin("ALTER TABLE write_behind_dead_letters RENAME TO dead_letters_away").await;
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn({
            let (consumer, stop) = (consumer.clone(), stop.clone());
            async move { consumer.run(stop).await }
        });
        tokio::time::timeout(Duration::from_secs(20), async {
            while consumer.metrics().persisted < 9 || consumer.metrics().dead_letter_errors < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{:?}", consumer.metrics()));
        let m = consumer.metrics();
        assert_eq!((m.persisted, m.failed), (9, 0), "{m:?}");
        assert_eq!(pending(&store, &stream, "workers").await, 10, "nothing acknowledged before the batch is done");
        admin("ALTER TABLE dead_letters_away RENAME TO write_behind_dead_letters").await;
        tokio::time::timeout(Duration::from_secs(20), async {
            while pending(&store, &stream, "workers").await > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(consumer.metrics().failed, 1);
        assert_eq!(dead_letters.count().await.unwrap(), 1);
        let len: u64 = store.client().xlen(&stream).await.unwrap();
        assert_eq!(len, 0, "acknowledged and deleted once the letter is stored");
        stop.cancel();
        running.await.unwrap();
        temp.drop_database().await;
    }
}

/// A write whose caller goes away at any point (before the script is sent,
/// while Redis runs it, while the answer travels back) leaves nothing or
/// the whole write: a key is in the cache exactly when its write is in the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_abandoned_at_any_point_leaves_nothing_or_all_of_it() {
    for url in redis_urls() {
        use keel_entries::{DurableEntries, Entries, EntryLayout, EntrySink};
        let telemetry = Telemetry::new("t").unwrap();
        let store = redis_at(&url, &telemetry).await;
        let temp = TempDatabase::create("abandoned").await;
        let database = temp.connect(&telemetry).await;
        let namespace = unique_prefix("abandoned");
        let layout = EntryLayout::new(&namespace, 1);
        let stream = layout.stream(0);
        let sink =
            EntrySink::Durable(DurableEntries::new(&store, layout.clone(), &DurableConfig::new(&stream, "g", "c")));
        let entries =
            Entries::new(keel_store::Cache::redis(store.clone()), &namespace, sink, DbEntries::new(database.clone()));
        const WRITES: usize = 300;
        let mut finished = 0;
        for i in 0..WRITES {
            // Deadlines from nothing to a few round trips: the caller is
            // dropped before, during and after the script.
            let deadline = Duration::from_micros((i as u64 * 37) % 5_000);
            let key = format!("key-{i}");
            if tokio::time::timeout(deadline, entries.put(&key, json!({"i": i}))).await.is_ok_and(|r| r.is_ok()) {
                finished += 1;
            }
        }
        assert!(finished > 0 && finished < WRITES, "some writes finished and some were abandoned: {finished}");
        // Scripts already sent land on their own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let streamed: Vec<(String, std::collections::HashMap<String, String>)> =
            store.client().xrange(&stream, "-", "+", None).await.unwrap();
        let in_stream: std::collections::BTreeSet<String> = streamed
            .iter()
            .map(|(_, fields)| serde_json::from_str::<EntryWrite>(&fields["item"]).unwrap().key)
            .collect();
        let mut in_cache = std::collections::BTreeSet::new();
        for i in 0..WRITES {
            let key = format!("key-{i}");
            let cached: Option<String> = store.client().get(layout.cache_key(&key)).await.unwrap();
            if cached.is_some() {
                in_cache.insert(key);
            }
        }
        assert_eq!(in_cache, in_stream, "cache and stream hold the same writes");
        assert!(in_stream.len() >= finished, "every acknowledged write is in the stream");
        // Counted as acknowledged: every write that landed, waited for or not
        // (operators compare it with persisted + dead-lettered + pending).
        assert_eq!(entries.acknowledged(), in_stream.len() as u64);
        let mut keys: Vec<String> = in_cache.iter().map(|k| layout.cache_key(k)).collect();
        keys.push(stream);
        let _: i64 = store.client().del(keys).await.unwrap();
        drop((entries, database));
        temp.drop_database().await;
    }
}

/// How many times `command` ran on `store`'s server (`INFO commandstats`).
async fn calls(store: &RedisStore, command: &str) -> u64 {
    let info: String = store.client().info(Some(fred::types::InfoKind::CommandStats)).await.unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A consumer polling often looks for abandoned entries once per quarter of
/// the visibility timeout, not on every poll; when a look comes back full it
/// looks again on the next poll, so a large abandoned backlog is taken
/// batch after batch. (A private server: its command counts are this
/// test's alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_entries_are_looked_for_a_few_times_per_visibility_timeout() {
    let server = keel_store::testing::RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis_at(server.url(), &telemetry).await;

    // Defaults (a 30 s visibility timeout): 50 polls, one look.
    let config = DurableConfig::new("busy", "workers", "c1");
    let producer = DurableProducer::new(store.clone(), config.clone());
    let count = Arc::new(Count::default());
    let consumer = DurableConsumer::new(store.clone(), config, count.clone(), count.clone()).await.unwrap();
    for key in 0..50 {
        producer.enqueue(&write(key, 1)).await.unwrap();
        assert_eq!(consumer.poll_once().await.unwrap(), 1);
    }
    assert_eq!(calls(&store, "xautoclaim").await, 1, "one look for abandoned entries in 50 polls");
    assert!(calls(&store, "xreadgroup").await >= 50);

    // 30 entries abandoned by a consumer that read them and hung.
    let base = DurableConfig {
        batch_size: 30,
        visibility_timeout: Duration::from_millis(200),
        ..DurableConfig::new("abandoned", "workers", "doomed")
    };
    let producer = DurableProducer::new(store.clone(), base.clone());
    for key in 0..30 {
        producer.enqueue(&write(key, 1)).await.unwrap();
    }
    let doomed = DurableConsumer::new(store.clone(), base.clone(), Arc::new(Hang), count.clone()).await.unwrap();
    let dying = tokio::spawn(async move { doomed.poll_once().await });
    tokio::time::timeout(Duration::from_secs(5), async {
        while pending(&store, "abandoned", "workers").await < 30 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the doomed consumer never read the batch");
    dying.abort();
    let survivor = DurableConsumer::new(
        store.clone(),
        DurableConfig { consumer: "survivor".into(), batch_size: 10, ..base },
        count.clone(),
        count.clone(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Each full claim is followed by another at once.
    for _ in 0..3 {
        assert_eq!(survivor.poll_once().await.unwrap(), 10);
    }
    assert_eq!(survivor.poll_once().await.unwrap(), 0);
    assert_eq!(pending(&store, "abandoned", "workers").await, 0);
    assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 80);
}

/// Cached appends made together share script calls (a private server: its
/// command counts are this test's alone), and each is still its own
/// all-or-nothing unit: appended and cached in order of arrival (an older
/// version never overwrites a newer cached one), and refused whole, cache
/// untouched, once the stream is at capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_appends_made_together_share_script_calls_and_stay_whole() {
    let server = keel_store::testing::RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis_at(server.url(), &telemetry).await;
    let ttl = Duration::from_secs(60);
    let timeout = Duration::from_millis(300);

    // Defaults (capacity 10 000): 200 appends at once, then the same key
    // twice in one go, the newer version first.
    let producer = DurableProducer::new(store.clone(), DurableConfig::new("together", "g", "c"));
    let appends = (0..200).map(|i| {
        let producer = producer.clone();
        async move { producer.enqueue_cached(&write(i, 7), &format!("cache:{i}"), 7, "v", ttl, timeout).await }
    });
    let ids: Vec<String> = futures_util::future::join_all(appends).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 200, "200 distinct entries");
    assert_eq!(producer.backlog().await.unwrap(), 200);
    let calls_for_200 = calls(&store, "evalsha").await;
    assert!((1..50).contains(&calls_for_200), "200 appends in {calls_for_200} script calls");
    for i in [0, 63, 64, 199] {
        let cached: Option<String> = store.client().get(format!("cache:{i}")).await.unwrap();
        assert_eq!(cached.as_deref(), Some("7:v"), "cache:{i}");
    }
    let (nine, three) = (write(500, 9), write(500, 3));
    let (newer, older) = tokio::join!(
        producer.enqueue_cached(&nine, "cache:same", 9, "newer", ttl, timeout),
        producer.enqueue_cached(&three, "cache:same", 3, "older", ttl, timeout),
    );
    assert!(newer.is_ok() && older.is_ok(), "both writes are in the stream");
    let cached: Option<String> = store.client().get("cache:same").await.unwrap();
    assert_eq!(cached.as_deref(), Some("9:newer"), "the older version did not overwrite the newer");
    assert_eq!(producer.backlog().await.unwrap(), 202);

    // A stream with room for 10: of 15 appends at once, 10 land and 5 are
    // refused whole.
    let small =
        DurableProducer::new(store.clone(), DurableConfig { capacity: 10, ..DurableConfig::new("small", "g", "c") });
    let appends = (0..15).map(|i| {
        let small = small.clone();
        async move { small.enqueue_cached(&write(i, 1), &format!("small:{i}"), 1, "v", ttl, timeout).await }
    });
    let results = futures_util::future::join_all(appends).await;
    let landed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        landed,
        10,
        "{:?}",
        results.iter().map(|r| r.as_ref().err().map(ToString::to_string)).collect::<Vec<_>>()
    );
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, DurableError::Full)));
    assert_eq!(small.backlog().await.unwrap(), 10);
    let mut cached_keys = 0;
    for i in 0..15 {
        let cached: Option<String> = store.client().get(format!("small:{i}")).await.unwrap();
        cached_keys += usize::from(cached.is_some());
    }
    assert_eq!(cached_keys, 10, "only the appended writes are cached");
}

/// On the owner's tracker the task that sends cached appends keeps a drain
/// waiting until the producer is closed; the appends it took before the
/// close are answered (and land), later ones fail at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_producer_answers_what_it_took_and_then_lets_the_drain_end() {
    for url in redis_urls() {
        let telemetry = Telemetry::new("t").unwrap();
        let store = redis_at(&url, &telemetry).await;
        // One hash slot for the stream and its cache keys (the Cluster).
        let tag = unique_prefix("closed");
        let (stream, tasks) = (format!("{{{tag}}}:stream"), keel_core::Shutdown::new());
        let config = DurableConfig { tasks: Some(tasks.clone()), ..DurableConfig::new(&stream, "g", "c") };
        let producer = DurableProducer::new(store.clone(), config);
        let (ttl, timeout) = (Duration::from_secs(60), Duration::from_secs(5));
        let cache = format!("{stream}:cache");
        producer.enqueue_cached(&write(0, 1), &cache, 1, "v", ttl, timeout).await.unwrap();
        let early = tasks.drain(Duration::from_millis(200)).await;
        assert_eq!(early.map_err(|e| e.remaining), Err(1), "the append task runs until the close");
        let appends: Vec<_> = (1..50)
            .map(|i| {
                let producer = producer.clone();
                let cache = format!("{stream}:cache:{i}");
                tokio::spawn(async move { producer.enqueue_cached(&write(i, 1), &cache, 1, "v", ttl, timeout).await })
            })
            .collect();
        tokio::task::yield_now().await;
        producer.close();
        tasks.drain(Duration::from_secs(5)).await.unwrap();
        let mut answered = 1;
        for append in appends {
            match append.await.unwrap() {
                Ok(_) => answered += 1,
                Err(err) => assert!(matches!(err, DurableError::Protocol(_)), "{err}"),
            }
        }
        assert_eq!(producer.backlog().await.unwrap(), answered, "every append answered Ok is in the stream");
        let late = producer.enqueue_cached(&write(99, 1), &cache, 1, "v", ttl, timeout).await;
        assert!(matches!(late, Err(DurableError::Protocol(_))), "{late:?}");
        let _: i64 = store.client().del(&stream).await.unwrap();
    }
}

/// An append whose caller stopped waiting before its script call was sent
/// is not sent: a refused write does not land later. Redis is paused (a
/// private server) while one append is on its way, and five more callers
/// give up behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_given_up_before_it_was_sent_is_never_sent() {
    let server = keel_store::testing::RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis_at(server.url(), &telemetry).await;
    let pauser = redis_at(server.url(), &telemetry).await;
    let ttl = Duration::from_secs(60);
    let producer = DurableProducer::new(store.clone(), DurableConfig::new("given-up", "g", "c"));

    let _: () = pauser.client().custom(fred::cmd!("CLIENT"), vec!["PAUSE", "500", "ALL"]).await.unwrap();
    let first = tokio::spawn({
        let producer = producer.clone();
        async move { producer.enqueue_cached(&write(0, 1), "given-up:0", 1, "v", ttl, Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..=5 {
        let (item, key) = (write(i, 1), format!("given-up:{i}"));
        let append = producer.enqueue_cached(&item, &key, 1, "v", ttl, Duration::from_secs(5));
        assert!(tokio::time::timeout(Duration::from_millis(20), append).await.is_err(), "Redis is paused");
    }
    let _ = first.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(producer.backlog().await.unwrap() <= 1, "only the append sent before the others gave up");
    for i in 1..=5 {
        let cached: Option<String> = store.client().get(format!("given-up:{i}")).await.unwrap();
        assert_eq!(cached, None, "given-up:{i} was never sent");
    }
}

/// An append Redis runs after its caller's timeout is refused by Redis
/// itself: here Redis is paused (a private server) for longer than the
/// caller waits, so the script already sent runs late, answers
/// [`DurableError::Late`] and changes neither the stream nor the cache.
/// Without the deadline it would store a write its caller was told failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_redis_runs_after_its_deadline_changes_nothing() {
    let server = keel_store::testing::RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis_at(server.url(), &telemetry).await;
    let pauser = redis_at(server.url(), &telemetry).await;
    let producer = DurableProducer::new(store.clone(), DurableConfig::new("late", "g", "c"));
    let (ttl, timeout) = (Duration::from_secs(60), Duration::from_millis(400));
    // The first call measures nothing and only starts the sending task.
    producer.enqueue_cached(&write(0, 1), "late:0", 1, "v", ttl, timeout).await.unwrap();

    let _: () = pauser.client().custom(fred::cmd!("CLIENT"), vec!["PAUSE", "1200", "ALL"]).await.unwrap();
    let started = std::time::Instant::now();
    let late = producer.enqueue_cached(&write(1, 1), "late:1", 1, "v", ttl, timeout).await;
    assert!(started.elapsed() > timeout, "Redis answered only after the pause");
    assert!(matches!(late, Err(DurableError::Late)), "{late:?}");
    assert_eq!(producer.backlog().await.unwrap(), 1, "only the first append is in the stream");
    let cached: Option<String> = store.client().get("late:1").await.unwrap();
    assert_eq!(cached, None, "the late append cached nothing");

    // In time, the same call lands.
    producer.enqueue_cached(&write(2, 1), "late:2", 1, "v", ttl, timeout).await.unwrap();
    assert_eq!(producer.backlog().await.unwrap(), 2);
}

/// When the script call fails, every append it carried is answered with the
/// failure (none is left waiting, none is told it landed): here the stream
/// key holds a string, so Redis refuses the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_script_call_answers_every_append_it_carried() {
    let server = keel_store::testing::RedisServer::start().await;
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis_at(server.url(), &telemetry).await;
    let _: () = store.client().set("not-a-stream", "text", None, None, false).await.unwrap();
    let producer = DurableProducer::new(store.clone(), DurableConfig::new("not-a-stream", "g", "c"));
    let ttl = Duration::from_secs(60);
    let appends = (0..20).map(|i| {
        let producer = producer.clone();
        async move {
            let timeout = Duration::from_secs(1);
            producer.enqueue_cached(&write(i, 1), &format!("failed:{i}"), 1, "v", ttl, timeout).await
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(appends))
        .await
        .expect("every append is answered");
    assert!(results.iter().all(|r| matches!(r, Err(DurableError::Redis(_)))), "{:?}", results.len());
    for i in 0..20 {
        let cached: Option<String> = store.client().get(format!("failed:{i}")).await.unwrap();
        assert_eq!(cached, None, "failed:{i}");
    }
}

/// The backlog is measured from the stream itself, on its own timer: with
/// no consumer at all it shows every waiting entry and the age of the
/// oldest (from its id, against the Redis clock), and it drops to zero
/// once the stream is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_measured_without_a_consumer() {
    for url in redis_urls() {
        let telemetry = Telemetry::new("t").unwrap();
        let store = redis_at(&url, &telemetry).await;
        let (a, b) = (unique_prefix("backlog_a"), unique_prefix("backlog_b"));
        // The oldest entry was appended a minute ago (by its id).
        let minute_ago = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() - 60_000;
        let _: String =
            store.client().xadd(&a, false, None::<()>, format!("{minute_ago}-0"), ("item", "x")).await.unwrap();
        for _ in 0..2 {
            let _: String = store.client().xadd(&b, false, None::<()>, "*", ("item", "y")).await.unwrap();
        }
        let shutdown = keel_core::Shutdown::new();
        let backlog = keel_write_behind::StreamBacklog::watch(
            store.clone(),
            vec![a.clone(), b.clone(), unique_prefix("backlog_empty")],
            Duration::from_millis(20),
            &shutdown,
        );
        tokio::time::timeout(Duration::from_secs(5), async {
            while backlog.depth() != 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("depth {} of 3", backlog.depth()));
        let age = backlog.oldest_age();
        assert!((Duration::from_secs(59)..Duration::from_secs(70)).contains(&age), "{age:?}");
        for stream in [&a, &b] {
            let _: i64 = store.client().del(stream).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while backlog.depth() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(backlog.oldest_age(), Duration::ZERO);
        shutdown.token().cancel();
    }
}

/// The number in `text` (Prometheus exposition) after `series`, or 0.
fn sample(text: &str, series: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(series)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// With `ack_replicas`, the appends that go to Redis in one script call
/// share one `WAIT` (the replica that has the last one has them all): 64
/// concurrent writes on the local Redis Cluster (one replica per master)
/// are each answered only once replicated, with far fewer `WAIT`s than
/// writes. Asking for more replicas than exist fails each of them with
/// `NotReplicated` once their timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_sent_together_share_one_replica_wait() {
    let telemetry = Telemetry::new("t").unwrap();
    let store = redis_at(&keel_store::testing::redis_cluster_url(), &telemetry).await;
    let tag = unique_prefix("replicated");
    let stream = format!("{{{tag}}}:stream");
    let (ttl, timeout) = (Duration::from_secs(60), Duration::from_secs(2));
    let appends = |ack_replicas: u32, timeout: Duration| {
        let producer = DurableProducer::new(
            store.clone(),
            DurableConfig { ack_replicas, ..DurableConfig::new(&stream, "g", "c") },
        );
        let stream = stream.clone();
        async move {
            let calls: Vec<_> = (0..64)
                .map(|i| {
                    let (producer, cache) = (producer.clone(), format!("{stream}:cache:{i}"));
                    tokio::spawn(
                        async move { producer.enqueue_cached(&write(i, 1), &cache, 1, "v", ttl, timeout).await },
                    )
                })
                .collect();
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.unwrap());
            }
            answers
        }
    };
    let waits = || {
        sample(
            &telemetry.encode().unwrap(),
            "redis_client_command_duration_seconds_count{db_operation_name=\"WAIT\",outcome=\"ok\"}",
        )
    };

    let answers = appends(1, timeout).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let shared = waits();
    assert!((1..=32).contains(&shared), "64 replicated writes took {shared} WAITs");
    assert_eq!(store.client().xlen::<u64, _>(&stream).await.unwrap(), 64);

    // The first call's WAIT runs to its callers' timeout; the calls queued
    // behind it then run past their own deadline and are refused by Redis.
    let started = std::time::Instant::now();
    let answers = appends(2, Duration::from_millis(300)).await;
    let mut short = 0;
    for answer in &answers {
        match answer {
            Err(DurableError::NotReplicated { acked: 1, wanted: 2 }) => short += 1,
            Err(DurableError::Late) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(short > 0, "the first call's writes reached 1 of 2 replicas");
    assert_eq!(store.client().xlen::<u64, _>(&stream).await.unwrap(), 64 + short, "late ones were not appended");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at their timeout: {:?}", started.elapsed());
    let _: i64 = store.client().del(&stream).await.unwrap();
}
