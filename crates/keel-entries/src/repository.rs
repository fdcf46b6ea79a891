//! The entries table on PostgreSQL or SQLite: versioned rows that a write
//! only replaces with a higher version.

use std::collections::HashMap;
use std::time::SystemTime;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Text};
#[cfg(feature = "sqlite")]
use diesel_async::AsyncConnection as _;
use diesel_async::RunQueryDsl;
use keel_store::{Database, StoreError};
#[cfg(feature = "postgres")]
use tokio_postgres::types::Type;

use keel_write_behind::{RepoError, RepoFuture, Repository};

use crate::EntryWrite;

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

fn no_backend() -> StoreError {
    StoreError::Pool("no database backend compiled in".into())
}

#[cfg(feature = "postgres")]
const PG_UPSERT: &str = "INSERT INTO entries (key, value, version, updated_at, deleted) \
    SELECT k, v::jsonb, ver, to_timestamp(t::double precision / 1000000), d \
    FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[]) AS u(k, v, ver, t, d) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, updated_at = excluded.updated_at, deleted = excluded.deleted \
    WHERE excluded.version > entries.version";
/// Batches of at least this many rows go to PostgreSQL through binary `COPY`
/// and one merge ([`ENTRIES_COPY`]); smaller ones through [`PG_UPSERT`],
/// which needs one round trip fewer.
#[cfg(feature = "postgres")]
pub(crate) const COPY_FROM_ROWS: usize = 64;
/// The same guarded upsert as [`PG_UPSERT`], from a staging table filled
/// with binary `COPY`.
#[cfg(feature = "postgres")]
const ENTRIES_COPY: keel_store::CopyMerge = keel_store::CopyMerge {
    stage: "keel_entries_stage",
    columns: "key text, value jsonb, version bigint, updated_us bigint, deleted boolean",
    types: &[Type::TEXT, Type::JSONB, Type::INT8, Type::INT8, Type::BOOL],
    merge: "INSERT INTO entries (key, value, version, updated_at, deleted) \
        SELECT key, value, version, to_timestamp(updated_us::double precision / 1000000), deleted FROM keel_entries_stage \
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, updated_at = excluded.updated_at, deleted = excluded.deleted \
        WHERE excluded.version > entries.version",
};
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
        if items.len() >= COPY_FROM_ROWS
            && self
                .database
                .copy_merge(&ENTRIES_COPY, &items, |i| [&i.key, &i.value, &i.version, &i.updated_at_us, &i.deleted])
                .await?
        {
            return Ok(());
        }
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
