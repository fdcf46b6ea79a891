use axum::Router;

use crate::{HttpMetrics, Services, middleware, ops_router};

/// The full router of a Keel binary: operational endpoints plus every
/// feature router, wrapped in the middleware stack.
pub fn app_router(services: &Services) -> Router {
    let routes = Router::new().merge(ops_router(services.telemetry.clone(), services.shutdown.clone()));
    middleware::apply(routes, &services.middleware_config(), &HttpMetrics::new(&services.telemetry))
}
