use std::fmt;

/// Whether a failed write may succeed if tried again unchanged.
///
/// Queues and batchers decide with it what to do with a failed write:
/// a transient failure (the store is unreachable or busy) is retried as a
/// whole for as long as it lasts and never counts against an item; a
/// permanent failure (the store refuses the data) is narrowed down to the
/// items that cause it, and only those are given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The store is unreachable or busy: connection refused, reset or
    /// closed, pool timeout, administrator shutdown, serialization failure,
    /// deadlock, read-only transaction.
    Transient,
    /// The store refused the data: invalid text, constraint violation,
    /// value too large.
    Permanent,
}

impl FailureKind {
    /// `transient` or `permanent`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
        }
    }

    /// Whether this is [`FailureKind::Transient`].
    pub const fn is_transient(self) -> bool {
        matches!(self, FailureKind::Transient)
    }
}

/// A failed write, and whether trying it again unchanged may help: what a
/// write-behind repository or a batcher sink answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// Transient (the store is unreachable or busy: the batch waits and is
    /// tried again whole) or permanent (the data is refused: the batch is
    /// split to find the items that cause it).
    pub kind: FailureKind,
    /// What the store said.
    pub message: String,
}

impl WriteError {
    /// The store is unreachable or busy.
    pub fn transient(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Transient, message: message.into() }
    }

    /// The store refused the data.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: FailureKind::Permanent, message: message.into() }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
