//! The reference service's storage: versioned entries and dead letters in
//! PostgreSQL or SQLite.

use std::collections::HashMap;
use std::time::SystemTime;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
#[cfg(feature = "sqlite")]
use diesel_async::AsyncConnection as _;
use diesel_async::RunQueryDsl;
use keel_store::{Database, StoreError};
use serde::{Deserialize, Serialize};

use crate::{DeadLetter, DeadLetters, Keyed, RepoError, RepoFuture, Repository};

/// One write of an entry (a tombstone when `deleted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryWrite {
    /// The key.
    pub key: String,
    /// The JSON value (`null` for a tombstone).
    pub value: serde_json::Value,
    /// Monotonic per key: a write only lands over a lower version.
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at_us: i64,
    /// Whether this write deletes the entry.
    pub deleted: bool,
}

impl Keyed for EntryWrite {
    type Key = String;
    fn key(&self) -> String {
        self.key.clone()
    }

    /// The key, the value's strings and a little per node: close to what
    /// the item holds in memory.
    fn weight(&self) -> usize {
        fn held(value: &serde_json::Value) -> usize {
            use serde_json::Value;
            16 + match value {
                Value::String(s) => s.len(),
                Value::Array(items) => items.iter().map(held).sum(),
                Value::Object(map) => map.iter().map(|(k, v)| k.len() + held(v)).sum(),
                _ => 0,
            }
        }
        64 + self.key.len() + held(&self.value)
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The JSON value.
    pub value: serde_json::Value,
    /// Its version.
    pub version: i64,
    /// When it was written.
    pub updated_at: SystemTime,
    /// Whether it is a tombstone.
    pub deleted: bool,
}

#[derive(QueryableByName)]
struct EntryRow {
    #[diesel(sql_type = Text)]
    value: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = BigInt)]
    updated_us: i64,
    #[diesel(sql_type = Bool)]
    deleted: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn no_backend() -> StoreError {
    StoreError::Pool("no database backend compiled in".into())
}

#[cfg(feature = "postgres")]
const PG_UPSERT: &str = "INSERT INTO entries (key, value, version, updated_at, deleted) \
    SELECT k, v::jsonb, ver, to_timestamp(t::double precision / 1000000), d \
    FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[]) AS u(k, v, ver, t, d) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, updated_at = excluded.updated_at, deleted = excluded.deleted \
    WHERE excluded.version > entries.version";
#[cfg(feature = "sqlite")]
const SQLITE_UPSERT: &str = "INSERT INTO entries (key, value, version, updated_at, deleted) VALUES (?, ?, ?, ?, ?) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, updated_at = excluded.updated_at, deleted = excluded.deleted \
    WHERE excluded.version > entries.version";
#[cfg(feature = "postgres")]
const PG_GET: &str = "SELECT value::text AS value, version, (extract(epoch FROM updated_at) * 1000000)::bigint AS updated_us, deleted FROM entries WHERE key = $1";
/// Rows per hand-over to SQLite's blocking thread.
#[cfg(feature = "sqlite")]
const SQLITE_CHUNK: usize = 32;
#[cfg(feature = "sqlite")]
const SQLITE_GET: &str = "SELECT value, version, updated_at AS updated_us, deleted FROM entries WHERE key = ?";

/// Entries in the `entries` table. Writes are idempotent and ordered by
/// version: replaying an old write, or applying writes out of order, never
/// replaces a newer value.
#[derive(Debug, Clone)]
pub struct DbEntries {
    database: Database,
}

impl DbEntries {
    /// Entries on `database` (migrations must have run).
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// The stored entry (tombstones included).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let rows: Vec<EntryRow> = self
            .database
            .timed("select", "entries", async {
                #[cfg(feature = "postgres")]
                if let Some(mut conn) = self.database.postgres_connection().await? {
                    return Ok(diesel::sql_query(PG_GET).bind::<Text, _>(key).load(&mut conn).await?);
                }
                #[cfg(feature = "sqlite")]
                if let Some(mut conn) = self.database.sqlite_connection().await? {
                    return Ok(diesel::sql_query(SQLITE_GET).bind::<Text, _>(key).load(&mut conn).await?);
                }
                Err(no_backend())
            })
            .await?;
        rows.into_iter()
            .next()
            .map(|row| {
                let value = serde_json::from_str(&row.value)
                    .map_err(|err| StoreError::Pool(format!("stored entry {key:?} is not JSON: {err}")))?;
                Ok(Entry {
                    value,
                    version: row.version,
                    updated_at: keel_core::from_unix_micros(row.updated_us),
                    deleted: row.deleted,
                })
            })
            .transpose()
    }

    async fn upsert(&self, items: &[EntryWrite]) -> Result<(), StoreError> {
        // One statement cannot touch a row twice: keep each key's newest write.
        let mut newest: HashMap<&str, &EntryWrite> = HashMap::with_capacity(items.len());
        for item in items {
            let slot = newest.entry(item.key.as_str()).or_insert(item);
            if item.version > slot.version {
                *slot = item;
            }
        }
        let items: Vec<&EntryWrite> = newest.into_values().collect();
        #[cfg(feature = "postgres")]
        if let Some(mut conn) = self.database.postgres_connection().await? {
            use diesel::sql_types::Array;
            diesel::sql_query(PG_UPSERT)
                .bind::<Array<Text>, _>(items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>())
                .bind::<Array<Text>, _>(items.iter().map(|i| i.value.to_string()).collect::<Vec<_>>())
                .bind::<Array<BigInt>, _>(items.iter().map(|i| i.version).collect::<Vec<_>>())
                .bind::<Array<BigInt>, _>(items.iter().map(|i| i.updated_at_us).collect::<Vec<_>>())
                .bind::<Array<Bool>, _>(items.iter().map(|i| i.deleted).collect::<Vec<_>>())
                .execute(&mut conn)
                .await?;
            return Ok(());
        }
        #[cfg(feature = "sqlite")]
        if let Some(mut conn) = self.database.sqlite_connection().await? {
            // Rows go to the blocking pool in chunks, inside one transaction:
            // a statement per row through the async wrapper would cross to
            // the pool and back once per row, and the whole batch at once
            // would copy every value (up to 500 × 64 KiB) before writing any.
            conn.transaction(async |conn| {
                for chunk in items.chunks(SQLITE_CHUNK) {
                    let rows: Vec<(String, String, i64, i64, bool)> = chunk
                        .iter()
                        .map(|i| (i.key.clone(), i.value.to_string(), i.version, i.updated_at_us, i.deleted))
                        .collect();
                    conn.spawn_blocking(move |conn| {
                        for (key, value, version, updated_at_us, deleted) in &rows {
                            diesel::RunQueryDsl::execute(
                                diesel::sql_query(SQLITE_UPSERT)
                                    .bind::<Text, _>(key)
                                    .bind::<Text, _>(value)
                                    .bind::<BigInt, _>(version)
                                    .bind::<BigInt, _>(updated_at_us)
                                    .bind::<Bool, _>(deleted),
                                conn,
                            )?;
                        }
                        Ok(())
                    })
                    .await?;
                }
                Ok::<_, diesel::result::Error>(())
            })
            .await?;
            return Ok(());
        }
        Err(no_backend())
    }
}

impl Repository<EntryWrite> for DbEntries {
    fn upsert_many<'a>(&'a self, items: &'a [EntryWrite]) -> RepoFuture<'a> {
        Box::pin(
            async move { self.database.timed("upsert", "entries", self.upsert(items)).await.map_err(RepoError::from) },
        )
    }
}

#[cfg(feature = "postgres")]
const PG_DEAD: &str = "INSERT INTO write_behind_dead_letters (queue, item, error, attempts, failed_at) \
    SELECT $1, i::jsonb, e, a, to_timestamp(t::double precision / 1000000) \
    FROM UNNEST($2::text[], $3::text[], $4::int[], $5::bigint[]) AS u(i, e, a, t)";
#[cfg(feature = "sqlite")]
const SQLITE_DEAD: &str =
    "INSERT INTO write_behind_dead_letters (queue, item, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?)";
#[cfg(feature = "postgres")]
const PG_COUNT: &str = "SELECT count(*)::bigint AS n FROM write_behind_dead_letters WHERE queue = $1";
#[cfg(feature = "sqlite")]
const SQLITE_COUNT: &str = "SELECT count(*) AS n FROM write_behind_dead_letters WHERE queue = ?";

/// Dead letters in the `write_behind_dead_letters` table, as JSON, tagged
/// with the queue's name.
#[derive(Debug, Clone)]
pub struct DbDeadLetters {
    database: Database,
    queue: String,
}

impl DbDeadLetters {
    /// Dead letters of queue `queue` on `database`.
    pub fn new(database: Database, queue: impl Into<String>) -> Self {
        Self { database, queue: queue.into() }
    }

    /// How many letters this queue has stored.
    pub async fn count(&self) -> Result<i64, StoreError> {
        #[cfg(feature = "postgres")]
        if let Some(mut conn) = self.database.postgres_connection().await? {
            let rows: Vec<Count> = diesel::sql_query(PG_COUNT).bind::<Text, _>(&self.queue).load(&mut conn).await?;
            return Ok(rows.into_iter().next().map_or(0, |c| c.n));
        }
        #[cfg(feature = "sqlite")]
        if let Some(mut conn) = self.database.sqlite_connection().await? {
            let rows: Vec<Count> = diesel::sql_query(SQLITE_COUNT).bind::<Text, _>(&self.queue).load(&mut conn).await?;
            return Ok(rows.into_iter().next().map_or(0, |c| c.n));
        }
        Err(no_backend())
    }

    async fn insert<T: Serialize>(&self, letters: &[DeadLetter<T>]) -> Result<(), StoreError> {
        let items: Vec<String> = letters
            .iter()
            .map(|l| {
                serde_json::to_string(&l.item)
                    .map(storable_json)
                    .unwrap_or_else(|err| format!("{{\"unserializable\":\"{err}\"}}"))
            })
            .collect();
        let errors: Vec<String> = letters.iter().map(|l| l.error.replace('\0', "\u{fffd}")).collect();
        let errors: Vec<&str> = errors.iter().map(String::as_str).collect();
        let attempts: Vec<i32> = letters.iter().map(|l| i32::try_from(l.attempts).unwrap_or(i32::MAX)).collect();
        let times: Vec<i64> = letters.iter().map(|l| keel_core::unix_micros(l.at)).collect();
        #[cfg(feature = "postgres")]
        if let Some(mut conn) = self.database.postgres_connection().await? {
            use diesel::sql_types::Array;
            diesel::sql_query(PG_DEAD)
                .bind::<Text, _>(&self.queue)
                .bind::<Array<Text>, _>(&items)
                .bind::<Array<Text>, _>(&errors)
                .bind::<Array<Integer>, _>(&attempts)
                .bind::<Array<BigInt>, _>(&times)
                .execute(&mut conn)
                .await?;
            return Ok(());
        }
        #[cfg(feature = "sqlite")]
        if let Some(mut conn) = self.database.sqlite_connection().await? {
            conn.transaction(async |conn| {
                for (i, item) in items.iter().enumerate() {
                    diesel::sql_query(SQLITE_DEAD)
                        .bind::<Text, _>(&self.queue)
                        .bind::<Text, _>(item)
                        .bind::<Text, _>(errors[i])
                        .bind::<Integer, _>(attempts[i])
                        .bind::<BigInt, _>(times[i])
                        .execute(conn)
                        .await?;
                }
                Ok::<_, diesel::result::Error>(())
            })
            .await?;
            return Ok(());
        }
        Err(no_backend())
    }
}

impl<T: Serialize + Send + Sync + 'static> DeadLetters<T> for DbDeadLetters {
    fn store<'a>(&'a self, letters: &'a [DeadLetter<T>]) -> RepoFuture<'a> {
        Box::pin(async move {
            self.database
                .timed("insert", "write_behind_dead_letters", self.insert(letters))
                .await
                .map_err(RepoError::from)
        })
    }
}

/// `json` with every U+0000 (which PostgreSQL's jsonb and text refuse)
/// replaced by U+FFFD, so a dead letter can always be stored: it is the
/// evidence of an item the store refused, possibly for exactly that byte.
fn storable_json(json: String) -> String {
    if !json.contains("\\u0000") {
        return json;
    }
    fn clean(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(s.replace('\0', "\u{fffd}")),
            Value::Array(items) => Value::Array(items.into_iter().map(clean).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k.replace('\0', "\u{fffd}"), clean(v))).collect())
            }
            other => other,
        }
    }
    match serde_json::from_str(&json) {
        Ok(value) => clean(value).to_string(),
        Err(_) => json,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dead_letter_json_loses_its_nul_bytes_and_nothing_else() {
        let item = serde_json::json!({"k\u{0}": ["a\u{0}b", {"x": "\\u0000"}], "n": 1});
        let stored = super::storable_json(item.to_string());
        let back: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, serde_json::json!({"k\u{fffd}": ["a\u{fffd}b", {"x": "\\u0000"}], "n": 1}));
        assert_eq!(super::storable_json("{\"a\":1}".into()), "{\"a\":1}");
    }
}
