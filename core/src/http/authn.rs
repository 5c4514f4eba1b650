//! Who is calling: the [`Authenticated`] extractor, the CSRF check, the
//! session cookie, client addresses and the per-IP rate limit of the auth
//! endpoints.
//!
//! Credentials are looked for in this order, the first present wins:
//! 1. `Authorization: Bearer …` — an access token (`lka_…`), an API key
//!    (`lk_…`), or the host's admin token (`DATA_DIR/admin.token`, only
//!    from the host itself — see [`from_host`]; it yields
//!    [`Auth::host_principal`]);
//! 2. `x-api-key: lk_…`;
//! 3. the `__Host-latchkey_session` cookie — and then a request with a
//!    method other than GET/HEAD/OPTIONS must be same-origin (`Origin`
//!    equal to the request's own origin — scheme and host as the browser
//!    used them, see [`super::origin`] — or `server.public_url`, or
//!    `Sec-Fetch-Site: same-origin`), else 403 `csrf`; a request with
//!    `Upgrade` (a WebSocket), whatever its method, needs such an `Origin`
//!    exactly. Bearer
//!    credentials need no such check: browsers never attach them on their
//!    own.
//!
//! Nothing here logs a credential; failures are one opaque 401.

use super::AppState;
use super::error::ApiError;
use crate::auth::scope::{Permission, Scope};
use crate::auth::{Auth, AuthError, Principal, Via};
use crate::net::headers::bearer;
use crate::net::{client, cookie};
use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// The session cookie's name. `__Host-` makes browsers insist on Secure,
/// `Path=/` and no `Domain`, so no sibling host can set or read it. The
/// flags are the same with `server.tls = false`: behind a TLS-terminating
/// proxy the browser sees HTTPS, and on a plain loopback origin
/// (`http://127.0.0.1:…`, `http://localhost:…`, the only other place plain
/// HTTP is allowed) Chromium (156, checked) and Firefox keep `Secure` and
/// `__Host-` cookies; WebKit (Safari, WKWebView, and so probably a Tauri
/// webview) does not yet, so a WebKit client of a plain loopback origin gets
/// no session cookie (it can use bearer tokens).
pub const SESSION_COOKIE: &str = "__Host-latchkey_session";

/// The API key header some SDKs use instead of `Authorization`.
pub use crate::net::headers::API_KEY_HEADER;

/// An authenticated caller. Handlers take it as an argument; a request
/// without valid credentials never reaches them (401 `unauthenticated`).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl Authenticated {
    /// The one permission check of an endpoint: `scope` must be allowed
    /// (for API keys: by the key's scopes **and** the owner's role; for
    /// people: by their role). 403 `forbidden` otherwise.
    pub fn require(&self, scope: &Scope) -> Result<(), ApiError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs `{scope}`")))
        }
    }

    /// Requires a role permission; API keys additionally need the scope
    /// that stands for it (`admin` for the admin-only permissions,
    /// `keys:manage` for key management).
    pub fn require_permission(&self, perm: Permission) -> Result<(), ApiError> {
        let scope = match perm {
            Permission::ManageOwnKeys => Scope::KeysManage,
            _ if Permission::ADMIN_ONLY.contains(&perm) => Scope::Admin,
            _ => return Err(ApiError::Internal(format!("no scope stands for {perm:?}"))),
        };
        if self.0.role.may(perm) && self.0.allows(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs `{scope}`")))
        }
    }

    /// Only a person signed in (session or access token) manages their own
    /// account; keys and the host token have no account of their own.
    pub fn require_person(&self) -> Result<(), ApiError> {
        match self.0.via {
            Via::Session { .. } | Via::AccessToken { .. } => Ok(()),
            Via::ApiKey { .. } | Via::Host => Err(ApiError::forbidden(
                "this is for a signed-in user, not an API key or the host token",
            )),
        }
    }
}

/// The peer's address (set by the server's accept loop), if known.
pub fn peer(parts_ext: &axum::http::Extensions) -> Option<SocketAddr> {
    client::peer(parts_ext)
}

/// Whether the request was relayed ([`client::relayed`], with
/// `auth.trusted_proxies`).
pub fn relayed(state: &AppState, headers: &HeaderMap, ext: &axum::http::Extensions) -> bool {
    client::relayed(&state.trusted_proxies, headers, ext)
}

/// Whether the request comes from the host itself, with the authority
/// that gives (the admin token, `/metrics` in `loopback` mode): a
/// loopback peer **and** not relayed ([`client::from_host`]). Every
/// handler asks here; none looks at the peer address for that itself.
pub fn from_host(state: &AppState, headers: &HeaderMap, ext: &axum::http::Extensions) -> bool {
    client::from_host(&state.trusted_proxies, headers, ext)
}

/// The client's address for rate limits and the audit log: the peer, or
/// what a trusted proxy says in `X-Forwarded-For` ([`client::client_ip`]).
pub fn client_ip(state: &AppState, headers: &HeaderMap, ext: &axum::http::Extensions) -> IpAddr {
    client::client_ip(&state.trusted_proxies, headers, ext)
}

pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect())
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie::get(headers, SESSION_COOKIE)
}

/// The known-device cookie: set after a completed sign-in, it lets that
/// browser sign in to the same account past locks caused by failures from
/// elsewhere (see `Auth::device_cookie`). Not a credential.
pub const DEVICE_COOKIE: &str = "__Host-latchkey_device";

/// The known-device cookie's value, if the request carries one (bounded:
/// a longer value is not one of ours).
pub fn device_cookie(headers: &HeaderMap) -> Option<String> {
    cookie::get(headers, DEVICE_COOKIE)
        .filter(|v| v.len() <= 256)
        .map(str::to_owned)
}

/// `Set-Cookie` for the known-device cookie.
pub fn set_device_cookie(value: &str, max_age_secs: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}"
    ))
    .map_err(|_| ApiError::Internal("device cookie is not a valid header value".into()))
}

/// `Set-Cookie` for a new session.
pub fn set_session_cookie(token: &str, max_age_secs: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}"
    ))
    .map_err(|_| ApiError::Internal("session token is not a valid header value".into()))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-latchkey_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// Whether the request asks to switch protocols (`Upgrade`, e.g. a
/// WebSocket handshake). Such a GET is not "safe": the connection it opens
/// reads and writes as the user for as long as it lives.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// Whether `Origin` is exactly one of our own origins (scheme, host and
/// port; see [`super::origin::own_origins`]).
fn origin_is_own(parts: &Parts, own: &[String]) -> bool {
    parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| own.iter().any(|o| origin.eq_ignore_ascii_case(o)))
}

/// A cookie-authenticated request that may change state must come from our
/// own pages. An upgrade (WebSocket) must name our exact origin in
/// `Origin`, whatever its method: browsers let any page open a WebSocket
/// to any host with the cookies attached, `SameSite` does not stop a page
/// on another port of the same host, and `Sec-Fetch-Site` is not sent by
/// every client. A missing `Origin` is refused too.
fn same_origin(parts: &Parts, own: &[String]) -> bool {
    if wants_upgrade(&parts.headers) {
        return origin_is_own(parts, own);
    }
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let h = &parts.headers;
    if h.get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("same-origin"))
    {
        return true;
    }
    origin_is_own(parts, own)
}

/// Runs an [`Auth`] method on the blocking pool (argon2 and store writes
/// must not stall the async workers).
pub async fn blocking<T: Send + 'static>(
    auth: &Arc<Auth>,
    f: impl FnOnce(&Auth) -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    let auth = Arc::clone(auth);
    tokio::task::spawn_blocking(move || f(&auth))
        .await
        .map_err(|e| ApiError::Internal(format!("auth task failed: {e}")))?
        .map_err(ApiError::from)
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<Principal>, ApiError> {
    let auth = &state.auth;
    if let Some(token) = bearer(&parts.headers) {
        if token.starts_with("lk_") {
            // API keys are verified in memory: no blocking work.
            return auth
                .authenticate_key(token)
                .map(Some)
                .map_err(ApiError::from);
        }
        if token.starts_with("lka_") {
            let token = token.to_owned();
            return blocking(auth, move |a| a.authenticate_bearer(&token))
                .await
                .map(Some);
        }
        if state.admin.verify(token) && from_host(state, &parts.headers, &parts.extensions) {
            return Ok(Some(auth.host_principal()));
        }
        return Err(ApiError::unauthenticated());
    }
    if let Some(key) = parts.headers.get(API_KEY_HEADER) {
        let key = key.to_str().map_err(|_| ApiError::unauthenticated())?;
        return auth
            .authenticate_key(key.trim())
            .map(Some)
            .map_err(ApiError::from);
    }
    if let Some(cookie) = session_cookie(&parts.headers) {
        let cookie = cookie.to_owned();
        let p = blocking(auth, move |a| a.authenticate_session(&cookie)).await?;
        let own = super::origin::own_origins(state, &parts.headers, &parts.uri, &parts.extensions);
        if !same_origin(parts, &own) {
            return Err(ApiError::Csrf);
        }
        return Ok(Some(p));
    }
    Ok(None)
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state)
            .await?
            .map(Authenticated)
            .ok_or_else(ApiError::unauthenticated)
    }
}

/// `Option<Authenticated>`: no (or unusable) credentials → `None`; a
/// cross-site cookie request is still refused.
impl OptionalFromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        match authenticate(parts, state).await {
            Ok(p) => Ok(p.map(Authenticated)),
            Err(ApiError::Csrf) => Err(ApiError::Csrf),
            Err(_) => Ok(None),
        }
    }
}

/// Middleware for the auth endpoints (`/api/auth/*`, `/api/setup/*`,
/// `/api/invites/accept`, passphrase unseal): one token from the client
/// address's bucket per request, else 429 `rate_limited` + `Retry-After`;
/// with replicas, a request that presents a credential
/// ([`presents_credential`]) takes one from the bucket they share too.
pub async fn rate_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ip = client_ip(&state, req.headers(), req.extensions());
    state
        .auth
        .limiter
        .check(ip, Instant::now())
        .map_err(|r| ApiError::RateLimited { retry_after: r.0 })?;
    // Replicas share one bucket per address (after the cheap local check,
    // so a flood never reaches the store). It costs a write serialized
    // with every other of the deployment, so only the requests that could
    // guess something pay it; the rest stay limited per replica.
    if state.auth.store().is_shared() && presents_credential(req.method(), req.uri().path()) {
        blocking(&state.auth, move |a| a.check_shared_rate(ip))
            .await?
            .map_err(|r| ApiError::RateLimited { retry_after: r.0 })?;
    }
    Ok(next.run(req).await)
}

/// Whether a request to a rate-limited endpoint presents a credential
/// the server checks: every POST among them (a password, a TOTP or
/// recovery code, the setup token, an invite, a session or refresh token,
/// the passphrase) and the OAuth callback (its state). The others are
/// `GET /api/setup` — what every signed-out page asks first — and reading
/// or removing a vault entry that happens to be called `unseal`, which
/// the session authenticates. A route added to the limited set later is
/// counted as presenting one: the safe side.
fn presents_credential(method: &Method, path: &str) -> bool {
    !(matches!(path, "/api/setup" | "/api/vault/unseal") && method != Method::POST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_without_a_credential_skip_the_shared_bucket() {
        for (method, path) in [
            (Method::POST, "/api/auth/login"),
            (Method::POST, "/api/auth/mfa"),
            (Method::POST, "/api/auth/token"),
            (Method::POST, "/api/auth/refresh"),
            (Method::POST, "/api/auth/reauth"),
            (Method::POST, "/api/setup/begin"),
            (Method::POST, "/api/setup/confirm"),
            (Method::POST, "/api/setup/host"),
            (Method::POST, "/api/invites/accept"),
            (Method::POST, "/api/vault/unseal"),
            (Method::GET, "/api/connections/github/callback"),
        ] {
            assert!(presents_credential(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/api/setup"),
            (Method::HEAD, "/api/setup"),
            (Method::GET, "/api/vault/unseal"),
            (Method::DELETE, "/api/vault/unseal"),
        ] {
            assert!(!presents_credential(&method, path), "{method} {path}");
        }
    }

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder().method(method).uri("/api/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    /// `same_origin` with the origin a request to `Host:
    /// vault.example:8443` over HTTPS has.
    fn same_origin(parts: &Parts) -> bool {
        super::same_origin(parts, &["https://vault.example:8443".to_string()])
    }

    #[test]
    fn origin_checks() {
        let host = ("host", "vault.example:8443");
        assert!(same_origin(&parts(Method::GET, &[host])));
        assert!(!same_origin(&parts(Method::POST, &[host])));
        assert!(same_origin(&parts(
            Method::POST,
            &[host, ("origin", "https://vault.example:8443")]
        )));
        assert!(!same_origin(&parts(
            Method::POST,
            &[host, ("origin", "http://vault.example:8443")]
        )));
        assert!(!same_origin(&parts(
            Method::DELETE,
            &[host, ("origin", "https://evil.example")]
        )));
        assert!(same_origin(&parts(
            Method::POST,
            &[host, ("sec-fetch-site", "same-origin")]
        )));
        assert!(!same_origin(&parts(
            Method::POST,
            &[host, ("sec-fetch-site", "same-site")]
        )));
        // WebSocket upgrades: exact Origin, GET or not.
        let ws = [("upgrade", "websocket"), ("connection", "Upgrade")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = vec![host];
            all.extend_from_slice(&ws);
            all.extend_from_slice(extra);
            same_origin(&parts(Method::GET, &all))
        };
        assert!(with(&[("origin", "https://vault.example:8443")]));
        assert!(!with(&[]), "no Origin");
        assert!(
            !with(&[("origin", "https://vault.example:3000")]),
            "other port"
        );
        assert!(
            !with(&[("origin", "http://vault.example:8443")]),
            "other scheme"
        );
        assert!(!with(&[("origin", "https://vault.example")]), "no port");
        assert!(!with(&[("origin", "null")]));
        assert!(
            !with(&[("sec-fetch-site", "same-origin")]),
            "Origin required"
        );
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; __Host-latchkey_session=lks_abc ; b=2"
                .parse()
                .expect("hv"),
        );
        assert_eq!(session_cookie(&h), Some("lks_abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "latchkey_session=x".parse().expect("hv"));
        assert_eq!(session_cookie(&h), None);
    }
}
