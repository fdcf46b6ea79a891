//! A deduplicating write batcher with a sink of your own: `add` never
//! blocks, a repeated key keeps only its newest value, and batches are
//! written at capacity, on an interval and at shutdown. Counters prove
//! nothing was dropped silently.
//!
//! Run it with `cargo run -p keel-batcher --example custom_sink`.
#![allow(clippy::print_stdout, reason = "an example shows its user what happened")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keel_batcher::{BatchSink, Batcher, BatcherConfig, SinkFuture, Stamped};

/// A heartbeat from an agent: the newest one per agent is all that matters.
#[derive(Clone, Debug)]
struct Heartbeat {
    version: String,
    at: SystemTime,
}

impl Stamped for Heartbeat {
    fn stamp(&self) -> SystemTime {
        self.at
    }
}

/// Stands for a table: records each batch it is given.
#[derive(Default)]
struct Table {
    batches: Mutex<Vec<Vec<(String, String)>>>,
}

impl BatchSink<String, Heartbeat> for Table {
    fn write<'a>(&'a self, batch: &'a [(String, Heartbeat)]) -> SinkFuture<'a> {
        let rows = batch.iter().map(|(agent, beat)| (agent.clone(), beat.version.clone())).collect();
        self.batches.lock().expect("table lock").push(rows);
        Box::pin(async { Ok(()) })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let table = Arc::new(Table::default());
    // Defaults: batches of up to 500 keys, flushed every 5 s and at shutdown.
    let config = BatcherConfig::default();
    let batcher = Batcher::start("heartbeats", config, table.clone())?;

    let start = SystemTime::now();
    for round in 0..10u64 {
        for agent in 0..50 {
            let beat = Heartbeat { version: format!("v{round}"), at: start + Duration::from_millis(round) };
            batcher.add(format!("agent-{agent}"), beat)?;
        }
    }
    batcher.shutdown().await;

    let batches = table.batches.lock().expect("table lock");
    let rows: Vec<&(String, String)> = batches.iter().flatten().collect();
    assert_eq!(rows.len(), 50, "one row per agent");
    assert!(rows.iter().all(|(_, version)| version == "v9"), "the newest heartbeat wins");
    let stats = batcher.stats();
    println!("{} batch(es), {} rows; {stats:?}", batches.len(), rows.len());
    assert_eq!(stats.offered, 500);
    Ok(())
}
