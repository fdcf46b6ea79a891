//! The router of a Keel process: what its role serves, in the middleware
//! stack.

use axum::Router;
use keel_http::{
    AppInfo, HttpMetrics, agents_api, api_base, console_router, entries_api, health_api, health_status_api,
    metrics_api, middleware, monitoring_api, openapi_router, settings_api,
};

use crate::{Role, Services};

impl Services {
    /// The whole router: the operational endpoints for every role, plus the
    /// public API, `GET /openapi.json` (the document of everything the api
    /// serves) and the operator console at `/` for `api`; a worker answers
    /// 404 to everything else.
    pub fn router(&self) -> Router {
        let metrics = HttpMetrics::with_stats(&self.core.telemetry, self.http_stats.clone());
        middleware::apply(self.routes(), &self.middleware_config(), &metrics)
    }

    /// The routes without the middleware, and the OpenAPI document that
    /// describes them (`/openapi.json` itself aside).
    pub fn routes_and_document(&self) -> (Router, utoipa::openapi::OpenApi) {
        let core = &self.core;
        let name = core.file.app.name.clone().unwrap_or_else(|| core.role.name().to_owned());
        let info = AppInfo::build(name.clone());
        // The worker's admin port serves the status and the probes, not the
        // console's history and stream (docs/OPERATIONS.md).
        let health = match core.role {
            Role::Api => health_api,
            Role::Worker => health_status_api,
        };
        let mut api = api_base(&name, &info.release).merge(metrics_api(core.telemetry.clone())).merge(health(
            self.health.clone(),
            info,
            core.file.health.codes,
            core.shutdown.clone(),
        ));
        if core.role == Role::Api {
            api = api
                .merge(settings_api(self.settings.clone(), self.admin_token.clone()))
                .merge(entries_api(self.entries.clone()))
                .merge(monitoring_api(self.operators.clone(), self.admin_token.clone()));
            if let Some(metadata) = &self.metadata {
                api = api.merge(agents_api(metadata.clone()));
            }
        }
        api.split_for_parts()
    }

    fn routes(&self) -> Router {
        let (routes, document) = self.routes_and_document();
        match self.core.role {
            // The console is static and outside the API document.
            Role::Api => routes.merge(openapi_router(document)).merge(console_router()),
            Role::Worker => routes,
        }
    }
}
