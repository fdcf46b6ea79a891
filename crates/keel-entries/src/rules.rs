//! What an entry may be: the key syntax, the value's size and bytes. Checked
//! by the service on every write, so a Rust caller and an HTTP client meet
//! the same rules, and nothing PostgreSQL would refuse is ever queued.

use std::time::Duration;

use serde_json::Value;

/// Longest key, in bytes.
pub const MAX_ENTRY_KEY: usize = 256;
/// Largest value, in bytes of JSON.
pub const MAX_ENTRY_VALUE: usize = 64 * 1024;

/// Why an entry operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The key breaks the key rules; the message says which.
    #[error("invalid key {0}: use 1-{MAX_ENTRY_KEY} bytes of [A-Za-z0-9_.:/-]")]
    InvalidKey(String),
    /// The value is larger than [`MAX_ENTRY_VALUE`] bytes of JSON.
    #[error("{0} bytes; values are at most {MAX_ENTRY_VALUE}")]
    TooLarge(usize),
    /// The value is not JSON (from [`Entries::put_json`](crate::Entries::put_json)).
    #[error("the value is not JSON: {0}")]
    Unparsable(String),
    /// A string or object key in the value holds U+0000, which cannot be
    /// stored; the path names the first (`value.tags[2]`).
    #[error("{0} contains U+0000, which cannot be stored")]
    Nul(String),
    /// The queue stayed full for the whole enqueue timeout.
    #[error("the write queue is full (waited {}ms); retry later", .0.as_millis())]
    Full(Duration),
    /// The process is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// A store did not answer; `retry` says whether retrying soon may help.
    #[error("{message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// Whether the caller should retry soon.
        retry: bool,
    },
    /// A bug: the write could not even be encoded or run.
    #[error("{0}")]
    Internal(String),
}

/// `key` if it is 1–256 bytes of `[A-Za-z0-9_.:/-]`.
///
/// ```
/// use keel_entries::{EntryError, check_key};
///
/// assert_eq!(check_key("users/42:profile"), Ok(()));
/// assert!(matches!(check_key("has space"), Err(EntryError::InvalidKey(_))));
/// ```
pub fn check_key(key: &str) -> Result<(), EntryError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_ENTRY_KEY
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'));
    if ok { Ok(()) } else { Err(EntryError::InvalidKey(key.to_owned())) }
}

/// `value` if it holds no U+0000 and its compact JSON is at most
/// [`MAX_ENTRY_VALUE`] bytes.
///
/// ```
/// use keel_entries::{EntryError, MAX_ENTRY_VALUE, check_value};
/// use serde_json::json;
///
/// assert_eq!(check_value(&json!({"plan": "pro"})), Ok(()));
/// assert_eq!(check_value(&json!({"a": "x\u{0}"})), Err(EntryError::Nul("value.a".into())));
/// let big = json!("x".repeat(MAX_ENTRY_VALUE));
/// assert_eq!(check_value(&big), Err(EntryError::TooLarge(MAX_ENTRY_VALUE + 2)));
/// ```
pub fn check_value(value: &Value) -> Result<(), EntryError> {
    let mut size = Counted(0);
    serde_json::to_writer(&mut size, value).map_err(|err| EntryError::Internal(err.to_string()))?;
    if size.0 > MAX_ENTRY_VALUE {
        return Err(EntryError::TooLarge(size.0));
    }
    check_stored(value)
}

/// The value in `json` (at most [`MAX_ENTRY_VALUE`] bytes, JSON, no U+0000).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn parse_value(json: &[u8]) -> Result<Value, EntryError> {
    if json.len() > MAX_ENTRY_VALUE {
        return Err(EntryError::TooLarge(json.len()));
    }
    let value = serde_json::from_slice(json).map_err(|err| EntryError::Unparsable(err.to_string()))?;
    check_stored(&value)?;
    Ok(value)
}

fn check_stored(value: &Value) -> Result<(), EntryError> {
    match keel_core::nul_path(value, "value") {
        Some(path) => Err(EntryError::Nul(path)),
        None => Ok(()),
    }
}

/// Counts the bytes written, keeping none.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_follow_the_key_rules() {
        for ok in ["a", "users/42:profile", "a.b_c-d", &"k".repeat(MAX_ENTRY_KEY)] {
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        for bad in ["", "has space", "é", &"k".repeat(MAX_ENTRY_KEY + 1)] {
            assert!(matches!(check_key(bad), Err(EntryError::InvalidKey(_))), "{bad}");
        }
    }

    #[test]
    fn a_value_at_the_limit_is_taken_and_one_byte_more_is_not() {
        // A JSON string of n bytes is n - 2 characters between its quotes.
        let at_limit = json!("x".repeat(MAX_ENTRY_VALUE - 2));
        assert_eq!(check_value(&at_limit), Ok(()));
        assert_eq!(parse_value(at_limit.to_string().as_bytes()), Ok(at_limit.clone()));
        let over = json!("x".repeat(MAX_ENTRY_VALUE - 1));
        assert_eq!(check_value(&over), Err(EntryError::TooLarge(MAX_ENTRY_VALUE + 1)));
        assert_eq!(parse_value(over.to_string().as_bytes()), Err(EntryError::TooLarge(MAX_ENTRY_VALUE + 1)));
    }

    #[test]
    fn json_that_cannot_be_stored_is_refused_with_its_reason() {
        assert!(matches!(parse_value(b"{not json"), Err(EntryError::Unparsable(_))));
        assert_eq!(parse_value(br#"{"a":["ok","\u0000"]}"#), Err(EntryError::Nul("value.a[1]".into())));
        assert_eq!(parse_value(br#"{"a":"\\u0000"}"#), Ok(json!({"a": "\\u0000"})));
    }
}
