//! Bulk writes on PostgreSQL: a batch goes with binary `COPY` into a
//! staging table of its connection and moves to its table with one
//! statement, in one transaction. Parsing a binary row costs PostgreSQL far
//! less than unpacking the same row from `UNNEST` arrays, so big batches take
//! this path; the merge statement keeps whatever guard the caller's upsert
//! has (`WHERE excluded.version > entries.version`).
//!
//! diesel-async cannot run `COPY … FROM STDIN`, so these connections are
//! plain `tokio-postgres` clients in a small pool of their own.

use std::collections::HashMap;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult, Timeouts};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::DbConfig;
use crate::StoreError;

/// How a batch reaches its table through binary `COPY`: the staging table's
/// shape and the statement that merges it.
///
/// The staging table is a temporary table of the connection that writes
/// (`ON COMMIT DELETE ROWS`), created on the connection's first use, so
/// concurrent writers never see each other's rows.
#[derive(Debug)]
pub struct CopyMerge {
    /// Name of the staging table.
    pub stage: &'static str,
    /// Its columns as in `CREATE TABLE` (`key text, version bigint`).
    pub columns: &'static str,
    /// The binary type of each column, in the same order.
    pub types: &'static [Type],
    /// The statement that moves the staged rows to their table, e.g.
    /// `INSERT INTO t SELECT … FROM stage ON CONFLICT … DO UPDATE … WHERE …`.
    pub merge: &'static str,
}

/// A pool of plain PostgreSQL clients for [`CopyMerge`] writes.
pub(super) type BulkPool = managed::Pool<BulkManager>;

/// One bulk-write connection and, per staging table it has created, the
/// prepared `COPY` into it and the merge-and-commit text.
pub(super) struct BulkConnection {
    client: Client,
    staged: HashMap<&'static str, (Statement, String)>,
    /// Set while a batch's transaction is open: a connection whose batch was
    /// cancelled half-way is closed, never handed out mid-transaction.
    busy: bool,
}

pub(super) struct BulkManager {
    config: tokio_postgres::Config,
}

impl managed::Manager for BulkManager {
    type Type = BulkConnection;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<BulkConnection, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // The connection's driver ends when the client is dropped (and with
        // it the pooled object), as diesel-async's own connections do.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "bulk-write connection ended");
            }
        });
        Ok(BulkConnection { client, staged: HashMap::new(), busy: false })
    }

    async fn recycle(&self, conn: &mut BulkConnection, _: &Metrics) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() || conn.busy {
            return Err(RecycleError::message("bulk-write connection closed or left mid-batch"));
        }
        Ok(())
    }
}

/// Bulk connections beside the main pool: a quarter of its size, at least
/// one (the flushers that use them write one batch at a time each).
pub(super) fn build_bulk_pool(config: tokio_postgres::Config, db: &DbConfig) -> Result<BulkPool, StoreError> {
    managed::Pool::builder(BulkManager { config })
        .max_size((db.max_connections / 4).max(1))
        .timeouts(Timeouts {
            wait: Some(db.acquire_timeout),
            create: Some(db.acquire_timeout),
            recycle: Some(db.acquire_timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|err| StoreError::Pool(err.to_string()))
}

/// Writes `items` (each turned into one row by `row`) through `plan` in one
/// transaction: nothing of the batch is visible unless all of it merged.
pub(super) async fn copy_merge<T, const N: usize>(
    pool: &BulkPool,
    plan: &CopyMerge,
    items: &[T],
    row: impl Fn(&T) -> [&(dyn ToSql + Sync); N],
) -> Result<(), StoreError> {
    let mut conn = pool.get().await.map_err(|err| match err {
        managed::PoolError::Backend(err) => StoreError::Postgres(err),
        other => StoreError::Pool(other.to_string()),
    })?;
    let conn = &mut *conn;
    if !conn.staged.contains_key(plan.stage) {
        let create =
            format!("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS", plan.stage, plan.columns);
        conn.client.batch_execute(&create).await?;
        let copy = conn.client.prepare(&format!("COPY {} FROM STDIN (FORMAT binary)", plan.stage)).await?;
        conn.staged.insert(plan.stage, (copy, format!("{}; COMMIT", plan.merge)));
    }
    conn.busy = true;
    let BulkConnection { client, staged, .. } = &*conn;
    let written = match staged.get(plan.stage) {
        Some((copy, merge)) => write_batch(client, copy, merge, plan.types, items, row).await,
        None => Err(StoreError::Pool(format!("staging table {} not prepared", plan.stage))),
    };
    if written.is_err() && conn.client.batch_execute("ROLLBACK").await.is_err() {
        return written; // the connection is gone; recycling drops it
    }
    conn.busy = false;
    written
}

/// Three round trips: `BEGIN` pipelined with the start of the `COPY`, the
/// rows, then the merge and `COMMIT` in one query (a failing merge skips
/// the `COMMIT`; the caller rolls back).
async fn write_batch<T, const N: usize>(
    client: &Client,
    copy: &Statement,
    merge_and_commit: &str,
    types: &[Type],
    items: &[T],
    row: impl Fn(&T) -> [&(dyn ToSql + Sync); N],
) -> Result<(), StoreError> {
    // Requests go out in the order they are first polled: BEGIN, then COPY.
    let (begun, sink) = tokio::join!(client.batch_execute("BEGIN"), client.copy_in::<_, bytes::Bytes>(copy));
    begun?;
    let writer = BinaryCopyInWriter::new(sink?, types);
    pin_mut!(writer);
    for item in items {
        writer.as_mut().write(&row(item)).await?;
    }
    writer.finish().await?;
    client.batch_execute(merge_and_commit).await?;
    Ok(())
}
