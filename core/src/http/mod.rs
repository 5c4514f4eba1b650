//! HTTP: the router both shells serve, its state, extractors and errors.
//!
//! Only this module knows HTTP and JSON. The shell (appliance or desktop
//! app) builds an [`AppState`] — handing in what only it knows through
//! [`HostInfo`] (certificate validity, TLS details) — and serves
//! [`router`] on its own listener.
//!
//! Routes:
//! - `GET /health`, `GET /ready`, `GET /metrics`: operations, no admin token;
//! - `/api/vault/…`, `/api/backup`, `/api/status`: the admin API, behind
//!   `Authorization: Bearer <admin token>` (until the auth issue replaces it).
//!
//! Every response carries `x-request-id` and the security headers; every
//! request gets a body-size limit, a time limit and a tracing span (see
//! [`middleware`]). Every error has the shape of [`error::ErrorBody`].

pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
mod ops;
pub mod vault;

#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use extract::{ApiJson, StaticToken, TokenVerifier};
pub use metrics::Metrics;

use crate::config::Settings;
use crate::vault::{MasterKeySource, Vault};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde::Serialize;
use std::sync::Arc;

/// One readiness check's result, as shown by `GET /ready`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReadyCheck {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ReadyCheck {
    pub fn pass(name: &'static str) -> Self {
        ReadyCheck {
            name,
            ok: true,
            detail: None,
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        ReadyCheck {
            name,
            ok: false,
            detail: Some(detail.into()),
        }
    }
}

/// What the shell knows and `core` does not.
pub trait HostInfo: Send + Sync + 'static {
    /// Checks beyond the database and the vault, e.g. `certificates`.
    fn readiness_checks(&self) -> Vec<ReadyCheck>;
    /// TLS details for `GET /api/status` (fingerprints, expiry), if any.
    fn tls_info(&self) -> Option<serde_json::Value>;
}

/// A host with nothing to add (tests, plain-HTTP embeddings).
#[derive(Debug, Default)]
pub struct NoHostInfo;

impl HostInfo for NoHostInfo {
    fn readiness_checks(&self) -> Vec<ReadyCheck> {
        Vec::new()
    }
    fn tls_info(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Everything handlers need, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub settings: Arc<Settings>,
    pub host: Arc<dyn HostInfo>,
    pub metrics: Arc<Metrics>,
    pub admin: Arc<dyn TokenVerifier>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The master-key source the configuration selects for this vault's
    /// data directory.
    pub fn source(&self) -> MasterKeySource {
        self.settings.master_key_source(self.vault.store().dir())
    }
}

/// Vault entries may be called `seal`, `unseal` or `rotate-master`; the
/// action routes of the same path must not hide them from GET and DELETE.
fn named(name: &'static str) -> axum::routing::MethodRouter<AppState> {
    use axum::extract::{Path, State};
    get(move |state: State<AppState>| vault::meta(state, Path(name.to_string())))
        .delete(move |state: State<AppState>| vault::remove(state, Path(name.to_string())))
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/vault", get(vault::list).post(vault::put))
        .route("/api/vault/seal", named("seal").post(vault::seal))
        .route("/api/vault/unseal", named("unseal").post(vault::unseal))
        .route(
            "/api/vault/rotate-master",
            named("rotate-master").post(vault::rotate_master),
        )
        .route("/api/vault/verify", named("verify").post(vault::verify))
        .route("/api/vault/init", named("init").post(vault::init))
        .route("/api/vault/{name}", get(vault::meta).delete(vault::remove))
        .route("/api/vault/{name}/reveal", post(vault::reveal))
        .route("/api/backup", post(vault::backup))
        .route("/api/status", get(ops::status))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::require_admin,
        ));
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .merge(api)
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.settings.server.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limits,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}
