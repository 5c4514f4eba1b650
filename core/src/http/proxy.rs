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
    respond(&state, req).await
}

/// Answers a proxied request (the router's route and the short path of
/// [`super::Front`] both end here).
pub async fn respond(state: &AppState, req: Request) -> Response {
    let ctx = ProxyContext {
        proxy: &state.proxy,
        auth: &state.auth,
        vault: &state.vault,
        connections: &state.connections,
        trusted_proxies: &state.trusted_proxies,
    };
    match crate::proxy::forward::respond(&ctx, req).await {
        Ok(resp) => resp,
        Err(e) => ApiError::from(e).into_response(),
    }
}
