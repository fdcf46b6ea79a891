//! axum adapters that turn Keel's crates into an HTTP service:
//!
//! - [`ApiError`]: every error answers `{"error":{"code","message"}}` with a
//!   meaningful status; non-JSON errors from axum itself are rewritten to the
//!   same shape.
//! - [`middleware::apply`]: request id, trace span, golden-signal metrics
//!   ([`HttpMetrics`], OpenTelemetry HTTP semantic conventions), timeout,
//!   body limit, and panic → 500 (counted).
//! - [`metrics_router`]: `/metrics`; [`health_router`]: `/status`,
//!   `/status/{name}`, `/livez`, `/readyz` over a `keel_health_status::Health`.
//! - [`monitoring_router`]: captured logs, live stats and their SSE stream
//!   for operators (admin token).
//! - [`serve`]: graceful shutdown (readiness drops first, in-flight requests
//!   finish, background tasks drain within a grace period).
//! - `cli` and `Services` (feature `runtime`, on by default): the
//!   configuration and start-up shared by the `api` and `worker` binaries.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use axum::{Router, routing::get, body::Body, http::Request};
//! use keel_http::{HttpMetrics, MiddlewareConfig, middleware};
//! use tower::ServiceExt as _;
//!
//! let telemetry = keel_telemetry::Telemetry::new("example").unwrap();
//! let routes = Router::new().route("/hello/{name}", get(|| async { "hi" }));
//! let app = middleware::apply(routes, &MiddlewareConfig::default(), &HttpMetrics::new(&telemetry));
//! let response = app.oneshot(Request::get("/hello/ada").body(Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert!(response.headers().contains_key("x-request-id"));
//! assert!(telemetry.encode().unwrap().contains("http_route=\"/hello/{name}\""));
//! # }
//! ```

mod admin;
#[cfg(feature = "runtime")]
mod agents;
#[cfg(feature = "runtime")]
mod app;
#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
mod entries;
mod error;
mod health;
mod metrics;
pub mod middleware;
mod monitoring;
mod ops;
#[cfg(feature = "runtime")]
mod process;
#[cfg(feature = "runtime")]
mod runtime;
mod server;
mod settings;
#[cfg(feature = "runtime")]
mod startup;
#[cfg(feature = "testing")]
pub mod testing;
mod text;

pub use admin::AdminToken;
#[cfg(feature = "runtime")]
pub use agents::{AgentMetadata, MAX_CLOCK_SKEW, MAX_KEY_LEN, MAX_KEYS, MAX_VALUE_LEN, agents_router};
#[cfg(feature = "runtime")]
pub use app::app_router;
#[cfg(feature = "runtime")]
pub use entries::{DEFAULT_ENQUEUE_TIMEOUT, Entries, EntrySink, MAX_ENTRY_KEY, MAX_ENTRY_VALUE, entries_router};
pub use error::ApiError;
pub use health::{AppInfo, health_router};
pub use metrics::{HttpMetrics, HttpMetricsLayer, HttpMetricsService, ResponseFuture, UNMATCHED_ROUTE};
pub use middleware::MiddlewareConfig;
pub use monitoring::{MAX_LOG_LIMIT, MonitoringService, PROCESSES, monitoring_router};
pub use ops::metrics_router;
#[cfg(feature = "runtime")]
pub use process::run_process;
#[cfg(feature = "runtime")]
pub use runtime::{Prepared, Role, RunMode, STORAGE_GROUP, Services, StartError};
pub use server::{ConnectionLimits, DrainConfig, ServeError, serve, serve_with_limits};
pub use settings::settings_router;
#[cfg(feature = "runtime")]
pub use startup::Startup;
