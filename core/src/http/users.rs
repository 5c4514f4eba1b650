//! Users and invites: `/api/users…` (admin: `ManageUsers`, for keys the
//! `admin` scope) and `POST /api/invites/accept` (public, rate limited; the
//! invite token is the credential).

use super::AppState;
use super::auth::secret;
use super::authn::{Authenticated, blocking, client_ip};
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::scope::{Permission, Role};
use crate::auth::service::{SecretView, UserView};
use crate::secrecy::{ExposeSecret, SecretString};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `GET /api/users`.
pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<Vec<UserView>>, ApiError> {
    who.require_permission(Permission::ManageUsers)?;
    blocking(&state.auth, |a| a.list_users()).await.map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvite {
    role: Role,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

#[derive(Serialize)]
pub struct Invite {
    pub token: SecretView,
    /// The link to hand over; the token is in the fragment so it never
    /// reaches a server log.
    pub url: SecretView,
    pub expires_at: i64,
}

/// `POST /api/users/invites` → 201 `{token, url, expires_at}`.
pub async fn create_invite(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    ext: Extensions,
    who: Authenticated,
    ApiJson(req): ApiJson<CreateInvite>,
) -> Result<(StatusCode, Json<Invite>), ApiError> {
    who.require_permission(Permission::ManageUsers)?;
    let p = who.0;
    let ttl = req.expires_in_secs.map(Duration::from_secs);
    let (token, expires_at) =
        blocking(&state.auth, move |a| a.create_invite(&p, req.role, ttl)).await?;
    let url = SecretString::from(format!(
        "{}/invite#{}",
        super::origin::public_origin(&state, &headers, &uri, &ext),
        token.expose_secret()
    ));
    Ok((
        StatusCode::CREATED,
        Json(Invite {
            token: SecretView(token),
            url: SecretView(url),
            expires_at,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvite {
    #[serde(deserialize_with = "secret")]
    token: SecretString,
    username: String,
    #[serde(deserialize_with = "secret")]
    password: SecretString,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub user: UserView,
}

/// `POST /api/invites/accept` → 201 `{user}`.
pub async fn accept_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<AcceptInvite>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let ip = client_ip(&state, &headers, &ext);
    let user = blocking(&state.auth, move |a| {
        a.accept_invite(
            req.token.expose_secret(),
            &req.username,
            &req.password,
            Some(ip),
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(Accepted { user })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    role: Role,
}

/// `PUT /api/users/{username}/role`.
pub async fn set_role(
    State(state): State<AppState>,
    who: Authenticated,
    Path(username): Path<String>,
    ApiJson(req): ApiJson<SetRole>,
) -> Result<Json<UserView>, ApiError> {
    who.require_permission(Permission::ManageUsers)?;
    let p = who.0;
    blocking(&state.auth, move |a| a.set_role(&p, &username, req.role))
        .await
        .map(Json)
}

/// `POST /api/users/{username}/disable`.
pub async fn disable(
    state: State<AppState>,
    who: Authenticated,
    username: Path<String>,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(state, who, username, true).await
}

/// `POST /api/users/{username}/enable`.
pub async fn enable(
    state: State<AppState>,
    who: Authenticated,
    username: Path<String>,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(state, who, username, false).await
}

async fn set_disabled(
    State(state): State<AppState>,
    who: Authenticated,
    Path(username): Path<String>,
    disabled: bool,
) -> Result<Json<UserView>, ApiError> {
    who.require_permission(Permission::ManageUsers)?;
    let p = who.0;
    blocking(&state.auth, move |a| {
        a.set_disabled(&p, &username, disabled)
    })
    .await
    .map(Json)
}

/// `POST /api/users/{username}/reset-mfa`: the last resort for a locked-out
/// user; audited.
pub async fn reset_mfa(
    State(state): State<AppState>,
    who: Authenticated,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    who.require_permission(Permission::ManageUsers)?;
    let p = who.0;
    blocking(&state.auth, move |a| a.reset_mfa(&p, &username))
        .await
        .map(Json)
}
