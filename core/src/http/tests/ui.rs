//! The embedded web UI: pages for browser navigations, files with their
//! types, revalidation and compression, and the API's JSON 404 untouched.

use super::*;

fn browser(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .expect("request")
}

async fn text(resp: Response) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn browser_navigations_to_ui_routes_get_the_page_under_the_strict_csp() {
    let app = app();
    for path in ["/", "/login", "/setup", "/vault", "/usage?from=2026-01-01"] {
        let resp = app.send(browser("GET", path)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(h["x-frame-options"], "DENY");
        let body = text(resp).await;
        assert!(body.contains("<script type=\"module\" src=\"/assets/app.js\">"));
        // No inline script or style: everything the CSP would refuse.
        assert!(!body.contains("<style"), "inline <style> in index.html");
        assert!(!body.contains(" style="), "inline style attribute");
        assert_eq!(body.matches("<script").count(), 1);
    }
}

#[tokio::test]
async fn api_clients_and_api_paths_still_get_the_json_404() {
    let app = app();
    // curl's default Accept: not a browser navigation.
    assert_error(
        app.send(empty("GET", "/no-such-page")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A browser asking for an unknown API path gets JSON, never the page.
    for path in ["/api/nope", "/proxy/", "/agent/", "/assets/nope.js"] {
        let resp = app.send(browser("GET", path)).await;
        assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    // Only GET and HEAD navigate.
    let resp = app.send(browser("POST", "/login")).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn assets_carry_types_etags_and_revalidate_with_304() {
    let app = app();
    let resp = app.send(browser("GET", "/assets/app.js")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let etag = h[header::ETAG].to_str().expect("etag").to_string();
    assert!(text(resp).await.contains("import"));

    let again = Request::builder()
        .uri("/assets/app.js")
        .header(header::IF_NONE_MATCH, &etag)
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .expect("request");
    let resp = app.send(again).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(text(resp).await.is_empty());

    let stale = Request::builder()
        .uri("/assets/app.js")
        .header(header::IF_NONE_MATCH, "\"0000\"")
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .expect("request");
    assert_eq!(app.send(stale).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn gzip_is_sent_only_to_clients_that_accept_it() {
    use std::io::Read;
    let app = app();
    let plain = text(app.send(browser("GET", "/assets/app.css")).await).await;
    let zipped = Request::builder()
        .uri("/assets/app.css")
        .header(header::ACCEPT_ENCODING, "br, gzip;q=0.9")
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .expect("request");
    let resp = app.send(zipped).await;
    assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(resp.headers()[header::VARY], "accept-encoding");
    let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .expect("body");
    assert!(bytes.len() < plain.len());
    let mut out = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut out)
        .expect("gzip");
    assert_eq!(out, plain);

    let refused = Request::builder()
        .uri("/assets/app.css")
        .header(header::ACCEPT_ENCODING, "gzip;q=0, identity")
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .expect("request");
    let resp = app.send(refused).await;
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn asset_paths_cannot_climb_out_of_the_embedded_files() {
    let app = app();
    for path in [
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/src/lib.rs",
        "/assets/..%2fbuild.rs",
        "/assets/",
    ] {
        let resp = app.send(browser("GET", path)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
