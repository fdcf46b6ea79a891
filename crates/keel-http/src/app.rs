use axum::Router;

use crate::{
    AppInfo, HttpMetrics, Services, agents_router, entries_router, health_router, metrics_router, middleware,
    monitoring_router, settings_router,
};

/// The full router of a Keel binary: operational endpoints plus every
/// feature router, wrapped in the middleware stack.
pub fn app_router(services: &Services) -> Router {
    let name = services.file.app.name.clone().unwrap_or_else(|| services.process.to_owned());
    let routes = Router::new()
        .merge(metrics_router(services.telemetry.clone()))
        .merge(health_router(
            services.health.clone(),
            AppInfo::build(name),
            services.file.health.codes,
            services.shutdown.clone(),
        ))
        .merge(settings_router(services.settings.clone(), services.admin_token.clone()))
        .merge(agents_router(services.metadata.clone()))
        .merge(entries_router(services.entries.clone()))
        .merge(monitoring_router(services.operators.clone()));
    let metrics = HttpMetrics::with_stats(&services.telemetry, services.http_stats.clone());
    middleware::apply(routes, &services.middleware_config(), &metrics)
}
