//! Command-line and file configuration shared by the `api` and `worker`
//! binaries.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use keel_core::HumanDuration;
use keel_telemetry::LogFormat;
use serde::Deserialize;

/// Exit code for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when a required service cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code for an internal failure (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: u8 = 70;

/// Options common to both binaries. Every flag also reads an environment
/// variable; flags win over the environment, which wins over `--config`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// TOML configuration file (every key optional).
    #[arg(long, env = "KEEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for embedded-mode data (created if missing).
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; unset means embedded SQLite under --data-dir.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL; unset means an in-process cache and bus.
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Bearer token for admin endpoints: at least 16 bytes of letters,
    /// digits and -._~+/ (RFC 6750); unset disables them (403).
    #[arg(long, env = "KEEL_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Accept an admin token shorter than 16 bytes (a warning is logged).
    #[arg(long, env = "KEEL_ALLOW_WEAK_ADMIN_TOKEN")]
    pub allow_weak_admin_token: bool,
    /// Log format: pretty or json (default: pretty on a terminal, else json).
    #[arg(long, env = "KEEL_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `info,keel_store=debug`.
    #[arg(long, env = "KEEL_LOG_LEVEL", value_name = "FILTER", default_value = "info")]
    pub log_level: String,
    /// Identifier of this process in the cluster (default: hostname-pid).
    #[arg(long, env = "KEEL_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Prefix of Redis keys and bus channels, so several deployments can share one Redis.
    #[arg(long, env = "KEEL_NAMESPACE", value_name = "NAME", default_value = "keel")]
    pub namespace: String,
    /// Do not run database migrations at start-up.
    #[arg(long, env = "KEEL_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Longest an entry write waits for room in a full queue before it is
    /// answered 503 with Retry-After (default 2s, or `[write_behind] enqueue_timeout`).
    #[arg(long, env = "KEEL_ENQUEUE_TIMEOUT", value_name = "DURATION")]
    pub enqueue_timeout: Option<HumanDuration>,
    /// Redis Streams the entry writes are spread over, by a stable hash of
    /// the key (1 to 1024; default 1 on one Redis, 16 on a Redis Cluster).
    /// Every api and worker of a deployment must use the same number.
    #[arg(long, env = "KEEL_ENTRIES_PARTITIONS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub entries_partitions: Option<u16>,
    /// Replicas an entry write must reach (Redis WAIT) before it is answered
    /// 202; 503 when that does not happen within the enqueue timeout. With 0,
    /// a master failover can lose the last writes the old master acknowledged.
    #[arg(long, env = "KEEL_ACK_REPLICAS", value_name = "N", default_value_t = 0)]
    pub ack_replicas: u32,
    /// How long to wait for PostgreSQL and Redis at start-up before exiting
    /// 69; 0 waits for as long as it takes (serving /livez, /readyz 503).
    #[arg(long, env = "KEEL_STARTUP_TIMEOUT", value_name = "DURATION", default_value = "0")]
    pub startup_timeout: HumanDuration,
    /// Bytes the in-process cache may hold (e.g. `64MiB`, `1GiB`; at least 1MiB);
    /// least valuable entries are evicted beyond it.
    #[arg(long, env = "KEEL_CACHE_MAX_BYTES", value_name = "SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,
    /// Connections served at once; further ones are closed at once and
    /// counted (`keel_http_connections_refused_total`).
    #[arg(long, env = "KEEL_MAX_CONNECTIONS", value_name = "N", default_value = "10000", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Server-Sent Event streams served at once (each SSE endpoint counts;
    /// also at most 32 per client address); over it 503 with Retry-After
    /// (default 1000, or `[http] max_streams`).
    #[arg(long, env = "KEEL_MAX_STREAMS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: Option<u32>,
    /// A Server-Sent Event stream ends after this long and its client
    /// reconnects (default 1h, or `[http] stream_max_age`).
    #[arg(long, env = "KEEL_STREAM_MAX_AGE", value_name = "DURATION")]
    pub stream_max_age: Option<HumanDuration>,
    /// One budget after SIGTERM for the drain delay, in-flight requests and
    /// every queue and batcher flush (default 10s, or `[http] shutdown_grace`).
    #[arg(long, env = "KEEL_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<HumanDuration>,
    /// The in-process entries queue (no Redis): `fsync` appends each write to
    /// a local write-ahead log under --data-dir and answers 202 only after
    /// fdatasync; `off` keeps the queue in memory, where a crash loses what
    /// it holds (default fsync, or `[write_behind] local_log`).
    #[arg(long, env = "KEEL_LOCAL_LOG", value_name = "MODE")]
    pub local_log: Option<LocalLogMode>,
    /// Bytes the local log may hold (default 1GiB, or `[write_behind]
    /// local_log_max_bytes`); at the bound writes wait --enqueue-timeout,
    /// then 503.
    #[arg(long, env = "KEEL_LOCAL_LOG_MAX_BYTES", value_name = "SIZE", value_parser = parse_bytes)]
    pub local_log_max_bytes: Option<u64>,
}

/// Whether the in-process entries queue is backed by a local write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalLogMode {
    /// Acknowledged after `fdatasync` of the log.
    #[default]
    Fsync,
    /// In memory only: a crash or power loss loses what the queue holds.
    Off,
}

impl std::str::FromStr for LocalLogMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "fsync" => Ok(Self::Fsync),
            "off" => Ok(Self::Off),
            other => Err(format!("expected fsync or off, got {other:?}")),
        }
    }
}

/// `1024`, `512KiB`, `64MiB`, `1GiB` → bytes (at least 1 MiB).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use B, KiB, MiB or GiB)")),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("expected a size such as 64MiB, got {text:?}"))?;
    if bytes < 1 << 20 {
        return Err(format!("{text:?} is below the 1MiB minimum"));
    }
    Ok(bytes)
}

/// The optional TOML file. Unknown keys are errors, so typos do not pass
/// silently.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[app]`.
    #[serde(default)]
    pub app: AppSection,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpSection,
    /// `[health]`: default mode, codes, groups and checks.
    #[serde(default)]
    pub health: keel_health_status::HealthConfig,
    /// `[write_behind]`.
    #[serde(default)]
    pub write_behind: WriteBehindSection,
    /// `[monitoring]`.
    #[serde(default)]
    pub monitoring: MonitoringSection,
    /// `[settings]`.
    #[serde(default)]
    pub settings: SettingsSection,
}

/// `[settings]` keys: how the built-in settings documents stay current.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSection {
    /// The fallback poll for a missed invalidation (default `5m`, ±10 %).
    pub poll_interval: Option<HumanDuration>,
    /// The poll while the last refresh could not confirm the held version
    /// (default `5s`).
    pub retry_interval: Option<HumanDuration>,
    /// The longest a timed value (`PUT …?revert_after=`) may last (default
    /// `24h`).
    pub max_revert_after: Option<HumanDuration>,
}

/// `[monitoring]` keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSection {
    /// How often the stats document is published (default `5s`); it lives
    /// for three intervals.
    pub stats_interval: Option<HumanDuration>,
    /// Captured records kept per process (default 1000).
    pub log_cap: Option<usize>,
    /// Captured records buffered before they are stored; more are dropped
    /// and counted (default 10000).
    pub buffer: Option<usize>,
}

/// `[write_behind]` keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBehindSection {
    /// The `entries` health component turns KO once the repository has
    /// failed this long without a success (default `60s`).
    pub ko_after: Option<HumanDuration>,
    /// Longest an entry write waits for room in a full queue (default `2s`);
    /// `--enqueue-timeout` wins.
    pub enqueue_timeout: Option<HumanDuration>,
    /// `fsync` (default) or `off`; `--local-log` wins.
    pub local_log: Option<LocalLogMode>,
    /// The local log's bound, e.g. `"1GiB"`; `--local-log-max-bytes` wins.
    pub local_log_max_bytes: Option<String>,
}

impl CommonArgs {
    /// The local log's mode and bound, flags first, then the file.
    pub fn local_log(&self, file: &FileConfig) -> Result<(LocalLogMode, u64), ConfigError> {
        let mode = self.local_log.or(file.write_behind.local_log).unwrap_or_default();
        let max_bytes = match (self.local_log_max_bytes, &file.write_behind.local_log_max_bytes) {
            (Some(bytes), _) => bytes,
            (None, Some(text)) => parse_bytes(text)
                .map_err(|reason| ConfigError::Invalid { key: "write_behind.local_log_max_bytes", reason })?,
            (None, None) => 1 << 30,
        };
        Ok((mode, max_bytes))
    }
}

/// `[app]` keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    /// The name shown by `/status` (default: the binary's name).
    pub name: Option<String>,
}

/// `[http]` keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Requests running longer are answered 503 (default `30s`).
    pub request_timeout: Option<HumanDuration>,
    /// Largest accepted request body in bytes (default 1 MiB).
    pub body_limit: Option<usize>,
    /// One budget after shutdown starts for the drain delay, in-flight
    /// requests and every flush (default `10s`; `--shutdown-grace` wins).
    pub shutdown_grace: Option<HumanDuration>,
    /// Time `/readyz` reports 503 before the listener closes (default `0s`).
    pub drain_delay: Option<HumanDuration>,
    /// Longest wait for a request's line and headers (default `10s`).
    pub header_read_timeout: Option<HumanDuration>,
    /// Longest idle time of a keep-alive connection (default `60s`).
    pub keep_alive_idle: Option<HumanDuration>,
    /// Server-Sent Event streams served at once (default 1000);
    /// `--max-streams` wins.
    pub max_streams: Option<u32>,
    /// Streams one client address may hold (default 32).
    pub streams_per_client: Option<u32>,
    /// A stream ends after this long (default `1h`); `--stream-max-age` wins.
    pub stream_max_age: Option<HumanDuration>,
}

/// Invalid configuration; binaries exit with [`EXIT_CONFIG`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, on one line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

impl FileConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text; the error is a one-line message naming the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|err| one_line(err.message()))?;
        if config.http.body_limit == Some(0) {
            return Err("http.body_limit: must be greater than 0".into());
        }
        if config.http.request_timeout.is_some_and(|t| t.get().is_zero()) {
            return Err("http.request_timeout: must be greater than 0".into());
        }
        if config.monitoring.stats_interval.is_some_and(|t| t.get() < std::time::Duration::from_millis(100)) {
            return Err("monitoring.stats_interval: must be at least 100ms".into());
        }
        for (key, value) in
            [("poll_interval", config.settings.poll_interval), ("retry_interval", config.settings.retry_interval)]
        {
            if value.is_some_and(|t| t.get() < std::time::Duration::from_millis(100)) {
                return Err(format!("settings.{key}: must be at least 100ms"));
            }
        }
        if config.settings.max_revert_after.is_some_and(|t| t.get() < std::time::Duration::from_secs(1)) {
            return Err("settings.max_revert_after: must be at least 1s".into());
        }
        for (key, value) in [("log_cap", config.monitoring.log_cap), ("buffer", config.monitoring.buffer)] {
            if value == Some(0) {
                return Err(format!("monitoring.{key}: must be greater than 0"));
            }
        }
        config.health.validate().map_err(|err| err.to_string())?;
        Ok(config)
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses the process arguments. Help and version print and exit 0; any
/// other error prints one line naming the bad flag and returns exit code 64.
pub fn parse_args<A: Parser>() -> Result<A, ExitCode> {
    parse_from(std::env::args_os())
}

/// [`parse_args`] over explicit arguments (for tests).
pub fn parse_from<A: Parser, I, T>(args: I) -> Result<A, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match A::try_parse_from(args) {
        Ok(args) => Ok(args),
        Err(err)
            if matches!(err.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) =>
        {
            let _ = err.print();
            Err(ExitCode::SUCCESS)
        }
        Err(err) => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let bin = A::command().get_name().to_owned();
            eprintln!("{bin}: {}", first.trim_start_matches("error: "));
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "t")]
    struct Args {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn parses_defaults_and_rejects_bad_values() {
        let args: Args = parse_from(["t"]).unwrap();
        assert_eq!(args.common.data_dir, PathBuf::from("./data"));
        assert_eq!(args.common.log_level, "info");
        assert_eq!(args.common.cache_max_bytes, 64 << 20, "64MiB by default");
        assert_eq!(args.common.startup_timeout.get(), std::time::Duration::ZERO);
        assert_eq!(args.common.enqueue_timeout, None, "2s, applied where the file can override it");
        assert!(parse_from::<Args, _, _>(["t", "--listen", "nope"]).is_err());
        for (text, bytes) in [("1MiB", 1 << 20), ("1024KiB", 1 << 20), ("2GiB", 2 << 30), ("1048576", 1 << 20)] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "64MB", "-1MiB", "512KiB", "99999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(parse_from::<Args, _, _>(["t", "--log-format", "xml"]).is_err());
        let args: Args = parse_from(["t", "--log-format", "json", "--no-migrate"]).unwrap();
        assert_eq!(args.common.log_format, Some(LogFormat::Json));
        assert!(args.common.no_migrate);
    }

    #[test]
    fn file_config_is_strict_and_one_line() {
        let ok = FileConfig::parse(
            "[app]\nname = \"x\"\n[http]\nrequest_timeout = \"2s\"\n[health]\ndefault_mode = \"should\"\n",
        )
        .unwrap();
        assert_eq!(ok.app.name.as_deref(), Some("x"));
        assert_eq!(ok.health.default_mode, keel_health_status::Mode::Should);
        assert_eq!(ok.http.request_timeout.unwrap().get(), std::time::Duration::from_secs(2));

        let err = FileConfig::parse("[app]\nnmae = \"x\"\n").unwrap_err();
        assert!(err.contains("nmae") && !err.contains('\n'), "{err}");
        let err = FileConfig::parse("[http]\nrequest_timeout = \"soon\"\n").unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
        let err = FileConfig::parse("[monitoring]\nlog_cap = 0\n").unwrap_err();
        assert!(err.starts_with("monitoring.log_cap"), "{err}");
        let err = FileConfig::parse("[settings]\npoll_interval = \"0s\"\n").unwrap_err();
        assert!(err.starts_with("settings.poll_interval"), "{err}");
        let err = FileConfig::parse("[settings]\nretry_interval = \"10ms\"\n").unwrap_err();
        assert!(err.starts_with("settings.retry_interval"), "{err}");
        let err = FileConfig::parse("[settings]\nmax_revert_after = \"500ms\"\n").unwrap_err();
        assert!(err.starts_with("settings.max_revert_after"), "{err}");
        let parsed = FileConfig::parse("[settings]\npoll_interval = \"15s\"\nretry_interval = \"1s\"\n").unwrap();
        assert_eq!(parsed.settings.poll_interval.map(HumanDuration::get), Some(std::time::Duration::from_secs(15)));
        let err = FileConfig::parse("[monitoring]\nstats_interval = \"1ms\"\n").unwrap_err();
        assert!(err.starts_with("monitoring.stats_interval"), "{err}");
        let err = FileConfig::parse("[http]\nbody_limit = 0\n").unwrap_err();
        assert!(err.starts_with("http.body_limit"), "{err}");
        let err = FileConfig::parse("[[health.groups]]\nname = \"g\"\nmode = \"must\"\ncomponents = []\n").unwrap_err();
        assert!(err.contains("no components"), "{err}");
    }
}
