//! The admin bearer token and the one extractor that checks it.

use std::fmt;
#[cfg(any(feature = "settings", feature = "monitoring"))]
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq as _;

use crate::ApiError;

/// The shortest admin token accepted without `--allow-weak-admin-token`.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// The admin bearer token; its `Debug` output is redacted.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token; `None` for an empty one. No other rule is applied:
    /// [`AdminToken::parse`] is the check for a configured token.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        (!token.trim().is_empty()).then_some(Self(token))
    }

    /// A configured token, checked: RFC 6750 `b64token` characters (letters,
    /// digits, `-._~+/`, then any `=`), and at least [`MIN_ADMIN_TOKEN`]
    /// bytes unless `allow_weak`. The error says why, never the token.
    pub fn parse(token: &str, allow_weak: bool) -> Result<Self, String> {
        let body = token.trim_end_matches('=');
        let visible = !body.is_empty()
            && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'));
        if !visible {
            return Err("must be letters, digits and -._~+/ (RFC 6750 b64token), optionally ending in =".into());
        }
        if token.len() < MIN_ADMIN_TOKEN && !allow_weak {
            return Err(format!(
                "is {} bytes; use at least {MIN_ADMIN_TOKEN} (or --allow-weak-admin-token)",
                token.len()
            ));
        }
        Ok(Self(token.to_owned()))
    }

    /// Checks `Authorization: Bearer <token>` (scheme in any case): 400 for
    /// two `Authorization` headers, 401 when absent or malformed, 403 when
    /// wrong (compared in constant time) or when no token is configured.
    pub fn authorize(expected: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = expected else {
            return Err(ApiError::forbidden(
                "admin endpoints are disabled: start the service with KEEL_ADMIN_TOKEN (or --admin-token) to enable them",
            ));
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(ApiError::unauthorized("missing bearer token: send Authorization: Bearer <admin token>"));
        };
        if values.next().is_some() {
            return Err(ApiError::bad_request("more than one Authorization header"));
        }
        let malformed = || ApiError::unauthorized("malformed Authorization header: expected Bearer <admin token>");
        let text = value.to_str().map_err(|_| malformed())?;
        let (scheme, presented) = text.split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let presented = presented.trim_start_matches(' ').trim_end_matches([' ', '\t']);
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

/// A router state that knows the admin token.
#[cfg(any(feature = "settings", feature = "monitoring"))]
pub(crate) trait AdminState: Send + Sync + 'static {
    /// The configured token, if any.
    fn admin_token(&self) -> Option<&AdminToken>;
}

/// An admin route's proof of authorization: every admin handler takes it,
/// so the token is checked in one place, before the handler runs.
#[cfg(any(feature = "settings", feature = "monitoring"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admin;

#[cfg(any(feature = "settings", feature = "monitoring"))]
impl<S: AdminState> axum::extract::FromRequestParts<Arc<S>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &Arc<S>) -> Result<Self, ApiError> {
        AdminToken::authorize(state.admin_token(), &parts.headers).map(|()| Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN: &str = "s3cret-s3cret-s3cret";

    fn answer(values: &[&[u8]]) -> u16 {
        let token = AdminToken::parse(TOKEN, false).unwrap();
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        AdminToken::authorize(Some(&token), &headers).map_or_else(|err| err.status().as_u16(), |()| 200)
    }

    #[test]
    fn the_header_matrix() {
        assert_eq!(answer(&[]), 401, "absent");
        assert_eq!(answer(&[b"Bearer s3cret-s3cret-s3cret"]), 200);
        assert_eq!(answer(&[b"bearer s3cret-s3cret-s3cret"]), 200, "lowercase scheme");
        assert_eq!(answer(&[b"BEARER s3cret-s3cret-s3cret"]), 200, "uppercase scheme (RFC 9110 11.1)");
        assert_eq!(answer(&[b"Bearer s3cret-s3cret-s3cret "]), 200, "trailing space is not part of the value");
        assert_eq!(answer(&[b"Bearer\ts3cret-s3cret-s3cret"]), 401, "a tab is not the separator");
        assert_eq!(answer(&[b"Bearer s3cret-s3cret-s3cre"]), 403, "wrong");
        assert_eq!(answer(&[b"Basic czNjcmV0"]), 401, "another scheme");
        assert_eq!(answer(&[b"Bearer p\xc3\xa4sswort-p\xc3\xa4sswort"]), 401, "not visible ASCII");
        assert_eq!(answer(&[b"Bearer nope", b"Bearer s3cret-s3cret-s3cret"]), 400, "wrong then right");
        assert_eq!(answer(&[b"Bearer s3cret-s3cret-s3cret", b"Bearer nope"]), 400, "right then wrong");
        assert_eq!(AdminToken::authorize(None, &HeaderMap::new()).unwrap_err().status(), 403);
    }

    #[test]
    fn configured_tokens_are_visible_ascii_and_long_enough() {
        assert!(AdminToken::parse(TOKEN, false).is_ok());
        assert!(AdminToken::parse("abcDEF012-._~+/xyz==", false).is_ok());
        for bad in ["pässwörd-pässwörd", "has space in it ok", "tab\tinside-the-token", "=================", ""] {
            let err = AdminToken::parse(bad, true).unwrap_err();
            assert!(err.contains("b64token"), "{bad:?}: {err}");
        }
        let short = AdminToken::parse("s3cret", false).unwrap_err();
        assert!(short.contains("6 bytes") && short.contains("--allow-weak-admin-token"), "{short}");
        assert!(AdminToken::parse("s3cret", true).is_ok(), "allowed when asked for");
        assert_eq!(format!("{:?}", AdminToken::parse(TOKEN, false).unwrap()), "AdminToken(<redacted>)");
        assert!(AdminToken::new("  ").is_none());
    }
}
