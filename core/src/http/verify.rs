//! Forward-auth and the assertion keys.
//!
//! - `GET /api/verify[?agent=<name>]`: for nginx `auth_request`, Caddy
//!   `forward_auth` and Traefik `ForwardAuth` (docs/FORWARD_AUTH.md). 200
//!   with `X-Latchkey-User`, `X-Latchkey-Role`, `X-Latchkey-Key` (API keys
//!   only) and `X-Latchkey-Assertion` when the caller has a valid session
//!   or API key (and, with `agent`, the `agent:<name>` scope and a role the
//!   agent admits); 401 JSON without credentials (never a redirect); 403
//!   when the credential lacks the scope or role; 400 `reserved_header`
//!   when the request carries an `X-Latchkey-*` header in another spelling
//!   (`X_Latchkey_User`), which the proxy would not replace. The CSRF rule
//!   judges the original method (`X-Forwarded-Method`, which the proxies
//!   send).
//! - `GET /.well-known/jwks.json`: the public key assertions are signed
//!   with, no credentials, cacheable.

use super::AppState;
use super::error::ApiError;
use crate::agent::AgentError;
use crate::agent::identity;
use crate::auth::scope::Scope;
use crate::net::headers::canonical_name;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    agent: Option<String>,
}

/// `ANY /api/verify`.
pub async fn verify(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, _body) = req.into_parts();
    let query: VerifyQuery = serde_urlencoded::from_str(parts.uri.query().unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_query", format!("query: {e}")))?;
    let method = parts
        .headers
        .get("x-forwarded-method")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| parts.method.clone());
    // The proxy replaces the client's `X-Latchkey-*` headers by name, in
    // the hyphenated spelling; an `X_Latchkey_User` would pass next to
    // ours and reach a CGI/WSGI app as the same header. Refused.
    if let Some(name) = parts.headers.keys().find(|n| {
        let c = canonical_name(n.as_str());
        c.starts_with("x-latchkey-") && c != n.as_str()
    }) {
        return Err(ApiError::bad_request(
            "reserved_header",
            format!(
                "the request carries `{}`, another spelling of a Latchkey identity header",
                name.as_str().chars().take(64).collect::<String>()
            ),
        ));
    }
    let who = super::agent::caller(&state, &parts, &method)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    let audience = match &query.agent {
        None => "latchkey".to_string(),
        Some(name) => {
            let scope = Scope::agent(name)
                .map_err(|e| ApiError::bad_request("invalid_query", format!("agent: {e}")))?;
            if !who.allows(&scope) {
                return Err(ApiError::forbidden(format!("this needs `{scope}`")));
            }
            // A configured agent's `roles` apply; an app behind the proxy
            // that is not an `[agents]` entry admits every role.
            if let Some(route) = state.agents.routes.get(name.as_str())
                && !identity::role_allowed(&who, &route.agent.roles)
            {
                return Err(AgentError::RoleRefused {
                    agent: name.clone(),
                    role: who.role,
                }
                .into());
            }
            scope.to_string()
        }
    };
    let headers = identity::headers(&state.agents.signer, &who, &audience)?;
    let key_id = headers
        .iter()
        .find(|(n, _)| *n == identity::KEY)
        .and_then(|(_, v)| v.to_str().ok())
        .map(str::to_owned);
    let mut resp = Json(serde_json::json!({
        "user": who.username,
        "role": who.role,
        "key_id": key_id,
    }))
    .into_response();
    for (n, v) in headers {
        resp.headers_mut().insert(n, v);
    }
    Ok(resp)
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let doc = state.agents.signer.jwks()?;
    let mut resp = Json(doc).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}
