//! What `/status` was asked for: its parameters and the headers that
//! override them, parsed into [`ViewOptions`], and the selection they make.

use std::collections::BTreeSet;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use keel_health_status::Pattern;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiError;

use super::*;

/// How `/status` renders; the `X-Verbose`, `Accept`, `X-MapMode` and
/// `X-Filter` headers override the matching parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatusQuery {
    /// Only the overall status.
    #[param(inline, value_type = Option<Flag>)]
    pub(super) short: Option<String>,
    /// `json` (default), `text` or `health+json`.
    #[param(inline, value_type = Option<FormatName>)]
    pub(super) format: Option<String>,
    /// Components grouped.
    #[param(inline, value_type = Option<Flag>)]
    pub(super) map: Option<String>,
    /// Comma-separated component or group name patterns (`*`, `?`) to keep.
    #[param(pattern = "^(\\*?([A-Za-z0-9_.?,-]|\\[!?[A-Za-z0-9_.-]+\\]))*\\*?$")]
    pub(super) filter: Option<String>,
    /// Comma-separated component or group name patterns to leave out.
    #[param(pattern = "^(\\*?([A-Za-z0-9_.?,-]|\\[!?[A-Za-z0-9_.-]+\\]))*\\*?$")]
    pub(super) exclude: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Text,
    HealthJson,
}

#[derive(Debug)]
pub(crate) struct ViewOptions {
    pub(crate) short: bool,
    pub(crate) format: Format,
    pub(crate) map: bool,
    pub(crate) filter: Option<Vec<Pattern>>,
    pub(crate) exclude: Vec<Pattern>,
}

pub(super) fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => {
            Err(ApiError::bad_request(format!("{name}: expected true or false, got {}", crate::text::shown(other))))
        }
    }
}

/// Comma-separated name patterns: name characters, `?`, `*` (never two in a
/// row) and `[...]` classes, as `/openapi.json` documents.
pub(super) fn patterns(name: &str, list: &str) -> Result<Vec<Pattern>, ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.-?*[]!".contains(c);
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let invalid = |why: &dyn std::fmt::Display| {
                ApiError::bad_request(format!("{name}: invalid pattern {}: {why}", crate::text::shown(p)))
            };
            if !p.chars().all(allowed) {
                return Err(invalid(&"use name characters [A-Za-z0-9_.-], ?, * and [...]"));
            }
            if p.contains("**") {
                return Err(invalid(&"one * matches any run of characters; ** is not a pattern"));
            }
            Pattern::new(p).map_err(|err| invalid(&err))
        })
        .collect()
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ApiError::bad_request(format!("{name}: header is not text"))))
        .transpose()
}

impl ViewOptions {
    /// Query parameters first, then headers, which win.
    pub(super) fn parse(query: &StatusQuery, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut short = query.short.as_deref().map(|v| flag("short", v)).transpose()?.unwrap_or(false);
        let mut format = match query.format.as_deref().map(|f| f.trim().to_ascii_lowercase()) {
            None => Format::Json,
            Some(f) if f == "json" => Format::Json,
            Some(f) if f == "text" => Format::Text,
            Some(f) if f == "health+json" || f == "health" => Format::HealthJson,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "format: expected json or text, got {}",
                    crate::text::shown(&other)
                )));
            }
        };
        let mut map = query.map.as_deref().map(|v| flag("map", v)).transpose()?.unwrap_or(false);
        let mut filter = query.filter.as_deref().map(|f| patterns("filter", f)).transpose()?;
        let exclude = query.exclude.as_deref().map(|f| patterns("exclude", f)).transpose()?.unwrap_or_default();

        if let Some(verbose) = header_str(headers, "x-verbose")? {
            short = !flag("X-Verbose", verbose)?;
        }
        if let Some(accept) = header_str(headers, "accept")? {
            // The first type we serve wins; `*/*` and unknown types leave the
            // query's choice alone.
            for media in accept.split(',').map(|m| m.split(';').next().unwrap_or("").trim()) {
                let chosen = match media {
                    "application/health+json" => Some(Format::HealthJson),
                    "application/json" => Some(Format::Json),
                    "text/plain" => Some(Format::Text),
                    _ => None,
                };
                if let Some(chosen) = chosen {
                    format = chosen;
                    break;
                }
            }
        }
        if let Some(mode) = header_str(headers, "x-mapmode")? {
            map = flag("X-MapMode", mode)?;
        }
        if let Some(list) = header_str(headers, "x-filter")? {
            filter = Some(patterns("X-Filter", list)?);
        }
        Ok(Self { short, format, map, filter, exclude })
    }
}

/// The options of a `/status` request, read from its query and headers in
/// place (most requests carry no query: nothing is decoded then).
pub(super) fn view_options(request: &Request) -> Result<ViewOptions, Refused> {
    let query = match request.uri().query() {
        None => StatusQuery::default(),
        Some(_) => Query::<StatusQuery>::try_from_uri(request.uri()).map_err(Refused::Query)?.0,
    };
    ViewOptions::parse(&query, request.headers()).map_err(Refused::Options)
}

/// Why [`view_options`] refused a request.
pub(super) enum Refused {
    Query(QueryRejection),
    Options(ApiError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Query(rejection) => rejection.into_response(),
            Self::Options(err) => err.into_response(),
        }
    }
}

/// The component names selected by the filter and exclude patterns (see
/// [`Health::select`]). `None`: no filter, everything.
pub(super) fn select(state: &HealthState, options: &ViewOptions) -> Option<BTreeSet<String>> {
    if options.filter.is_none() && options.exclude.is_empty() {
        return None;
    }
    Some(state.health.select(options.filter.as_deref(), &options.exclude))
}

/// Headers that override [`StatusQuery`].
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(super) struct StatusHeaders {
    /// `true`: every component (not the short form).
    #[param(rename = "X-Verbose", inline, nullable = false, value_type = Option<Flag>)]
    pub(super) x_verbose: Option<String>,
    /// `true`: components grouped.
    #[param(rename = "X-MapMode", inline, nullable = false, value_type = Option<Flag>)]
    pub(super) x_map_mode: Option<String>,
    /// Comma-separated name patterns to keep.
    #[param(
        rename = "X-Filter",
        nullable = false,
        pattern = "^(\\*?([A-Za-z0-9_.?,-]|\\[!?[A-Za-z0-9_.-]+\\]))*\\*?$"
    )]
    pub(super) x_filter: Option<String>,
}

crate::openapi::string_enum_schema!(
    Flag,
    "A switch: empty (present without a value), true, 1 or yes is on; false, 0 or no is off.",
    ["", "true", "false", "1", "0", "yes", "no"]
);
crate::openapi::string_enum_schema!(FormatName, "A rendering of `/status`.", ["json", "text", "health+json", "health"]);
