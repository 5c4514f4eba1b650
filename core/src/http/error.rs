//! [`ApiError`]: every failure an HTTP handler can return, mapped in this one
//! place to a status code and the body `{"error": code, "message": …}`.
//!
//! `code` is stable (clients match on it); `message` is for people. Errors
//! that are the server's fault (5xx) get an opaque message: their source
//! chain goes to the log, tagged with the request's span, never to the
//! client. Messages never contain secret values: the vault's own error
//! texts name entries and fields, not contents.

use crate::agent::AgentError;
use crate::agent::assertion::SignerError;
use crate::auth::AuthError;
use crate::backup::BackupError;
use crate::connections::ConnectionError;
use crate::net::error::chain;
use crate::proxy::ProxyError;
use crate::store::StoreError;
use crate::vault::{KeyError, MasterKeyError, VaultError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials. Deliberately says nothing more, so a
    /// guesser learns nothing from the response.
    #[error("authentication required")]
    Unauthorized,
    #[error("access to this endpoint is not allowed from here")]
    Forbidden,
    #[error("no such endpoint")]
    RouteNotFound,
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    /// A request that is well-formed HTTP but wrong in content.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than the server accepts ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("the request did not complete within {0} seconds")]
    Timeout(u64),
    /// A request the server understood but cannot perform in its current
    /// state (e.g. an operation this master-key mode does not support).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Everything the auth service refuses, mapped in [`auth_status`].
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A state-changing request authenticated by the session cookie that
    /// did not come from our own origin.
    #[error(
        "cross-site request refused: send it from the Latchkey page itself (Origin or Sec-Fetch-Site must be same-origin)"
    )]
    Csrf,
    /// Too many auth requests from one client address.
    #[error("too many requests from this address; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: std::time::Duration },
    /// Unsealing with a passphrase paused for everyone but administrators
    /// after repeated wrong passphrases (`crate::vault::gate`).
    #[error("too many wrong vault passphrases lately; retry after {} s", retry_after.as_secs().max(1))]
    UnsealBackoff { retry_after: std::time::Duration },
    /// The agent proxy (`/proxy/<name>/…`), mapped in [`proxy_status`].
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// Setting a key's proxy limits failed.
    #[error(transparent)]
    Limits(#[from] crate::proxy::limits::LimitsError),
    /// Local agent backends (`/agent/<name>/…`) and their assertions.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Anything else that went wrong inside the server.
    #[error("internal error: {0}")]
    Internal(String),
    /// OAuth connections and the broker, mapped in [`connection_status`].
    #[error(transparent)]
    Connection(#[from] crate::connections::ConnectionError),
    /// LiveKit room tokens, mapped in [`livekit_status`].
    #[error(transparent)]
    LiveKit(#[from] crate::livekit::LiveKitError),
}

impl From<SignerError> for ApiError {
    fn from(e: SignerError) -> Self {
        ApiError::Agent(AgentError::Signer(e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Vault(VaultError::Store(e))
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (S::FORBIDDEN, "forbidden"),
            ApiError::RouteNotFound => (S::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadRequest { code, .. } => (S::BAD_REQUEST, code),
            ApiError::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Timeout(_) => (S::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Conflict { code, .. } => (S::CONFLICT, code),
            ApiError::Vault(e) => vault_status(e),
            ApiError::Backup(e) => match e {
                BackupError::BadRecipient => (S::BAD_REQUEST, "invalid_recipient"),
                BackupError::PassphraseBusy => (S::CONFLICT, "unseal_in_progress"),
                BackupError::Vault(v) => vault_status(v),
                _ => (S::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::Auth(e) => auth_status(e),
            ApiError::Csrf => (S::FORBIDDEN, "csrf"),
            ApiError::RateLimited { .. } | ApiError::UnsealBackoff { .. } => {
                (S::TOO_MANY_REQUESTS, "rate_limited")
            }
            ApiError::Proxy(e) => proxy_status(e),
            ApiError::Limits(e) => {
                use crate::proxy::limits::LimitsError as L;
                match e {
                    L::Invalid { .. } => (S::BAD_REQUEST, "invalid_field"),
                    L::NotFound => (S::NOT_FOUND, "not_found"),
                    L::Revoked => (S::CONFLICT, "key_revoked"),
                    L::Store(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
                }
            }
            ApiError::Agent(e) => agent_status(e),
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Connection(e) => connection_status(e),
            ApiError::LiveKit(e) => livekit_status(e),
        }
    }

    /// `Retry-After` seconds for 429 answers.
    fn retry_after(&self) -> Option<u64> {
        let retry_after = match self {
            ApiError::RateLimited { retry_after } | ApiError::UnsealBackoff { retry_after } => {
                Some(*retry_after)
            }
            ApiError::Proxy(e) => e.retry_after(),
            _ => None,
        }
        .or(match self.auth_error() {
            Some(AuthError::Locked { retry_after }) => Some(*retry_after),
            _ => None,
        })?;
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Some(secs.max(1))
    }

    /// The auth service's refusal inside this error, wherever it came
    /// from (an API handler, the proxy).
    fn auth_error(&self) -> Option<&AuthError> {
        match self {
            ApiError::Auth(e) => Some(e),
            ApiError::Proxy(ProxyError::Auth(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether an upstream failed (a provider, an agent backend, an OAuth
    /// provider): the message names only the upstream and the cause is
    /// logged as an upstream failure.
    fn is_upstream(&self) -> bool {
        match self {
            ApiError::Proxy(e) => e.is_upstream(),
            ApiError::Agent(e) => e.is_upstream(),
            ApiError::Connection(
                ConnectionError::ProviderUnreachable { .. }
                | ConnectionError::ProviderResponse { .. },
            ) => true,
            _ => false,
        }
    }

    /// 403 `forbidden`: authenticated, but this principal may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Auth(AuthError::Forbidden("forbidden", message.into()))
    }

    /// 401 `unauthenticated`: no usable credentials.
    pub fn unauthenticated() -> Self {
        ApiError::Auth(AuthError::unauthenticated())
    }
}

fn auth_status(e: &AuthError) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        AuthError::Unauthorized(code, _) => (S::UNAUTHORIZED, code),
        AuthError::Forbidden(code, _) => (S::FORBIDDEN, code),
        AuthError::Conflict(code, _) => (S::CONFLICT, code),
        AuthError::Invalid { .. } => (S::BAD_REQUEST, "invalid_field"),
        AuthError::NotFound(_) => (S::NOT_FOUND, "not_found"),
        AuthError::Locked { .. } => (S::TOO_MANY_REQUESTS, "account_locked"),
        AuthError::Vault(v) => vault_status(v),
        AuthError::Store(_) | AuthError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn proxy_status(e: &ProxyError) -> (StatusCode, &'static str) {
    use ProxyError as P;
    use StatusCode as S;
    match e {
        P::Auth(a) => auth_status(a),
        P::UnknownProvider(_) => (S::NOT_FOUND, "unknown_provider"),
        P::InvalidPath(_) => (S::BAD_REQUEST, "invalid_path"),
        P::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
        P::KeyRateLimited { .. } => (S::TOO_MANY_REQUESTS, "key_rate_limited"),
        P::TokenBudgetExhausted { .. } => (S::TOO_MANY_REQUESTS, "token_budget_exhausted"),
        P::CredentialMissing { .. } => (S::CONFLICT, "provider_credential_missing"),
        P::WebSocketDisabled(_) => (S::FORBIDDEN, "websocket_disabled"),
        P::WebSocketOverH2 => (S::BAD_REQUEST, "websocket_h2_unsupported"),
        P::TooManySessions { .. } => (S::TOO_MANY_REQUESTS, "too_many_sessions"),
        P::Vault(v) => vault_status(v),
        P::Connection(c) => connection_status(c),
        P::UpstreamUnreachable { .. } => (S::BAD_GATEWAY, "upstream_unreachable"),
        P::UpstreamTls { .. } => (S::BAD_GATEWAY, "upstream_tls"),
        P::UpstreamTimeout { .. } => (S::GATEWAY_TIMEOUT, "upstream_timeout"),
        P::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn agent_status(e: &AgentError) -> (StatusCode, &'static str) {
    use AgentError as A;
    use StatusCode as S;
    match e {
        A::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
        A::InvalidPath(_) => (S::BAD_REQUEST, "invalid_path"),
        A::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
        A::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        A::Unknown(_) => (S::NOT_FOUND, "unknown_agent"),
        A::RoleRefused { .. } => (S::FORBIDDEN, "forbidden"),
        A::WebSocketDisabled(_) => (S::FORBIDDEN, "websocket_disabled"),
        A::WebSocketOverH2 => (S::BAD_REQUEST, "websocket_h2_unsupported"),
        A::Unreachable { .. } => (S::BAD_GATEWAY, "agent_unreachable"),
        A::Timeout { .. } => (S::GATEWAY_TIMEOUT, "agent_timeout"),
        A::Signer(SignerError::Vault(v)) => vault_status(v),
        A::Signer(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn connection_status(e: &crate::connections::ConnectionError) -> (StatusCode, &'static str) {
    use crate::connections::ConnectionError as C;
    use StatusCode as S;
    match e {
        C::UnknownProvider(_) => (S::NOT_FOUND, "unknown_provider"),
        C::NoConnection(_) => (S::NOT_FOUND, "no_connection"),
        C::NeedsReconnect(_) => (S::CONFLICT, "needs_reconnect"),
        C::ClientSecretMissing { .. } => (S::CONFLICT, "client_secret_missing"),
        C::ClientIdMissing(_) => (S::CONFLICT, "client_id_missing"),
        C::ProviderUnreachable { .. } => (S::BAD_GATEWAY, "provider_unreachable"),
        C::ProviderResponse { .. } => (S::BAD_GATEWAY, "provider_error"),
        C::Denied(_) => (S::BAD_REQUEST, "oauth_denied"),
        C::InvalidState => (S::BAD_REQUEST, "invalid_state"),
        C::StateMismatch => (S::BAD_REQUEST, "state_mismatch"),
        C::IssuerMismatch => (S::BAD_REQUEST, "issuer_mismatch"),
        C::ExchangeFailed { .. } => (S::BAD_REQUEST, "exchange_failed"),
        C::SessionRequired => (S::FORBIDDEN, "session_required"),
        C::TooManyPending => (S::TOO_MANY_REQUESTS, "too_many_pending"),
        C::SessionEnded => (S::BAD_REQUEST, "session_ended"),
        C::BadRequest(_) => (S::BAD_REQUEST, "invalid_request"),
        C::Vault(v) => vault_status(v),
        C::Store(_) | C::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn livekit_status(e: &crate::livekit::LiveKitError) -> (StatusCode, &'static str) {
    use crate::livekit::LiveKitError as L;
    use StatusCode as S;
    match e {
        L::Unknown(_) => (S::NOT_FOUND, "unknown_livekit"),
        L::Invalid { .. } => (S::BAD_REQUEST, "invalid_field"),
        L::RoomNotAllowed(_) => (S::FORBIDDEN, "room_not_allowed"),
        L::IdentityNotAllowed(_) => (S::FORBIDDEN, "identity_not_allowed"),
        L::GrantNotAllowed(_) => (S::FORBIDDEN, "grant_not_allowed"),
        L::TtlTooLong { .. } => (S::BAD_REQUEST, "ttl_too_long"),
        L::SecretMissing { .. } => (S::CONFLICT, "livekit_secret_missing"),
        L::Vault(v) => vault_status(v),
        L::Sign(_) | L::Store(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn vault_status(e: &VaultError) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        // 423 Locked: the resource exists but is locked until unsealed.
        VaultError::Sealed => (S::LOCKED, "vault_sealed"),
        VaultError::NotInitialized => (S::CONFLICT, "vault_not_initialized"),
        VaultError::AlreadyInitialized => (S::CONFLICT, "vault_already_initialized"),
        VaultError::NotFound(_) => (S::NOT_FOUND, "not_found"),
        VaultError::AlreadyExists(_) => (S::CONFLICT, "already_exists"),
        VaultError::Invalid(_) => (S::BAD_REQUEST, "invalid_field"),
        VaultError::SourceMismatch { .. } => (S::CONFLICT, "master_key_source_mismatch"),
        VaultError::Key(KeyError::WrongMasterKey(_)) => (S::FORBIDDEN, "wrong_master_key"),
        VaultError::MasterKey(MasterKeyError::NeedsPassphrase(_)) => {
            (S::CONFLICT, "passphrase_required")
        }
        VaultError::Integrity { .. }
        | VaultError::Key(_)
        | VaultError::MasterKey(_)
        | VaultError::Damaged(_)
        | VaultError::Store(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if self.is_upstream() {
            // Names only the provider; the cause (never a credential) is
            // logged.
            tracing::warn!(error = %chain(&self), "upstream failed");
            self.to_string()
        } else if status.is_server_error() {
            // The request's span (method, route, request id) is current here.
            tracing::error!(error = %chain(&self), "request failed");
            "internal server error; the server log has the details (look for this request's \
             x-request-id)"
                .to_string()
        } else {
            match &self {
                // A wrong passphrase must not look different from any other
                // wrong key, and carries no detail.
                ApiError::Vault(VaultError::Key(KeyError::WrongMasterKey(_))) => {
                    "the passphrase or key does not open this vault".to_string()
                }
                other => other.to_string(),
            }
        };
        let retry_after = self.retry_after();
        let mut resp = (
            status,
            Json(ErrorBody {
                error: code,
                message,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"latchkey\""),
            );
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(
            ApiError::Vault(VaultError::Sealed).status_and_code(),
            (StatusCode::LOCKED, "vault_sealed")
        );
        assert_eq!(
            ApiError::Vault(VaultError::NotFound("x".into())).status_and_code(),
            (StatusCode::NOT_FOUND, "not_found")
        );
        assert_eq!(
            ApiError::Backup(BackupError::BadRecipient).status_and_code(),
            (StatusCode::BAD_REQUEST, "invalid_recipient")
        );
    }

    #[test]
    fn server_errors_are_opaque() {
        let e = ApiError::Vault(VaultError::Damaged("/secret/path details".into()));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = futures_body(resp);
        assert!(!body.contains("/secret/path"), "{body}");
        assert!(body.contains("\"error\":\"internal\""), "{body}");
    }

    /// The proxy's own errors answer exactly as they did as `ApiError`
    /// variants: status, code, message, `Retry-After`, `WWW-Authenticate`.
    #[test]
    fn proxy_errors_keep_their_answers() {
        use std::time::Duration;
        let cases = [
            (
                ProxyError::UnknownProvider("nope".into()),
                StatusCode::NOT_FOUND,
                "unknown_provider",
                "no provider `nope` is configured",
            ),
            (
                ProxyError::InvalidPath("`@` is not allowed in the path"),
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "`@` is not allowed in the path",
            ),
            (
                ProxyError::PayloadTooLarge { limit: 10 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the server accepts (10 bytes)",
            ),
            (
                ProxyError::CredentialMissing {
                    provider: "openai".into(),
                    entry: "openai-key".into(),
                },
                StatusCode::CONFLICT,
                "provider_credential_missing",
                "provider `openai` is configured with vault entry `openai-key`, which does not exist",
            ),
            (
                ProxyError::needs(&crate::auth::scope::Scope::proxy("openai").expect("scope")),
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs `proxy:openai`",
            ),
            (
                ProxyError::UpstreamTimeout {
                    provider: "openai".into(),
                    after: Duration::from_secs(5),
                },
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream of provider `openai` did not answer within 5 s",
            ),
            (
                ProxyError::UpstreamUnreachable {
                    provider: "openai".into(),
                    source: "connection refused".into(),
                },
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "the upstream of provider `openai` could not be reached",
            ),
        ];
        assert_answers(cases);
        let resp = ApiError::from(ProxyError::KeyRateLimited {
            rpm: 2,
            retry_after: Duration::from_millis(1500),
        })
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let resp = ApiError::from(ProxyError::TokenBudgetExhausted {
            budget: 100,
            retry_after: Duration::from_secs(60),
        })
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "60");
        let resp = ApiError::from(ProxyError::unauthenticated()).into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
        // 5xx inside the proxy stays opaque.
        let resp = ApiError::from(ProxyError::Internal("rate windows".into())).into_response();
        assert!(!futures_body(resp).contains("rate windows"));
    }

    /// The agent's refusals answer as they did when built as `ApiError`s.
    #[test]
    fn agent_errors_keep_their_answers() {
        use std::time::Duration;
        let cases = [
            (
                AgentError::needs(&crate::auth::scope::Scope::agent("notes").expect("scope")),
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs `agent:notes`",
            ),
            (
                AgentError::InvalidPath("the path would leave the agent's backend"),
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the path would leave the agent's backend",
            ),
            (
                AgentError::PayloadTooLarge { limit: 7 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the server accepts (7 bytes)",
            ),
            (
                AgentError::Timeout {
                    agent: "notes".into(),
                    after: Duration::from_secs(3),
                },
                StatusCode::GATEWAY_TIMEOUT,
                "agent_timeout",
                "the backend of agent `notes` did not answer within 3 s",
            ),
            (
                AgentError::Internal("prefix header".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error; the server log has the details (look for this request's \
                 x-request-id)",
            ),
        ];
        assert_answers(cases);
    }

    /// Each error answers with its status, code and message.
    fn assert_answers<E: Into<ApiError>>(
        cases: impl IntoIterator<Item = (E, StatusCode, &'static str, &'static str)>,
    ) {
        for (e, status, code, message) in cases {
            let resp = e.into().into_response();
            assert_eq!(resp.status(), status, "{code}");
            let json: serde_json::Value = serde_json::from_str(&futures_body(resp)).expect("json");
            assert_eq!(json["error"], code);
            assert_eq!(json["message"], message);
        }
    }

    fn futures_body(resp: Response) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
}
