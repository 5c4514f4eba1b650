//! The signed-in user's own account: `/api/account/…`. Every endpoint
//! needs a person (session or access token): API keys and the host token
//! have no account. Changing MFA or recovery codes needs a recent
//! re-authentication (the service checks it).

use super::AppState;
use super::auth::secret;
use super::authn::{Authenticated, blocking};
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::service::{EnrollmentView, SecretView, SessionView};
use crate::secrecy::SecretString;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[serde(deserialize_with = "secret")]
    current_password: SecretString,
    #[serde(deserialize_with = "secret")]
    new_password: SecretString,
}

/// `POST /api/account/password` → 204.
pub async fn change_password(
    State(state): State<AppState>,
    who: Authenticated,
    ApiJson(req): ApiJson<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| {
        a.change_password(&p, &req.current_password, &req.new_password)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/account/totp`: starts (re-)enrollment.
pub async fn totp_begin(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<EnrollmentView>, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| a.totp_begin(&p))
        .await
        .map(Json)
}

/// `DELETE /api/account/totp`: turns the second factor off (not for admins).
pub async fn totp_disable(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<StatusCode, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| a.totp_disable(&p)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirm {
    code: String,
}

#[derive(Serialize)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<SecretView>,
}

fn codes(c: Vec<SecretString>) -> Json<RecoveryCodes> {
    Json(RecoveryCodes {
        recovery_codes: c.into_iter().map(SecretView).collect(),
    })
}

/// `POST /api/account/totp/confirm` → `{recovery_codes}` (empty when the
/// user already had a set).
pub async fn totp_confirm(
    State(state): State<AppState>,
    who: Authenticated,
    ApiJson(req): ApiJson<TotpConfirm>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| a.totp_confirm(&p, req.code.trim()))
        .await
        .map(codes)
}

/// `POST /api/account/recovery-codes`: a new set; the old one stops working.
pub async fn regenerate_recovery(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<RecoveryCodes>, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| a.regenerate_recovery(&p))
        .await
        .map(codes)
}

/// `GET /api/account/sessions`.
pub async fn sessions(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| a.list_sessions(&p))
        .await
        .map(Json)
}

/// `DELETE /api/account/sessions/{id}` → 204.
pub async fn revoke_session(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require_person()?;
    let p = who.0;
    blocking(&state.auth, move |a| a.revoke_sessions(&p, Some(&id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct Revoked {
    pub revoked: usize,
}

/// `DELETE /api/account/sessions`: every session but this one.
pub async fn revoke_other_sessions(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<Revoked>, ApiError> {
    who.require_person()?;
    let p = who.0;
    let n = blocking(&state.auth, move |a| a.revoke_sessions(&p, None)).await?;
    Ok(Json(Revoked { revoked: n }))
}
