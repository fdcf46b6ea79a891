//! One write of an entry, as the queue, the stream and the table take it.

use keel_write_behind::Keyed;
use serde::{Deserialize, Serialize};

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
