//! Who is calling an agent route or `/api/verify`, and the identity
//! headers that say so.
//!
//! The caller is authenticated by exactly the rules of
//! [`crate::http::authn`] (the same extractor runs): an API key
//! (`Authorization: Bearer lk_…` or `x-api-key: lk_…`), an access token
//! (`Bearer lka_…`), or the session cookie — with its CSRF rule for
//! methods other than GET/HEAD/OPTIONS. The difference: an `Authorization`
//! or `x-api-key` that is not a Latchkey credential belongs to the backend
//! and is not a reason to refuse, so only the Latchkey credential is handed
//! to the extractor. The host's admin token is refused here: it stands for
//! the machine, not a person a backend could know. A WebSocket upgrade
//! (any `Upgrade`) authenticated by the cookie must carry our exact
//! `Origin` (authn's rule for upgrades).

use super::assertion::Claims;
use crate::auth::scope::Role;
use crate::auth::{Principal, Via};
use crate::http::ApiError;
use crate::http::AppState;
use crate::http::authn::{API_KEY_HEADER, Authenticated, SESSION_COOKIE};
use crate::net::headers::bearer;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};

pub const USER: HeaderName = HeaderName::from_static("x-latchkey-user");
pub const ROLE: HeaderName = HeaderName::from_static("x-latchkey-role");
pub const KEY: HeaderName = HeaderName::from_static("x-latchkey-key");
pub const ASSERTION: HeaderName = HeaderName::from_static("x-latchkey-assertion");

/// Token prefixes Latchkey hands out: API keys, access tokens, sessions.
const PREFIXES: [&str; 3] = ["lk_", "lka_", "lks_"];

/// Whether `value` carries something that looks like a Latchkey
/// credential: a word starting with one of [`PREFIXES`].
pub fn looks_like_credential(value: &[u8]) -> bool {
    let s = String::from_utf8_lossy(value);
    s.split(|c: char| c.is_ascii_whitespace() || matches!(c, ',' | ';' | '=' | ':' | '"'))
        .any(|w| PREFIXES.iter().any(|p| w.starts_with(p)))
}

/// Authenticates the caller of `parts`; `method` is what the CSRF rule
/// judges (the original method, for forward-auth). `None`: no Latchkey
/// credential at all.
pub async fn authenticate(
    state: &AppState,
    parts: &Parts,
    method: &Method,
) -> Result<Option<Principal>, ApiError> {
    let h = &parts.headers;
    // Only the Latchkey credential (first found, in authn's order) and what
    // the CSRF rule reads are shown to the extractor.
    let mut shown = HeaderMap::new();
    if let Some(token) = bearer(h) {
        if token.starts_with("lk_") || token.starts_with("lka_") {
            copy(h, &mut shown, &header::AUTHORIZATION);
        } else if state.admin.verify(token) {
            return Err(ApiError::forbidden(
                "the host's admin token does not open agent backends; use an API key or sign in",
            ));
        }
    }
    if shown.is_empty()
        && h.get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().starts_with("lk_"))
    {
        copy(h, &mut shown, &HeaderName::from_static(API_KEY_HEADER));
    }
    if shown.is_empty() {
        if let Some(cookie) = crate::http::authn::session_cookie(h) {
            let v = HeaderValue::from_str(&format!("{SESSION_COOKIE}={cookie}"))
                .map_err(|_| ApiError::unauthenticated())?;
            shown.insert(header::COOKIE, v);
        } else {
            return Ok(None);
        }
    }
    // `Upgrade` too: a cookie-authenticated WebSocket must be same-origin.
    for name in [header::HOST, header::ORIGIN, header::UPGRADE] {
        copy(h, &mut shown, &name);
    }
    copy(h, &mut shown, &HeaderName::from_static("sec-fetch-site"));

    let mut req = axum::http::Request::builder()
        .method(method.clone())
        .uri(parts.uri.clone())
        .version(parts.version)
        .body(())
        .map_err(|e| ApiError::Internal(format!("agent auth request: {e}")))?;
    *req.headers_mut() = shown;
    if let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        req.extensions_mut().insert(*peer);
    }
    let (mut p, ()) = req.into_parts();
    let Authenticated(who) = Authenticated::from_request_parts(&mut p, state).await?;
    if matches!(who.via, Via::Host) {
        return Err(ApiError::forbidden(
            "the host's admin token does not open agent backends; use an API key or sign in",
        ));
    }
    Ok(Some(who))
}

fn copy(from: &HeaderMap, to: &mut HeaderMap, name: &HeaderName) {
    for v in from.get_all(name) {
        to.append(name.clone(), v.clone());
    }
}

/// Whether an agent open to `roles` lets `who` in.
pub fn role_allowed(who: &Principal, roles: &[Role]) -> bool {
    roles.contains(&who.role)
}

/// The identity headers for `who`, with an assertion for `audience`.
pub fn headers(
    state: &AppState,
    who: &Principal,
    audience: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ApiError> {
    let claims = Claims::new(who, audience, crate::auth::service::now());
    let jwt = state.agents.signer.sign(&claims)?;
    let value = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ApiError::Internal("identity is not a valid header value".into()))
    };
    let mut out = vec![
        (USER, value(&who.username)?),
        (ROLE, value(who.role.as_str())?),
    ];
    if let Some(id) = &claims.key_id {
        out.push((KEY, value(id)?));
    }
    let mut a = value(&jwt)?;
    a.set_sensitive(true);
    out.push((ASSERTION, a));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_shapes() {
        for yes in [
            "Bearer lk_abc",
            "lk_abc",
            "  lka_x",
            "a=1; __Host-latchkey_session=lks_abc",
            "Token lks_x",
        ] {
            assert!(looks_like_credential(yes.as_bytes()), "{yes}");
        }
        for no in ["Bearer abc", "walk_fast", "Basic bGtfYWJj", "milk_"] {
            assert!(!looks_like_credential(no.as_bytes()), "{no}");
        }
    }
}
