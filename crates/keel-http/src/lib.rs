//! axum adapters that turn Keel's crates into an HTTP service:
//!
//! - [`ApiError`]: every error answers `{"error":{"code","message"}}` with a
//!   meaningful status; non-JSON errors from axum itself are rewritten to the
//!   same shape.
//! - [`middleware::apply`]: request id, trace span, golden-signal metrics
//!   ([`HttpMetrics`], OpenTelemetry HTTP semantic conventions), timeout,
//!   body limit, and panic → 500 (counted).
//! - [`metrics_api`]: `/metrics`; `health_api`: `/status`,
//!   `/status/{name}`, `/status/history`, `/status/stream`, `/livez`,
//!   `/readyz` over a `keel_health_status::Health`.
//! - `monitoring_api`: captured logs, live stats and their SSE stream
//!   for operators (admin token); `settings_api`, `entries_api`,
//!   `agents_api`: the reference services.
//! - `console_router`: the operator console at `/` (feature `console`):
//!   one page over the endpoints above, embedded in the binary.
//! - [`serve`]: graceful shutdown (readiness drops first, in-flight requests
//!   finish, background tasks drain within a grace period).
//! - [`starting_gate`]: serves `/livez` and a truthful `/readyz` while the
//!   application waits for its stores.
//!
//! Each router sits behind a cargo feature named after it (`health`,
//! `settings`, `monitoring`, `entries`, `agents`, or `full` for all) and
//! brings only the functional crate it adapts; with no feature the crate is
//! the middleware, errors, `/metrics` and the server. The domain rules live
//! in the functional crates; configuration and composition live in
//! `keel-app`.
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
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
#[cfg(feature = "agents")]
mod agents;
#[cfg(feature = "console")]
mod console;
#[cfg(feature = "entries")]
mod entries;
mod error;
mod gate;
mod guard;
#[cfg(feature = "health")]
mod health;
#[cfg(feature = "agents")]
mod json_body;
mod metrics;
pub mod middleware;
#[cfg(feature = "monitoring")]
mod monitoring;
#[cfg_attr(not(feature = "full"), allow(dead_code, unused_imports, unused_macros))]
mod openapi;
mod ops;
mod server;
#[cfg(feature = "settings")]
mod settings;
mod span;
#[cfg(feature = "health")]
mod status_feed;
mod streams;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg_attr(not(feature = "full"), allow(dead_code, unused_imports))]
mod text;

pub use admin::{AdminToken, MIN_ADMIN_TOKEN};
#[cfg(feature = "agents")]
pub use agents::agents_api;
#[cfg(feature = "console")]
pub use console::console_router;
#[cfg(feature = "entries")]
pub use entries::entries_api;
pub use error::{ApiError, Violation};
pub use gate::{StartingGate, Waiting, starting_gate};
#[cfg(feature = "health")]
pub use health::{AppInfo, health_api, health_status_api};
pub use metrics::{HttpMetrics, HttpMetricsLayer, HttpMetricsService, ResponseFuture, UNMATCHED_ROUTE};
pub use middleware::MiddlewareConfig;
#[cfg(feature = "monitoring")]
pub use monitoring::monitoring_api;
pub use openapi::{ApiRouter, api_base, openapi_router};
pub use ops::metrics_api;
pub use server::{ClientAddr, ConnectionLimits, DrainConfig, PROBE_RESERVE, ServeError, serve, serve_with_limits};
#[cfg(feature = "settings")]
pub use settings::settings_api;
pub use streams::{StreamGate, StreamLimits, StreamPermit, StreamSlot};

/// The code in `docs/http.md` compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/http.md")]
pub struct HttpGuide;
