//! OAuth connect on the desktop: the system browser and a loopback
//! redirect (RFC 8252), through a listener the shell owns for one flow.
//!
//! Why the shell's own listener: the flow's binding cookie
//! (`__Host-latchkey-oauth`, which proves on the callback that the browser
//! finishing a flow is the one that started it) is set on the window's
//! `/start` request and so lives in the shell's jar, never in the system
//! browser. A provider redirecting the system browser to the core's
//! loopback listener would arrive without it and be refused there.
//!
//! So, when the window starts a flow (`POST /api/connections/<p>/start`):
//! 1. the shell binds `127.0.0.1:0` (an ephemeral port, RFC 8252 §7.3)
//!    and presents the `/start` request to the core under that origin, so
//!    the core's redirect URI is `http://127.0.0.1:PORT/api/connections/
//!    <p>/callback`;
//! 2. from the core's answer it keeps the provider and the flow's `state`
//!    (never logged), and serves that port — nothing else listens on it;
//! 3. the window's navigation to the provider goes to the system browser
//!    (`crate::window`); the provider sends it back to the port;
//! 4. the listener takes exactly one request: `GET` of that provider's
//!    callback path, `Host: 127.0.0.1:PORT` (a DNS-rebound page names
//!    another host), whose `state` equals the flow's (constant-time). It
//!    replays it into the core's [`Front`] with the jar's binding cookie
//!    only, answers the browser tab with a short "you can close this tab"
//!    page (the code never reaches a page with script or links), and sends
//!    the window to the connections screen; then the listener closes: a
//!    replay finds nothing listening. A wrong or missing `state`, another
//!    path, method or host is refused and leaves the flow waiting;
//! 5. a flow not finished within the core's state lifetime (10 minutes),
//!    a newer `/start` or the app quitting closes the listener.
//!
//! What this accepts, as RFC 8252 §8.3 does: a local process that learns
//! the `state` (it is in the system browser's URL bar) could deliver a
//! code of its own choosing first. The core's PKCE verifier (which never
//! leaves the process) makes any code not issued for this flow useless,
//! and the state is single-use at both the shell and the core.
//!
//! The redirect URI to register at the provider is port-less,
//! `http://127.0.0.1/api/connections/<p>/callback` (the connections
//! screen shows it so): providers honour any port on a loopback redirect
//! for native apps (RFC 8252 §7.3: Google's "Desktop app" clients,
//! GitHub, Microsoft's "mobile and desktop" platform, `oidc-provider`'s
//! `application_type: native`).

use crate::scheme::Jar;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use latchkey_core::http::Front;
use latchkey_core::http::connections::BINDING_COOKIE;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// How long a flow waits for its callback: the core's state lifetime.
pub const FLOW_LIFETIME: Duration =
    Duration::from_secs(latchkey_core::connections::STATE_LIFETIME_SECS.unsigned_abs());

/// Sends the window to a path of its own origin (shown and focused).
pub type Navigate = Arc<dyn Fn(String) + Send + Sync>;

/// The provider named by `POST /api/connections/<p>/start`, if `path` is
/// that.
pub fn start_provider<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    if *method != Method::POST {
        return None;
    }
    let p = path
        .strip_prefix("/api/connections/")?
        .strip_suffix("/start")?;
    (!p.is_empty() && !p.contains('/')).then_some(p)
}

/// Paths whose answers name the redirect URI to register
/// (`/api/connections/providers`, `/api/connections/<p>/client`): the
/// shell presents them under the port-less loopback origin.
pub fn names_redirect_uri(path: &str) -> bool {
    path == "/api/connections/providers"
        || path
            .strip_prefix("/api/connections/")
            .and_then(|r| r.strip_suffix("/client"))
            .is_some_and(|p| !p.is_empty() && !p.contains('/'))
}

/// The `state` of an authorization URL.
pub fn state_of(authorize_url: &str) -> Option<Zeroizing<String>> {
    let url = url::Url::parse(authorize_url).ok()?;
    let mut states = url.query_pairs().filter(|(k, _)| k == "state");
    let (_, v) = states.next()?;
    if states.next().is_some() || v.is_empty() {
        return None;
    }
    Some(Zeroizing::new(v.into_owned()))
}

/// A loopback port bound for one flow, not yet serving.
pub struct Bound {
    listener: tokio::net::TcpListener,
    pub port: u16,
}

impl Bound {
    /// Binds `127.0.0.1:0`.
    pub async fn new() -> std::io::Result<Bound> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        Ok(Bound { listener, port })
    }

    /// `127.0.0.1:PORT`, the authority the flow is presented under.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The flow the window started last (at most one: a newer `/start`
/// replaces the binding cookie in the jar, so an older flow could not end
/// well anyway).
pub struct Flows {
    current: Mutex<Option<Current>>,
    seq: AtomicU64,
    navigate: Navigate,
}

struct Current {
    id: u64,
    stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.current.lock().is_ok_and(|c| c.is_some());
        write!(f, "Flows(pending: {pending})")
    }
}

/// One flow's listener.
struct Flow {
    id: u64,
    provider: String,
    state: Zeroizing<String>,
    port: u16,
    front: Front,
    jar: Arc<Jar>,
    navigate: Navigate,
    taken: AtomicBool,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Flows {
    /// No flow yet; `navigate` sends the window where a flow ends.
    pub fn new(navigate: Navigate) -> Flows {
        Flows {
            current: Mutex::new(None),
            seq: AtomicU64::new(0),
            navigate,
        }
    }

    /// Serves `bound` for the flow the core just started for `provider`
    /// (its authorization URL carries the `state`); closes any earlier one.
    pub fn begin(
        self: &Arc<Self>,
        bound: Bound,
        provider: &str,
        state: Zeroizing<String>,
        front: Front,
        jar: Arc<Jar>,
    ) {
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        if let Ok(mut c) = self.current.lock()
            && let Some(old) = c.replace(Current { id, stop: stop_tx })
        {
            let _ = old.stop.send(());
        }
        let flow = Arc::new(Flow {
            id,
            provider: provider.to_string(),
            state,
            port: bound.port,
            front,
            jar,
            navigate: Arc::clone(&self.navigate),
            taken: AtomicBool::new(false),
            done: Mutex::new(Some(done_tx)),
        });
        tracing::info!(
            provider,
            port = bound.port,
            "waiting for the OAuth redirect on loopback"
        );
        let flows = Arc::clone(self);
        tokio::spawn(async move {
            let handler_flow = Arc::clone(&flow);
            let app = axum::Router::new().fallback(move |req: Request<Body>| {
                let flow = Arc::clone(&handler_flow);
                async move { flow.answer(req).await }
            });
            let ended = async move {
                tokio::select! {
                    _ = stop_rx => "replaced or stopped",
                    _ = done_rx => "the callback came",
                    () = tokio::time::sleep(FLOW_LIFETIME) => "expired",
                }
            };
            let (tx, rx) = oneshot::channel::<&'static str>();
            let serve = axum::serve(bound.listener, app).with_graceful_shutdown(async move {
                let why = ended.await;
                let _ = tx.send(why);
            });
            // Bounded: a browser holding its connection open cannot keep
            // the port once the flow is over.
            let serving = tokio::spawn(async move { serve.await });
            let why = rx.await.unwrap_or("stopped");
            let abort = serving.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), serving)
                .await
                .is_err()
            {
                abort.abort();
            }
            flows.forget(flow.id);
            tracing::info!(port = flow.port, why, "closed the OAuth redirect listener");
        });
    }

    /// Closes the current flow's listener, if any (quit, lock).
    pub fn stop(&self) {
        if let Ok(mut c) = self.current.lock()
            && let Some(old) = c.take()
        {
            let _ = old.stop.send(());
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut c) = self.current.lock()
            && c.as_ref().is_some_and(|cur| cur.id == id)
        {
            *c = None;
        }
    }

    /// Whether a flow is waiting for its callback.
    #[cfg(test)]
    pub fn pending(&self) -> bool {
        self.current.lock().is_ok_and(|c| c.is_some())
    }
}

impl Flow {
    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        if req.method() != Method::GET {
            return page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not here",
                "This address only takes the provider's redirect.",
            );
        }
        let host_ok = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h.eq_ignore_ascii_case(&format!("127.0.0.1:{}", self.port)));
        if !host_ok {
            tracing::warn!("refused an OAuth redirect: wrong Host");
            return page(
                StatusCode::BAD_REQUEST,
                "Not here",
                "This address only takes the provider's redirect.",
            );
        }
        let callback = format!("/api/connections/{}/callback", self.provider);
        if req.uri().path() != callback {
            return page(
                StatusCode::NOT_FOUND,
                "Not found",
                "This address only takes the provider's redirect.",
            );
        }
        let query = req.uri().query().unwrap_or("");
        if !self.state_matches(query) {
            tracing::warn!(
                provider = %self.provider,
                "refused an OAuth redirect: its state is not the flow's"
            );
            return page(
                StatusCode::BAD_REQUEST,
                "Not the sign-in Latchkey is waiting for",
                "This link does not belong to the connection Latchkey started. Start the \
                 connection again from the Latchkey window.",
            );
        }
        if self.taken.swap(true, Ordering::SeqCst) {
            return page(
                StatusCode::BAD_REQUEST,
                "Already used",
                "This sign-in was used already.",
            );
        }
        let outcome = self.replay(query).await;
        if let Ok(mut d) = self.done.lock()
            && let Some(tx) = d.take()
        {
            let _ = tx.send(());
        }
        let name: String = form_urlencoded::byte_serialize(self.provider.as_bytes()).collect();
        match outcome {
            Ok(()) => {
                tracing::info!(provider = %self.provider, "connected through the system browser");
                (self.navigate)(format!("/connections?connected={name}"));
                page(
                    StatusCode::OK,
                    "Connected",
                    &format!(
                        "Latchkey is connected to {}. You can close this tab and go back to \
                         Latchkey.",
                        escape(&self.provider)
                    ),
                )
            }
            Err(code) => {
                tracing::warn!(provider = %self.provider, code = %code, "the OAuth callback failed");
                let code_q: String = form_urlencoded::byte_serialize(code.as_bytes()).collect();
                (self.navigate)(format!("/connections?error={code_q}&provider={name}"));
                page(
                    StatusCode::BAD_REQUEST,
                    "Not connected",
                    &format!(
                        "The connection to {} was not made ({}). You can close this tab; \
                         Latchkey says more.",
                        escape(&self.provider),
                        escape(&code)
                    ),
                )
            }
        }
    }

    /// Exactly one `state` parameter, equal to the flow's.
    fn state_matches(&self, query: &str) -> bool {
        let mut states = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "state");
        let (Some((_, got)), None) = (states.next(), states.next()) else {
            return false;
        };
        let (a, b) = (got.as_bytes(), self.state.as_bytes());
        a.len() == b.len() && bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
    }

    /// The callback, into the core with the jar's binding cookie; `Err`
    /// carries the core's error code.
    async fn replay(&self, query: &str) -> Result<(), String> {
        let uri = format!("/api/connections/{}/callback?{query}", self.provider);
        let mut req = Request::new(http_body_util::Full::new(bytes::Bytes::new()));
        *req.uri_mut() = uri.parse().map_err(|_| "invalid_request".to_string())?;
        let h = req.headers_mut();
        let host = HeaderValue::from_str(&format!("127.0.0.1:{}", self.port))
            .map_err(|_| "invalid_request".to_string())?;
        h.insert(header::HOST, host);
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(v) = self.jar.get(BINDING_COOKIE)
            && let Ok(c) = HeaderValue::from_str(&format!("{BINDING_COOKIE}={}", v.as_str()))
        {
            h.insert(header::COOKIE, c);
        }
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let resp = self
            .front
            .call(req, peer, latchkey_core::serve::Scheme::Http)
            .await;
        let (parts, body) = resp.into_parts();
        for v in parts.headers.get_all(header::SET_COOKIE) {
            if let Ok(v) = v.to_str() {
                self.jar.store(v);
            }
        }
        if parts.status == StatusCode::OK {
            return Ok(());
        }
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or_else(|| "server_error".to_string());
        Err(code)
    }
}

const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
                        base-uri 'none'; form-action 'none'";

/// The browser tab's page: no script, no links, no referrer (its URL holds
/// the code), not cached.
fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>Latchkey: {t}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;\
         padding:0 1rem;color:#1d2433}}h1{{font-size:1.4rem}}</style></head>\
         <body><h1>{t}</h1><p>{text}</p></body></html>",
        t = escape(title),
    );
    let mut r = Response::new(Body::from(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[path = "oauth_tests.rs"]
mod tests;
