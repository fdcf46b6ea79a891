//! The reference service's data: the latest metadata value per agent and
//! key, written by a [`Batcher`](crate::Batcher) through [`DbMetadataSink`],
//! and change notifications through [`MetadataNotifier`].

use std::time::SystemTime;

use bytes::Bytes;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
#[cfg(feature = "sqlite")]
use diesel_async::AsyncConnection as _;
use diesel_async::RunQueryDsl;
use keel_store::{Bus, Database, StoreError};
use uuid::Uuid;

use crate::chunks::encode_chunks;
use crate::{BatchSink, FlushListener, SinkError, SinkFuture, Stamped};

/// One metadata key of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetadataKey {
    /// The agent.
    pub agent_id: Uuid,
    /// The key (validated by the caller).
    pub key: String,
}

/// A collected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataValue {
    /// The value.
    pub value: String,
    /// Why collection failed or was truncated; empty when fine.
    pub error: String,
    /// When it was collected: the newest wins.
    pub collected_at: SystemTime,
}

impl Stamped for MetadataValue {
    fn stamp(&self) -> SystemTime {
        self.collected_at
    }
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRow {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The error note.
    pub error: String,
    /// When it was collected.
    pub collected_at: SystemTime,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    value: String,
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = BigInt)]
    collected_us: i64,
}

/// Writes metadata batches to `agent_metadata`: on PostgreSQL one
/// `INSERT … SELECT FROM UNNEST(…) ON CONFLICT … DO UPDATE … WHERE
/// excluded.collected_at >= agent_metadata.collected_at` per batch, so a
/// replica can never regress a newer value; on SQLite the same guarded upsert
/// per row inside one transaction.
#[derive(Debug, Clone)]
pub struct DbMetadataSink {
    database: Database,
}

#[cfg(feature = "postgres")]
const PG_UPSERT: &str = "INSERT INTO agent_metadata (agent_id, key, value, error, collected_at) \
    SELECT a::uuid, k, v, e, to_timestamp(t::double precision / 1000000) \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS u(a, k, v, e, t) \
    ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value, error = excluded.error, collected_at = excluded.collected_at \
    WHERE excluded.collected_at >= agent_metadata.collected_at";

#[cfg(feature = "sqlite")]
const SQLITE_UPSERT: &str = "INSERT INTO agent_metadata (agent_id, key, value, error, collected_at) VALUES (?, ?, ?, ?, ?) \
    ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value, error = excluded.error, collected_at = excluded.collected_at \
    WHERE excluded.collected_at >= agent_metadata.collected_at";

#[cfg(feature = "postgres")]
const PG_LOAD: &str = "SELECT key, value, error, (extract(epoch FROM collected_at) * 1000000)::bigint AS collected_us \
    FROM agent_metadata WHERE agent_id = $1::uuid ORDER BY key";

#[cfg(feature = "sqlite")]
const SQLITE_LOAD: &str =
    "SELECT key, value, error, collected_at AS collected_us FROM agent_metadata WHERE agent_id = ? ORDER BY key";

fn no_backend(what: &str) -> StoreError {
    StoreError::Pool(what.to_owned())
}

impl DbMetadataSink {
    /// A sink on `database` (migrations must have run).
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    async fn upsert(&self, batch: &[(MetadataKey, MetadataValue)]) -> Result<(), StoreError> {
        #[cfg(feature = "postgres")]
        if let Some(mut conn) = self.database.postgres_connection().await? {
            use diesel::sql_types::Array;
            let agents: Vec<String> = batch.iter().map(|(k, _)| k.agent_id.to_string()).collect();
            let keys: Vec<&str> = batch.iter().map(|(k, _)| k.key.as_str()).collect();
            let values: Vec<&str> = batch.iter().map(|(_, v)| v.value.as_str()).collect();
            let errors: Vec<&str> = batch.iter().map(|(_, v)| v.error.as_str()).collect();
            let times: Vec<i64> = batch.iter().map(|(_, v)| keel_core::unix_micros(v.collected_at)).collect();
            diesel::sql_query(PG_UPSERT)
                .bind::<Array<Text>, _>(agents)
                .bind::<Array<Text>, _>(keys)
                .bind::<Array<Text>, _>(values)
                .bind::<Array<Text>, _>(errors)
                .bind::<Array<BigInt>, _>(times)
                .execute(&mut conn)
                .await?;
            return Ok(());
        }
        #[cfg(feature = "sqlite")]
        if let Some(mut conn) = self.database.sqlite_connection().await? {
            conn.transaction(async |conn| {
                for (key, value) in batch {
                    diesel::sql_query(SQLITE_UPSERT)
                        .bind::<Text, _>(key.agent_id.to_string())
                        .bind::<Text, _>(&key.key)
                        .bind::<Text, _>(&value.value)
                        .bind::<Text, _>(&value.error)
                        .bind::<BigInt, _>(keel_core::unix_micros(value.collected_at))
                        .execute(conn)
                        .await?;
                }
                Ok::<_, diesel::result::Error>(())
            })
            .await?;
            return Ok(());
        }
        Err(no_backend("no database backend compiled in"))
    }

    /// The stored metadata of `agent_id`, sorted by key.
    pub async fn load(&self, agent_id: Uuid) -> Result<Vec<MetadataRow>, StoreError> {
        let rows: Vec<Row> = self
            .database
            .timed("select", "agent_metadata", async {
                #[cfg(feature = "postgres")]
                if let Some(mut conn) = self.database.postgres_connection().await? {
                    return Ok(diesel::sql_query(PG_LOAD)
                        .bind::<Text, _>(agent_id.to_string())
                        .load(&mut conn)
                        .await?);
                }
                #[cfg(feature = "sqlite")]
                if let Some(mut conn) = self.database.sqlite_connection().await? {
                    return Ok(diesel::sql_query(SQLITE_LOAD)
                        .bind::<Text, _>(agent_id.to_string())
                        .load(&mut conn)
                        .await?);
                }
                Err(no_backend("no database backend compiled in"))
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| MetadataRow {
                key: r.key,
                value: r.value,
                error: r.error,
                collected_at: keel_core::from_unix_micros(r.collected_us),
            })
            .collect())
    }
}

impl BatchSink<MetadataKey, MetadataValue> for DbMetadataSink {
    fn write<'a>(&'a self, batch: &'a [(MetadataKey, MetadataValue)]) -> SinkFuture<'a> {
        Box::pin(async move {
            self.database.timed("upsert", "agent_metadata", self.upsert(batch)).await.map_err(SinkError::from)
        })
    }
}

/// Announces the agents touched by each written batch on `channel`, as
/// compact chunks of ids (private to this crate; read them with
/// [`MetadataNotifier::subscribe`]): with PostgreSQL `NOTIFY` (every chunk in one
/// round trip) or on a [`Bus`] (Redis or in-process).
#[derive(Debug, Clone)]
pub struct MetadataNotifier {
    target: Target,
    channel: String,
}

#[derive(Debug, Clone)]
enum Target {
    #[cfg(feature = "postgres")]
    Notify(Database),
    Bus(Bus),
}

#[cfg(feature = "postgres")]
const PG_NOTIFY_ALL: &str = "SELECT pg_notify($1, chunk) FROM unnest($2::text[]) AS chunk";

impl MetadataNotifier {
    /// The channel for `namespace`: `<namespace>.agent_metadata`.
    pub fn channel(namespace: &str) -> String {
        format!("{namespace}.agent_metadata")
    }

    /// Notifies over PostgreSQL `NOTIFY` on `database`.
    #[cfg(feature = "postgres")]
    pub fn postgres(database: Database, channel: String) -> Self {
        Self { target: Target::Notify(database), channel }
    }

    /// Notifies on `bus`.
    pub fn bus(bus: Bus, channel: String) -> Self {
        Self { target: Target::Bus(bus), channel }
    }

    /// The ids of agents announced on `channel` of `bus` from now on, one
    /// at a time (malformed payloads are skipped with a warning). A
    /// PostgreSQL `NOTIFY` channel arrives on a PostgreSQL bus.
    pub async fn subscribe(bus: &Bus, channel: &str) -> Result<ChangedAgents, StoreError> {
        Ok(ChangedAgents { subscription: bus.subscribe(channel).await?, pending: std::collections::VecDeque::new() })
    }

    /// Sends the chunks for `agents`.
    pub async fn notify(&self, agents: impl IntoIterator<Item = Uuid>) -> Result<(), StoreError> {
        let chunks = encode_chunks(agents);
        if chunks.is_empty() {
            return Ok(());
        }
        match &self.target {
            #[cfg(feature = "postgres")]
            Target::Notify(database) => {
                use diesel::sql_types::Array;
                let mut conn =
                    database.postgres_connection().await?.ok_or_else(|| no_backend("NOTIFY needs PostgreSQL"))?;
                diesel::sql_query(PG_NOTIFY_ALL)
                    .bind::<Text, _>(&self.channel)
                    .bind::<Array<Text>, _>(chunks)
                    .execute(&mut conn)
                    .await?;
                Ok(())
            }
            Target::Bus(bus) => {
                for chunk in chunks {
                    bus.publish(&self.channel, Bytes::from(chunk)).await?;
                }
                Ok(())
            }
        }
    }
}

/// Agent ids announced by [`MetadataNotifier::notify`], from
/// [`MetadataNotifier::subscribe`].
#[derive(Debug)]
pub struct ChangedAgents {
    subscription: keel_store::Subscription,
    pending: std::collections::VecDeque<Uuid>,
}

impl ChangedAgents {
    /// The next changed agent; `None` once the bus is closed.
    pub async fn recv(&mut self) -> Option<Uuid> {
        loop {
            if let Some(agent) = self.pending.pop_front() {
                return Some(agent);
            }
            let payload = self.subscription.recv().await?;
            match crate::chunks::decode_chunk(&payload) {
                Ok(agents) => self.pending.extend(agents),
                Err(err) => tracing::warn!(%err, "ignoring a malformed metadata notification"),
            }
        }
    }
}

impl FlushListener<MetadataKey> for MetadataNotifier {
    fn flushed<'a>(&'a self, keys: &'a [MetadataKey]) -> SinkFuture<'a> {
        Box::pin(async move { self.notify(keys.iter().map(|k| k.agent_id)).await.map_err(SinkError::from) })
    }
}
