//! The entries endpoints through `oneshot`, embedded (SQLite, in-process queue).

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use keel_entries::{DbEntries, Entries, EntrySink};
use keel_http::entries_api;
use keel_store::{Cache, Database, DbConfig};
use keel_telemetry::Telemetry;
use keel_write_behind::{DbDeadLetters, WriteBehind, WriteBehindConfig};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// A migrated embedded database in a fresh directory (kept alive by the
/// returned guard).
async fn sqlite() -> (Database, Telemetry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::new("t").unwrap();
    let db =
        Database::connect(&DbConfig { data_dir: dir.path().into(), ..DbConfig::default() }, &telemetry).await.unwrap();
    db.run_migrations().await.unwrap();
    (db, telemetry, dir)
}

async fn fixture() -> (Router, WriteBehind<keel_entries::EntryWrite>, DbEntries, tempfile::TempDir) {
    let (db, _telemetry, dir) = sqlite().await;
    let store = DbEntries::new(db.clone());
    let config = WriteBehindConfig { flush_interval: Duration::from_millis(20), ..WriteBehindConfig::default() };
    let queue =
        WriteBehind::start(config, Arc::new(store.clone()), Arc::new(DbDeadLetters::new(db, "entries"))).unwrap();
    let entries = Entries::new(Cache::memory(), "test", EntrySink::Memory(queue.clone()), store.clone());
    (axum::Router::from(entries_api(entries)), queue, store, dir)
}

async fn send(app: &Router, method: &str, uri: &str, body: Option<String>) -> Response {
    let request = Request::builder().method(method).uri(uri);
    let body = body.map_or_else(Body::empty, Body::from);
    app.clone().oneshot(request.body(body).unwrap()).await.unwrap()
}

async fn json(response: Response) -> Value {
    serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_visible_at_once_and_persisted_behind() {
    let (app, queue, store, _dir) = fixture().await;
    let response =
        send(&app, "PUT", "/api/v1/entries/users/42:profile", Some(json!({"name": "Ada"}).to_string())).await;
    assert_eq!(response.status(), 202);
    let written = json(response).await;
    assert_eq!(written["key"], "users/42:profile");
    let version = written["version"].as_i64().unwrap();

    let read = json(send(&app, "GET", "/api/v1/entries/users/42:profile", None).await).await;
    assert_eq!(
        (read["value"].clone(), read["version"].as_i64()),
        (json!({"name": "Ada"}), Some(version)),
        "at once, from the cache"
    );

    let second = json(send(&app, "PUT", "/api/v1/entries/users/42:profile", Some("7".into())).await).await;
    assert!(second["version"].as_i64().unwrap() > version, "versions only grow");
    let deleted = send(&app, "DELETE", "/api/v1/entries/users/42:profile", None).await;
    assert_eq!(deleted.status(), 202);
    assert_eq!(send(&app, "GET", "/api/v1/entries/users/42:profile", None).await.status(), 404);

    queue.shutdown().await;
    let stored = store.get("users/42:profile").await.unwrap().unwrap();
    assert!(stored.deleted, "the tombstone was persisted, newest last");
    assert_eq!(queue.metrics().persisted, 3);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let (app, _queue, _store, _dir) = fixture().await;
    let big = format!("\"{}\"", "x".repeat(70 * 1024));
    assert_eq!(send(&app, "PUT", "/api/v1/entries/k", Some(big)).await.status(), 413);
    assert_eq!(send(&app, "PUT", "/api/v1/entries/k", Some("{oops".into())).await.status(), 400);
    assert_eq!(send(&app, "PUT", "/api/v1/entries/has%20space", Some("1".into())).await.status(), 400);
    let long = "k".repeat(257);
    assert_eq!(send(&app, "GET", &format!("/api/v1/entries/{long}"), None).await.status(), 400);
    let hostile = format!("/api/v1/entries/{}!", "x".repeat(5_000));
    let refused = send(&app, "PUT", &hostile, Some("1".into())).await;
    assert_eq!(refused.status(), 400);
    let message = json(refused).await["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.len() < 300 && !message.contains(&"x".repeat(201)), "echoes at most 200 bytes: {message}");
    let missing = send(&app, "GET", "/api/v1/entries/never-written", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(json(missing).await["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_nul_byte_anywhere_in_the_value_is_a_400_naming_the_field() {
    let (app, queue, _store, _dir) = fixture().await;
    for (body, field) in
        [(r#"{"s":"a\u0000b"}"#, "value.s"), (r#"{"a":[1,{"k\u0000":2}]}"#, "value.a[1]"), (r#""\u0000""#, "value")]
    {
        let response = send(&app, "PUT", "/api/v1/entries/k", Some(body.into())).await;
        assert_eq!(response.status(), 400, "{body}");
        let message = json(response).await["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with(field) && message.contains("U+0000"), "{message}");
    }
    assert_eq!(queue.metrics().enqueued, 0, "nothing refused was queued");
    assert_eq!(send(&app, "GET", "/api/v1/entries/k", None).await.status(), 404, "nor cached");
}

#[tokio::test]
async fn a_full_in_process_queue_answers_503_with_retry_after_and_leaves_the_cache_alone() {
    let (db, _telemetry, _dir) = sqlite().await;
    let store = DbEntries::new(db.clone());
    // Room for one item, flushed only after an hour: the second write waits.
    let config =
        WriteBehindConfig { capacity: 1, flush_interval: Duration::from_secs(3600), ..WriteBehindConfig::default() };
    let queue =
        WriteBehind::start(config, Arc::new(store.clone()), Arc::new(DbDeadLetters::new(db, "entries"))).unwrap();
    let entries = Entries::new(Cache::memory(), "test", EntrySink::Memory(queue.clone()), store)
        .with_enqueue_timeout(Duration::from_millis(200));
    let app = axum::Router::from(entries_api(entries.clone()));
    assert_eq!(send(&app, "PUT", "/api/v1/entries/first", Some("1".into())).await.status(), 202);
    let started = std::time::Instant::now();
    let refused = send(&app, "PUT", "/api/v1/entries/second", Some("2".into())).await;
    assert_eq!(refused.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2), "answered after the enqueue timeout, not the client's");
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(send(&app, "GET", "/api/v1/entries/second", None).await.status(), 404, "the cache was not touched");
    assert_eq!((entries.acknowledged(), queue.metrics().enqueued), (1, 1));
}

/// Cluster mode: one script sets the cache and appends to the stream.
mod durable {
    use super::*;
    use fred::prelude::*;
    use keel_entries::{DurableEntries, EntryLayout};
    use keel_store::testing::unique_prefix;
    use keel_write_behind::DurableConfig;

    async fn fixture(capacity: u64) -> (Router, Entries, keel_store::RedisStore, String, tempfile::TempDir) {
        let (db, telemetry, dir) = sqlite().await;
        let redis = keel_store::testing::redis(&telemetry).await;
        let namespace = unique_prefix("entries");
        let layout = EntryLayout::new(&namespace, 1);
        let stream = layout.stream(0);
        let config = DurableConfig { capacity, ..DurableConfig::new(stream.clone(), "g", "c") };
        let durable = DurableEntries::new(&redis, layout, &config);
        let entries =
            Entries::new(Cache::redis(redis.clone()), &namespace, EntrySink::Durable(durable), DbEntries::new(db))
                .with_enqueue_timeout(Duration::from_millis(200));
        (axum::Router::from(entries_api(entries.clone())), entries, redis, stream, dir)
    }

    async fn stream_len(redis: &keel_store::RedisStore, stream: &str) -> u64 {
        redis.client().xlen(stream).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_redis_down_writes_fail_within_the_enqueue_timeout_and_unpersisted_reads_are_503() {
        let mut server = keel_store::testing::RedisServer::start().await;
        let (db, telemetry, _dir) = sqlite().await;
        let redis =
            keel_store::RedisStore::connect(&keel_store::RedisConfig::new(server.url()), &telemetry).await.unwrap();
        let durable =
            DurableEntries::new(&redis, EntryLayout::new("down", 1), &DurableConfig::new("down:stream", "g", "c"));
        let entries = Entries::new(Cache::redis(redis), "down", EntrySink::Durable(durable), DbEntries::new(db))
            .with_enqueue_timeout(Duration::from_millis(500));
        let app = axum::Router::from(entries_api(entries));
        assert_eq!(send(&app, "PUT", "/api/v1/entries/before", Some("1".into())).await.status(), 202);
        server.stop();
        let started = std::time::Instant::now();
        let refused = send(&app, "PUT", "/api/v1/entries/during", Some("2".into())).await;
        assert_eq!(refused.status(), 503);
        assert!(started.elapsed() < Duration::from_millis(1500), "answered in {:?}", started.elapsed());
        assert_eq!(refused.headers()["retry-after"], "1");
        let unknown = send(&app, "GET", "/api/v1/entries/before", None).await;
        assert_eq!(unknown.status(), 503, "acknowledged but not persisted: not a 404");
    }

    #[tokio::test]
    async fn a_full_stream_answers_503_with_retry_after_and_leaves_the_cache_alone() {
        let (app, entries, redis, stream, _dir) = fixture(1).await;
        assert_eq!(send(&app, "PUT", "/api/v1/entries/first", Some("1".into())).await.status(), 202);
        let read = json(send(&app, "GET", "/api/v1/entries/first", None).await).await;
        assert_eq!(read["value"], 1, "cached by the same script");
        let refused = send(&app, "PUT", "/api/v1/entries/second", Some("2".into())).await;
        assert_eq!((refused.status().as_u16(), refused.headers()["retry-after"].to_str().unwrap()), (503, "1"));
        assert_eq!(send(&app, "GET", "/api/v1/entries/second", None).await.status(), 404, "the cache was not touched");
        assert_eq!(stream_len(&redis, &stream).await, 1);
        assert_eq!(entries.acknowledged(), 1);
        let _: () = redis.client().del(&stream).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_dropped_mid_write_leaves_nothing_or_a_whole_write() {
        use futures_util::FutureExt as _;
        let (app, _entries, redis, stream, _dir) = fixture(10_000).await;
        for i in 0..50 {
            let request = Request::put(format!("/api/v1/entries/k{i}")).body(Body::from(i.to_string())).unwrap();
            // Polled once (the write has started), then dropped, as a reset
            // connection drops its handler.
            assert!(app.clone().oneshot(request).now_or_never().is_none(), "the write waits for Redis");
        }
        let mut settled = 0;
        for _ in 0..100 {
            settled = stream_len(&redis, &stream).await;
            if settled == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(settled, 50, "every started write completed");
        for i in 0..50 {
            let read = send(&app, "GET", &format!("/api/v1/entries/k{i}"), None).await;
            assert_eq!(read.status(), 200, "k{i} is queued, so it is cached too");
        }
        let _: () = redis.client().del(&stream).await.unwrap();
    }

    /// Partitions on one Redis and on a Redis Cluster: writes spread over
    /// the streams by key, each write's cache entry and stream append share
    /// a slot (no CROSSSLOT), and one consumer per partition persists them
    /// all. On the cluster each write also waits for its replica (WAIT 1);
    /// asking for more replicas than exist answers 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitioned_writes_spread_over_streams_and_each_partition_persists_its_own() {
        use keel_write_behind::DurableConsumer;
        for url in keel_store::testing::redis_urls() {
            let (db, telemetry, _dir) = sqlite().await;
            let redis = keel_store::testing::redis_at(&url, &telemetry).await;
            let clustered = redis.client().is_clustered();
            let namespace = unique_prefix("parts");
            let layout = EntryLayout::new(&namespace, 16);
            let config = DurableConfig {
                ack_replicas: u32::from(clustered),
                ..DurableConfig::new(layout.stream(0), "keel-entries", "c")
            };
            let durable = DurableEntries::new(&redis, layout.clone(), &config);
            let entries = Entries::new(
                Cache::redis(redis.clone()),
                &namespace,
                EntrySink::Durable(durable),
                DbEntries::new(db.clone()),
            )
            .with_enqueue_timeout(Duration::from_secs(2));
            let app = axum::Router::from(entries_api(entries.clone()));
            for i in 0..200 {
                let put = send(&app, "PUT", &format!("/api/v1/entries/k{i}"), Some(i.to_string())).await;
                assert_eq!(put.status(), 202, "{url}: k{i}");
            }
            // An entry named like a stream is an entry like any other.
            assert_eq!(send(&app, "PUT", "/api/v1/entries/stream", Some("1".into())).await.status(), 202, "{url}");
            let mut used = 0;
            for stream in layout.streams() {
                used += usize::from(stream_len(&redis, &stream).await > 0);
            }
            assert!(used >= 12, "{url}: 201 keys use most of the 16 partitions ({used})");
            for i in (0..200).step_by(37) {
                assert_eq!(json(send(&app, "GET", &format!("/api/v1/entries/k{i}"), None).await).await["value"], i);
            }

            for stream in layout.streams() {
                let consumer = DurableConsumer::new(
                    redis.clone(),
                    DurableConfig { stream: stream.clone(), ..config.clone() },
                    Arc::new(DbEntries::new(db.clone())),
                    Arc::new(DbDeadLetters::new(db.clone(), "entries")),
                )
                .await
                .unwrap();
                while consumer.poll_once().await.unwrap() > 0 {}
                assert_eq!(stream_len(&redis, &stream).await, 0, "{url}: {stream} drained");
                let _: () = redis.client().del(&stream).await.unwrap();
            }
            for i in 0..200 {
                let stored = DbEntries::new(db.clone()).get(&format!("k{i}")).await.unwrap().unwrap();
                assert_eq!(stored.value, json!(i), "{url}: k{i} persisted");
            }
            assert_eq!(entries.acknowledged(), 201);

            if clustered {
                // One replica per master: WAIT 2 cannot be met.
                let greedy = DurableConfig { ack_replicas: 2, ..config.clone() };
                let durable = DurableEntries::new(&redis, layout.clone(), &greedy);
                let entries = Entries::new(
                    Cache::redis(redis.clone()),
                    &namespace,
                    EntrySink::Durable(durable),
                    DbEntries::new(db),
                )
                .with_enqueue_timeout(Duration::from_millis(300));
                let refused =
                    send(&axum::Router::from(entries_api(entries)), "PUT", "/api/v1/entries/greedy", Some("1".into()))
                        .await;
                assert_eq!(refused.status(), 503, "{url}");
                let body = json(refused).await;
                assert!(body["error"]["message"].as_str().unwrap().contains("reached 1 of the 2 replicas"), "{body}");
                for stream in layout.streams() {
                    let _: () = redis.client().del(&stream).await.unwrap();
                }
            }
        }
    }
}
