//! What a change may say about itself: who made it, and how much history a
//! reader may ask for. Checked here for every caller, not at the HTTP edge.

use crate::StoreError;

/// The longest actor name a change records, in bytes.
pub const MAX_ACTOR: usize = 128;
/// Who a change is recorded as when its caller names nobody, or a name
/// longer than [`MAX_ACTOR`].
pub const DEFAULT_ACTOR: &str = "admin";
/// The most changes one history read returns.
pub const MAX_HISTORY: usize = 1000;
/// How many changes a history read returns when it does not say.
pub const DEFAULT_HISTORY: usize = 50;

/// The actor a change is recorded as: `given` trimmed, or
/// [`DEFAULT_ACTOR`] when that is empty or longer than [`MAX_ACTOR`].
///
/// ```
/// use keel_settings_sync::actor;
///
/// assert_eq!(actor(" ops-bot "), "ops-bot");
/// assert_eq!(actor(""), "admin");
/// assert_eq!(actor(&"x".repeat(129)), "admin");
/// ```
pub fn actor(given: &str) -> &str {
    let trimmed = given.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_ACTOR { DEFAULT_ACTOR } else { trimmed }
}

/// Why a history read was refused.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The limit is not from 1 to [`MAX_HISTORY`].
    #[error("limit {0}: expected 1 to {MAX_HISTORY}")]
    Limit(usize),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `limit` ([`DEFAULT_HISTORY`] when `None`) if it is from 1 to [`MAX_HISTORY`].
pub(crate) fn history_limit(limit: Option<usize>) -> Result<usize, HistoryError> {
    let limit = limit.unwrap_or(DEFAULT_HISTORY);
    if (1..=MAX_HISTORY).contains(&limit) { Ok(limit) } else { Err(HistoryError::Limit(limit)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_limit_is_one_to_the_maximum_and_defaults() {
        assert_eq!(history_limit(None).unwrap(), DEFAULT_HISTORY);
        assert_eq!(history_limit(Some(1)).unwrap(), 1);
        assert_eq!(history_limit(Some(MAX_HISTORY)).unwrap(), MAX_HISTORY);
        assert!(matches!(history_limit(Some(0)), Err(HistoryError::Limit(0))));
        assert!(matches!(history_limit(Some(MAX_HISTORY + 1)), Err(HistoryError::Limit(_))));
    }

    #[test]
    fn an_actor_is_trimmed_and_a_name_too_long_is_the_default() {
        assert_eq!(actor(&"x".repeat(MAX_ACTOR)), "x".repeat(MAX_ACTOR));
        assert_eq!(actor("   "), DEFAULT_ACTOR);
    }
}
