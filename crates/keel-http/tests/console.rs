//! The console's page and assets through `oneshot`.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use keel_http::console_router;
use tower::ServiceExt as _;

async fn get(uri: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    console_router().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
}

async fn body(response: Response) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_page_names_hashed_assets_that_are_served_compressed_and_cached_for_a_year() {
    let page = get("/", &[]).await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let csp = header(&page, "content-security-policy").to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    let etag = header(&page, "etag").to_owned();
    let html = String::from_utf8(body(page).await).unwrap();
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");
    let script = html.split("src=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_owned();
    assert!(script.starts_with("/assets/app.") && script.ends_with(".js"), "{script}");

    let plain = get(&script, &[]).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(header(&plain, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header(&plain, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&plain, "content-encoding"), "");
    let plain_len = body(plain).await.len();
    for encoding in ["br", "gzip"] {
        let packed = get(&script, &[("accept-encoding", encoding)]).await;
        assert_eq!(header(&packed, "content-encoding"), encoding);
        assert_eq!(header(&packed, "vary"), "accept-encoding");
        assert!(body(packed).await.len() < plain_len / 2, "{encoding} halves the script at least");
    }

    let again = get("/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert!(body(again).await.is_empty());
}

#[tokio::test]
async fn an_unknown_asset_is_a_json_404_with_the_same_policy() {
    let missing = get("/assets/app.0000000000000000.js", &[]).await;
    assert_eq!(missing.status(), 404);
    assert!(header(&missing, "content-security-policy").contains("default-src 'none'"));
    let json: serde_json::Value = serde_json::from_slice(&body(missing).await).unwrap();
    assert_eq!(json["error"]["code"], "not_found");
}
