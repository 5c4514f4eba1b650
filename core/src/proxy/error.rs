//! [`ProxyError`]: everything `/proxy/…` refuses or fails with. The HTTP
//! layer maps each to a status and code (`crate::http::error`); the
//! messages are shown to the client, except for the sources of upstream
//! failures, which go to the log only (they never hold a credential:
//! hyper's errors name no URL or header).

use crate::auth::AuthError;
use crate::connections::ConnectionError;
use crate::vault::VaultError;
use std::time::Duration;

/// Why a proxied request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No usable key, or one without the provider's scope.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `/proxy/<name>/…` for a provider that is not configured.
    #[error("no provider `{0}` is configured")]
    UnknownProvider(String),
    /// The client's path (or query) would leave the upstream.
    #[error("{0}")]
    InvalidPath(&'static str),
    /// A body over `proxy.max_body_bytes`, declared or streamed.
    #[error("the request body is larger than the server accepts ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    /// An API key over its requests per minute.
    #[error("this API key is over its limit of {rpm} requests per minute; retry after {} s", retry_after.as_secs().max(1))]
    KeyRateLimited { rpm: u32, retry_after: Duration },
    /// An API key whose `tokens_per_day` budget is spent for this UTC day.
    #[error("this API key has used its budget of {budget} tokens for today (UTC); retry after {} s", retry_after.as_secs().max(1))]
    TokenBudgetExhausted { budget: u64, retry_after: Duration },
    /// The provider's `secret` names a vault entry that does not exist.
    #[error("provider `{provider}` is configured with vault entry `{entry}`, which does not exist")]
    CredentialMissing { provider: String, entry: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The key owner's connection (a provider with `connection`). Boxed:
    /// rare, and as large as the rest together (a smaller error keeps the
    /// hot path's futures small).
    #[error(transparent)]
    Connection(Box<ConnectionError>),
    /// The provider's upstream could not be reached or broke off.
    #[error("the upstream of provider `{provider}` could not be reached")]
    UpstreamUnreachable {
        provider: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream's TLS certificate was not trusted (or the handshake
    /// failed otherwise).
    #[error(
        "TLS with the upstream of provider `{provider}` failed: its certificate is not trusted (for a self-hosted upstream, set providers.{provider}.ca_file)"
    )]
    UpstreamTls {
        provider: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the upstream of provider `{provider}` did not answer within {} s", after.as_secs())]
    UpstreamTimeout { provider: String, after: Duration },
    /// A WebSocket upgrade to a provider without `websocket = true`.
    #[error("provider `{0}` does not accept WebSocket connections (websocket = false)")]
    WebSocketDisabled(String),
    /// WebSocket over HTTP/2 (RFC 8441 extended CONNECT), or CONNECT.
    #[error(
        "WebSocket over HTTP/2 (extended CONNECT) and CONNECT are not supported; connect over HTTP/1.1"
    )]
    WebSocketOverH2,
    /// The key already has `proxy.realtime_sessions_per_key` open.
    #[error("this API key already has {limit} realtime sessions open; close one first")]
    TooManySessions { limit: u32 },
    /// Anything else that went wrong inside the server.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ConnectionError> for ProxyError {
    fn from(e: ConnectionError) -> Self {
        ProxyError::Connection(Box::new(e))
    }
}

impl ProxyError {
    /// 403 `forbidden` for a key without `scope`.
    pub(crate) fn needs(scope: &crate::auth::scope::Scope) -> Self {
        ProxyError::Auth(AuthError::Forbidden(
            "forbidden",
            format!("this needs `{scope}`"),
        ))
    }

    /// 401: no usable key.
    pub(crate) fn unauthenticated() -> Self {
        ProxyError::Auth(AuthError::unauthenticated())
    }

    /// How long a key over its limits waits (429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::KeyRateLimited { retry_after, .. }
            | ProxyError::TokenBudgetExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the upstream failed (502/504): the message names only the
    /// provider and the cause is logged as an upstream failure.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamUnreachable { .. }
                | ProxyError::UpstreamTls { .. }
                | ProxyError::UpstreamTimeout { .. }
        )
    }
}
