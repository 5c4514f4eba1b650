//! The window's way into the core: the `latchkey` URI scheme.
//!
//! The window shows `latchkey://localhost/` (`http://latchkey.localhost/`
//! on Windows, where WebView2 maps custom schemes so). Each request the
//! page makes arrives here, in the shell, and goes straight into the
//! core's [`Front`] — the same router the loopback listener serves — with
//! no socket in between. Why not load `http://127.0.0.1:PORT` itself:
//! WebKitGTK drops `Secure` cookies on plain loopback origins, so the
//! session cookie (`__Host-latchkey_session; Secure; HttpOnly`) would never
//! stick there.
//!
//! Instead the shell keeps the cookies ([`Jar`]): `Set-Cookie` is taken
//! off every response and never reaches the webview, and the jar's
//! cookies go on the next request. Script in the window cannot read the
//! session cookie (the webview never has it), nothing is in web storage.
//!
//! WebKitGTK sends no `Origin` to custom schemes, so the shell supplies
//! the one the core checks (the loopback listener's origin, under which
//! the window's requests are presented): only for a request from our
//! window while it shows our own page ([`admit`]), and never when the
//! request names another origin. Foreign pages never get there: the
//! window's navigation is held to our origin (`crate::window`), every
//! other link opens in the system browser, and no other process can load
//! a custom scheme of ours. A page on the loopback listener (any local
//! program can reach it) gets no cookie from the jar: the jar only serves
//! this scheme — and, for one OAuth flow, its binding cookie goes to the
//! core with that flow's own callback (`crate::oauth`, which is also why
//! a flow's `/start` is presented under its redirect listener's port).

use crate::engine::{Engine, Phase};
use crate::oauth::{self, Flows};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use url::Url;

/// The scheme's name.
pub const SCHEME: &str = "latchkey";
/// Paths the shell answers itself (its own screens), never the core.
pub const SHELL_PREFIX: &str = "/_desktop/";

/// The origin the window's pages have, as the webview reports their URL.
pub fn page_origin() -> &'static str {
    if cfg!(windows) {
        "http://latchkey.localhost"
    } else {
        "latchkey://localhost"
    }
}

/// The URL of `path` in the window.
pub fn page_url(path: &str) -> Option<Url> {
    Url::parse(&format!("{}{path}", page_origin())).ok()
}

/// Whether `url` is one of our own pages.
pub fn is_own(url: &Url) -> bool {
    url.origin().ascii_serialization() == page_origin()
        || (url.scheme() == SCHEME && url.host_str() == Some("localhost"))
}

/// What [`admit`] decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// From our page: forwarded with the jar's cookies and our origin.
    Own,
    /// Refused: 403, nothing forwarded, no cookie used.
    Foreign,
}

/// A request is ours when the webview that sent it shows one of our pages
/// and it names no other origin (`Origin` absent — WebKitGTK's fetches to
/// custom schemes — or our page's origin). WebKitGTK's form posts from our
/// page say `Origin: null` (it treats the custom scheme's origin as
/// opaque): accepted only for the shell's own pages (`path` under
/// [`SHELL_PREFIX`], which use no cookie), never for the core's.
pub fn admit(page: Option<&Url>, origin_header: Option<&str>, path: &str) -> Access {
    let page_ok = page.is_some_and(is_own);
    let origin_ok = match origin_header {
        None => true,
        Some("null") => path.starts_with(SHELL_PREFIX),
        Some(o) => o.eq_ignore_ascii_case(page_origin()) || Url::parse(o).is_ok_and(|u| is_own(&u)),
    };
    if page_ok && origin_ok {
        Access::Own
    } else {
        Access::Foreign
    }
}

/// The window's cookies, kept in the shell (see the module docs).
#[derive(Default)]
pub struct Jar {
    cookies: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Jar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.cookies.lock().map_or(0, |c| c.len());
        write!(f, "Jar({n} cookies, values redacted)")
    }
}

impl Jar {
    /// The `Cookie` header for the next request, if any.
    pub fn header(&self) -> Option<String> {
        let cookies = self.cookies.lock().ok()?;
        if cookies.is_empty() {
            return None;
        }
        Some(
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// Takes one `Set-Cookie` value: stored, or removed when it expires it
    /// (`Max-Age` of zero or less, an empty value).
    pub fn store(&self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        if name.is_empty() {
            return;
        }
        let expired = value.is_empty()
            || parts.any(|a| {
                let a = a.trim();
                a.get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("max-age="))
                    && a[8..].trim().parse::<i64>().is_ok_and(|n| n <= 0)
            });
        if let Ok(mut c) = self.cookies.lock() {
            if expired {
                c.remove(&name);
            } else {
                c.insert(name, value);
            }
        }
    }

    /// One cookie's value (the OAuth redirect listener takes the flow's
    /// binding cookie, and only it, to the core: `crate::oauth`).
    pub fn get(&self, name: &str) -> Option<zeroize::Zeroizing<String>> {
        let cookies = self.cookies.lock().ok()?;
        cookies
            .get(name)
            .map(|v| zeroize::Zeroizing::new(v.clone()))
    }

    /// Forgets every cookie (the session ends with the app).
    pub fn clear(&self) {
        if let Ok(mut c) = self.cookies.lock() {
            c.clear();
        }
    }
}

/// Answers one request of the window.
pub async fn answer(
    engine: &Arc<Engine>,
    jar: &Arc<Jar>,
    flows: &Arc<Flows>,
    page: Option<Url>,
    req: Request<Vec<u8>>,
) -> Response<Vec<u8>> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let path = req.uri().path().to_string();
    if admit(page.as_ref(), origin, &path) == Access::Foreign {
        tracing::warn!(
            page = ?page.map(|u| u.origin().ascii_serialization()),
            origin = ?origin,
            "refused a request to the window's scheme: not from our page"
        );
        return plain(StatusCode::FORBIDDEN, "forbidden");
    }
    if path.starts_with(SHELL_PREFIX) {
        return crate::screens::answer(engine, req).await;
    }
    match engine.phase() {
        Phase::Running(live) => forward(&live, jar, flows, req).await,
        _ => crate::screens::not_running(engine, &path),
    }
}

async fn forward(
    live: &crate::engine::Live,
    jar: &Arc<Jar>,
    flows: &Arc<Flows>,
    req: Request<Vec<u8>>,
) -> Response<Vec<u8>> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // The origin the request is presented under (see the module docs):
    // the loopback listener's, except for OAuth — a flow's `/start` goes
    // under the port of its own redirect listener, so that the core's
    // redirect URI names it, and the answers that show the redirect URI
    // to register name the port-less loopback origin (`crate::oauth`).
    let flow_provider = oauth::start_provider(&parts.method, &path).map(str::to_string);
    let bound = match flow_provider {
        Some(_) => match oauth::Bound::new().await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "could not bind a loopback port for the OAuth redirect");
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no loopback port for the OAuth redirect",
                );
            }
        },
        None => None,
    };
    let authority = match &bound {
        Some(b) => b.authority(),
        None if oauth::names_redirect_uri(&path) => "127.0.0.1".to_string(),
        None => live.host_authority.clone(),
    };
    // Only the path and query travel; the core sees the request as sent
    // to its loopback listener by the page of that origin.
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request"),
    };
    let h = &mut parts.headers;
    h.remove(header::COOKIE);
    h.remove(header::ORIGIN);
    h.remove("sec-fetch-site");
    for name in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ] {
        h.remove(name);
    }
    let (Ok(host), Ok(origin)) = (
        HeaderValue::from_str(&authority),
        HeaderValue::from_str(&format!("http://{authority}")),
    ) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "bad origin");
    };
    h.insert(header::HOST, host);
    h.insert(header::ORIGIN, origin);
    if let Some(c) = jar.header().and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::COOKIE, c);
    }
    let req = Request::from_parts(parts, http_body_util::Full::new(bytes::Bytes::from(body)));
    // The window is on this machine, but it is not "the host" of
    // `net::client::from_host` (which would only matter with the admin
    // token, which the window never has): an address no listener uses.
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let resp = live
        .front
        .call(req, peer, latchkey_core::serve::Scheme::Http)
        .await;
    let (mut parts, body) = resp.into_parts();
    for v in parts.headers.get_all(header::SET_COOKIE) {
        if let Ok(v) = v.to_str() {
            jar.store(v);
        }
    }
    parts.headers.remove(header::SET_COOKIE);
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the core's answer for the window failed");
            return plain(StatusCode::BAD_GATEWAY, "bad gateway");
        }
    };
    if let (Some(bound), Some(provider)) = (bound, flow_provider)
        && parts.status == StatusCode::OK
    {
        let state = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["authorize_url"].as_str().and_then(oauth::state_of));
        match state {
            Some(state) => {
                flows.begin(bound, &provider, state, live.front.clone(), Arc::clone(jar))
            }
            None => {
                tracing::warn!("the core's /start answer carries no state; no redirect listener")
            }
        }
    }
    Response::from_parts(parts, bytes)
}

pub fn plain(status: StatusCode, text: &str) -> Response<Vec<u8>> {
    let mut r = Response::new(text.as_bytes().to_vec());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn only_our_page_gets_in() {
        let own = page_url("/vault").expect("own");
        assert_eq!(admit(Some(&own), None, "/api/vault"), Access::Own);
        assert_eq!(
            admit(Some(&own), Some(page_origin()), "/api/vault"),
            Access::Own
        );
        // A foreign page in the window (were navigation ever to let one
        // in), with or without an Origin of its own.
        let evil = url("http://127.0.0.1:9/evil");
        assert_eq!(admit(Some(&evil), None, "/api/vault"), Access::Foreign);
        assert_eq!(
            admit(Some(&evil), Some("http://127.0.0.1:9"), "/api/vault"),
            Access::Foreign
        );
        assert_eq!(
            admit(Some(&url("https://evil.example/")), None, "/"),
            Access::Foreign
        );
        // Our page, but the request names another origin.
        assert_eq!(
            admit(Some(&own), Some("https://evil.example"), "/api/vault"),
            Access::Foreign
        );
        // `null` (an opaque origin): only the shell's own forms.
        assert_eq!(
            admit(Some(&own), Some("null"), "/api/vault"),
            Access::Foreign
        );
        assert_eq!(
            admit(Some(&own), Some("null"), "/_desktop/retry"),
            Access::Own
        );
        assert_eq!(
            admit(Some(&evil), Some("null"), "/_desktop/retry"),
            Access::Foreign
        );
        // No page known (no such webview).
        assert_eq!(admit(None, None, "/"), Access::Foreign);
        // Look-alikes.
        assert_eq!(
            admit(Some(&url("latchkey://evil.example/")), None, "/"),
            Access::Foreign
        );
        assert_eq!(
            admit(Some(&url("http://localhost.evil/")), None, "/"),
            Access::Foreign
        );
    }

    #[test]
    fn jar_keeps_sets_and_expires() {
        let jar = Jar::default();
        assert_eq!(jar.header(), None);
        jar.store("__Host-latchkey_session=abc; Path=/; Secure; HttpOnly; SameSite=Strict");
        jar.store("lk_oauth=x1; Path=/api/connections; Max-Age=600");
        assert_eq!(
            jar.header().as_deref(),
            Some("__Host-latchkey_session=abc; lk_oauth=x1")
        );
        jar.store("lk_oauth=; Path=/; Max-Age=0");
        assert_eq!(jar.header().as_deref(), Some("__Host-latchkey_session=abc"));
        jar.store("__Host-latchkey_session=gone; Max-Age=0");
        assert_eq!(jar.header(), None);
        jar.store("garbage");
        assert_eq!(jar.header(), None);
        jar.store("a=cookie-value-xyz");
        assert!(
            !format!("{jar:?}").contains("cookie-value-xyz"),
            "values redacted"
        );
        jar.clear();
        assert_eq!(jar.header(), None);
    }
}
