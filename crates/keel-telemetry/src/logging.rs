use std::io::IsTerminal as _;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layered, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The subscriber that extra layers given to [`init_logging_with`] sit on:
/// the registry behind the live filter, so they see exactly the events and
/// spans the filter lets through.
pub type FilteredRegistry = Layered<LiveFilter, Registry>;

/// The running log filter, replaceable through a [`LogHandle`].
///
/// Filters are `target=level` directives only ([`check_filter`]), which an
/// `EnvFilter` decides per call site once; so, unlike
/// `tracing_subscriber::reload` around an `EnvFilter`, this layer does no work
/// (and takes no lock) when a span is created, entered, exited or closed.
pub struct LiveFilter {
    current: Arc<ArcSwap<EnvFilter>>,
}

impl std::fmt::Debug for LiveFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFilter").finish_non_exhaustive()
    }
}

impl<S: Subscriber> Layer<S> for LiveFilter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        <EnvFilter as Layer<S>>::register_callsite(&self.current.load(), metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        <EnvFilter as Layer<S>>::enabled(&self.current.load(), metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        <EnvFilter as Layer<S>>::max_level_hint(&self.current.load())
    }
}

/// A further layer for [`init_logging_with`] (log capture, trace export).
pub type ExtraLayer = Box<dyn Layer<FilteredRegistry> + Send + Sync>;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when writing to a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// `Pretty` when standard error is a terminal, else `Json`.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() { LogFormat::Pretty } else { LogFormat::Json }
    }
}

impl FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            _ => Err(LoggingError::Format(s.to_owned())),
        }
    }
}

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The format name is not `pretty` or `json`.
    #[error("invalid log format {0:?} (expected pretty or json)")]
    Format(String),
    /// The filter directive does not parse.
    #[error("invalid log filter {directive:?}: {reason}")]
    Filter {
        /// The rejected directive.
        directive: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Changes the running log filter; obtained from [`init_logging`].
#[derive(Clone)]
pub struct LogHandle {
    filter: Arc<ArcSwap<EnvFilter>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// Replaces the filter with `directive` (e.g. `info`, `debug,hyper=warn`).
    pub fn set_filter(&self, directive: &str) -> Result<(), LoggingError> {
        let filter = parse_filter(directive)?;
        self.filter.store(Arc::new(filter));
        // Call sites cache what the filter decided: ask them again.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }
}

/// The levels a filter may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks that `directive` is a valid filter: comma-separated parts, each a
/// level (`trace|debug|info|warn|error|off`) or `target=level`, e.g.
/// `info,keel_store=debug`. Stricter than `EnvFilter`, which takes a bare
/// unknown word (`warning`) as a target and then logs nothing.
pub fn check_filter(directive: &str) -> Result<(), LoggingError> {
    parse_filter(directive).map(|_| ())
}

fn parse_filter(directive: &str) -> Result<EnvFilter, LoggingError> {
    let refuse = |reason: String| {
        // Never echo an outsized directive back whole.
        let shown: String = directive.chars().take(64).collect();
        let shown = if shown.len() < directive.len() { format!("{shown}…") } else { shown };
        LoggingError::Filter { directive: shown, reason }
    };
    if directive.trim().is_empty() {
        return Err(refuse("empty filter".into()));
    }
    for part in directive.split(',').map(str::trim) {
        let (target, level) = match part.rsplit_once('=') {
            Some((target, level)) => (Some(target.trim()), level.trim()),
            None => (None, part),
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            let level: String = level.chars().take(32).collect();
            return Err(refuse(format!("unknown level {level:?} (use trace, debug, info, warn, error or off)")));
        }
        let valid_target = |t: &str| {
            !t.is_empty()
                && t.len() <= 128
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
        };
        if target.is_some_and(|t| !valid_target(t)) {
            return Err(refuse("a target is 1-128 characters of [A-Za-z0-9_:-]".into()));
        }
    }
    EnvFilter::builder().parse(directive).map_err(|err| refuse(err.to_string()))
}

/// Installs the global `tracing` subscriber writing to standard error.
///
/// `directive` is an `EnvFilter` directive such as `info`; `RUST_LOG` is not
/// read here (binaries decide what the environment means).
pub fn init_logging(format: LogFormat, directive: &str) -> Result<LogHandle, LoggingError> {
    init_logging_with(format, directive, Vec::new())
}

/// [`init_logging`] with further layers behind the same live filter, e.g. an
/// operator log capture or a trace exporter.
pub fn init_logging_with(
    format: LogFormat,
    directive: &str,
    extra: Vec<ExtraLayer>,
) -> Result<LogHandle, LoggingError> {
    let current = Arc::new(ArcSwap::from_pointee(parse_filter(directive)?));
    let (filter, handle) = (LiveFilter { current: current.clone() }, current);
    let fmt_layer = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => json_layer(std::io::stderr).boxed(),
    };
    // An empty `Vec` of layers is interested in nothing, which would
    // disable every event and span: no extra layers is no layer.
    let extra = (!extra.is_empty()).then_some(extra);
    tracing_subscriber::registry()
        .with(filter)
        .with(extra)
        .with(fmt_layer)
        .try_init()
        .map_err(|err| LoggingError::AlreadyInitialised(err.to_string()))?;
    // Requests may now show themselves in records without a span of their
    // own (`request_log`).
    crate::request_log::set_json_logging(format == LogFormat::Json);
    Ok(LogHandle { filter: handle })
}

/// The JSON log layer writing to `writer`: flat event fields, the current
/// span (or request) as one object, one line per record.
pub(crate) fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    let format =
        tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(true).with_span_list(false);
    tracing_subscriber::fmt::layer()
        .event_format(crate::json_fields::WithRequest(format))
        .fmt_fields(crate::json_fields::FlatJsonFields)
        .with_writer(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats() {
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("pretty".parse::<LogFormat>().unwrap(), LogFormat::Pretty);
        assert!(matches!("xml".parse::<LogFormat>(), Err(LoggingError::Format(_))));
    }

    #[test]
    fn rejects_bad_filters() {
        assert!(parse_filter("info,keel=debug").is_ok());
        assert!(matches!(parse_filter("info,[=bad"), Err(LoggingError::Filter { .. })));
        for good in ["trace", "OFF", "warn", "info,keel_store=debug", "keel_http::runtime=trace, error"] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in ["warning", "inf", "", "info,keel=loud", "=info", "a b=info", "info,,debug"] {
            assert!(matches!(parse_filter(bad), Err(LoggingError::Filter { .. })), "{bad:?} accepted");
        }
        let huge = "x".repeat(900_000);
        let err = parse_filter(&huge).unwrap_err().to_string();
        assert!(err.len() < 300, "the directive is not echoed whole: {} bytes", err.len());
    }
}
