//! The router of a Keel process: what its role serves, in the middleware
//! stack.

use axum::Router;
use keel_http::{
    AppInfo, HttpMetrics, agents_router, entries_router, health_router, metrics_router, middleware, monitoring_router,
    settings_router,
};

use crate::{Role, Services};

impl Services {
    /// The whole router: the operational endpoints for every role, plus the
    /// public API for `api` (a worker answers 404 to everything else).
    pub fn router(&self) -> Router {
        let core = &self.core;
        let name = core.file.app.name.clone().unwrap_or_else(|| core.role.name().to_owned());
        let info = AppInfo::build(name);
        let mut routes = Router::new().merge(metrics_router(core.telemetry.clone())).merge(health_router(
            self.health.clone(),
            info,
            core.file.health.codes,
            core.shutdown.clone(),
        ));
        if core.role == Role::Api {
            routes = routes
                .merge(settings_router(self.settings.clone(), self.admin_token.clone()))
                .merge(entries_router(self.entries.clone()))
                .merge(monitoring_router(self.operators.clone(), self.admin_token.clone()));
            if let Some(metadata) = &self.metadata {
                routes = routes.merge(agents_router(metadata.clone()));
            }
        }
        let metrics = HttpMetrics::with_stats(&core.telemetry.meter("keel-http"), self.http_stats.clone());
        middleware::apply(routes, &self.middleware_config(), &metrics)
    }
}
