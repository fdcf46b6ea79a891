//! [`SettingsStore`] on Keel's database (PostgreSQL or embedded SQLite).

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use keel_store::Database;

use crate::store::{Change, SettingsStore, StoreError, StoreFuture, StoredDocument};

/// Settings documents in the `settings` and `settings_audit` tables.
#[derive(Debug, Clone)]
pub struct DbSettingsStore {
    database: Database,
}

impl DbSettingsStore {
    /// A store on `database` (migrations must have run).
    pub fn new(database: Database) -> Self {
        Self { database }
    }
}

#[derive(QueryableByName)]
struct DocRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    value: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = BigInt)]
    updated_at_ms: i64,
    #[diesel(sql_type = Text)]
    updated_by: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    revert_at_ms: Option<i64>,
}

#[derive(QueryableByName)]
struct ChangeRow {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = BigInt)]
    time_ms: i64,
    #[diesel(sql_type = Nullable<Text>)]
    old: Option<String>,
    #[diesel(sql_type = Text)]
    new: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    reverted_from: Option<i64>,
}

#[derive(QueryableByName)]
struct ValueRow {
    #[diesel(sql_type = Text)]
    value: String,
}

fn parse(name: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt { name: name.to_owned(), reason: err.to_string() })
}

fn document(row: DocRow) -> Result<StoredDocument, StoreError> {
    Ok(StoredDocument {
        value: parse(&row.name, &row.value)?,
        name: row.name,
        version: row.version,
        updated_at_ms: row.updated_at_ms,
        updated_by: row.updated_by,
        revert_at_ms: row.revert_at_ms,
    })
}

fn change(name: &str, row: ChangeRow) -> Result<Change, StoreError> {
    Ok(Change {
        version: row.version,
        actor: row.actor,
        time_ms: row.time_ms,
        old: row.old.as_deref().map(|t| parse(name, t)).transpose()?.unwrap_or(serde_json::Value::Null),
        new: parse(name, &row.new)?,
        reverted_from: row.reverted_from,
    })
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = BigInt)]
    version: i64,
}

/// The SQL of one backend; the logic around it is shared by [`with_sql!`].
struct Sql {
    load: &'static str,
    version: &'static str,
    lock: &'static str,
    update: &'static str,
    insert: &'static str,
    audit: &'static str,
    history: &'static str,
    value_at: &'static str,
}

#[cfg(feature = "postgres")]
const POSTGRES: Sql = Sql {
    version: "SELECT version FROM settings WHERE name = $1",
    load: "SELECT name, value::text AS value, version, (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at_ms, updated_by, revert_at AS revert_at_ms FROM settings WHERE name = $1",
    lock: "SELECT name, value::text AS value, version, (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at_ms, updated_by, revert_at AS revert_at_ms FROM settings WHERE name = $1 FOR UPDATE",
    update: "UPDATE settings SET value = $2::jsonb, version = version + 1, updated_at = to_timestamp($4::double precision / 1000), updated_by = $3, revert_at = $6 WHERE name = $1 AND version = $5 \
             RETURNING name, value::text AS value, version, (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at_ms, updated_by, revert_at AS revert_at_ms",
    insert: "INSERT INTO settings (name, value, version, updated_at, updated_by, revert_at) VALUES ($1, $2::jsonb, 1, to_timestamp($4::double precision / 1000), $3, $5) ON CONFLICT (name) DO NOTHING \
             RETURNING name, value::text AS value, version, (extract(epoch FROM updated_at) * 1000)::bigint AS updated_at_ms, updated_by, revert_at AS revert_at_ms",
    audit: "INSERT INTO settings_audit (name, version, old_value, new_value, actor, changed_at, reverted_from) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, to_timestamp($6::double precision / 1000), $7)",
    history: "SELECT version, actor, (extract(epoch FROM changed_at) * 1000)::bigint AS time_ms, old_value::text AS old, new_value::text AS new, reverted_from \
              FROM settings_audit WHERE name = $1 ORDER BY version DESC LIMIT $2",
    value_at: "SELECT new_value::text AS value FROM settings_audit WHERE name = $1 AND version = $2",
};

#[cfg(feature = "sqlite")]
const SQLITE: Sql = Sql {
    version: "SELECT version FROM settings WHERE name = ?",
    load: "SELECT name, value, version, updated_at AS updated_at_ms, updated_by, revert_at AS revert_at_ms FROM settings WHERE name = ?",
    // SQLite serialises writers; the version guard on the update does the rest.
    lock: "SELECT name, value, version, updated_at AS updated_at_ms, updated_by, revert_at AS revert_at_ms FROM settings WHERE name = ?",
    update: "UPDATE settings SET value = ?2, version = version + 1, updated_at = ?4, updated_by = ?3, revert_at = ?6 WHERE name = ?1 AND version = ?5 \
             RETURNING name, value, version, updated_at AS updated_at_ms, updated_by, revert_at AS revert_at_ms",
    insert: "INSERT INTO settings (name, value, version, updated_at, updated_by, revert_at) VALUES (?1, ?2, 1, ?4, ?3, ?5) ON CONFLICT (name) DO NOTHING \
             RETURNING name, value, version, updated_at AS updated_at_ms, updated_by, revert_at AS revert_at_ms",
    audit: "INSERT INTO settings_audit (name, version, old_value, new_value, actor, changed_at, reverted_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    history: "SELECT version, actor, changed_at AS time_ms, old_value AS old, new_value AS new, reverted_from FROM settings_audit WHERE name = ? ORDER BY version DESC LIMIT ?",
    value_at: "SELECT new_value AS value FROM settings_audit WHERE name = ? AND version = ?",
};

enum SaveFailure {
    Store(StoreError),
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for SaveFailure {
    fn from(err: diesel::result::Error) -> Self {
        SaveFailure::Db(err)
    }
}

impl From<SaveFailure> for StoreError {
    fn from(failure: SaveFailure) -> Self {
        match failure {
            SaveFailure::Store(err) => err,
            SaveFailure::Db(err) => StoreError::Database(err.into()),
        }
    }
}

/// The body of each operation, written once and expanded for each backend's
/// connection type.
macro_rules! with_sql {
    (load, $conn:expr, $sql:expr, $name:expr) => {{
        let rows: Vec<DocRow> = diesel::sql_query($sql.load)
            .bind::<Text, _>($name)
            .load($conn)
            .await
            .map_err(keel_store::StoreError::from)?;
        rows.into_iter().next().map(document).transpose()
    }};
    (version, $conn:expr, $sql:expr, $name:expr) => {{
        let rows: Vec<VersionRow> = diesel::sql_query($sql.version)
            .bind::<Text, _>($name)
            .load($conn)
            .await
            .map_err(keel_store::StoreError::from)?;
        Ok(rows.into_iter().next().map_or(0, |row| row.version))
    }};
    (history, $conn:expr, $sql:expr, $name:expr, $limit:expr) => {{
        let rows: Vec<ChangeRow> = diesel::sql_query($sql.history)
            .bind::<Text, _>($name)
            .bind::<BigInt, _>($limit)
            .load($conn)
            .await
            .map_err(keel_store::StoreError::from)?;
        rows.into_iter().map(|row| change($name, row)).collect()
    }};
    (value_at, $conn:expr, $sql:expr, $name:expr, $version:expr) => {{
        let rows: Vec<ValueRow> = diesel::sql_query($sql.value_at)
            .bind::<Text, _>($name)
            .bind::<BigInt, _>($version)
            .load($conn)
            .await
            .map_err(keel_store::StoreError::from)?;
        rows.into_iter().next().map(|row| parse($name, &row.value)).transpose()
    }};
    (save, $conn:expr, $sql:expr, $name:expr, $value:expr, $expected:expr, $actor:expr, $reverted_from:expr, $revert_at:expr) => {{
        let new_text = $value.to_string();
        let now = keel_core::unix_millis(std::time::SystemTime::now());
        let result: Result<StoredDocument, SaveFailure> = $conn
            .transaction(async |conn| {
                let current: Option<DocRow> =
                    diesel::sql_query($sql.lock).bind::<Text, _>($name).load::<DocRow>(conn).await?.into_iter().next();
                let current_version = current.as_ref().map_or(0, |row| row.version);
                if let Some(expected) = $expected
                    && expected != current_version
                {
                    return Err(SaveFailure::Store(StoreError::Conflict { expected, current: current_version }));
                }
                let written: Option<DocRow> = if current.is_some() {
                    diesel::sql_query($sql.update)
                        .bind::<Text, _>($name)
                        .bind::<Text, _>(&new_text)
                        .bind::<Text, _>($actor)
                        .bind::<BigInt, _>(now)
                        .bind::<BigInt, _>(current_version)
                        .bind::<Nullable<BigInt>, _>($revert_at)
                        .load::<DocRow>(conn)
                        .await?
                        .into_iter()
                        .next()
                } else {
                    diesel::sql_query($sql.insert)
                        .bind::<Text, _>($name)
                        .bind::<Text, _>(&new_text)
                        .bind::<Text, _>($actor)
                        .bind::<BigInt, _>(now)
                        .bind::<Nullable<BigInt>, _>($revert_at)
                        .load::<DocRow>(conn)
                        .await?
                        .into_iter()
                        .next()
                };
                // Nothing written: a concurrent writer got there first.
                let Some(written) = written else {
                    return Err(SaveFailure::Store(StoreError::Conflict {
                        expected: $expected.unwrap_or(current_version),
                        current: current_version + 1,
                    }));
                };
                diesel::sql_query($sql.audit)
                    .bind::<Text, _>($name)
                    .bind::<BigInt, _>(written.version)
                    .bind::<Nullable<Text>, _>(current.map(|row| row.value))
                    .bind::<Text, _>(&new_text)
                    .bind::<Text, _>($actor)
                    .bind::<BigInt, _>(now)
                    .bind::<Nullable<BigInt>, _>($reverted_from)
                    .execute(conn)
                    .await?;
                document(written).map_err(SaveFailure::Store)
            })
            .await;
        result.map_err(StoreError::from)
    }};
}

impl DbSettingsStore {
    /// The checked, audited save; `reverted_from` marks a revert,
    /// `revert_at` a timed value.
    async fn save_audited(
        &self,
        name: &str,
        value: &serde_json::Value,
        expected: Option<i64>,
        actor: &str,
        reverted_from: Option<i64>,
        revert_at: Option<i64>,
    ) -> Result<StoredDocument, StoreError> {
        self.database
            .timed("update", "settings", async move {
                #[cfg(feature = "postgres")]
                if let Some(mut conn) = self.database.postgres_connection().await? {
                    return with_sql!(save, conn, POSTGRES, name, value, expected, actor, reverted_from, revert_at);
                }
                #[cfg(feature = "sqlite")]
                if let Some(mut conn) = self.database.sqlite_connection().await? {
                    return with_sql!(save, conn, SQLITE, name, value, expected, actor, reverted_from, revert_at);
                }
                Err(no_backend())
            })
            .await
    }
}

fn no_backend() -> StoreError {
    StoreError::Database(keel_store::StoreError::Pool("no database backend compiled in".into()))
}

impl SettingsStore for DbSettingsStore {
    fn load<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Result<Option<StoredDocument>, StoreError>> {
        Box::pin(self.database.timed("select", "settings", async move {
            #[cfg(feature = "postgres")]
            if let Some(mut conn) = self.database.postgres_connection().await? {
                return with_sql!(load, &mut conn, POSTGRES, name);
            }
            #[cfg(feature = "sqlite")]
            if let Some(mut conn) = self.database.sqlite_connection().await? {
                return with_sql!(load, &mut conn, SQLITE, name);
            }
            Err(no_backend())
        }))
    }

    fn version<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Result<i64, StoreError>> {
        Box::pin(self.database.timed("select", "settings", async move {
            #[cfg(feature = "postgres")]
            if let Some(mut conn) = self.database.postgres_connection().await? {
                return with_sql!(version, &mut conn, POSTGRES, name);
            }
            #[cfg(feature = "sqlite")]
            if let Some(mut conn) = self.database.sqlite_connection().await? {
                return with_sql!(version, &mut conn, SQLITE, name);
            }
            Err(no_backend())
        }))
    }

    fn save<'a>(
        &'a self,
        name: &'a str,
        value: &'a serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
    ) -> StoreFuture<'a, Result<StoredDocument, StoreError>> {
        Box::pin(self.save_audited(name, value, expected, actor, None, None))
    }

    fn save_reverted<'a>(
        &'a self,
        name: &'a str,
        value: &'a serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
        reverted_from: i64,
    ) -> StoreFuture<'a, Result<StoredDocument, StoreError>> {
        Box::pin(self.save_audited(name, value, expected, actor, Some(reverted_from), None))
    }

    fn save_timed<'a>(
        &'a self,
        name: &'a str,
        value: &'a serde_json::Value,
        expected: Option<i64>,
        actor: &'a str,
        revert_at_ms: i64,
    ) -> StoreFuture<'a, Result<StoredDocument, StoreError>> {
        Box::pin(self.save_audited(name, value, expected, actor, None, Some(revert_at_ms)))
    }

    fn value_at<'a>(
        &'a self,
        name: &'a str,
        version: i64,
    ) -> StoreFuture<'a, Result<Option<serde_json::Value>, StoreError>> {
        Box::pin(self.database.timed("select", "settings_audit", async move {
            #[cfg(feature = "postgres")]
            if let Some(mut conn) = self.database.postgres_connection().await? {
                return with_sql!(value_at, &mut conn, POSTGRES, name, version);
            }
            #[cfg(feature = "sqlite")]
            if let Some(mut conn) = self.database.sqlite_connection().await? {
                return with_sql!(value_at, &mut conn, SQLITE, name, version);
            }
            Err(no_backend())
        }))
    }

    fn history<'a>(&'a self, name: &'a str, limit: usize) -> StoreFuture<'a, Result<Vec<Change>, StoreError>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.database.timed("select", "settings_audit", async move {
            #[cfg(feature = "postgres")]
            if let Some(mut conn) = self.database.postgres_connection().await? {
                return with_sql!(history, &mut conn, POSTGRES, name, limit);
            }
            #[cfg(feature = "sqlite")]
            if let Some(mut conn) = self.database.sqlite_connection().await? {
                return with_sql!(history, &mut conn, SQLITE, name, limit);
            }
            Err(no_backend())
        }))
    }
}
