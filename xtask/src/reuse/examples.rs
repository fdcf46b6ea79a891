//! Every library crate's example: what it needs, the budgets its
//! dependency trees are held to, and what it must not pull in.

use super::*;

pub(super) const TOKIO_MAIN: &str =
    r#"tokio = { version = "1", default-features = false, features = ["rt", "macros"] }"#;
pub(super) const TOKIO_NET: &str =
    r#"tokio = { version = "1", default-features = false, features = ["rt", "macros", "net", "io-util"] }"#;
pub(super) const AXUM: &str = r#"axum = { version = "0.8", default-features = false, features = ["http1", "tokio"] }"#;
pub(super) const BYTES: &str = r#"bytes = "1""#;
pub(super) const SERDE: &str = r#"serde = { version = "1", features = ["derive"] }"#;
pub(super) const SERDE_JSON: &str = r#"serde_json = "1""#;
pub(super) const OTEL: &str =
    r#"opentelemetry = { version = "0.33", default-features = false, features = ["metrics"] }"#;
pub(super) const TRACING: &str = r#"tracing = "0.1""#;
pub(super) const SUBSCRIBER: &str =
    r#"tracing-subscriber = { version = "0.3", default-features = false, features = ["std", "registry"] }"#;

/// Lower layers, as a user adding one crate next to another would write them.
pub(super) const TELEMETRY: &str = "keel-telemetry+prometheus";
pub(super) const STORE_SQLITE: &str = "keel-store+sqlite";
pub(super) const CORE: &str = "keel-core";
pub(super) const HEALTH: &str = "keel-health-status";

/// What no crate's minimal feature set may pull in: databases, Redis, an
/// HTTP server or client, exporters.
pub(super) const HEAVY: &[&str] = &[
    "diesel",
    "diesel-async",
    "tokio-postgres",
    "libsqlite3-sys",
    "fred",
    "axum",
    "hyper",
    "reqwest",
    "opentelemetry-prometheus",
    "opentelemetry-otlp",
    "prometheus",
];
/// No async runtime other than tokio.
pub(super) const RUNTIMES: &[&str] = &["async-std", "smol", "async-global-executor"];

/// Every library crate's example. Budgets: the tree measured when they were
/// set, plus about 10 % (see `docs/reuse.md`). With no features, no crate
/// but keel-http (an HTTP adapter by nature) pulls in anything [`HEAVY`].
pub const EXAMPLES: &[Example] = &[
    Example {
        krate: "keel-core",
        name: "shutdown",
        deps: &[TOKIO_MAIN],
        budgets: &[("none", 40)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-telemetry",
        name: "metrics",
        deps: &[OTEL],
        budgets: &[("none", 6), ("prometheus", 42), ("default", 62)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-store",
        name: "embedded",
        deps: &[TOKIO_MAIN, BYTES, TELEMETRY],
        budgets: &[("none", 60), ("sqlite", 90), ("default", 183)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-health-status",
        name: "tcp_check",
        deps: &[TOKIO_NET, AXUM, CORE],
        budgets: &[("none", 47), ("default", 62)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-settings-sync",
        name: "follow",
        deps: &[TOKIO_MAIN, SERDE, TELEMETRY, STORE_SQLITE],
        budgets: &[("none", 75), ("sqlite", 96), ("default", 133)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-batcher",
        name: "custom_sink",
        deps: &[TOKIO_MAIN],
        budgets: &[("none", 65), ("default", 131)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-write-behind",
        name: "queue",
        deps: &[TOKIO_MAIN],
        budgets: &[("none", 44), ("default", 187)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-entries",
        name: "embedded",
        deps: &[TOKIO_MAIN, SERDE_JSON, TELEMETRY, STORE_SQLITE, CORE],
        budgets: &[("none", 67), ("sqlite", 96), ("default", 188)],
        banned: &["axum", "fred", "tokio-postgres", "opentelemetry-otlp"],
    },
    Example {
        krate: "keel-monitoring",
        name: "capture",
        deps: &[TOKIO_MAIN, TRACING, SUBSCRIBER],
        budgets: &[("none", 63), ("default", 149)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-http",
        name: "service",
        deps: &[TOKIO_NET, AXUM, CORE, TELEMETRY, HEALTH],
        budgets: &[("none", 106), ("health", 108)],
        banned: &["diesel", "fred", "tokio-postgres", "libsqlite3-sys", "opentelemetry-otlp"],
    },
];

/// [`HEAVY`] and [`RUNTIMES`] together.
pub(super) const fn concat_banned() -> [&'static str; 14] {
    let mut all = [""; 14];
    let mut i = 0;
    while i < HEAVY.len() {
        all[i] = HEAVY[i];
        i += 1;
    }
    let mut j = 0;
    while j < RUNTIMES.len() {
        all[i + j] = RUNTIMES[j];
        j += 1;
    }
    all
}
