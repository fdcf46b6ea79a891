//! Span fields as a JSON object, written straight into the span's buffer.
//!
//! `tracing_subscriber`'s `JsonFields` gathers every field into a map of
//! `serde_json::Value`s and serializes the map: allocations for each span,
//! and every request opens one. This writes the same object in one pass.

use std::fmt::{self, Write as _};

use tracing::{Event, Subscriber};
use tracing_subscriber::field::{RecordFields, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::request_log::{self, RequestLog};

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

/// A JSON event format that also shows the current [`RequestLog`]: a record
/// written outside any `tracing` span while a request is handled gets the
/// `"span"` object the request span would have given it (see
/// [`crate::request_log`]). Every other record is `F`'s own.
#[derive(Debug)]
pub(crate) struct WithRequest<F>(pub(crate) F);

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'writer> FormatFields<'writer> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The span `F` shows, found as it finds it.
        if event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current()).is_some() {
            return self.0.format_event(ctx, writer, event);
        }
        request_log::with_current(|request| {
            let Some(request) = request else {
                return self.0.format_event(ctx, writer, event);
            };
            let mut line = String::new();
            self.0.format_event(ctx, Writer::new(&mut line), event)?;
            match line.strip_suffix("}\n") {
                // The object's last entry is where `F` puts the span.
                Some(object) => {
                    let mut span = JsonObject { out: String::with_capacity(128), empty: true, result: Ok(()) };
                    span.request(request);
                    writeln!(writer, "{object},\"span\":{{{}}}}}", span.out)
                }
                None => writer.write_str(&line),
            }
        })
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

    /// The pairs of the request span: as its fields are stored and read
    /// back through a JSON map, in key order, then its name.
    fn request(&mut self, request: &RequestLog) {
        for (name, value) in
            [("method", request.method()), ("request_id", request.id()), ("uri", request.path()), ("name", "request")]
        {
            self.key(name);
            self.string(value);
        }
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

    /// Lines `records` writes through Keel's JSON layer, without their
    /// timestamps.
    fn lines_of(records: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(crate::logging::json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, records);
        let text = String::from_utf8(buffer.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
            .unwrap_or_default();
        text.lines()
            .map(|line| {
                let _: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
                // As written, so the order of keys is compared too.
                let (_, rest) = line.split_once(",\"level\"").unwrap_or_else(|| panic!("no level: {line}"));
                format!("{{\"level\"{rest}")
            })
            .collect()
    }

    /// A record written while a request is current (no span) is the very
    /// line the request span gave it, escapes included; a span opened inside
    /// the request is still the one shown, and nothing is shown outside.
    #[test]
    fn the_current_request_reads_as_the_request_span() {
        let (method, path, id) = ("PUT", "/api/v1/entries/a\"b\\c\u{7}", "req-9");
        let with_span = lines_of(|| {
            let span = tracing::info_span!("request", method, uri = path, request_id = id);
            span.in_scope(|| tracing::warn!(n = 3u64, "inside"));
        });
        let request = || {
            let uri = http::Uri::builder().path_and_query("/api/v1/entries/a%22b").build().unwrap_or_default();
            RequestLog::new(http::Method::PUT, &uri, http::HeaderValue::from_static("req-9"))
        };
        let with_request = lines_of(|| {
            RequestLog::scope(&mut Some(request()), || tracing::warn!(n = 3u64, "inside"));
        });
        // The path above cannot be a URI: compare on one that can.
        let expected: Vec<String> = with_span.iter().map(|l| l.replace(r#"a\"b\\c\u0007"#, "a%22b")).collect();
        assert_eq!(with_request, expected);
        assert!(
            expected[0].contains(
                r#""span":{"method":"PUT","request_id":"req-9","uri":"/api/v1/entries/a%22b","name":"request"}"#
            ),
            "{expected:?}"
        );

        let nested = lines_of(|| {
            RequestLog::scope(&mut Some(request()), || {
                tracing::info_span!("select", table = "entries").in_scope(|| tracing::info!("in a span"));
                tracing::info!(parent: None, "explicit root");
            });
            tracing::info!("after");
        });
        assert!(nested[0].contains(r#""span":{"table":"entries","name":"select"}"#), "{nested:?}");
        assert!(nested[1].contains(r#""name":"request""#), "{nested:?}");
        assert!(!nested[2].contains("span"), "{nested:?}");
    }

    /// A path or id that needs escaping is escaped in the request object.
    #[test]
    fn the_current_request_is_escaped() {
        let uri = http::Uri::from_static("/a\\b");
        let lines = lines_of(|| {
            let request = RequestLog::new(http::Method::GET, &uri, http::HeaderValue::from_static("q\"\\"));
            RequestLog::scope(&mut Some(request), || tracing::info!("x"));
        });
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap_or_default();
        assert_eq!((line["span"]["request_id"].as_str(), line["span"]["uri"].as_str()), (Some("q\"\\"), Some("/a\\b")));
    }
}
