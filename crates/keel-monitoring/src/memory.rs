use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::capture::{LogSink, SinkFuture};
use crate::{LogQuery, LogRecord};

/// The in-process log ring of embedded mode: the newest `capacity` records
/// per process.
#[derive(Debug)]
pub struct MemoryLogs {
    capacity: usize,
    rings: Mutex<HashMap<String, VecDeque<LogRecord>>>,
}

impl MemoryLogs {
    /// A ring keeping `capacity` records per process.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), rings: Mutex::default() }
    }

    fn rings(&self) -> MutexGuard<'_, HashMap<String, VecDeque<LogRecord>>> {
        // Each operation leaves the rings consistent.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records of `process` that match `query`, newest first.
    pub fn recent(&self, process: &str, query: &LogQuery) -> Vec<LogRecord> {
        let rings = self.rings();
        let Some(ring) = rings.get(process) else { return Vec::new() };
        ring.iter().rev().filter(|r| query.matches(r)).take(query.limit).cloned().collect()
    }

    /// Forgets the records of `process`.
    pub fn clear(&self, process: &str) {
        self.rings().remove(process);
    }
}

impl LogSink for MemoryLogs {
    fn push<'a>(&'a self, records: &'a [LogRecord]) -> SinkFuture<'a> {
        let mut rings = self.rings();
        for record in records {
            let ring = rings.entry(record.process.clone()).or_default();
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(record.clone());
        }
        Box::pin(async { Ok(()) })
    }
}
