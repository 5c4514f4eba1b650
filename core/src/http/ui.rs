//! Serves the embedded web UI (`latchkey-ui`): `/assets/*` files and, for
//! a browser navigation to any page that is not an API route, `index.html`
//! (the UI routes on the client).
//!
//! Files are revalidated on every load (`no-cache` + a strong ETag) rather
//! than cached for long: their names carry no content hash, and an update
//! of the appliance must never leave a browser running the old script
//! against the new API.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, error::ApiError};
use latchkey_ui::{Asset, INDEX};

/// Path prefixes that belong to the API and never answer with the page.
const NOT_PAGES: [&str; 6] = [
    "/api/",
    "/proxy/",
    "/agent/",
    "/assets/",
    "/.well-known/",
    "/metrics",
];

/// `GET /assets/{*path}`.
pub async fn asset(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    match state.ui.get(&format!("assets/{path}")) {
        Some(asset) => send(asset, &headers),
        None => ApiError::RouteNotFound.into_response(),
    }
}

/// The router's fallback: the UI page for a browser's GET of a page path,
/// the API's `404 not_found` for anything else.
pub async fn page_or_not_found(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let wants_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    let page_path = !NOT_PAGES.iter().any(|p| uri.path().starts_with(p));
    if (method == Method::GET || method == Method::HEAD)
        && wants_html
        && page_path
        && let Some(index) = state.ui.get(INDEX)
    {
        return send(index, &headers);
    }
    ApiError::RouteNotFound.into_response()
}

fn send(asset: &Asset, request: &HeaderMap) -> Response {
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let gzip_ok = request
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|coding| {
                let mut parts = coding.trim().split(';');
                parts.next().is_some_and(|c| c.trim() == "gzip")
                    && !parts.any(|q| q.trim().replace(' ', "") == "q=0")
            });
        match (&asset.gzip, gzip_ok) {
            (Some(z), true) => (
                [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
                z.clone(),
            )
                .into_response(),
            _ => asset.body.clone().into_response(),
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&asset.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    response
}
