//! The admin bearer token and its check.

use std::fmt;

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq as _;

use crate::ApiError;

/// The admin bearer token; its `Debug` output is redacted.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token; `None` for an empty one.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        (!token.trim().is_empty()).then_some(Self(token))
    }

    /// Checks `Authorization: Bearer <token>`: 401 when absent or malformed,
    /// 403 when wrong (compared in constant time) or when no token is
    /// configured.
    pub fn authorize(expected: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = expected else {
            return Err(ApiError::forbidden(
                "admin endpoints are disabled: start the service with KEEL_ADMIN_TOKEN (or --admin-token) to enable them",
            ));
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token: send Authorization: Bearer <admin token>"))?;
        if bool::from(presented.as_bytes().ct_eq(expected.0.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::forbidden("invalid admin token"))
        }
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_checks() {
        let token = AdminToken::new("s3cret").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(AdminToken::authorize(Some(&token), &headers).unwrap_err().status(), 401);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert_eq!(AdminToken::authorize(Some(&token), &headers).unwrap_err().status(), 403);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(AdminToken::authorize(Some(&token), &headers).is_ok());
        assert_eq!(AdminToken::authorize(None, &headers).unwrap_err().status(), 403);
        assert!(AdminToken::new("  ").is_none());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }
}
