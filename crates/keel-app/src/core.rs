//! The pieces every component of a process is built from.

use keel_core::Shutdown;
use keel_store::{Bus, Cache, Database, RedisStore};
use keel_telemetry::Telemetry;

use crate::Role;
use crate::config::{CommonArgs, FileConfig};

/// Configuration, storage and shutdown, shared by the start-up steps.
#[derive(Clone)]
pub(crate) struct Core {
    pub(crate) role: Role,
    pub(crate) args: CommonArgs,
    pub(crate) file: FileConfig,
    pub(crate) instance_id: String,
    pub(crate) telemetry: Telemetry,
    pub(crate) database: Database,
    pub(crate) redis: Option<RedisStore>,
    pub(crate) cache: Cache,
    pub(crate) bus: Bus,
    pub(crate) shutdown: Shutdown,
    /// The entries queue's local write-ahead log (an api without Redis).
    pub(crate) local_log: Option<keel_write_behind::LocalLog>,
}

impl Core {
    /// The meter the functional crates record into.
    pub(crate) fn meter(&self) -> keel_telemetry::Meter {
        self.telemetry.meter("keel")
    }
}
