//! First-run setup and signing in: `/api/setup…` and `/api/auth/…`.
//!
//! Every handler here except `me`, `logout`, `token` and `reauth` is
//! public (the body carries the credential) and rate limited per client
//! address by [`super::authn::rate_limit`]. Session tokens leave the server
//! only in `Set-Cookie`; access and refresh tokens only in response bodies.

use super::AppState;
use super::authn::{
    Authenticated, blocking, clear_session_cookie, client_ip, device_cookie, set_device_cookie,
    set_session_cookie, user_agent,
};
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::Via;
use crate::auth::service::{
    EnrollmentView, LoginStep, NewSession, SecretView, TokenPair, UserView,
};
use crate::secrecy::SecretString;
use axum::Json;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};

pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

pub(super) fn opt_secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(SecretString::from))
}

/// A user and, for a new session, the cookie that carries it.
fn with_session(
    state: &AppState,
    status: StatusCode,
    s: NewSession,
    body: serde_json::Value,
) -> Result<Response, ApiError> {
    use crate::secrecy::ExposeSecret;
    let cookie = set_session_cookie(
        s.token.expose_secret(),
        state.auth.settings.session_lifetime.as_secs(),
    )?;
    // This browser completed a sign-in to this account: remember it, so
    // failures from elsewhere never lock it out (see docs/security).
    let device = set_device_cookie(
        &state.auth.device_cookie(&s.user.id),
        crate::auth::service::DEVICE_LIFETIME.as_secs(),
    )?;
    Ok((
        status,
        axum::response::AppendHeaders([(header::SET_COOKIE, cookie), (header::SET_COOKIE, device)]),
        Json(body),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
pub struct SetupNeeded {
    pub needed: bool,
    /// The vault is sealed (as `/ready` also says): nobody can finish
    /// setup or sign in until it is unsealed.
    pub sealed: bool,
    /// A sealed vault opens with its passphrase over
    /// `POST /api/vault/unseal` (no session needed); otherwise on the host.
    pub unseal_with_passphrase: bool,
    /// How this host opens a vault sealed without a passphrase, when it is
    /// not `latchkey unseal` on the server ([`super::HostInfo::unseal_hint`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unseal_hint: Option<&'static str>,
}

/// `GET /api/setup`: what a signed-out page needs to know first: whether
/// the owner still has to be created, and whether the vault must be
/// unsealed before anyone can sign in.
pub async fn setup_status(State(state): State<AppState>) -> Result<Json<SetupNeeded>, ApiError> {
    let n = blocking(&state.auth, |a| a.user_count()).await?;
    Ok(Json(SetupNeeded {
        needed: n == 0,
        sealed: state.vault.is_sealed(),
        unseal_with_passphrase: state.settings.vault.master_key
            == crate::config::MasterKeyKind::Passphrase,
        unseal_hint: state.host.unseal_hint(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupBegin {
    #[serde(deserialize_with = "secret")]
    token: SecretString,
    username: String,
    #[serde(deserialize_with = "secret")]
    password: SecretString,
}

/// `POST /api/setup/begin`: creates the (inactive) owner; the TOTP
/// enrollment to confirm.
pub async fn setup_begin(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SetupBegin>,
) -> Result<Json<EnrollmentView>, ApiError> {
    use crate::secrecy::ExposeSecret;
    blocking(&state.auth, move |a| {
        a.setup_begin(req.token.expose_secret(), &req.username, &req.password)
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupConfirm {
    #[serde(deserialize_with = "secret")]
    token: SecretString,
    username: String,
    code: String,
}

/// `POST /api/setup/confirm`: a valid code activates the owner → the user,
/// the recovery codes (once) and a session cookie.
pub async fn setup_confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<SetupConfirm>,
) -> Result<Response, ApiError> {
    use crate::secrecy::ExposeSecret;
    let ip = client_ip(&state, &headers, &ext);
    let ua = user_agent(&headers);
    let (user, codes, session) = blocking(&state.auth, move |a| {
        a.setup_confirm_and_sign_in(
            req.token.expose_secret(),
            &req.username,
            req.code.trim(),
            Some(ip),
            ua.as_deref(),
        )
    })
    .await?;
    let codes: Vec<SecretView> = codes.into_iter().map(SecretView).collect();
    let body = serde_json::json!({ "user": user, "recovery_codes": codes });
    with_session(&state, StatusCode::OK, session, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupHost {
    username: String,
    #[serde(deserialize_with = "secret")]
    password: SecretString,
}

#[derive(Serialize)]
pub struct HostSetup {
    pub username: String,
    pub user: UserView,
    pub otpauth_uri: SecretView,
    pub qr_svg: String,
    pub recovery_codes: Vec<SecretView>,
}

/// `POST /api/setup/host`: `latchkey setup` against a running server; only
/// the host token (from a loopback peer) may call it.
pub async fn setup_host(
    State(state): State<AppState>,
    Authenticated(p): Authenticated,
    ApiJson(req): ApiJson<SetupHost>,
) -> Result<Json<HostSetup>, ApiError> {
    if !matches!(p.via, Via::Host) {
        return Err(ApiError::forbidden(
            "only the host's admin token may do this",
        ));
    }
    let (user, enrollment, codes) = blocking(&state.auth, move |a| {
        a.setup_host(&req.username, &req.password)
    })
    .await?;
    Ok(Json(HostSetup {
        username: user.username.clone(),
        user,
        otpauth_uri: enrollment.otpauth_uri,
        qr_svg: enrollment.qr_svg,
        recovery_codes: codes.into_iter().map(SecretView).collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    #[serde(deserialize_with = "secret")]
    password: SecretString,
}

/// `POST /api/auth/login`: `{"mfa_required": true, "ticket"}`, or (no
/// second factor) `{"mfa_required": false, "user"}` and the cookie.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let ip = client_ip(&state, &headers, &ext);
    let ua = user_agent(&headers);
    let device = device_cookie(&headers);
    let step = blocking(&state.auth, move |a| {
        a.login_with_device(
            &req.username,
            &req.password,
            Some(ip),
            ua.as_deref(),
            device.as_deref(),
        )
    })
    .await?;
    match step {
        LoginStep::MfaRequired { ticket } => Ok(Json(serde_json::json!({
            "mfa_required": true,
            "ticket": SecretView(ticket),
        }))
        .into_response()),
        LoginStep::EnrollRequired { ticket, enrollment } => Ok(Json(serde_json::json!({
            "mfa_required": true,
            "enroll": true,
            "ticket": SecretView(ticket),
            "enrollment": enrollment,
        }))
        .into_response()),
        LoginStep::Done(s) => {
            let body = serde_json::json!({ "mfa_required": false, "user": s.user });
            with_session(&state, StatusCode::OK, s, body)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mfa {
    #[serde(deserialize_with = "secret")]
    ticket: SecretString,
    #[serde(default)]
    code: Option<String>,
    #[serde(default, deserialize_with = "opt_secret")]
    recovery_code: Option<SecretString>,
}

/// `POST /api/auth/mfa`: the second factor → `{"user"}` and the cookie.
pub async fn mfa(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<Mfa>,
) -> Result<Response, ApiError> {
    use crate::secrecy::ExposeSecret;
    let ip = client_ip(&state, &headers, &ext);
    let ua = user_agent(&headers);
    let s = blocking(&state.auth, move |a| {
        a.mfa(
            req.ticket.expose_secret(),
            req.code.as_deref().map(str::trim),
            req.recovery_code.as_ref().map(|r| r.expose_secret()),
            Some(ip),
            ua.as_deref(),
        )
    })
    .await?;
    let body = if s.recovery_codes.is_empty() {
        serde_json::json!({ "user": s.user })
    } else {
        // This sign-in enrolled a new authenticator: the codes, once.
        let codes: Vec<SecretView> = s.recovery_codes.iter().cloned().map(SecretView).collect();
        serde_json::json!({ "user": s.user, "recovery_codes": codes })
    };
    with_session(&state, StatusCode::OK, s, body)
}

#[derive(Debug, Serialize)]
pub struct Me {
    pub id: String,
    pub username: String,
    pub role: crate::auth::scope::Role,
    pub mfa_enabled: bool,
    /// Unused recovery codes (0 for the host principal).
    pub recovery_codes_left: usize,
    pub via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Where agents reach this server (`BASE/proxy/<provider>/…`,
    /// `BASE/api/connections/<p>/token`): `server.public_url`, else the
    /// origin this request was sent to — on the desktop, the loopback
    /// listener's. The UI's examples use it instead of their own address.
    pub base_url: String,
}

/// `GET /api/auth/me`: who this request is.
pub async fn me(
    State(state): State<AppState>,
    Authenticated(p): Authenticated,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<Me>, ApiError> {
    let base_url = super::origin::public_origin(&state, &headers, &uri, &ext);
    let (via, scopes) = match &p.via {
        Via::Session { .. } => ("session", None),
        Via::AccessToken { .. } => ("access_token", None),
        Via::ApiKey { scopes, .. } => (
            "api_key",
            Some(scopes.iter().map(ToString::to_string).collect()),
        ),
        Via::Host => ("host", None),
    };
    let (mfa_enabled, recovery_codes_left) = if matches!(p.via, Via::Host) {
        (false, 0)
    } else {
        let id = p.user_id;
        let user = blocking(&state.auth, move |a| a.get_user(id)).await?;
        (user.totp.is_some(), user.recovery_hashes.len())
    };
    Ok(Json(Me {
        id: p.user_id.to_string(),
        username: p.username,
        role: p.role,
        mfa_enabled,
        recovery_codes_left,
        via,
        scopes,
        base_url,
    }))
}

/// `POST /api/auth/logout`: ends this session (or access-token family) at
/// once; 204 and the cookie cleared.
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(p): Authenticated,
) -> Result<Response, ApiError> {
    blocking(&state.auth, move |a| a.logout(&p)).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, clear_session_cookie())],
    )
        .into_response())
}

/// `POST /api/auth/token` (session only): an access and a refresh token.
pub async fn token(
    State(state): State<AppState>,
    Authenticated(p): Authenticated,
) -> Result<Json<TokenPair>, ApiError> {
    blocking(&state.auth, move |a| a.issue_tokens(&p))
        .await
        .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    #[serde(deserialize_with = "secret")]
    refresh_token: SecretString,
}

/// `POST /api/auth/refresh`: rotates the refresh token; a reused one
/// revokes its family (401 `token_reused`).
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<Refresh>,
) -> Result<Json<TokenPair>, ApiError> {
    use crate::secrecy::ExposeSecret;
    let ip = client_ip(&state, &headers, &ext);
    blocking(&state.auth, move |a| {
        a.refresh(req.refresh_token.expose_secret(), Some(ip))
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reauth {
    #[serde(default)]
    code: Option<String>,
    #[serde(default, deserialize_with = "opt_secret")]
    password: Option<SecretString>,
}

/// `POST /api/auth/reauth`: a TOTP code (or the password, without one)
/// opens the re-authentication window for privileged actions. 204.
pub async fn reauth(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    Authenticated(p): Authenticated,
    ApiJson(req): ApiJson<Reauth>,
) -> Result<StatusCode, ApiError> {
    let ip = client_ip(&state, &headers, &ext);
    blocking(&state.auth, move |a| {
        a.reauth(
            &p,
            req.password.as_ref(),
            req.code.as_deref().map(str::trim),
            Some(ip),
        )
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
