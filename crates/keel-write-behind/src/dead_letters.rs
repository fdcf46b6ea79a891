//! The dead-letter table, `write_behind_dead_letters`, on PostgreSQL or
//! SQLite: what a queue could not persist, kept as JSON with its error.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text};
#[cfg(feature = "sqlite")]
use diesel_async::AsyncConnection as _;
use diesel_async::RunQueryDsl;
use keel_store::{Database, StoreError};
use serde::Serialize;

use crate::{DeadLetter, DeadLetters, RepoError, RepoFuture};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn no_backend() -> StoreError {
    StoreError::Pool("no database backend compiled in".into())
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
