//! Span fields as a JSON object, written straight into the span's buffer.
//!
//! `tracing_subscriber`'s `JsonFields` gathers every field into a map of
//! `serde_json::Value`s and serializes the map: allocations for each span,
//! and every request opens one. This writes the same object in one pass.

use std::fmt::{self, Write as _};

use tracing_subscriber::field::{RecordFields, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// A field formatter for the JSON log format (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FlatJsonFields;

impl<'writer> FormatFields<'writer> for FlatJsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        // The object is built in a buffer kept by the thread and written
        // whole: the span's own string is then allocated once, at its size.
        thread_local! {
            static BUFFER: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
        }
        let mut out = BUFFER.take();
        out.clear();
        out.push('{');
        let mut visitor = JsonObject { out, empty: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.out.push('}');
        let written = visitor.result.and_then(|()| writer.write_str(&visitor.out));
        if visitor.out.capacity() <= 4096 {
            // A span with huge fields does not pin its buffer.
            BUFFER.set(visitor.out);
        }
        written
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut visitor = JsonObject { out: String::new(), empty: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result?;
        if visitor.empty {
            return Ok(());
        }
        // `current` is `{...}` (or empty): reopen it and append.
        let fields = &mut current.fields;
        if fields.ends_with('}') {
            fields.pop();
            if fields.len() > 1 {
                fields.push(',');
            }
        } else {
            fields.push('{');
        }
        fields.push_str(&visitor.out);
        fields.push('}');
        Ok(())
    }
}

/// The bytes a JSON string cannot hold as they are: `"`, `\` and the
/// control characters.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Collects `"name":value` pairs, comma-separated, after whatever `out`
/// already holds.
struct JsonObject {
    out: String,
    /// No pair written yet.
    empty: bool,
    result: fmt::Result,
}

impl JsonObject {
    fn key(&mut self, name: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.string(name);
        self.out.push(':');
    }

    /// `text` as a JSON string (RFC 8259 escapes), without a temporary.
    fn string(&mut self, text: &str) {
        self.out.push('"');
        if !text.bytes().any(|byte| ESCAPED[usize::from(byte)]) {
            // Nearly every value: nothing to escape.
            self.out.push_str(text);
            self.out.push('"');
            return;
        }
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.out.push_str(&text[plain..at]);
            if escaped.is_empty() {
                // Writing to a String cannot fail.
                let _ = write!(self.out, "\\u{byte:04x}");
            } else {
                self.out.push_str(escaped);
            }
            plain = at + 1;
        }
        self.out.push_str(&text[plain..]);
        self.out.push('"');
    }

    fn raw(&mut self, name: &str, value: impl fmt::Display) {
        self.key(name);
        if write!(self.out, "{value}").is_err() {
            self.result = Err(fmt::Error);
        }
    }
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field.name());
        self.string(value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.key(field.name());
        let mut text = String::new();
        if write!(text, "{value:?}").is_err() {
            self.result = Err(fmt::Error);
        }
        self.string(&text);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.raw(field.name(), value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.raw(field.name(), value);
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.raw(field.name(), value);
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if value.is_finite() {
            self.raw(field.name(), value);
        } else {
            // JSON has no NaN or infinity; serde_json writes null.
            self.raw(field.name(), "null");
        }
    }

    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field.name());
        self.string(&value.to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Span fields, including ones recorded later and ones that need
    /// escaping, reach the JSON log line as one object of typed values.
    #[test]
    fn span_fields_are_one_json_object() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(FlatJsonFields)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                method = %"GET",
                uri = "/a \"quoted\"\npath\u{1}é\\",
                n = 7u64,
                ok = true,
                later = tracing::field::Empty
            );
            span.record("later", -3i64);
            let _entered = span.enter();
            tracing::info!(x = 1.5f64, "inside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
            .unwrap_or_default();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{err}: {text}"));
        let span = &line["span"];
        assert_eq!(span["name"], "request", "{line}");
        assert_eq!(span["method"], "GET", "{line}");
        assert_eq!(span["uri"], "/a \"quoted\"\npath\u{1}é\\", "{line}");
        assert_eq!((span["n"].as_u64(), span["ok"].as_bool(), span["later"].as_i64()), (Some(7), Some(true), Some(-3)));
        assert_eq!(line["x"], 1.5, "{line}");
    }
}
