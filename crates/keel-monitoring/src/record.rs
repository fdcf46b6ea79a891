use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One captured log event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The event's target (module path).
    pub target: String,
    /// The message.
    pub message: String,
    /// `api` or `worker`.
    pub process: String,
    /// The instance that logged it.
    pub instance: String,
    /// Structured fields, as text.
    pub fields: BTreeMap<String, String>,
}

impl LogRecord {
    /// The level as a `tracing` level (`INFO` for anything unknown).
    pub fn tracing_level(&self) -> tracing::Level {
        self.level.parse().unwrap_or(tracing::Level::INFO)
    }
}

/// Replaces known secrets (admin token, database and Redis passwords) with
/// `[redacted]` wherever they would appear in a record. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Arc<Vec<String>>,
}

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

impl Redactor {
    /// A redactor for `secrets` (empty strings are ignored).
    pub fn new<S: Into<String>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().map(Into::into).filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets: Arc::new(secrets) }
    }

    /// The password of a URL such as `postgres://user:password@host/db`.
    pub fn url_password(url: &str) -> Option<String> {
        let rest = url.split_once("://")?.1;
        let userinfo = rest.split_once('@')?.0;
        let password = userinfo.split_once(':')?.1;
        (!password.is_empty()).then(|| password.to_owned())
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        self.redact_in_place(&mut out);
        out
    }

    /// Replaces every secret in `text`, allocating only when one is found.
    fn redact_in_place(&self, text: &mut String) {
        for secret in self.secrets.iter() {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), REDACTED);
            }
        }
    }

    /// Redacts a record in place.
    pub fn apply(&self, record: &mut LogRecord) {
        self.redact_in_place(&mut record.message);
        for value in record.fields.values_mut() {
            self.redact_in_place(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_url_passwords_and_redacts_everywhere() {
        assert_eq!(Redactor::url_password("postgres://keel:pa55@db:5432/keel").as_deref(), Some("pa55"));
        assert_eq!(Redactor::url_password("redis://:r3dis@cache:6379").as_deref(), Some("r3dis"));
        assert_eq!(Redactor::url_password("redis://cache:6379"), None);
        let redactor = Redactor::new(["tok", "token-123", ""]);
        assert_eq!(redactor.redact("bearer token-123 then tok"), "bearer [redacted] then [redacted]");
    }
}
