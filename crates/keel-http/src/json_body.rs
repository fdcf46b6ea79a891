//! A JSON request body, parsed the fast way when it is well formed.
//!
//! `axum::Json` parses through `serde_path_to_error`, which records the path
//! to every value (an allocation per object key) so that a rejection can
//! say where the body went wrong. Most bodies are well formed: this
//! extractor parses them with `serde_json` alone, and hands a body that
//! fails, or a content type it does not recognise at a glance, to
//! `axum::Json`, so every rejection (status and message) is axum's own.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// See the module docs.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = JsonRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, JsonRejection> {
        if !plainly_json(&request) {
            return Json::<T>::from_request(request, state).await.map(|Json(value)| Self(value));
        }
        let bytes = Bytes::from_request(request, state).await?;
        // Checked as UTF-8 once, whole: parsing bytes checks every string
        // in the body on its own.
        match std::str::from_utf8(&bytes).ok().and_then(|text| serde_json::from_str(text).ok()) {
            Some(value) => Ok(Self(value)),
            None => Json::<T>::from_bytes(&bytes).map(|Json(value)| Self(value)),
        }
    }
}

/// `Content-Type: application/json`, with parameters or not, in any case:
/// types that `axum::Json` takes too (it takes more, such as `+json`).
fn plainly_json(request: &Request) -> bool {
    const JSON: &[u8] = b"application/json";
    request.headers().get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= JSON.len()
            && value[..JSON.len()].eq_ignore_ascii_case(JSON)
            && matches!(value.get(JSON.len()), None | Some(b';'))
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        key: String,
        n: u32,
    }

    async fn both(content_type: Option<&str>, body: &str) -> (Result<Item, String>, Result<Item, String>) {
        let request = || {
            let mut request = Request::post("/");
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            request.body(Body::from(body.to_owned())).expect("request")
        };
        let shown = |rejection: JsonRejection| format!("{} {}", rejection.status(), rejection.body_text());
        let fast = JsonBody::<Item>::from_request(request(), &()).await.map(|JsonBody(v)| v).map_err(shown);
        let axum = Json::<Item>::from_request(request(), &()).await.map(|Json(v)| v).map_err(shown);
        (fast, axum)
    }

    /// Whatever the body and content type, the answer is axum's: the same
    /// value, or the same rejection.
    #[tokio::test]
    async fn answers_as_axum_json_does() {
        let cases = [
            (Some("application/json"), r#"{"key":"a","n":1}"#),
            (Some("Application/JSON; charset=utf-8"), r#"{"key":"a","n":1}"#),
            (Some("application/problem+json"), r#"{"key":"a","n":1}"#),
            (Some("application/jsonx"), r#"{"key":"a","n":1}"#),
            (Some("text/plain"), r#"{"key":"a","n":1}"#),
            (None, r#"{"key":"a","n":1}"#),
            (Some("application/json"), r#"{"key":"a","n":-1}"#),
            (Some("application/json"), r#"{"key":"a","n":1,"x":2}"#),
            (Some("application/json"), r#"{"key":"a""#),
            (Some("application/json"), r#"{"key":"a","n":1} trailing"#),
            (Some("application/json"), ""),
        ];
        for (content_type, body) in cases {
            let (fast, axum) = both(content_type, body).await;
            assert_eq!(fast, axum, "{content_type:?} {body:?}");
        }
        // Not UTF-8: refused as axum refuses it.
        let request = || {
            let body = Body::from(b"{\"key\":\"\xff\",\"n\":1}".to_vec());
            Request::post("/").header(header::CONTENT_TYPE, "application/json").body(body).expect("request")
        };
        let fast = JsonBody::<Item>::from_request(request(), &()).await.map(|JsonBody(v)| v).err();
        let axum = Json::<Item>::from_request(request(), &()).await.map(|Json(v)| v).err();
        let shown = |rejection: Option<JsonRejection>| rejection.map(|r| format!("{} {}", r.status(), r.body_text()));
        let (fast, axum) = (shown(fast), shown(axum));
        assert!(fast.is_some(), "accepted a body that is not UTF-8");
        assert_eq!(fast, axum);
        let (fast, _) = both(Some("application/json"), r#"{"key":"a","n":-1}"#).await;
        assert!(fast.is_err_and(|e| e.contains("n: invalid value")), "the path is in the message");
    }
}
