//! `/api/connections…`: connecting OAuth accounts and the credential
//! broker (the logic is in [`crate::connections`]).
//!
//! - `GET /api/connections/providers` — configured providers;
//! - `POST /api/connections/{p}/start` — a browser session starts an
//!   authorization: `{"authorize_url"}` and the binding cookie. POST only,
//!   so the CSRF rule applies: it changes state (a pending flow, the
//!   binding cookie that replaces any earlier one), and a same-site page
//!   could otherwise start flows in the user's name with a plain link;
//! - `GET /api/connections/{p}/callback` — the provider sends the browser
//!   back: no session needed (the navigation is cross-site, so the
//!   `SameSite=Strict` session cookie is not sent); the single-use state
//!   and the `SameSite=Lax` binding cookie prove who started it. A
//!   callback without the state's own binding changes nothing (state kept,
//!   cookie kept); the cookie is cleared only by the callback that ends
//!   its flow;
//! - `GET /api/connections` — the caller's connections (`?all=true`:
//!   everyone's, for admins);
//! - `GET /api/connections/{p}/token` — the broker;
//! - `DELETE /api/connections/{p}` — revoke and forget;
//! - `PUT /api/connections/{p}/client` — an administrator sets the
//!   provider's client id and/or secret (`ManageSettings`, the step-up
//!   rule).
//!
//! Each handler makes one permission check: `connections:<p>` (people by
//! role — a guest may not; keys by scope and owner's role).

use super::AppState;
use super::authn::{Authenticated, client_ip};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use crate::auth::scope::{Permission, Role, Scope};
use crate::auth::service::KeyStepUp;
use crate::auth::store::UserId;
use crate::auth::{Principal, Via};
use crate::connections::{
    CallbackParams, ConnectionError, ConnectionView, Revocation, SessionCheck,
};
use crate::secrecy::ExposeSecret;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The cookie binding an authorization to the browser that started it.
/// `__Host-`: Secure, `Path=/`, no `Domain`; `SameSite=Lax` so that it is
/// sent on the provider's top-level redirect back to us.
pub const BINDING_COOKIE: &str = "__Host-latchkey-oauth";

fn connection_scope(provider: &str) -> Result<Scope, ApiError> {
    // Provider names of unknown providers may break the name rule: they
    // are simply unknown.
    format!("connections:{provider}")
        .parse::<Scope>()
        .map_err(|_| ConnectionError::UnknownProvider(provider.to_string()).into())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

fn wants_html(headers: &HeaderMap) -> bool {
    !wants_json(headers)
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// The origin the request was sent to ([`super::origin::request_origin`]:
/// the scheme and host as the browser used them), checked to be a plain
/// host[:port].
fn request_origin(
    state: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    ext: &Extensions,
) -> Result<String, ApiError> {
    super::origin::request_origin(state, headers, uri, ext).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            "the request has no usable Host (a host name or address, with an optional port)",
        )
    })
}

pub(crate) fn binding_cookie(headers: &HeaderMap) -> Option<&str> {
    crate::net::cookie::get(headers, BINDING_COOKIE)
}

fn clear_binding_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-latchkey-oauth=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
    )
}

#[derive(Debug, Serialize)]
struct ProviderItem {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    preset: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    scopes: Vec<String>,
    client_secret_entry: Option<String>,
    /// `null` for public clients (no secret configured).
    client_secret_present: Option<bool>,
    redirect_path: String,
    /// The full URI to register at the provider.
    redirect_uri: String,
    /// Administrators only: the client id in use (`null`: none yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<Option<String>>,
    /// `config`, `ui` or `missing`.
    client_id_source: &'static str,
}

fn is_admin(who: &Authenticated) -> bool {
    who.0.role.may(Permission::ManageSettings) && who.0.allows(&Scope::Admin)
}

fn provider_item(
    state: &AppState,
    p: crate::connections::ProviderView,
    origin: &str,
    admin: bool,
) -> ProviderItem {
    ProviderItem {
        redirect_path: format!("/api/connections/{}/callback", p.name),
        redirect_uri: state.connections.redirect_uri(&p.name, origin),
        name: p.name,
        preset: p.preset,
        issuer: p.issuer,
        scopes: p.scopes,
        client_secret_entry: p.client_secret_entry,
        client_secret_present: p.client_secret_present,
        client_id: admin.then_some(p.client_id),
        client_id_source: p.client_id_source,
    }
}

/// `GET /api/connections/providers` → `{"providers":[…]}`: those the
/// caller may use (`connections:<p>`).
pub async fn providers(
    State(state): State<AppState>,
    who: Authenticated,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<Value>, ApiError> {
    if !who.0.role.may(Permission::ManageConnections) {
        return Err(ApiError::forbidden("this needs `connections:…`"));
    }
    let origin = request_origin(&state, &headers, &uri, &ext)?;
    let admin = is_admin(&who);
    let list: Vec<ProviderItem> = state
        .connections
        .list_providers()
        .into_iter()
        .filter(|p| connection_scope(&p.name).is_ok_and(|s| who.0.allows(&s)))
        .map(|p| provider_item(&state, p, &origin, admin))
        .collect();
    // `redirect_base`: the origin a provider's redirect URI starts with
    // (`BASE/api/connections/<p>/callback`), for providers not configured
    // yet; on the desktop the shell presents this request under the
    // port-less loopback origin (RFC 8252 §7.3).
    Ok(Json(json!({ "providers": list, "redirect_base": origin })))
}

/// `PUT /api/connections/{p}/client` `{"client_id"?, "client_secret"?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRequest {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "opt_secret")]
    client_secret: Option<crate::secrecy::SecretString>,
}

fn opt_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::secrecy::SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(crate::secrecy::SecretString::from))
}

/// `PUT /api/connections/{p}/client` → the provider as listed (with
/// `client_secret_present`, never the secret). Administrators
/// (`ManageSettings`; keys need `admin`); a session needs a recent
/// re-authentication. Audited as `connection.client`.
pub async fn set_client(
    State(state): State<AppState>,
    who: Authenticated,
    Path(provider): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: Extensions,
    ApiJson(req): ApiJson<ClientRequest>,
) -> Result<Json<Value>, ApiError> {
    who.require_permission(Permission::ManageSettings)?;
    let ip = client_ip(&state, &headers, &ext);
    state.auth.step_up(
        &who.0,
        KeyStepUp::UseGrant,
        "connection.client",
        Some(&provider),
        Some(ip),
    )?;
    state.connections.provider(&provider)?;
    let origin = request_origin(&state, &headers, &uri, &ext)?;
    let conns = state.connections.clone();
    let actor = who.0.actor();
    let name = provider.clone();
    let view = tokio::task::spawn_blocking(move || {
        conns.set_client(
            &name,
            req.client_id.as_deref(),
            req.client_secret.as_ref(),
            &actor,
            Some(ip),
        )
    })
    .await
    .map_err(|e| ApiError::Internal(format!("client task failed: {e}")))??;
    Ok(Json(json!({
        "provider": provider_item(&state, view, &origin, true)
    })))
}

/// `POST /api/connections/{p}/start`: session only (and, being a POST
/// with the cookie, same-origin).
pub async fn start(
    State(state): State<AppState>,
    who: Authenticated,
    Path(provider): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Response, ApiError> {
    who.require(&connection_scope(&provider)?)?;
    let Via::Session { hash, .. } = who.0.via else {
        return Err(ConnectionError::SessionRequired.into());
    };
    let origin = request_origin(&state, &headers, &uri, &ext)?;
    let started = state
        .connections
        .start(who.0.user_id, &who.0.username, &provider, &origin, hash)
        .await?;
    let cookie = HeaderValue::from_str(&format!(
        "{BINDING_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        started.binding.expose_secret(),
        crate::connections::STATE_LIFETIME_SECS,
    ))
    .map_err(|_| ApiError::Internal("binding cookie is not a header value".into()))?;
    let mut resp = Json(json!({ "authorize_url": started.authorize_url })).into_response();
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// The callback's query: each parameter at most once (RFC 6749 §3.1).
pub(crate) fn callback_params(query: Option<&str>) -> Result<CallbackParams, ConnectionError> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if seen.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ConnectionError::BadRequest(format!(
                "the callback repeats the parameter `{}`",
                k.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(32)
                    .collect::<String>()
            )));
        }
    }
    Ok(CallbackParams {
        code: seen.remove("code"),
        state: seen.remove("state"),
        error: seen.remove("error"),
        iss: seen.remove("iss"),
    })
}

/// `GET /api/connections/{p}/callback?code=…&state=…` (or `error=…`).
pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ext: Extensions,
) -> Response {
    let ip = client_ip(&state, &headers, &ext);
    let html = wants_html(&headers);
    let auth = std::sync::Arc::clone(&state.auth);
    let alive: SessionCheck = Box::new(move |user, hash| session_alive(&auth, user, hash));
    let (result, flow_ended) = match callback_params(query.as_deref()) {
        Ok(params) => {
            let o = state
                .connections
                .callback_flow(&provider, params, binding_cookie(&headers), alive, Some(ip))
                .await;
            (o.result, o.flow_ended)
        }
        Err(e) => (Err(e), false),
    };
    let mut resp = match result {
        Ok(done) if wants_json(&headers) => Json(json!({
            "provider": done.provider,
            "status": "connected",
            "scopes": done.scopes,
        }))
        .into_response(),
        Ok(done) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            let loc = HeaderValue::from_str(&format!("/?connected={}", done.provider))
                .unwrap_or_else(|_| HeaderValue::from_static("/"));
            r.headers_mut().insert(header::LOCATION, loc);
            r
        }
        Err(e) if html => error_redirect(&provider, ApiError::from(e)),
        Err(e) => ApiError::from(e).into_response(),
    };
    // Only the callback that ended this browser's flow spends its binding:
    // a stray hit (a same-site page, a forged state) leaves a flow in
    // progress alone.
    if flow_ended {
        resp.headers_mut()
            .append(header::SET_COOKIE, clear_binding_cookie());
    }
    resp
}

/// Whether `user` still has the session with this hash (not signed out,
/// revoked or expired). Blocking (reads the sessions table).
fn session_alive(auth: &crate::auth::Auth, user: UserId, hash: [u8; 32]) -> bool {
    let probe = Principal {
        user_id: user,
        username: String::new(),
        role: Role::Guest,
        via: Via::Session {
            hash,
            last_auth_at: 0,
        },
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    auth.list_sessions(&probe)
        .map(|sessions| sessions.iter().any(|s| s.current && s.expires_at > now))
        .unwrap_or(false)
}

/// A browser that lands on a failed callback goes to the Connections
/// screen, which explains the error code (`/connections?error=<code>&
/// provider=<p>`); API clients get the JSON error. Nothing but a fixed
/// error code and the provider's name (encoded) goes into the URL.
fn error_redirect(provider: &str, e: ApiError) -> Response {
    let (status, code) = e.status_and_code();
    if status.is_server_error() {
        // Logged with its cause; the browser only learns the code.
        let _ = e.into_response();
    }
    let name: String = form_urlencoded::byte_serialize(provider.as_bytes()).collect();
    let location = format!("/connections?error={code}&provider={name}");
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location)
            .unwrap_or_else(|_| HeaderValue::from_static("/connections")),
    );
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

#[derive(Debug, Serialize)]
struct ConnectionItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    provider: String,
    status: &'static str,
    scopes: Vec<String>,
    expires_at: Option<i64>,
    connected_at: i64,
    last_refresh_at: Option<i64>,
    last_used_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_by: Option<i64>,
}

fn item(c: ConnectionView, owner: Option<(String, Option<String>)>) -> ConnectionItem {
    let (user_id, username) = match owner {
        Some((id, name)) => (Some(id), name),
        None => (None, None),
    };
    ConnectionItem {
        user_id,
        username,
        provider: c.provider,
        status: c.status.as_str(),
        scopes: c.scopes,
        expires_at: c.expires_at,
        connected_at: c.connected_at,
        last_refresh_at: c.last_refresh_at,
        last_used_at: c.last_used_at,
        reconnect_by: c.reconnect_by,
    }
}

/// `GET /api/connections` → `{"connections":[…]}`: the caller's own,
/// only providers the caller may use; `?all=true` (admins): everyone's.
pub async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.all {
        who.require_permission(Permission::ManageUsers)?;
        let conns = state.connections.clone();
        let auth = state.auth.clone();
        let (rows, users) = tokio::task::spawn_blocking(move || {
            Ok::<_, ApiError>((conns.list(None)?, auth.list_users()?))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("list task failed: {e}")))??;
        let names: HashMap<String, String> =
            users.into_iter().map(|u| (u.id, u.username)).collect();
        let out: Vec<ConnectionItem> = rows
            .into_iter()
            .map(|c| {
                let id = c.user_id.to_string();
                let name = names.get(&id).cloned();
                item(c, Some((id, name)))
            })
            .collect();
        return Ok(Json(json!({ "connections": out })));
    }
    if !who.0.role.may(Permission::ManageConnections) {
        return Err(ApiError::forbidden("this needs `connections:…`"));
    }
    let conns = state.connections.clone();
    let user = who.0.user_id;
    let rows = tokio::task::spawn_blocking(move || conns.list(Some(user)))
        .await
        .map_err(|e| ApiError::Internal(format!("list task failed: {e}")))??;
    let out: Vec<ConnectionItem> = rows
        .into_iter()
        .filter(|c| connection_scope(&c.provider).is_ok_and(|s| who.0.allows(&s)))
        .map(|c| item(c, None))
        .collect();
    Ok(Json(json!({ "connections": out })))
}

/// `GET /api/connections/{p}/token` → `{"access_token","token_type",
/// "expires_at","scopes"}` (never the refresh token).
pub async fn token(
    State(state): State<AppState>,
    who: Authenticated,
    Path(provider): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<Value>, ApiError> {
    who.require(&connection_scope(&provider)?)?;
    let ip = client_ip(&state, &headers, &ext);
    // A connection's access token is a secret like a vault entry's: the
    // step-up rule applies (keys with `connections:<p>` are the grant).
    state.auth.step_up(
        &who.0,
        KeyStepUp::UseGrant,
        "connection.token",
        Some(&provider),
        Some(ip),
    )?;
    let t = state
        .connections
        .token(who.0.user_id, &provider, &who.0.actor(), Some(ip))
        .await?;
    Ok(Json(json!({
        "access_token": t.access_token.expose_secret(),
        "token_type": t.token_type,
        "expires_at": t.expires_at,
        "scopes": t.scopes,
    })))
}

/// `DELETE /api/connections/{p}` → `{"provider","disconnected":true,
/// "revocation":"revoked"|"unsupported"|"failed"}`.
pub async fn disconnect(
    State(state): State<AppState>,
    who: Authenticated,
    Path(provider): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<Value>, ApiError> {
    who.require(&connection_scope(&provider)?)?;
    let ip = client_ip(&state, &headers, &ext);
    let r = state
        .connections
        .disconnect(who.0.user_id, &provider, &who.0.actor(), Some(ip))
        .await?;
    let revocation = match r {
        Revocation::Revoked => "revoked",
        Revocation::Unsupported => "unsupported",
        Revocation::Failed(_) => "failed",
    };
    Ok(Json(json!({
        "provider": provider,
        "disconnected": true,
        "revocation": revocation,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parameters_may_not_repeat() {
        let p = callback_params(Some("code=a&state=b&iss=https%3A%2F%2Fi")).expect("ok");
        assert_eq!(p.code.as_deref(), Some("a"));
        assert_eq!(p.iss.as_deref(), Some("https://i"));
        assert!(callback_params(Some("code=a&code=b&state=s")).is_err());
        assert!(callback_params(None).expect("empty").state.is_none());
    }

    #[test]
    fn binding_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-latchkey-oauth=abc; __Host-latchkey_session=s"),
        );
        assert_eq!(binding_cookie(&h), Some("abc"));
        assert_eq!(binding_cookie(&HeaderMap::new()), None);
    }
}
