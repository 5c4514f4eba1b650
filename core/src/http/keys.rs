//! API keys over HTTP: `/api/keys`. Each endpoint needs `keys:manage`
//! (every role may manage its own keys; an API key needs the scope).
//!
//! A key's proxy limits (`crate::proxy::limits`) travel with it: `POST`
//! takes an optional `limits` object, `GET` shows them, and
//! `PUT /api/keys/{id}/limits` replaces them (the key's owner or an
//! administrator, as for revoking).
//!
//! The answer to `POST` also says where agents reach this server
//! (`base_url`: `server.public_url`, else the origin the request was sent
//! to — on the desktop the loopback listener's), so the UI's "Use it"
//! snippet names the real proxy base instead of guessing from its own
//! address.

use super::AppState;
use super::authn::{Authenticated, blocking};
use super::error::ApiError;
use super::extract::ApiJson;
use super::extract::ApiQuery;
use crate::auth::scope::Permission;
use crate::auth::service::{KeyView, Principal, SecretView};
use crate::proxy::limits::{self, KeyLimits};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    limits: Option<KeyLimits>,
}

#[derive(Serialize)]
pub struct CreatedKey {
    pub id: String,
    /// The key itself: shown once, never stored.
    pub key: SecretView,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub limits: KeyLimits,
    /// Where agents send requests with this key (`BASE/proxy/<provider>/…`):
    /// [`super::origin::public_origin`].
    pub base_url: String,
}

/// A key as listed, with its proxy limits.
#[derive(Serialize)]
pub struct ListedKey {
    #[serde(flatten)]
    pub key: KeyView,
    pub limits: KeyLimits,
}

/// `POST /api/keys` → 201 with the key (once).
pub async fn create(
    State(state): State<AppState>,
    who: Authenticated,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    ext: axum::http::Extensions,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    who.require_permission(Permission::ManageOwnKeys)?;
    let base_url = super::origin::public_origin(&state, &headers, &uri, &ext);
    // Checked before the key exists, so a bad limit creates nothing.
    let key_limits = req.limits.unwrap_or_default();
    key_limits.validate()?;
    let p = who.0;
    let owner = p.clone();
    let (view, secret) = blocking(&state.auth, move |a| {
        a.create_key(&p, &req.name, &req.scopes, req.expires_at)
    })
    .await?;
    if !key_limits.is_empty()
        && let Err(e) = store_limits(&state, owner.clone(), view.id.clone(), key_limits).await
    {
        // A key without the limits asked for must not stay usable.
        let id = view.id.clone();
        if let Err(revoke) = blocking(&state.auth, move |a| a.revoke_key(&owner, &id)).await {
            tracing::error!(key = %view.id, error = %revoke, "could not revoke a key whose limits were not stored");
        }
        return Err(e);
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: view.id,
            key: SecretView(secret),
            name: view.name,
            scopes: view.scopes,
            created_at: view.created_at,
            expires_at: view.expires_at,
            limits: key_limits,
            base_url,
        }),
    ))
}

/// Writes limits on the blocking pool.
async fn store_limits(
    state: &AppState,
    p: Principal,
    id: String,
    l: KeyLimits,
) -> Result<(), ApiError> {
    let proxy = std::sync::Arc::clone(&state.proxy);
    tokio::task::spawn_blocking(move || limits::set(&proxy.store, &proxy.limits, &p, &id, l))
        .await
        .map_err(|e| ApiError::Internal(format!("limits task failed: {e}")))?
        .map_err(ApiError::from)
}

/// `PUT /api/keys/{id}/limits` with `{"requests_per_minute": n,
/// "tokens_per_day": n}` (either may be left out or null: no own limit) →
/// the key's new limits.
pub async fn set_limits(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
    ApiJson(l): ApiJson<KeyLimits>,
) -> Result<Json<KeyLimits>, ApiError> {
    who.require_permission(Permission::ManageOwnKeys)?;
    store_limits(&state, who.0, id, l).await?;
    Ok(Json(l))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/keys` (`?all=true`: everyone's, for admins).
pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ListedKey>>, ApiError> {
    who.require_permission(Permission::ManageOwnKeys)?;
    let all = q.all;
    if all {
        who.require_permission(Permission::ManageUsers)?;
    }
    let p = who.0;
    let keys = blocking(&state.auth, move |a| a.list_keys(&p, all)).await?;
    Ok(Json(
        keys.into_iter()
            .map(|key| ListedKey {
                limits: state.proxy.limits.get(&key.id),
                key,
            })
            .collect(),
    ))
}

/// `DELETE /api/keys/{id}` → 204. Effective on the next request.
pub async fn revoke(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require_permission(Permission::ManageOwnKeys)?;
    let p = who.0;
    blocking(&state.auth, move |a| a.revoke_key(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
