//! The middleware stack every Keel router gets.

use std::time::Duration;

use axum::Router;

use crate::HttpMetrics;

/// The request id header: kept when the client sends one, generated otherwise,
/// echoed on the response and recorded in the request span.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct MiddlewareConfig {
    /// A request still running after this long is answered 503.
    pub request_timeout: Duration,
    /// Larger request bodies are answered 413.
    pub body_limit: usize,
}

impl Default for MiddlewareConfig {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(30), body_limit: 1024 * 1024 }
    }
}

/// Wraps every route of `router` (add routes and fallback first) with, from
/// the outside in: request id, trace span, golden-signal metrics, JSON error
/// envelope, timeout, body limit, and panic catching.
///
/// Panics are caught innermost, so they are answered 500 JSON and counted in
/// the request metrics like any other response.
pub fn apply(router: Router, config: &MiddlewareConfig, metrics: &HttpMetrics) -> Router {
    // One composed layer: axum boxes each `Router::layer` around every route
    // and clones that box per request, so one layer costs one clone, not
    // eight. The inner four (timeout, envelope, body limit, panics) are one
    // service of their own (`guard`).
    let stack = tower::ServiceBuilder::new()
        .layer(crate::span::RequestSpanLayer)
        .layer(metrics.layer())
        .layer(crate::guard::GuardLayer::new(config.request_timeout, config.body_limit, metrics.clone()));
    // Handlers added without state become services once, here: axum would
    // otherwise apply the whole stack to them again on every request.
    router.layer(stack).with_state(())
}
