//! The fair baseline keeps the guarantees it is compared on: a PUT is cached
//! and persisted, and an older version never overwrites a newer one, in the
//! cache or in the table. Against the real Redis and PostgreSQL (a database
//! of its own, keys under a prefix of its own).

// A failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use fred::prelude::{Builder, ClientLike as _, Config, KeysInterface as _, StreamsInterface as _, Value};
use keel_store::testing::{TempDatabase, redis_url, unique_prefix};

/// The baseline process, killed when the test ends (passed or not).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `PUT path` with `body` on a connection of its own; the status code.
fn put(addr: &str, path: &str, body: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// k1's value and version in the table, if it is there.
async fn row(db: &tokio_postgres::Client) -> Option<(String, i64)> {
    let rows = db.query("SELECT value::text, version FROM fair_entries WHERE key = 'k1'", &[]).await.ok()?;
    rows.first().map(|r| (r.get(0), r.get(1)))
}

/// Polls `done` every 50 ms for up to 10 s.
async fn within_10s<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_cached_and_persisted_and_an_older_version_never_wins() {
    let temp = TempDatabase::create("fair").await;
    let prefix = unique_prefix("fair");
    let redis = Builder::from_config(Config::from_url(&redis_url()).unwrap()).build().unwrap();
    redis.init().await.unwrap_or_else(|err| panic!("Redis is required at {}: {err}", redis_url()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_baseline"))
            .args(["--listen", &addr])
            .env("REDIS_URL", redis_url())
            .env("DATABASE_URL", temp.url())
            .env("BASELINE_PREFIX", &prefix)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    within_10s("the baseline listens", async || std::net::TcpStream::connect(&addr).is_ok()).await;

    assert_eq!(put(&addr, "/fair/entries/k1", r#"{"n":1}"#), 202);
    assert_eq!(put(&addr, "/fair/entries/k1", r#"{"n":2}"#), 202);
    let (db, connection) = tokio_postgres::connect(temp.url(), tokio_postgres::NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    within_10s("k1 persisted with its newest value", async || {
        row(&db).await.is_some_and(|(value, _)| value == r#"{"n": 2}"#)
    })
    .await;
    let (_, version) = row(&db).await.unwrap();
    let cached: String = redis.get(format!("{prefix}:cache:k1")).await.unwrap();
    assert_eq!(cached, format!(r#"{version}:{{"n":2}}"#), "the cache holds the newest version");

    // An older write arriving late (a replay) changes neither the row nor the cache.
    let stream = format!("{prefix}:entries");
    let older = (version - 1).to_string();
    let late = vec![("key", "k1"), ("version", older.as_str()), ("value", r#"{"n":0}"#)];
    let id: String = redis.xadd(&stream, false, None, "*", late).await.unwrap();
    within_10s("the late write delivered to the consumer and acknowledged", async || {
        let groups: Value = redis.custom(fred::cmd!("XINFO"), vec!["GROUPS", stream.as_str()]).await.unwrap();
        let fields = groups.into_array().into_iter().next().map(Value::into_array).unwrap_or_default();
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|pair| pair[0].as_string().as_deref() == Some(name))
                .and_then(|pair| pair[1].as_string())
        };
        field("last-delivered-id").as_deref() == Some(id.as_str()) && field("pending").as_deref() == Some("0")
    })
    .await;
    assert_eq!(row(&db).await, Some((r#"{"n": 2}"#.to_owned(), version)), "the older version did not overwrite");
    let cached: String = redis.get(format!("{prefix}:cache:k1")).await.unwrap();
    assert_eq!(cached, format!(r#"{version}:{{"n":2}}"#));

    drop(child);
    drop(db);
    connection.abort();
    let _: i64 = redis.del(vec![stream, format!("{prefix}:cache:k1")]).await.unwrap();
    temp.drop_database().await;
}
