//! `/agent/{name}/{*path}`: the HTTP edge of [`crate::agent`]. Here the
//! caller is authenticated — by exactly the rules of [`super::authn`] (the
//! same extractor runs): an API key (`Authorization: Bearer lk_…` or
//! `x-api-key: lk_…`), an access token (`Bearer lka_…`), or the session
//! cookie with its CSRF rule for methods other than GET/HEAD/OPTIONS. The
//! difference: an `Authorization` or `x-api-key` that is not a Latchkey
//! credential belongs to the backend and is not a reason to refuse, so
//! only the Latchkey credential is handed to the extractor. The host's
//! admin token is refused: it stands for the machine, not a person a
//! backend could know. A WebSocket upgrade (any `Upgrade`) authenticated
//! by the cookie must carry our exact `Origin` (authn's rule for
//! upgrades). `/api/verify` ([`super::verify`]) uses the same [`caller`].
//!
//! The request then goes to [`crate::agent::forward::respond`] with the
//! caller, a way to authenticate it again (WebSockets and streamed answers
//! end when the credential does) and the pieces of the state it reads; its
//! [`crate::agent::AgentError`]s become our error shape here.

use super::AppState;
use super::authn::{self, API_KEY_HEADER, Authenticated, SESSION_COOKIE};
use super::error::ApiError;
use super::middleware;
use super::origin;
use crate::agent::forward::{AgentContext, Caller, Reauthenticate};
use crate::auth::{Principal, Via};
use crate::net::body::{DRAIN_LIMIT, DRAIN_TIME, drain};
use crate::net::headers::bearer;
use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use std::sync::Arc;

/// The agent routes, to be merged outside the API's time and body limits
/// (each agent's timeouts apply, and bodies stream).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agent/{name}", any(handle))
        .route("/agent/{name}/", any(handle))
        .route("/agent/{name}/{*path}", any(handle))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
}

/// `ANY /agent/{name}/{*path}`.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    // Before the credential is checked: a revocation from now on reaches
    // the connection (WebSocket or streamed answer).
    let revocations = state.auth.revocations.subscribe();
    let (parts, body) = req.into_parts();
    // Unauthenticated callers learn nothing about agent names.
    let who = match caller(&state, &parts, &parts.method).await {
        Ok(Some(who)) => who,
        refused => {
            let e = refused.err().unwrap_or_else(ApiError::unauthenticated);
            // Refused before the body was used (so HTTP/2 clients still
            // sending get the answer, not a reset).
            drain(body, DRAIN_LIMIT, DRAIN_TIME).await;
            return e.into_response();
        }
    };
    let scheme = origin::request_scheme(&state, &parts.headers, &parts.extensions);
    let ctx = AgentContext {
        agents: &state.agents,
        trusted_proxies: &state.trusted_proxies,
        forwarded_proto: HeaderValue::from_static(scheme.as_str()),
    };
    let caller = Caller {
        who,
        revocations,
        reauthenticate: reauthenticator(&state),
    };
    let req = Request::from_parts(parts, body);
    match crate::agent::forward::respond(&ctx, caller, req).await {
        Ok(resp) => resp,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// [`caller`] again, on the parts the agent keeps: `None` once the
/// credential no longer passes (or anything refuses it).
fn reauthenticator(state: &AppState) -> Reauthenticate {
    let state = state.clone();
    Arc::new(move |parts: Parts| {
        let state = state.clone();
        Box::pin(async move {
            let method = parts.method.clone();
            caller(&state, &parts, &method).await.ok().flatten()
        })
    })
}

/// Authenticates the caller of `parts`; `method` is what the CSRF rule
/// judges (the original method, for forward-auth). `None`: no Latchkey
/// credential at all.
pub async fn caller(
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
        if let Some(cookie) = authn::session_cookie(h) {
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
