//! What a process is and where its data lives.

use std::fmt;

/// Embedded (one process, SQLite, in-process cache) or cluster (PostgreSQL
/// and/or Redis shared by replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// No `DATABASE_URL` and no `REDIS_URL`.
    Embedded,
    /// At least one of them is set.
    Cluster,
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunMode::Embedded => "embedded",
            RunMode::Cluster => "cluster",
        })
    }
}

/// What a process is for: it decides what the process starts and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The public API (and, embedded, the worker's duties in-process).
    Api,
    /// The durable consumers, settings follower, stats collector; serves only
    /// `/livez`, `/readyz`, `/status` and `/metrics`.
    Worker,
}

impl Role {
    /// The process name: `api` or `worker` (log lines, metrics, stats).
    pub fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }

    /// What the start-up line says the address is for.
    pub(crate) fn announce(self) -> &'static str {
        match self {
            Role::Api => "listening on",
            Role::Worker => "admin endpoints on",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
