//! The operator console at `/`: a single page and its assets, embedded in
//! the binary at build time (see `build.rs`), served precompressed (brotli,
//! gzip or as is, by `Accept-Encoding`) under content-hashed names with
//! long-cache headers, behind a `Content-Security-Policy` that allows no
//! inline script or style.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::ApiError;

/// One embedded file.
pub(crate) struct Asset {
    /// Where it is served.
    path: &'static str,
    content_type: &'static str,
    /// `"<content hash>"`.
    etag: &'static str,
    /// Named by its hash: cacheable for a year.
    immutable: bool,
    identity: &'static [u8],
    gzip: &'static [u8],
    br: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Scripts, styles, images and connections from this origin only: no
/// inline script or style, no framing, no plugins, no form posts elsewhere.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// `GET /` (the page) and `GET /assets/{file}` (its script, style sheet and
/// icon). The page is revalidated on every load; the assets, named by
/// their content hash, are cached for a year.
pub fn console_router() -> Router {
    Router::new().route("/", get(page)).route("/assets/{file}", get(asset))
}

async fn page(headers: HeaderMap) -> Response {
    serve(ASSETS.iter().find(|a| a.path == "/"), &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let wanted = format!("/assets/{file}");
    serve(ASSETS.iter().find(|a| a.path == wanted), &headers)
}

/// The best encoding the client accepts (`q=0` refuses one).
fn encoding(headers: &HeaderMap) -> Option<&'static str> {
    let accepted =
        headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let mut best: Option<(&'static str, u8)> = None;
    for item in accepted {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts
            .any(|p| p.replace(' ', "").strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0)));
        let rank = match name {
            "br" => ("br", 2),
            "gzip" => ("gzip", 1),
            _ => continue,
        };
        if !refused && best.is_none_or(|(_, r)| rank.1 > r) {
            best = Some(rank);
        }
    }
    best.map(|(name, _)| name)
}

fn serve(asset: Option<&Asset>, headers: &HeaderMap) -> Response {
    let Some(asset) = asset else {
        return with_policy(ApiError::not_found("no such console asset").into_response());
    };
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|tags| {
        tags.split(',').any(|t| t.trim().trim_start_matches("W/") == asset.etag || t.trim() == "*")
    });
    let (body, encoding) = match encoding(headers) {
        Some("br") => (asset.br, Some("br")),
        Some(_) => (asset.gzip, Some("gzip")),
        None => (asset.identity, None),
    };
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    out.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if asset.immutable { "public, max-age=31536000, immutable" } else { "no-cache" }),
    );
    if let (Some(encoding), false) = (encoding, fresh) {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    with_policy(response)
}

fn with_policy(mut response: Response) -> Response {
    let out = response.headers_mut();
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    out.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")));
        headers
    }

    #[test]
    fn the_best_accepted_encoding_wins() {
        assert_eq!(encoding(&accepting("gzip, deflate, br, zstd")), Some("br"));
        assert_eq!(encoding(&accepting("gzip")), Some("gzip"));
        assert_eq!(encoding(&accepting("br;q=0, gzip;q=0.5")), Some("gzip"));
        assert_eq!(encoding(&accepting("identity")), None);
        assert_eq!(encoding(&HeaderMap::new()), None);
    }

    #[test]
    fn every_asset_is_small_and_its_compressed_forms_are_smaller() {
        let total: usize = ASSETS.iter().map(|a| a.identity.len()).sum();
        assert!(total <= 300 * 1024, "the console is {total} bytes, over its 300 KB budget");
        for asset in ASSETS {
            assert!(asset.br.len() < asset.identity.len() && asset.gzip.len() < asset.identity.len(), "{}", asset.path);
        }
        assert!(ASSETS.iter().any(|a| a.path == "/" && !a.immutable));
    }
}
