//! A write-behind queue in front of a repository of your own: callers are
//! answered once their item is queued, a background task writes batches,
//! retries what fails transiently, dead-letters what the repository refuses,
//! and shutdown drains everything that was accepted.
//!
//! Run it with `cargo run -p keel-write-behind --example queue`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use keel_write_behind::{
    DeadLetter, DeadLetters, Keyed, RepoError, RepoFuture, Repository, WriteBehind, WriteBehindConfig,
};

#[derive(Clone, Debug)]
struct Order {
    id: u32,
    total_cents: u64,
}

impl Keyed for Order {
    type Key = u32;
    fn key(&self) -> u32 {
        self.id
    }
}

/// Stands for a table whose first write fails, as a database restarting would.
#[derive(Default)]
struct Orders {
    rows: Mutex<Vec<Order>>,
    attempts: AtomicU32,
    dead: Mutex<Vec<u32>>,
}

impl Repository<Order> for Orders {
    fn upsert_many<'a>(&'a self, items: &'a [Order]) -> RepoFuture<'a> {
        let first = self.attempts.fetch_add(1, Ordering::Relaxed) == 0;
        Box::pin(async move {
            if first {
                return Err(RepoError::transient("connection reset"));
            }
            self.rows.lock().expect("rows lock").extend_from_slice(items);
            Ok(())
        })
    }
}

impl DeadLetters<Order> for Orders {
    fn store<'a>(&'a self, letters: &'a [DeadLetter<Order>]) -> RepoFuture<'a> {
        self.dead.lock().expect("dead lock").extend(letters.iter().map(|l| l.item.id));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orders = Arc::new(Orders::default());
    let queue = WriteBehind::start(WriteBehindConfig::default(), orders.clone(), orders.clone())?;
    for id in 0..1_000 {
        queue.enqueue(Order { id, total_cents: u64::from(id) * 100 }).await?;
    }
    queue.shutdown().await;

    let metrics = queue.metrics();
    let rows = orders.rows.lock().expect("rows lock");
    println!("{} rows written after {} attempt(s); {metrics:?}", rows.len(), orders.attempts.load(Ordering::Relaxed));
    assert_eq!(rows.len(), 1_000, "nothing accepted is lost");
    assert_eq!(rows.iter().map(|o| o.total_cents).sum::<u64>(), 100 * 999 * 1_000 / 2);
    assert_eq!(metrics.persisted, 1_000);
    assert!(orders.dead.lock().expect("dead lock").is_empty());
    Ok(())
}
