//! `POST /api/livekit/{name}/token`: a LiveKit room token for the caller
//! (the logic is in [`crate::livekit`]).
//!
//! Body `{"room", "identity", "name"?, "grants"?, "ttl"?}` (`ttl`: seconds,
//! or a duration like `"15m"`) → `{"token", "url", "expires_at"}`. The one
//! permission check is `livekit:<name>` (keys by scope and owner's role,
//! people by role), made before the section is looked up, so `404
//! unknown_livekit` only answers callers that could use it. Sessions follow
//! the CSRF rule (a POST).

use super::AppState;
use super::authn::{Authenticated, client_ip};
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::scope::Scope;
use crate::livekit::{Caller, LiveKitError, MintRequest};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    room: String,
    identity: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    grants: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "ttl")]
    ttl: Option<Duration>,
}

/// A number of seconds or a duration string (`"15m"`), as in the
/// configuration.
fn ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::duration_str::deserialize(d).map(Some)
}

fn livekit_scope(name: &str) -> Result<Scope, ApiError> {
    // Names that break the name rule cannot be configured: simply unknown.
    Scope::livekit(name).map_err(|_| LiveKitError::Unknown(name.to_string()).into())
}

/// `POST /api/livekit/{name}/token`.
pub async fn token(
    State(state): State<AppState>,
    who: Authenticated,
    Path(name): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<Value>, ApiError> {
    who.require(&livekit_scope(&name)?)?;
    state.livekit.section(&name)?;
    let caller = Caller {
        username: who.0.username.clone(),
        actor: who.0.actor(),
        ip: Some(client_ip(&state, &headers, &ext)),
    };
    let request = MintRequest {
        room: req.room,
        identity: req.identity,
        name: req.name,
        grants: req.grants,
        ttl: req.ttl,
    };
    let livekit = state.livekit.clone();
    let minted = tokio::task::spawn_blocking(move || {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        livekit.mint(&name, &request, &caller, now)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("livekit task failed: {e}")))??;
    Ok(Json(json!({
        "token": minted.token,
        "url": minted.url,
        "expires_at": minted.expires_at,
    })))
}
