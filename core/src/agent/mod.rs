//! Local agent backends: `/agent/<name>/…` forwards to a service configured
//! in `[agents.<name>]` (HTTP and WebSocket), for a user authenticated by
//! session or API key (`agent:<name>` scope), with the caller's identity
//! in `X-Latchkey-*` headers and a signed assertion of it.
//!
//! - [`config`]: `[agents.<name>]`, checked at startup;
//! - [`identity`]: the identity headers and what counts as a Latchkey
//!   credential;
//! - [`assertion`]: the Ed25519 signing key (sealed in `meta`), the JWT,
//!   the JWKS;
//! - [`forward`]: the handler, header filtering, streaming;
//! - [`websocket`]: splicing upgraded connections;
//! - `crate::auth::lifetime`: ending WebSockets and streamed answers when
//!   the caller's credential ends.
//!
//! The HTTP edge is `crate::http::agent`: it authenticates the caller
//! (authn's rules minus the backend's own credentials), hands the request
//! to [`forward::respond`] with a [`forward::Caller`] and an
//! [`forward::AgentContext`], and maps [`AgentError`] to our error shape in
//! `crate::http::error`. `GET /api/verify` (forward-auth for nginx, Caddy,
//! Traefik) lives in `crate::http::verify` and uses the same identity code.
//!
//! The routes skip the API's request time limit and body-size extractor
//! limit (bodies stream; a WebSocket lives long): each agent's timeouts
//! apply, and request bodies are capped at `server.max_body_bytes` as they
//! stream.

pub mod assertion;
pub mod config;
pub mod forward;
pub mod identity;
pub mod websocket;

pub use config::{Agent, AgentSettings};

use crate::auth::scope::{Role, Scope};
use crate::net::tls::{Trust, client_config};
use crate::vault::Vault;
use assertion::{Signer, SignerError};
use axum::body::Body;
use http_body_util::Limited;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The pooled HTTP/1.1 client of one backend (HTTP/1.1 only, so WebSocket
/// upgrades always work).
pub type AgentClient = Client<HttpsConnector<HttpConnector>, Limited<Body>>;

/// Why an agent request was refused or failed; mapped to status and code
/// in `crate::http::error`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A credential without the agent's scope (403 `forbidden`, like
    /// every missing scope).
    #[error("{0}")]
    Forbidden(String),
    /// `/agent/<name>/…` for an agent that is not configured.
    #[error("no agent `{0}` is configured")]
    Unknown(String),
    #[error("agent `{agent}` is not open to the {role} role")]
    RoleRefused { agent: String, role: Role },
    #[error("agent `{0}` does not accept WebSocket connections (websocket = false)")]
    WebSocketDisabled(String),
    #[error(
        "WebSocket over HTTP/2 (extended CONNECT) and CONNECT are not supported; connect over HTTP/1.1"
    )]
    WebSocketOverH2,
    /// The backend could not be reached or broke off. The source is logged,
    /// never shown.
    #[error("the backend of agent `{agent}` could not be reached")]
    Unreachable {
        agent: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the backend of agent `{agent}` did not answer within {} s", after.as_secs())]
    Timeout { agent: String, after: Duration },
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The client's path (or query) would leave the backend.
    #[error("{0}")]
    InvalidPath(&'static str),
    /// A body over `server.max_body_bytes`, declared or streamed.
    #[error("the request body is larger than the server accepts ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    /// Anything else that went wrong inside the server.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// 403 `forbidden` for a credential without `scope`.
    pub(crate) fn needs(scope: &Scope) -> Self {
        AgentError::Forbidden(format!("this needs `{scope}`"))
    }

    /// Whether the backend failed (502/504): the message names only the
    /// agent and the cause is logged as an upstream failure.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            AgentError::Unreachable { .. } | AgentError::Timeout { .. }
        )
    }
}

/// One backend and its client.
pub struct Route {
    pub agent: Agent,
    pub client: AgentClient,
}

/// The agents' shared state.
pub struct Agents {
    pub routes: HashMap<String, Arc<Route>>,
    pub signer: Signer,
    /// `server.max_body_bytes`: the cap on a request body streamed to a
    /// backend.
    pub max_body: usize,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("agents", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Agents {
    /// Builds the routes of `[agents.<name>]`; the error names the key.
    /// `max_body` is `server.max_body_bytes`.
    pub fn new(
        agents: &BTreeMap<String, AgentSettings>,
        max_body: usize,
        vault: Arc<Vault>,
    ) -> Result<Agents, String> {
        let agents =
            config::resolve_all(agents).map_err(|(key, message)| format!("{key}: {message}"))?;
        let mut routes = HashMap::new();
        for a in agents {
            let client = build_client(&a).map_err(|m| format!("agents.{}: {m}", a.name))?;
            routes.insert(a.name.clone(), Arc::new(Route { agent: a, client }));
        }
        Ok(Agents {
            routes,
            signer: Signer::new(vault),
            max_body,
        })
    }
}

fn build_client(a: &Agent) -> Result<AgentClient, String> {
    let trust = if a.scheme == axum::http::uri::Scheme::HTTPS {
        Trust::System(&a.extra_roots)
    } else {
        Trust::Nothing
    };
    let tls = client_config(trust).map_err(|e| e.to_string())?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(a.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .build(connector))
}
