//! `/proxy/{provider}/{*path}`: the HTTP edge of [`crate::proxy`]. The
//! proxy takes the request and the pieces of the state it reads (a
//! [`ProxyContext`]) and answers, or refuses with a [`crate::proxy::ProxyError`],
//! which becomes our error shape here.

use super::AppState;
use super::error::ApiError;
use crate::proxy::ProxyContext;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

/// `ANY /proxy/{provider}/{*path}` in the router.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let peer = crate::net::client::peer(req.extensions());
    respond(&state, req, peer).await
}

/// Answers a proxied request from `peer` (the router's route and the
/// short path of [`super::Front`] both end here).
pub async fn respond(
    state: &AppState,
    req: Request,
    peer: Option<std::net::SocketAddr>,
) -> Response {
    if let Err(e) = cookie_upgrade_same_origin(state, &req, peer) {
        return e.into_response();
    }
    let ctx = ProxyContext {
        proxy: &state.proxy,
        auth: &state.auth,
        vault: &state.vault,
        connections: &state.connections,
        trusted_proxies: &state.trusted_proxies,
        peer,
    };
    match crate::proxy::forward::respond(&ctx, req).await {
        Ok(resp) => resp,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A WebSocket upgrade that carries Latchkey's session cookie must come
/// from our own origin (the hardening rule for every cookie-carrying
/// upgrade, docs/security/edges.md §13): the proxy takes keys only, but a
/// page elsewhere that makes the owner's browser open a session with a
/// key it planted must not ride on the owner's cookie either. `403 csrf`.
fn cookie_upgrade_same_origin(
    state: &AppState,
    req: &Request,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), ApiError> {
    let h = req.headers();
    if !super::authn::wants_upgrade(h) || super::authn::session_cookie(h).is_none() {
        return Ok(());
    }
    let mut ext = axum::http::Extensions::new();
    if let Some(peer) = peer.or_else(|| crate::net::client::peer(req.extensions())) {
        ext.insert(axum::extract::ConnectInfo(peer));
    }
    let own = super::origin::own_origins(state, h, req.uri(), &ext);
    let same = h
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| own.iter().any(|x| o.eq_ignore_ascii_case(x)));
    if same { Ok(()) } else { Err(ApiError::Csrf) }
}
