//! The fair baseline: the smallest hand-written write-behind with the
//! guarantees Keel's cluster PUT gives, and nothing else (no metrics, no
//! health, no partitions, no capacity bound, no dead letters).
//!
//! A PUT runs one Lua script that sets the cache key when its version is
//! newer and appends the write to a stream, then answers 202. One consumer
//! task reads the stream with `XREADGROUP COUNT 500`, writes the batch
//! with one version-guarded `UNNEST` upsert, and only then `XACK`s it; a
//! failed upsert leaves the batch pending and reads it again.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::{Client, ClientLike as _, Value};
use fred::types::scripts::Script;

/// The consumer group.
const GROUP: &str = "fair";

/// The stream and the cache keys' prefix, under `BASELINE_PREFIX` (`fair`
/// unless set, so that tests can keep to keys of their own).
fn prefix() -> &'static str {
    static PREFIX: LazyLock<String> =
        LazyLock::new(|| std::env::var("BASELINE_PREFIX").unwrap_or_else(|_| "fair".to_owned()));
    &PREFIX
}

fn stream() -> String {
    format!("{}:entries", prefix())
}
/// How long a cached value lives (Keel's default cache TTL).
const CACHE_TTL_MS: &str = "3600000";

/// KEYS: cache key, stream. ARGV: version, value, TTL ms, entry key.
/// Sets `version:value` unless the cached version is newer, and appends.
const PUT: &str = "\
local cached = redis.call('GET', KEYS[1])
if cached then
  local version = tonumber(string.match(cached, '^(%-?%d+):'))
  if version and version > tonumber(ARGV[1]) then
    return redis.call('XADD', KEYS[2], '*', 'key', ARGV[4], 'version', ARGV[1], 'value', ARGV[2])
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return redis.call('XADD', KEYS[2], '*', 'key', ARGV[4], 'version', ARGV[1], 'value', ARGV[2])";

const UPSERT: &str = "INSERT INTO fair_entries (key, value, version) \
    SELECT k, v::jsonb, ver FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(k, v, ver) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version \
    WHERE excluded.version > fair_entries.version";

/// A version that grows with time (microseconds since the epoch).
fn version() -> i64 {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// The PUT: cache and append in one script call; the version written.
pub(crate) async fn put(redis: &Client, key: &str, value: &str) -> Result<i64, fred::error::Error> {
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(PUT));
    let version = version();
    let keys = vec![format!("{}:cache:{key}", prefix()), stream()];
    let args = vec![version.to_string(), value.to_owned(), CACHE_TTL_MS.to_owned(), key.to_owned()];
    let _: Value = SCRIPT.evalsha_with_reload(redis, keys, args).await?;
    Ok(version)
}

/// Creates the table and the consumer group, then persists the stream for
/// as long as the process runs (or until the database connection ends).
/// Reads on a connection of its own: a blocking `XREADGROUP` on the
/// connection the PUTs share would hold them up.
pub(crate) async fn consume(redis: &Client, database_url: String) -> Result<(), String> {
    let redis = redis.clone_new();
    redis.init().await.map_err(|err| err.to_string())?;
    let (db, connection) =
        tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await.map_err(|err| err.to_string())?;
    tokio::select! {
        ended = connection => Err(format!("the PostgreSQL connection ended: {ended:?}")),
        persisted = persist(&redis, &db) => persisted,
    }
}

async fn persist(redis: &Client, db: &tokio_postgres::Client) -> Result<(), String> {
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS fair_entries (key text PRIMARY KEY, value jsonb NOT NULL, version bigint NOT NULL)",
    )
    .await
    .map_err(|err| err.to_string())?;
    let upsert = db.prepare(UPSERT).await.map_err(|err| err.to_string())?;
    let created: Result<Value, _> =
        redis.custom(fred::cmd!("XGROUP"), vec!["CREATE", &stream(), GROUP, "0", "MKSTREAM"]).await;
    if let Err(err) = created
        && !err.details().contains("BUSYGROUP")
    {
        return Err(err.to_string());
    }
    // Pending entries first (a batch whose upsert failed), then new ones.
    let (stream, mut from) = (stream(), "0");
    loop {
        let args = vec!["GROUP", GROUP, "c1", "COUNT", "500", "BLOCK", "100", "STREAMS", &stream, from];
        let entries = match redis.custom::<Value, _>(fred::cmd!("XREADGROUP"), args).await {
            Ok(reply) => entries(reply),
            Err(err) => {
                eprintln!("baseline: XREADGROUP failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if entries.is_empty() {
            from = ">";
            continue;
        }
        // One row per key (the newest): an upsert may not touch a row twice.
        let mut newest: HashMap<String, (String, i64)> = HashMap::with_capacity(entries.len());
        for entry in &entries {
            let slot = newest.entry(entry.key.clone()).or_insert_with(|| (entry.value.clone(), entry.version));
            if entry.version > slot.1 {
                *slot = (entry.value.clone(), entry.version);
            }
        }
        let (mut keys, mut values, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        for (key, (value, version)) in newest {
            keys.push(key);
            values.push(value);
            versions.push(version);
        }
        if let Err(err) = db.execute(&upsert, &[&keys, &values, &versions]).await {
            eprintln!("baseline: upsert failed, the batch stays pending: {err}");
            from = "0";
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut ack = vec![stream.clone(), GROUP.to_owned()];
        ack.extend(entries.into_iter().map(|e| e.id));
        if let Err(err) = redis.custom::<Value, _>(fred::cmd!("XACK"), ack).await {
            eprintln!("baseline: XACK failed (the batch is read again): {err}");
        }
    }
}

/// One stream entry.
struct Entry {
    id: String,
    key: String,
    version: i64,
    value: String,
}

/// `[[stream, [[id, [field, value, …]], …]]]` → the entries.
fn entries(reply: Value) -> Vec<Entry> {
    let array = |v: Value| match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for stream in array(reply) {
        let Some(items) = array(stream).into_iter().nth(1) else { continue };
        for item in array(items) {
            let mut pair = array(item).into_iter();
            let Some(id) = pair.next().and_then(|v| v.as_string()) else { continue };
            let mut entry = Entry { id, key: String::new(), version: 0, value: String::new() };
            let mut fields = pair.next().map(array).unwrap_or_default().into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                match name.as_string().as_deref() {
                    Some("key") => entry.key = value.as_string().unwrap_or_default(),
                    Some("version") => entry.version = value.as_string().and_then(|v| v.parse().ok()).unwrap_or(0),
                    Some("value") => entry.value = value.as_string().unwrap_or_default(),
                    _ => {}
                }
            }
            out.push(entry);
        }
    }
    out
}
