//! The OAuth exchanges: starting an authorization, completing it at the
//! callback, refreshing, revoking. Protocol details come from `oauth2`;
//! this module decides what is checked, stored and audited.

use super::client::{TokenResponse, oauth_client};
use super::store::{self, PendingState, Status, StoredConnection};
use super::{
    Cached, ConnectionError, Connections, ProviderRuntime, Revocation, TokenSecrets, blocking,
    digest, now, random_hex, refresh_after,
};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::store::UserId;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::vault::VaultError;
use oauth2::TokenResponse as _;
use std::sync::Arc;

/// How long an authorization may take (state and binding cookie).
pub const STATE_LIFETIME_SECS: i64 = 600;

/// A started authorization: where to send the browser, and the value of
/// the binding cookie to set on it.
pub struct Started {
    pub authorize_url: String,
    pub binding: SecretString,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Started { .. }")
    }
}

/// The query of a callback, as received.
#[derive(Default)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub iss: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Whether the browser session (by its hash) that started a flow still
/// exists for that user. Runs on the blocking pool.
pub type SessionCheck = Box<dyn FnOnce(UserId, [u8; 32]) -> bool + Send + 'static>;

/// What a callback did: its result, and whether it ended the flow that
/// the browser's binding cookie belongs to (only then is the cookie
/// cleared: a stray callback must not break a flow in progress).
#[derive(Debug)]
pub struct CallbackOutcome {
    pub result: Result<Connected, ConnectionError>,
    pub flow_ended: bool,
}

/// A completed connection.
#[derive(Debug, Clone)]
pub struct Connected {
    pub provider: String,
    pub user_id: UserId,
    pub scopes: Vec<String>,
}

/// What a token or refresh response gave, checked.
pub(super) struct FreshToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_in: Option<i64>,
    pub refresh_token: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub refresh_token_expires_in: Option<i64>,
}

impl Drop for FreshToken {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.refresh_token.zeroize();
    }
}

/// An OAuth error code from a provider, reduced to what is safe to show
/// and log (`[a-z_]`, at most 64 characters).
fn safe_code(code: &str) -> String {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        code.to_string()
    } else {
        "unknown_error".to_string()
    }
}

impl Connections {
    /// Starts an authorization for `user` at `provider`: stores the
    /// pending state (hash only) and returns the provider URL and the
    /// binding cookie's value. `origin` is the request's own origin, used
    /// for the redirect URI unless `server.public_url` is set.
    pub async fn start(
        &self,
        user: UserId,
        actor: &str,
        provider: &str,
        origin: &str,
        session_hash: [u8; 32],
    ) -> Result<Started, ConnectionError> {
        let rt = self.provider(provider)?;
        let current = rt.provider();
        let p = current.as_ref();
        if p.client_id.is_empty() {
            return Err(ConnectionError::ClientIdMissing(p.name.clone()));
        }
        if let Some(entry) = &p.client_secret_entry {
            match self.vault.meta(entry) {
                Ok(_) => {}
                Err(VaultError::NotFound(_)) => {
                    return Err(ConnectionError::ClientSecretMissing {
                        provider: p.name.clone(),
                        entry: entry.clone(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        if self.vault.is_sealed() {
            return Err(VaultError::Sealed.into());
        }
        let ep = rt.endpoints().await?;
        let redirect_uri = self.redirect_uri(&p.name, origin);
        let client = oauth_client(p, &ep, None, Some(&redirect_uri)).map_err(|reason| {
            ConnectionError::ProviderResponse {
                provider: p.name.clone(),
                reason,
            }
        })?;
        let state = random_hex(32);
        let binding = random_hex(32);
        let nonce = p
            .scopes
            .iter()
            .any(|s| s == "openid")
            .then(|| random_hex(16));
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(|| oauth2::CsrfToken::new(state.clone()))
            .add_scopes(p.scopes.iter().map(|s| oauth2::Scope::new(s.clone())))
            .set_pkce_challenge(challenge);
        if let Some(n) = &nonce {
            req = req.add_extra_param("nonce", n.clone());
        }
        for (k, v) in &p.extra_auth_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (url, _) = req.url();
        let hash = digest(&state);
        let verifier_sealed = self.vault.seal_value(
            &store::state_context(&hash),
            &SecretString::from(verifier.secret().as_str()),
        )?;
        let t = now();
        let pending = PendingState {
            user_id: user.0,
            actor: actor.to_string(),
            provider: p.name.clone(),
            binding_hash: digest(&binding),
            session_hash,
            redirect_uri,
            nonce,
            verifier_sealed,
            created_at: t,
            expires_at: t + STATE_LIFETIME_SECS,
        };
        let st = Arc::clone(self.vault.store());
        if !blocking(move || store::put_state(&st, &hash, &pending, t)).await? {
            return Err(ConnectionError::TooManyPending);
        }
        Ok(Started {
            authorize_url: url.to_string(),
            binding: SecretString::from(binding),
        })
    }

    /// Completes an authorization: [`Connections::callback_flow`] without
    /// saying whether the flow ended.
    pub async fn callback(
        &self,
        provider: &str,
        params: CallbackParams,
        binding: Option<&str>,
        session_alive: SessionCheck,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Connected, ConnectionError> {
        self.callback_flow(provider, params, binding, session_alive, ip)
            .await
            .result
    }

    /// Completes an authorization. The state is taken only together with
    /// the browser's binding (checked and deleted in one write
    /// transaction: single use, even when anything after fails, and of
    /// concurrent callbacks exactly one gets it); a callback without the
    /// binding leaves the flow untouched, so a page that guessed or saw
    /// the state cannot end it. Then the provider's answer and the code
    /// exchange are checked. Nothing is stored unless every check passes.
    /// Failures are audited.
    pub async fn callback_flow(
        &self,
        provider: &str,
        params: CallbackParams,
        binding: Option<&str>,
        session_alive: SessionCheck,
        ip: Option<std::net::IpAddr>,
    ) -> CallbackOutcome {
        let rt = match self.provider(provider) {
            Ok(rt) => rt,
            Err(e) => {
                return CallbackOutcome {
                    result: Err(e),
                    flow_ended: false,
                };
            }
        };
        let mut actor = "anonymous".to_string();
        let mut flow_ended = false;
        let result = self
            .complete(
                rt,
                &params,
                binding,
                session_alive,
                ip,
                &mut actor,
                &mut flow_ended,
            )
            .await;
        if let Err(e) = &result {
            let event = AuditEvent::new(actor, "connection.connect", Outcome::Failure)
                .target(provider)
                .ip(ip)
                .detail(e.audit_code());
            let st = Arc::clone(self.vault.store());
            if let Err(e) = blocking(move || crate::audit::append(&st, event).map(drop)).await {
                tracing::warn!(error = %e, "could not audit a failed connection");
            }
        }
        CallbackOutcome { result, flow_ended }
    }

    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        rt: &ProviderRuntime,
        params: &CallbackParams,
        binding: Option<&str>,
        session_alive: SessionCheck,
        ip: Option<std::net::IpAddr>,
        actor: &mut String,
        flow_ended: &mut bool,
    ) -> Result<Connected, ConnectionError> {
        let current = rt.provider();
        let p = current.as_ref();
        let denied = params.error.as_deref().map(safe_code);
        let Some(state) = params.state.as_deref() else {
            return Err(denied.map_or(ConnectionError::InvalidState, ConnectionError::Denied));
        };
        let hash = digest(state);
        let bound_by = binding.map(digest);
        let st = Arc::clone(self.vault.store());
        let taken =
            blocking(move || store::take_bound_state(&st, &hash, bound_by.as_ref())).await?;
        let pending = match taken {
            store::Taken::Missing => {
                return Err(denied.map_or(ConnectionError::InvalidState, ConnectionError::Denied));
            }
            store::Taken::NotBound => return Err(ConnectionError::StateMismatch),
            store::Taken::Taken(p) => *p,
        };
        *flow_ended = true;
        *actor = pending.actor.clone();
        if pending.provider != p.name || pending.expires_at <= now() {
            return Err(ConnectionError::InvalidState);
        }
        // The state is bound to the session that started the flow: signing
        // out (or being disabled) in the meantime cancels it.
        let (owner, session) = (UserId(pending.user_id), pending.session_hash);
        let alive = tokio::task::spawn_blocking(move || session_alive(owner, session))
            .await
            .unwrap_or(false);
        if !alive {
            return Err(ConnectionError::SessionEnded);
        }
        if let Some(code) = denied {
            return Err(ConnectionError::Denied(code));
        }
        let ep = rt.endpoints().await?;
        // RFC 9207: an `iss` that is present must be the provider's.
        if let (Some(iss), Some(expected)) = (&params.iss, &ep.issuer)
            && iss.trim_end_matches('/') != expected
        {
            return Err(ConnectionError::IssuerMismatch);
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConnectionError::BadRequest("the callback has no `code`".into()))?;
        let verifier = self
            .vault
            .open_value(&store::state_context(&hash), &pending.verifier_sealed)?;
        let secret = self.client_secret(p)?;
        let client = oauth_client(p, &ep, secret.as_ref(), Some(&pending.redirect_uri)).map_err(
            |reason| ConnectionError::ProviderResponse {
                provider: p.name.clone(),
                reason,
            },
        )?;
        let resp = client
            .exchange_code(oauth2::AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(oauth2::PkceCodeVerifier::new(
                verifier.expose_secret().to_string(),
            ))
            .request_async(&rt.http)
            .await
            .map_err(|e| token_error(&p.name, e))?;
        let fresh = check_response(rt, &resp)?;
        let user = UserId(pending.user_id);
        let t = now();
        let expires_at = fresh.expires_in.map(|s| t.saturating_add(s));
        let scopes = fresh.scopes.clone().unwrap_or_else(|| p.scopes.clone());
        let ctx = store::seal_context(user, &p.name);
        let sealed = TokenSecrets {
            access_token: fresh.access_token.expose_secret().to_string(),
            refresh_token: fresh.refresh_token.clone(),
        }
        .seal(&self.vault, &ctx)?;
        let refresh_token_expires_at = fresh
            .refresh_token_expires_in
            .map(|s| t.saturating_add(s))
            .or_else(|| {
                p.refresh_token_lifetime
                    .map(|d| t.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
            });
        let row = StoredConnection {
            status: Status::Connected,
            scopes: scopes.clone(),
            token_type: fresh.token_type.clone(),
            expires_at,
            connected_at: t,
            last_refresh_at: None,
            last_used_at: None,
            refresh_token_expires_at,
            failures: 0,
            next_attempt_at: None,
            last_error: None,
            sealed,
        };
        let event = AuditEvent::new(actor.clone(), "connection.connect", Outcome::Success)
            .target(p.name.clone())
            .ip(ip)
            .detail(if fresh.refresh_token.is_some() {
                "with_refresh_token"
            } else {
                "without_refresh_token"
            });
        // A reconnect replaces the slot's single-flight lock holder's view.
        // The shared lock too: a replica refreshing the old tokens now
        // would otherwise write them over the new row.
        let slot = self.slot(user, &p.name);
        let _flight = slot.refresh.lock().await;
        let _shared = self.lock_shared(user, &p.name).await?;
        let stored = super::row_digest(&row.sealed);
        let (st, name) = (Arc::clone(self.vault.store()), p.name.clone());
        blocking(move || store::put(&st, user, &name, &row, Some(event))).await?;
        let margin = i64::try_from(p.refresh_margin.as_secs()).unwrap_or(i64::MAX);
        slot.served
            .store(false, std::sync::atomic::Ordering::Relaxed);
        slot.set(Some(Arc::new(Cached {
            access_token: fresh.access_token.clone(),
            token_type: fresh.token_type.clone(),
            expires_at,
            refresh_after: refresh_after(expires_at, t, margin),
            scopes: scopes.clone(),
            row: stored,
        })));
        Ok(Connected {
            provider: p.name.clone(),
            user_id: user,
            scopes,
        })
    }

    /// The provider's client secret from the vault (cached, zeroizing).
    fn client_secret(&self, p: &super::Provider) -> Result<Option<SecretString>, ConnectionError> {
        let Some(entry) = &p.client_secret_entry else {
            return Ok(None);
        };
        match self.vault.reveal_cached(entry) {
            Ok(s) => Ok(Some(s)),
            Err(VaultError::NotFound(_)) => Err(ConnectionError::ClientSecretMissing {
                provider: p.name.clone(),
                entry: entry.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// One refresh-token grant.
pub(super) async fn refresh(
    c: &Connections,
    rt: &ProviderRuntime,
    refresh_token: &str,
) -> Result<FreshToken, ConnectionError> {
    let current = rt.provider();
    let p = current.as_ref();
    let ep = rt.endpoints().await?;
    let secret = c.client_secret(p)?;
    let client = oauth_client(p, &ep, secret.as_ref(), None).map_err(|reason| {
        ConnectionError::ProviderResponse {
            provider: p.name.clone(),
            reason,
        }
    })?;
    let rt_token = oauth2::RefreshToken::new(refresh_token.to_string());
    let resp = client
        .exchange_refresh_token(&rt_token)
        .request_async(&rt.http)
        .await
        .map_err(|e| token_error(&p.name, e))?;
    check_response(rt, &resp)
}

/// RFC 7009 revocation of the refresh token (which also ends the access
/// tokens at most providers), else of the access token.
///
/// Sent by hand rather than through oauth2: the crate refuses any
/// revocation URL that is not https, and the configuration deliberately
/// allows plain http to loopback servers (a local test provider). The
/// request is the RFC's: a form POST with `token`, `token_type_hint` and
/// the client's usual authentication.
pub(super) async fn revoke(
    c: &Connections,
    rt: &ProviderRuntime,
    secrets: &TokenSecrets,
) -> Revocation {
    let current = rt.provider();
    let p = current.as_ref();
    let ep = match rt.endpoints().await {
        Ok(ep) => ep,
        Err(e) => return Revocation::Failed(e.to_string()),
    };
    let Some(url) = ep.revocation.as_deref() else {
        return Revocation::Unsupported;
    };
    let secret = match c.client_secret(p) {
        Ok(s) => s,
        Err(e) => return Revocation::Failed(e.to_string()),
    };
    let (token, hint) = match &secrets.refresh_token {
        Some(r) => (r.as_str(), "refresh_token"),
        None => (secrets.access_token.as_str(), "access_token"),
    };
    let req = match revocation_request(
        url,
        &p.client_id,
        secret.as_ref(),
        ep.client_auth,
        token,
        hint,
    ) {
        Ok(r) => r,
        Err(e) => return Revocation::Failed(e),
    };
    match rt.http.send(req).await {
        // RFC 7009 §2.2: 200 whether or not the token was valid.
        Ok(resp) if resp.status().is_success() => Revocation::Revoked,
        Ok(resp) => {
            let code = serde_json::from_slice::<serde_json::Value>(resp.body())
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(safe_code))
                .unwrap_or_else(|| format!("http_{}", resp.status().as_u16()));
            Revocation::Failed(code)
        }
        Err(e) => Revocation::Failed(e.to_string()),
    }
}

/// The RFC 7009 request, with client authentication as for the token
/// endpoint (RFC 6749 §2.3.1: Basic with form-encoded id and secret, or
/// both in the body).
fn revocation_request(
    url: &str,
    client_id: &str,
    secret: Option<&SecretString>,
    auth: super::config::ClientAuth,
    token: &str,
    hint: &str,
) -> Result<oauth2::HttpRequest, String> {
    use base64::Engine;
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("token", token)
        .append_pair("token_type_hint", hint);
    let mut req = axum::http::Request::post(url)
        .header(
            axum::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(axum::http::header::ACCEPT, "application/json");
    match (auth, secret) {
        (super::config::ClientAuth::Basic, Some(s)) => {
            let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let pair =
                zeroize::Zeroizing::new(format!("{}:{}", enc(client_id), enc(s.expose_secret())));
            let value = zeroize::Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ));
            req = req.header(axum::http::header::AUTHORIZATION, value.as_str());
        }
        (super::config::ClientAuth::Post, Some(s)) => {
            body.append_pair("client_id", client_id)
                .append_pair("client_secret", s.expose_secret());
        }
        (_, None) => {
            body.append_pair("client_id", client_id);
        }
    }
    req.body(body.finish().into_bytes())
        .map_err(|_| "the revocation request could not be built".to_string())
}

/// Maps oauth2's request error without ever carrying the response body
/// (it may hold tokens).
fn token_error(
    provider: &str,
    e: oauth2::RequestTokenError<super::client::HttpError, oauth2::basic::BasicErrorResponse>,
) -> ConnectionError {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => ConnectionError::ExchangeFailed {
            provider: provider.to_string(),
            code: safe_code(r.error().as_ref()),
        },
        oauth2::RequestTokenError::Request(e) => ConnectionError::ProviderUnreachable {
            provider: provider.to_string(),
            source: Box::new(e),
        },
        oauth2::RequestTokenError::Parse(e, _body) => ConnectionError::ProviderResponse {
            provider: provider.to_string(),
            reason: format!("the token response is not valid ({})", e.path()),
        },
        oauth2::RequestTokenError::Other(m) => ConnectionError::ProviderResponse {
            provider: provider.to_string(),
            // oauth2's own texts (status codes, content types), no body.
            reason: m.chars().take(200).collect(),
        },
    }
}

/// Checks a token response: a bearer token (unless the preset says
/// otherwise), plausible values, scopes split the provider's way.
fn check_response(rt: &ProviderRuntime, r: &TokenResponse) -> Result<FreshToken, ConnectionError> {
    let current = rt.provider();
    let p = current.as_ref();
    let bad = |reason: &str| ConnectionError::ProviderResponse {
        provider: p.name.clone(),
        reason: reason.to_string(),
    };
    let token_type = match r.token_type() {
        oauth2::basic::BasicTokenType::Bearer => "Bearer".to_string(),
        other if p.any_token_type => {
            let s = other.as_ref().to_string();
            if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad("the token type is not plausible"));
            }
            s
        }
        _ => return Err(bad("the token type is not bearer")),
    };
    let access = r.access_token().secret();
    if access.is_empty() || access.len() > 16 * 1024 || access.chars().any(char::is_control) {
        return Err(bad("the access token is empty, too long or not printable"));
    }
    let refresh_token = match r.refresh_token() {
        Some(t) if t.secret().is_empty() || t.secret().chars().any(char::is_control) => {
            return Err(bad("the refresh token is not printable"));
        }
        Some(t) => Some(t.secret().clone()),
        None => None,
    };
    let scopes = r.scopes().map(|list| {
        list.iter()
            .flat_map(|s| {
                let s = s.as_str();
                if p.comma_scopes {
                    s.split(',').map(str::to_string).collect::<Vec<_>>()
                } else {
                    vec![s.to_string()]
                }
            })
            .filter(|s| !s.is_empty())
            .collect()
    });
    let secs = |d: u64| i64::try_from(d).unwrap_or(i64::MAX);
    Ok(FreshToken {
        access_token: SecretString::from(access.as_str()),
        token_type,
        expires_in: r.expires_in().map(|d| secs(d.as_secs())),
        refresh_token,
        scopes,
        refresh_token_expires_in: r.extra_fields().refresh_token_expires_in.map(secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_requests_follow_rfc_7009() {
        use super::super::config::ClientAuth;
        let secret = SecretString::from("s:e cr&t");
        let r = revocation_request(
            "https://idp.example/revoke",
            "my client",
            Some(&secret),
            ClientAuth::Basic,
            "rt-1",
            "refresh_token",
        )
        .expect("request");
        assert_eq!(r.method(), axum::http::Method::POST);
        assert_eq!(
            r.body().as_slice(),
            b"token=rt-1&token_type_hint=refresh_token"
        );
        use base64::Engine;
        let basic = r.headers()["authorization"].to_str().expect("ascii");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim_start_matches("Basic "))
            .expect("base64");
        assert_eq!(decoded, b"my+client:s%3Ae+cr%26t");
        let r = revocation_request(
            "https://idp.example/revoke",
            "c",
            Some(&secret),
            ClientAuth::Post,
            "at",
            "access_token",
        )
        .expect("request");
        assert!(r.headers().get("authorization").is_none());
        assert_eq!(
            String::from_utf8_lossy(r.body()),
            "token=at&token_type_hint=access_token&client_id=c&client_secret=s%3Ae+cr%26t"
        );
    }

    #[test]
    fn provider_error_codes_are_sanitised() {
        assert_eq!(safe_code("access_denied"), "access_denied");
        assert_eq!(safe_code("<script>"), "unknown_error");
        assert_eq!(safe_code(""), "unknown_error");
        assert_eq!(safe_code(&"a".repeat(65)), "unknown_error");
    }
}
