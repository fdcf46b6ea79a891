use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered as `{"error":{"code","message"}}` with its HTTP status.
///
/// ```
/// use axum::response::IntoResponse;
/// let response = keel_http::ApiError::bad_request("key must not be empty").into_response();
/// assert_eq!(response.status(), 400);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    retry_after: Option<u32>,
    violations: Vec<Violation>,
}

/// One way a request body breaks the schema it must follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON Pointer into the body (`/log_level`; empty: the body itself).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

/// Every failure: `{"error":{"code","message"}}`. The one type both the
/// responses and their OpenAPI schema (`Error`) come from.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Envelope<'a> {
    error: ErrorDetail<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail<'a> {
    /// A stable machine-readable code: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `precondition_failed`, `payload_too_large`,
    /// `unprocessable_entity`, `unavailable`, `internal`.
    code: &'a str,
    /// A human-readable explanation (never more than 200 bytes of the input).
    message: &'a str,
    /// With a 422 for a body that breaks its schema: each violation.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    violations: &'a [Violation],
}

impl ApiError {
    /// An error with an explicit status and machine-readable `code`.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), retry_after: None, violations: Vec::new() }
    }

    /// The same error, listing each schema violation of the body.
    #[must_use]
    pub fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.violations = violations;
        self
    }

    /// The same error, answered with `Retry-After: <seconds>`.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 412 `precondition_failed`.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 422 `unprocessable_entity`.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity", message)
    }

    /// 500 `internal`. The message is shown to the caller: keep details in logs.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 `overloaded`, with `Retry-After: 1`: a limit on connections or
    /// streams refused the request. Counted by the limit's own metric and
    /// not logged one by one (a flood of refusals is no flood of errors).
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).with_retry_after(1)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error for a bare status, with its canonical code and `message`
    /// (or the status's reason phrase when empty).
    pub fn from_status(status: StatusCode, message: &str) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PRECONDITION_FAILED => "precondition_failed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            s if s.is_server_error() => "internal",
            _ => "error",
        };
        let message = message.trim();
        let message = if message.is_empty() {
            status.canonical_reason().unwrap_or("error").to_ascii_lowercase()
        } else {
            // Such texts (extractor rejections) may quote the request: keep
            // at most 200 bytes of it.
            crate::text::clip(message).into_owned()
        };
        Self::new(status, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.code != "overloaded" {
            tracing::error!(status = self.status.as_u16(), code = %self.code, message = %self.message, "request failed");
        }
        let detail = ErrorDetail { code: &self.code, message: &self.message, violations: &self.violations };
        let body = serde_json::to_vec(&Envelope { error: detail })
            // Strings only: always serializes.
            .unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code == "overloaded" {
            // A client refused by a limit does not keep a connection either.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Marks a response whose representation was negotiated (health text
/// lines, `application/health+json`): an error status keeps its body as
/// asked instead of being rewritten into the JSON envelope.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated;

/// Largest plain-text error body folded into the JSON message.
const MAX_ERROR_BODY: usize = 4096;

/// Rewrites error responses that are not JSON (axum's extractor rejections,
/// the 404 fallback, 405, timeouts, body-limit 413s) into the JSON envelope,
/// so every error a client sees has the same shape. Responses that need no
/// rewrite (nearly all) are returned at once, with nothing allocated.
pub(crate) fn json_errors(
    response: Response,
) -> futures_util::future::Either<std::future::Ready<Response>, futures_util::future::BoxFuture<'static, Response>> {
    use futures_util::future::Either;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || response.extensions().get::<Negotiated>().is_some() {
        return Either::Left(std::future::ready(response));
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    if is_json {
        return Either::Left(std::future::ready(response));
    }
    Either::Right(Box::pin(rewrite(status, response)))
}

async fn rewrite(status: StatusCode, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY).await.unwrap_or_default();
    let mut rewritten = ApiError::from_status(status, &String::from_utf8_lossy(&text)).into_response();
    // Keep headers such as `Allow` (405) and `Retry-After`.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn api_error_is_the_json_envelope() {
        let response = ApiError::precondition_failed("version 3 is stale").into_response();
        assert_eq!(response.status(), 412);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "precondition_failed", "message": "version 3 is stale"}})
        );
    }

    #[tokio::test]
    async fn plain_errors_are_rewritten_and_keep_headers() {
        let mut plain = (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
        plain.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        let rewritten = json_errors(plain).await;
        assert_eq!(rewritten.status(), 405);
        assert_eq!(rewritten.headers()[header::ALLOW], "GET");
        let json = body_json(rewritten).await;
        assert_eq!(json["error"]["code"], "method_not_allowed");
        assert_eq!(json["error"]["message"], "method not allowed");

        let text =
            json_errors((StatusCode::BAD_REQUEST, "Failed to parse the request body as JSON").into_response()).await;
        assert_eq!(body_json(text).await["error"]["message"], "Failed to parse the request body as JSON");

        let ok = json_errors((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(axum::body::to_bytes(ok.into_body(), 100).await.unwrap(), "fine");
    }
}
