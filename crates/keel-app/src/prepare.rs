//! What a process sets up before it reaches anything over the network:
//! logging and capture, the admin token, the local log, the stream and
//! drain limits.

use std::time::Duration;

use keel_http::{AdminToken, DrainConfig};
use keel_monitoring::{Capture, CaptureConfig, Records, Redactor};
use keel_telemetry::{LogFormat, LogHandle, Telemetry};

use crate::config::{CommonArgs, ConfigError, FileConfig};
use crate::{Role, StartError};

/// How logging and capture were set up.
pub(crate) struct Logging {
    pub(crate) capture: Capture,
    pub(crate) captured: Records,
    pub(crate) log: LogHandle,
    #[cfg(feature = "otlp")]
    pub(crate) trace_export: Option<std::sync::Arc<keel_telemetry::TraceExport>>,
}

/// Capture starts before anything logs, so start-up lines are kept too;
/// the settings document switches it once it is loaded.
pub(crate) fn start_logging(
    role: Role,
    args: &CommonArgs,
    file: &FileConfig,
    instance_id: &str,
) -> Result<Logging, StartError> {
    let urls = [non_empty(args.database_url.as_deref()), non_empty(args.redis_url.as_deref())];
    let secrets = urls.into_iter().flatten().filter_map(Redactor::url_password);
    let redactor = Redactor::new(args.admin_token.iter().cloned().chain(secrets));
    let capture_config = CaptureConfig {
        buffer: file.monitoring.buffer.unwrap_or(10_000),
        ..CaptureConfig::new(role.name(), instance_id.to_owned())
    };
    let (capture, captured) = Capture::new(capture_config, redactor);
    let format = args.log_format.unwrap_or_else(LogFormat::detect);
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut layers: Vec<keel_telemetry::ExtraLayer> = vec![Box::new(capture.layer())];
    #[cfg(feature = "otlp")]
    let trace_export = match keel_telemetry::otlp_layer(role.name())? {
        Some((layer, export)) => {
            layers.push(layer);
            Some(std::sync::Arc::new(export))
        }
        None => None,
    };
    keel_telemetry::check_filter(&args.log_level)
        .map_err(|err| ConfigError::Invalid { key: "--log-level", reason: err.to_string() })?;
    let log = keel_telemetry::init_logging_with(format, &args.log_level, layers)?;
    Ok(Logging {
        capture,
        captured,
        log,
        #[cfg(feature = "otlp")]
        trace_export,
    })
}

/// The configured admin token, checked (`keel_http::AdminToken::parse`):
/// one that could never authenticate, or that is too short to resist
/// guessing, stops the start-up with one line saying why.
pub(crate) fn admin_token(args: &CommonArgs) -> Result<Option<AdminToken>, ConfigError> {
    let Some(token) = args.admin_token.as_deref().filter(|t| !t.is_empty()) else { return Ok(None) };
    let token = AdminToken::parse(token, args.allow_weak_admin_token)
        .map_err(|why| ConfigError::Invalid { key: "--admin-token", reason: format!("KEEL_ADMIN_TOKEN {why}") })?;
    Ok(Some(token))
}

/// The entries queue's local write-ahead log under `--data-dir`, locked for
/// this process and recovered; `None` with `--local-log off`. Another
/// process holding it is a configuration error (exit 64).
pub(crate) fn open_local_log(
    args: &CommonArgs,
    file: &FileConfig,
) -> Result<Option<keel_write_behind::LocalLog>, StartError> {
    let (mode, max_bytes) = args.local_log(file)?;
    if mode == crate::config::LocalLogMode::Off {
        tracing::warn!("--local-log off: acknowledged entry writes live in memory until persisted; a crash loses them");
        return Ok(None);
    }
    let config = keel_write_behind::LocalLogConfig {
        max_bytes,
        ..keel_write_behind::LocalLogConfig::new(args.data_dir.join("entries-log"))
    };
    match keel_write_behind::LocalLog::open(config) {
        Ok(log) => Ok(Some(log)),
        Err(err @ keel_write_behind::LocalLogError::Locked(_)) => {
            Err(ConfigError::Invalid { key: "--data-dir", reason: err.to_string() }.into())
        }
        Err(err) => Err(StartError::WriteBehind(err.to_string())),
    }
}

/// The stream limits from `--max-streams`, `--stream-max-age` and `[http]`,
/// counted on the process's meter.
pub(crate) fn stream_gate(args: &CommonArgs, file: &FileConfig, telemetry: &Telemetry) -> keel_http::StreamGate {
    let defaults = keel_http::StreamLimits::default();
    let http = &file.http;
    let gate = keel_http::StreamGate::new(keel_http::StreamLimits {
        max_streams: args.max_streams.or(http.max_streams).map_or(defaults.max_streams, |n| n as usize),
        per_client: http.streams_per_client.map_or(defaults.per_client, |n| n.max(1) as usize),
        max_age: args.stream_max_age.or(http.stream_max_age).map_or(defaults.max_age, Duration::from),
    });
    gate.instrument(telemetry);
    gate
}

pub(crate) fn drain_config(file: &FileConfig, args: &CommonArgs) -> DrainConfig {
    let defaults = DrainConfig::default();
    DrainConfig {
        drain_delay: file.http.drain_delay.map_or(defaults.drain_delay, Duration::from),
        grace: args.shutdown_grace.or(file.http.shutdown_grace).map_or(defaults.grace, Duration::from),
    }
}

pub(crate) fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}
