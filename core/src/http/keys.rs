//! API keys over HTTP: `/api/keys`. Each endpoint needs `keys:manage`
//! (every role may manage its own keys; an API key needs the scope).

use super::AppState;
use super::authn::{Authenticated, blocking};
use super::error::ApiError;
use super::extract::ApiJson;
use super::extract::ApiQuery;
use crate::auth::scope::Permission;
use crate::auth::service::{KeyView, SecretView};
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
}

/// `POST /api/keys` → 201 with the key (once).
pub async fn create(
    State(state): State<AppState>,
    who: Authenticated,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    who.require_permission(Permission::ManageOwnKeys)?;
    let p = who.0;
    let (view, secret) = blocking(&state.auth, move |a| {
        a.create_key(&p, &req.name, &req.scopes, req.expires_at)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: view.id,
            key: SecretView(secret),
            name: view.name,
            scopes: view.scopes,
            created_at: view.created_at,
            expires_at: view.expires_at,
        }),
    ))
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
) -> Result<Json<Vec<KeyView>>, ApiError> {
    who.require_permission(Permission::ManageOwnKeys)?;
    let all = q.all;
    if all {
        who.require_permission(Permission::ManageUsers)?;
    }
    let p = who.0;
    blocking(&state.auth, move |a| a.list_keys(&p, all))
        .await
        .map(Json)
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
