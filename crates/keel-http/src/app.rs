use axum::Router;

use crate::{
    AppInfo, HttpMetrics, Role, Services, agents_router, entries_router, health_router, metrics_router, middleware,
    monitoring_router, settings_router,
};

/// The full router of a Keel binary: operational endpoints plus every
/// feature router, wrapped in the middleware stack.
pub fn app_router(services: &Services) -> Router {
    let name = services.file.app.name.clone().unwrap_or_else(|| services.process.to_owned());
    let mut routes = Router::new().merge(metrics_router(services.telemetry.clone())).merge(health_router(
        services.health.clone(),
        AppInfo::build(name),
        services.file.health.codes,
        services.shutdown.clone(),
    ));
    // The worker answers only its admin endpoints; everything else is 404.
    if services.role == Role::Api {
        routes = routes
            .merge(settings_router(services.settings.clone(), services.admin_token.clone()))
            .merge(entries_router(services.entries.clone()))
            .merge(monitoring_router(services.operators.clone()));
        if let Some(metadata) = &services.metadata {
            routes = routes.merge(agents_router(metadata.clone()));
        }
    }
    let metrics = HttpMetrics::with_stats(&services.telemetry, services.http_stats.clone());
    middleware::apply(routes, &services.middleware_config(), &metrics)
}
