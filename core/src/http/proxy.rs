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
