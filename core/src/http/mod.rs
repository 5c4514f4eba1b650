//! HTTP: the router both shells serve, its state, extractors and errors.
//!
//! Only this module knows HTTP and JSON. The shell (appliance or desktop
//! app) builds an [`AppState`] — handing in what only it knows through
//! [`HostInfo`] (certificate validity, TLS details) — and serves
//! [`router`] on its own listener.
//!
//! Routes:
//! - `GET /health`, `GET /ready`, `GET /metrics`: operations, no credentials;
//! - `/api/setup…`, `/api/auth/…`, `/api/invites/accept`: first run and
//!   signing in ([`auth`]), rate limited per client address;
//! - `/api/keys`, `/api/account/…`, `/api/users…`, `/api/audit`: keys,
//!   one's own account, user management, the audit log;
//! - `/api/vault/…`, `/api/backup`, `/api/status`: the vault and operations;
//! - `/api/usage`: proxy usage totals; `/api/realtime/sessions`: the open
//!   realtime (WebSocket) sessions, which an administrator may end
//!   ([`realtime`]);
//! - `/api/connections…`: OAuth connections and the broker ([`connections`]);
//! - `/api/livekit/{name}/token`: LiveKit room tokens ([`livekit`]);
//! - `/proxy/<provider>/…`: the agent proxy ([`crate::proxy`]), which
//!   authenticates API keys itself and streams bodies (no body limit or
//!   request time limit from [`middleware::limits`]; its own apply).
//! - `/agent/<name>/…`: local agent backends ([`crate::agent`]), merged
//!   after [`middleware::limits`] so it does not apply (its own do);
//!   `/api/verify` (forward-auth) and `/.well-known/jwks.json` ([`verify`]).
//!
//! Every `/api` handler that needs a caller takes [`authn::Authenticated`]
//! and makes exactly one permission check (docs/PERMISSIONS.md).
//!
//! Every response carries `x-request-id` and the security headers; every
//! request gets a body-size limit, a time limit and a tracing span (see
//! [`middleware`]). Every error has the shape of [`error::ErrorBody`].

pub mod account;
pub mod agent;
pub mod audit;
pub mod auth;
pub mod authn;
pub mod connections;
pub mod error;
pub mod extract;
pub mod front;
pub mod keys;
pub mod livekit;
pub mod metrics;
pub mod middleware;
pub mod ops;
pub mod origin;
pub mod proxy;
pub mod realtime;
pub mod ui;
pub mod usage;
pub mod users;
pub mod vault;
pub mod verify;

#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use extract::{ApiJson, StaticToken, TokenVerifier};
pub use front::Front;
pub use metrics::Metrics;

use crate::auth::Auth;
use crate::config::Settings;
use crate::vault::{MasterKeySource, Vault};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post, put};
use ipnet::IpNet;
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

    /// Passes, with a warning shown in `detail`.
    pub fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        ReadyCheck {
            name,
            ok: true,
            detail: Some(detail.into()),
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
    /// How a vault sealed without a passphrase is opened again on this
    /// host, for signed-out pages (`GET /api/setup` `unseal_hint`); `None`:
    /// the UI's default (`latchkey unseal` on the server).
    fn unseal_hint(&self) -> Option<&'static str> {
        None
    }
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
    /// The host's admin token (`DATA_DIR/admin.token`): accepted from
    /// loopback peers only, as the host principal.
    pub admin: Arc<dyn TokenVerifier>,
    pub auth: Arc<Auth>,
    /// `auth.trusted_proxies`, parsed once.
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// The agent proxy: provider routes, rate windows, usage totals.
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Local agent backends and the assertion signer.
    pub agents: Arc<crate::agent::Agents>,
    /// OAuth connections and the credential broker.
    pub connections: Arc<crate::connections::Connections>,
    /// `[livekit.<name>]` sections: room tokens signed with vault secrets.
    pub livekit: Arc<crate::livekit::LiveKit>,
    /// The web UI's embedded files.
    pub ui: Arc<latchkey_ui::Assets>,
    /// What the update channel found (`/api/status`); its periodic check
    /// is started with the app's background tasks.
    pub updates: Arc<crate::update::Updates>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state for `vault` and `auth` with `settings`; fails on a
    /// `trusted_proxies` entry that is not an address or CIDR.
    pub fn new(
        vault: Arc<Vault>,
        auth: Arc<Auth>,
        settings: Arc<Settings>,
        host: Arc<dyn HostInfo>,
        metrics: Arc<Metrics>,
        admin: Arc<dyn TokenVerifier>,
    ) -> Result<AppState, String> {
        let trusted_proxies = parse_trusted_proxies(&settings.auth.trusted_proxies)?;
        let agents = crate::agent::Agents::new(
            &settings.agents,
            settings.server.max_body_bytes,
            Arc::clone(&vault),
        )?;
        agents.signer.warm_up();
        let proxy = Arc::new(crate::proxy::Proxy::new(
            &settings.proxy,
            &settings.providers,
            Arc::clone(vault.store()),
        )?);
        metrics.attach_proxy(Arc::clone(&proxy));
        let connections = Arc::new(crate::connections::Connections::new(
            &settings.connections,
            settings.server.public_url.as_deref(),
            Arc::clone(&vault),
        )?);
        let livekit = Arc::new(crate::livekit::LiveKit::new(
            &settings.livekit,
            Arc::clone(&vault),
        )?);
        let update_source = match &settings.update.feed {
            Some(url) => Some(Arc::new(crate::update::HttpSource::new(url)?)
                as Arc<dyn crate::update::UpdateSource>),
            None => None,
        };
        let updates =
            crate::update::Updates::new(Arc::clone(vault.store()), &settings.update, update_source);
        Ok(AppState {
            updates,
            vault,
            settings,
            host,
            metrics,
            admin,
            auth,
            trusted_proxies: Arc::new(trusted_proxies),
            proxy,
            agents: Arc::new(agents),
            connections,
            livekit,
            ui: Arc::new(latchkey_ui::Assets::load()),
        })
    }

    /// The master-key source the configuration selects for this vault's
    /// data directory.
    pub fn source(&self) -> MasterKeySource {
        self.settings.master_key_source(self.vault.store().dir())
    }
}

/// `auth.trusted_proxies`: CIDRs or single addresses.
pub fn parse_trusted_proxies(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "auth.trusted_proxies: `{s}` is not an address or CIDR (e.g. 10.0.0.0/8)"
                    )
                })
        })
        .collect()
}

/// Vault entries may be called `seal`, `unseal` or `rotate-master`; the
/// action routes of the same path must not hide them from GET and DELETE.
fn named(name: &'static str) -> axum::routing::MethodRouter<AppState> {
    use authn::Authenticated;
    use axum::extract::{Path, State};
    get(move |state: State<AppState>, who: Authenticated| {
        vault::meta(state, who, Path(name.to_string()))
    })
    .delete(
        move |state: State<AppState>,
              headers: axum::http::HeaderMap,
              ext: axum::http::Extensions,
              who: Authenticated| {
            vault::remove(state, headers, ext, who, Path(name.to_string()))
        },
    )
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let limited = |r: Router<AppState>| {
        r.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authn::rate_limit,
        ))
    };
    // Public endpoints whose body carries the credential: rate limited.
    let public = limited(
        Router::new()
            .route("/api/setup", get(auth::setup_status))
            .route("/api/setup/begin", post(auth::setup_begin))
            .route("/api/setup/confirm", post(auth::setup_confirm))
            .route("/api/setup/host", post(auth::setup_host))
            .route("/api/auth/login", post(auth::login))
            .route("/api/auth/mfa", post(auth::mfa))
            .route("/api/auth/token", post(auth::token))
            .route("/api/auth/refresh", post(auth::refresh))
            .route("/api/auth/reauth", post(auth::reauth))
            .route("/api/invites/accept", post(users::accept_invite))
            // The OAuth callback: no session (a cross-site navigation), the
            // state and the binding cookie are the credential.
            .route(
                "/api/connections/{provider}/callback",
                get(connections::callback),
            )
            .route("/api/vault/unseal", named("unseal").post(vault::unseal)),
    );
    // Authenticated endpoints: the credential itself gates them; `me` is
    // what a UI polls, so it is not rate limited.
    let api = Router::new()
        .route("/api/auth/me", get(auth::me))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/keys", get(keys::list).post(keys::create))
        .route("/api/keys/{id}", delete(keys::revoke))
        .route("/api/keys/{id}/limits", put(keys::set_limits))
        .route("/api/account/password", post(account::change_password))
        .route(
            "/api/account/totp",
            post(account::totp_begin).delete(account::totp_disable),
        )
        .route("/api/account/totp/confirm", post(account::totp_confirm))
        .route(
            "/api/account/recovery-codes",
            post(account::regenerate_recovery),
        )
        .route(
            "/api/account/sessions",
            get(account::sessions).delete(account::revoke_other_sessions),
        )
        .route(
            "/api/account/sessions/{id}",
            delete(account::revoke_session),
        )
        .route("/api/users", get(users::list))
        .route("/api/users/invites", post(users::create_invite))
        .route("/api/users/{username}/role", put(users::set_role))
        .route("/api/users/{username}/disable", post(users::disable))
        .route("/api/users/{username}/enable", post(users::enable))
        .route("/api/users/{username}/reset-mfa", post(users::reset_mfa))
        .route("/api/audit", get(audit::list))
        .route("/api/vault", get(vault::list).post(vault::put))
        .route("/api/vault/seal", named("seal").post(vault::seal))
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
        .route("/api/usage", get(usage::list))
        .route("/api/realtime/sessions", get(realtime::list))
        .route("/api/realtime/sessions/{id}", delete(realtime::end))
        .route("/api/connections", get(connections::list))
        .route("/api/connections/providers", get(connections::providers))
        .route(
            "/api/connections/{provider}",
            delete(connections::disconnect),
        )
        .route(
            "/api/connections/{provider}/start",
            post(connections::start),
        )
        .route("/api/connections/{provider}/token", get(connections::token))
        .route(
            "/api/connections/{provider}/client",
            put(connections::set_client),
        )
        .route("/api/livekit/{name}/token", post(livekit::token))
        .route("/api/verify", any(verify::verify));
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/.well-known/jwks.json", get(verify::jwks))
        .merge(public)
        .merge(api)
        .route("/proxy/{provider}/{*path}", any(proxy::handle))
        .route("/assets/{*path}", get(ui::asset))
        // Browser navigations to any other page get the UI, which routes
        // on the client; everything else gets the API's JSON 404.
        .fallback(ui::page_or_not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.settings.server.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limits,
        ))
        // Agent routes stream bodies and hold WebSockets: merged here, after
        // `limits`, so only their own timeouts and body cap apply.
        .merge(agent::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}
