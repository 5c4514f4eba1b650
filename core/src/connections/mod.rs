//! Connections: OAuth 2.0 accounts a user connects once, kept fresh, and
//! handed to that user's agents as short-lived access tokens (the broker).
//!
//! - [`config`]: `[connections.<name>]`, the presets, checked at startup;
//! - [`client`]: the HTTP client under oauth2's requests, discovery;
//! - [`store`]: the `connections` and `oauth_states` rows (encodings);
//! - [`refresher`]: the background task (proactive and daily refreshes,
//!   batched audit and last-used writes, purging expired states);
//! - `broker`: the token broker, single-flight refresh, disconnect;
//! - `sync`: keeping this process's cached tokens and client settings in
//!   step with rows other replicas change;
//! - this module: [`Connections`], the flows — start (state + PKCE S256 +
//!   nonce, bound to the browser by a cookie), callback (single-use state,
//!   code exchange), the broker with its single-flight refresh, disconnect
//!   (RFC 7009 revocation).
//!
//! Follows RFC 9700 (OAuth 2.0 Security BCP): PKCE S256 on every request,
//! one-time `state` bound to the browser, exact per-provider redirect URIs,
//! the RFC 9207 `iss` check when a provider sends it, refresh tokens never
//! leave the server.
//!
//! Hot path: a valid cached access token is answered from memory (no
//! decryption, no disk I/O); last-used times and the issuance audit entries
//! are batched. Refreshes are single-flight per connection: one async mutex
//! per (user, provider), and every waiter re-checks the cache after taking
//! it, so 50 concurrent callers at expiry cause exactly one refresh. With
//! several replicas, the refresh also holds the store's shared lock on the
//! connection and reads the row again under it, so there is one refresh
//! per connection across all of them (`docs/SCALE.md`). A rotated refresh
//! token is committed to the database before the new access token is
//! handed to anyone.

mod broker;
pub mod client;
pub mod config;
mod flow;
pub mod refresher;
pub mod store;
mod sync;

pub use config::{ConnectionSettings, Provider};
pub use flow::{
    CallbackOutcome, CallbackParams, Connected, STATE_LIFETIME_SECS, SessionCheck, Started,
};

use crate::audit::AuditEvent;
use crate::auth::store::UserId;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::StoreError;
use crate::vault::{Vault, VaultError};
use broker::Due;
use client::{Endpoints, HttpClient};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use store::Status;
use zeroize::Zeroizing;

/// Everything the connection flows and the broker can refuse.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no connection provider `{0}` is configured")]
    UnknownProvider(String),
    #[error("you have no connection to `{0}`; connect it first")]
    NoConnection(String),
    #[error(
        "the connection to `{0}` needs to be reconnected: the provider no longer accepts its \
         refresh token"
    )]
    NeedsReconnect(String),
    #[error(
        "the client secret of provider `{provider}` is missing: store it in the vault entry \
         `{entry}`"
    )]
    ClientSecretMissing { provider: String, entry: String },
    #[error(
        "provider `{0}` has no client id yet: an administrator sets it on the Connections \
         screen (or as `client_id` in latchkey.toml)"
    )]
    ClientIdMissing(String),
    /// Network failure, timeout or discovery failure. The source is
    /// logged, never shown.
    #[error("provider `{provider}` could not be reached")]
    ProviderUnreachable {
        provider: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The provider answered something unusable (not JSON, a token type
    /// other than bearer, …). The reason never quotes token values.
    #[error("provider `{provider}` sent an unusable answer: {reason}")]
    ProviderResponse { provider: String, reason: String },
    /// The provider's authorization response carried `error` (e.g.
    /// `access_denied`).
    #[error("the provider did not authorize the connection ({0})")]
    Denied(String),
    #[error(
        "the authorization's state is unknown, expired or already used; start the connection again"
    )]
    InvalidState,
    #[error(
        "this browser did not start the authorization it is completing (the binding cookie is \
         missing or different); start again from the same browser"
    )]
    StateMismatch,
    #[error("the authorization response names another issuer than the provider's (mix-up refused)")]
    IssuerMismatch,
    /// The token endpoint refused the authorization code (wrong PKCE
    /// verifier, reused or injected code, wrong redirect URI …).
    #[error(
        "provider `{provider}` refused the authorization code ({code}); start the connection again"
    )]
    ExchangeFailed { provider: String, code: String },
    #[error(
        "starting a connection needs a browser session (sign in first); API keys cannot start one"
    )]
    SessionRequired,
    #[error("too many unfinished connection attempts; finish one or wait 10 minutes")]
    TooManyPending,
    #[error(
        "the session that started this connection has ended (signed out or expired); sign in and \
         start again"
    )]
    SessionEnded,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ConnectionError {
    /// The short reason written to the audit log (never a secret).
    pub fn audit_code(&self) -> String {
        match self {
            ConnectionError::Denied(c) => format!("oauth_denied:{c}"),
            ConnectionError::ExchangeFailed { code, .. } => format!("exchange_failed:{code}"),
            ConnectionError::InvalidState => "invalid_state".into(),
            ConnectionError::StateMismatch => "state_mismatch".into(),
            ConnectionError::SessionEnded => "session_ended".into(),
            ConnectionError::IssuerMismatch => "issuer_mismatch".into(),
            ConnectionError::ProviderUnreachable { .. } => "provider_unreachable".into(),
            ConnectionError::ProviderResponse { .. } => "provider_response".into(),
            ConnectionError::NeedsReconnect(_) => "needs_reconnect".into(),
            _ => "error".into(),
        }
    }
}

/// An access token handed out by the broker.
#[derive(Clone)]
pub struct IssuedToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A connection as listed (no secrets).
#[derive(Debug, Clone)]
pub struct ConnectionView {
    pub user_id: UserId,
    pub provider: String,
    pub status: Status,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub connected_at: i64,
    pub last_refresh_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub reconnect_by: Option<i64>,
}

/// A configured provider as listed.
#[derive(Debug, Clone)]
pub struct ProviderView {
    pub name: String,
    pub preset: Option<&'static str>,
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    pub client_secret_entry: Option<String>,
    /// `None`: the provider needs no secret (public client).
    pub client_secret_present: Option<bool>,
    /// The client id in use (`None`: not set anywhere yet).
    pub client_id: Option<String>,
    /// Where the client id comes from: `config` (latchkey.toml), `ui` (set
    /// by an administrator over the API) or `missing`.
    pub client_id_source: &'static str,
}

/// An administrator's client settings for a provider, kept in the `meta`
/// table under [`client_meta_key`]; they override latchkey.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// The vault entry of a secret set over the API for a provider whose
    /// section names none ([`default_secret_entry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret_entry: Option<String>,
}

/// The `meta` key of a provider's [`ClientOverride`].
fn client_meta_key(provider: &str) -> Vec<u8> {
    format!("connection_client:{provider}").into_bytes()
}

/// The vault entry a client secret set over the API goes to when the
/// provider's section names none.
pub fn default_secret_entry(provider: &str) -> String {
    format!("{provider}-client-secret")
}

impl ClientOverride {
    fn apply(&self, configured: &Provider) -> Provider {
        let mut p = configured.clone();
        if let Some(id) = &self.client_id {
            p.client_id = id.clone();
        }
        if p.client_secret_entry.is_none() {
            p.client_secret_entry = self.client_secret_entry.clone();
        }
        p
    }
}

/// A client id as an administrator may set it (the same rule as
/// `client_id` in latchkey.toml).
fn check_client_id(id: &str) -> Result<String, ConnectionError> {
    let id = id.trim();
    if id.is_empty() || id.len() > 512 || id.chars().any(char::is_control) {
        return Err(ConnectionError::BadRequest(
            "`client_id` must be 1–512 characters without control characters".into(),
        ));
    }
    Ok(id.to_string())
}

/// What `DELETE` did at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    /// The provider has no RFC 7009 endpoint.
    Unsupported,
    /// Best effort failed; the record is deleted anyway.
    Failed(String),
}

/// The decrypted part of a connection row.
#[derive(Serialize, Deserialize)]
struct TokenSecrets {
    access_token: String,
    refresh_token: Option<String>,
}

impl TokenSecrets {
    fn seal(&self, vault: &Vault, ctx: &str) -> Result<Vec<u8>, ConnectionError> {
        let json = Zeroizing::new(
            serde_json::to_string(self).map_err(|e| ConnectionError::Internal(e.to_string()))?,
        );
        Ok(vault.seal_value(ctx, &SecretString::from(json.as_str()))?)
    }

    fn open(vault: &Vault, ctx: &str, sealed: &[u8]) -> Result<TokenSecrets, ConnectionError> {
        let plain = vault.open_value(ctx, sealed)?;
        serde_json::from_str(plain.expose_secret()).map_err(|_| {
            ConnectionError::Internal("a connection's sealed tokens are damaged".into())
        })
    }
}

impl Drop for TokenSecrets {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.access_token.zeroize();
        self.refresh_token.zeroize();
    }
}

/// A provider and what is learnt about it at run time.
pub struct ProviderRuntime {
    /// As latchkey.toml says.
    configured: Provider,
    /// What the flows use: `configured` with the administrator's client
    /// settings applied (replaced whole when they change).
    current: RwLock<Arc<Provider>>,
    pub http: HttpClient,
    /// Discovered (or configured) endpoints, fetched on first use; a failed
    /// discovery is not cached, so the next use tries again.
    endpoints: tokio::sync::Mutex<Option<Arc<Endpoints>>>,
}

impl ProviderRuntime {
    /// The provider as the flows use it now.
    pub fn provider(&self) -> Arc<Provider> {
        let guard = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard)
    }

    fn set_current(&self, p: Provider) {
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(p);
    }

    async fn endpoints(&self) -> Result<Arc<Endpoints>, ConnectionError> {
        let mut guard = self.endpoints.lock().await;
        if let Some(ep) = guard.as_ref() {
            return Ok(Arc::clone(ep));
        }
        let ep = Arc::new(
            client::endpoints(&self.configured, &self.http)
                .await
                .map_err(|reason| ConnectionError::ProviderUnreachable {
                    provider: self.configured.name.clone(),
                    source: reason.into(),
                })?,
        );
        *guard = Some(Arc::clone(&ep));
        Ok(ep)
    }
}

/// The in-memory copy of a connection's access token.
struct Cached {
    access_token: SecretString,
    token_type: String,
    expires_at: Option<i64>,
    /// When to refresh: `expires_at` less the margin (at most half the
    /// token's lifetime). `None`: the token does not expire.
    refresh_after: Option<i64>,
    scopes: Vec<String>,
    /// [`row_digest`] of the stored row's sealed tokens this copy came
    /// from: when another replica changes the row, the copy is dropped
    /// (`sync`).
    row: [u8; 32],
}

impl Cached {
    fn fresh(&self, now: i64) -> bool {
        self.refresh_after.is_none_or(|t| now < t) && self.expires_at.is_none_or(|e| now < e)
    }

    fn issued(&self) -> IssuedToken {
        IssuedToken {
            access_token: self.access_token.clone(),
            token_type: self.token_type.clone(),
            expires_at: self.expires_at,
            scopes: self.scopes.clone(),
        }
    }
}

/// Per-connection state: the single-flight lock and the cached token.
#[derive(Default)]
struct Slot {
    refresh: tokio::sync::Mutex<()>,
    cached: RwLock<Option<Arc<Cached>>>,
    /// Whether the token from the last refresh has been handed out: the
    /// background refresher renews such connections ("in use") ahead of
    /// time. Reset by every refresh.
    served: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn fresh(&self, now: i64) -> Option<Arc<Cached>> {
        let c = self.cached.read().ok()?;
        c.as_ref().filter(|c| c.fresh(now)).cloned()
    }

    fn set(&self, c: Option<Arc<Cached>>) {
        if let Ok(mut g) = self.cached.write() {
            *g = c;
        }
    }
}

type SlotKey = (UserId, String);

/// Most issuance audit entries held in memory before the broker writes
/// them itself (backpressure when the batch writer cannot keep up).
const AUDIT_QUEUE_CAP: usize = 50_000;

/// The connections service, shared through `AppState`.
pub struct Connections {
    vault: Arc<Vault>,
    providers: BTreeMap<String, Arc<ProviderRuntime>>,
    /// `server.public_url`: the origin of redirect URIs (else the request's).
    public_url: Option<String>,
    slots: RwLock<HashMap<SlotKey, Arc<Slot>>>,
    pending_used: Mutex<HashMap<SlotKey, i64>>,
    audit_queue: Mutex<Vec<AuditEvent>>,
    /// Refresh requests sent to providers (all outcomes), for tests and
    /// the log.
    refreshes: AtomicU64,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The refresh point of a token that expires at `expires_at` and was
/// issued at `issued_at`: `margin` before expiry, but never earlier than
/// half-way through its life (a 10 s token with a 60 s margin would
/// otherwise be refreshed on every use).
fn refresh_after(expires_at: Option<i64>, issued_at: i64, margin: i64) -> Option<i64> {
    let e = expires_at?;
    let life = (e - issued_at).max(0);
    Some(e - margin.min(life / 2))
}

impl Connections {
    /// Builds the providers of `[connections.<name>]`; the error names the
    /// key. `public_url` is `server.public_url`.
    pub fn new(
        connections: &BTreeMap<String, ConnectionSettings>,
        public_url: Option<&str>,
        vault: Arc<Vault>,
    ) -> Result<Connections, String> {
        let providers = config::resolve_all(connections)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        let mut map = BTreeMap::new();
        for p in providers {
            let http = HttpClient::new(&p.extra_roots)
                .map_err(|e| format!("connections.{}: {e}", p.name))?;
            let overrides = load_override(vault.store(), &p.name)
                .map_err(|e| format!("connections.{}: {e}", p.name))?;
            map.insert(
                p.name.clone(),
                Arc::new(ProviderRuntime {
                    current: RwLock::new(Arc::new(overrides.apply(&p))),
                    configured: p,
                    http,
                    endpoints: tokio::sync::Mutex::new(None),
                }),
            );
        }
        let public_url = public_url
            .map(config::check_public_url)
            .transpose()
            .map_err(|e| format!("server.public_url: {e}"))?;
        Ok(Connections {
            vault,
            providers: map,
            public_url,
            slots: RwLock::new(HashMap::new()),
            pending_used: Mutex::new(HashMap::new()),
            audit_queue: Mutex::new(Vec::new()),
            refreshes: AtomicU64::new(0),
        })
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Result<&Arc<ProviderRuntime>, ConnectionError> {
        self.providers
            .get(name)
            .ok_or_else(|| ConnectionError::UnknownProvider(name.to_string()))
    }

    /// Every configured provider, and whether its client secret is in the
    /// vault (metadata only: works while sealed).
    pub fn list_providers(&self) -> Vec<ProviderView> {
        self.providers.values().map(|rt| self.view(rt)).collect()
    }

    fn view(&self, rt: &ProviderRuntime) -> ProviderView {
        let p = rt.provider();
        let client_id_source = if p.client_id.is_empty() {
            "missing"
        } else if p.client_id == rt.configured.client_id {
            "config"
        } else {
            "ui"
        };
        ProviderView {
            name: p.name.clone(),
            preset: p.preset,
            issuer: p.issuer.clone(),
            scopes: p.scopes.clone(),
            client_secret_entry: p.client_secret_entry.clone(),
            client_secret_present: p
                .client_secret_entry
                .as_deref()
                .map(|e| self.vault.meta(e).is_ok()),
            client_id: (!p.client_id.is_empty()).then(|| p.client_id.clone()),
            client_id_source,
        }
    }

    /// The redirect URI of `provider` for a request to `origin` (or
    /// `server.public_url` when set): what to register at the provider.
    pub fn redirect_uri(&self, provider: &str, origin: &str) -> String {
        let base = self.public_url.as_deref().unwrap_or(origin);
        format!("{base}/api/connections/{provider}/callback")
    }

    /// An administrator sets a provider's client id and/or client secret
    /// (blocking: writes the vault and the database). The secret goes into
    /// the provider's vault entry (its `client_secret_entry`, else
    /// [`default_secret_entry`]); a client id other than latchkey.toml's
    /// overrides it and is kept in the `meta` table (setting the
    /// configured one again removes the override). Audited as
    /// `connection.client` naming what changed, never a value. The
    /// secret's entry is written first: a sealed vault changes nothing.
    pub fn set_client(
        &self,
        provider: &str,
        client_id: Option<&str>,
        client_secret: Option<&SecretString>,
        actor: &str,
        ip: Option<std::net::IpAddr>,
    ) -> Result<ProviderView, ConnectionError> {
        let rt = self.provider(provider)?;
        if client_id.is_none() && client_secret.is_none() {
            return Err(ConnectionError::BadRequest(
                "send `client_id`, `client_secret` or both".into(),
            ));
        }
        let client_id = client_id.map(check_client_id).transpose()?;
        if let Some(s) = client_secret {
            let v = s.expose_secret();
            if v.is_empty() || v.len() > 4096 || v.chars().any(char::is_control) {
                return Err(ConnectionError::BadRequest(
                    "`client_secret` must be 1–4096 characters without control characters".into(),
                ));
            }
        }
        let store = self.vault.store();
        let mut ov = load_override(store, provider)?;
        let mut changed = Vec::new();
        if let Some(secret) = client_secret {
            let entry = match &rt.configured.client_secret_entry {
                Some(e) => e.clone(),
                None => {
                    let e = default_secret_entry(provider);
                    ov.client_secret_entry = Some(e.clone());
                    e
                }
            };
            let record = crate::vault::NewRecord {
                name: entry,
                kind: crate::vault::Kind::Generic,
                provider: Some(provider.to_string()),
                labels: [("purpose".to_string(), "oauth-client-secret".to_string())].into(),
            };
            self.vault.put(&record, secret, true)?;
            changed.push("client_secret");
        }
        if let Some(id) = client_id {
            ov.client_id = (id != rt.configured.client_id).then_some(id);
            changed.push("client_id");
        }
        let event = AuditEvent::new(actor, "connection.client", crate::audit::Outcome::Success)
            .target(provider)
            .ip(ip)
            .detail(changed.join(","));
        save_override(store, provider, &ov, event)?;
        rt.set_current(ov.apply(&rt.configured));
        Ok(self.view(rt))
    }

    /// Refresh requests sent so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    fn slot(&self, user: UserId, provider: &str) -> Arc<Slot> {
        let key = (user, provider.to_string());
        if let Ok(slots) = self.slots.read()
            && let Some(s) = slots.get(&key)
        {
            return Arc::clone(s);
        }
        match self.slots.write() {
            Ok(mut slots) => Arc::clone(slots.entry(key).or_default()),
            // A poisoned map still works as "no cache".
            Err(_) => Arc::new(Slot::default()),
        }
    }

    /// Whether the connection's current token has been served since its
    /// last refresh (in memory; `None` without a slot, e.g. after a
    /// restart).
    fn served_since_refresh(&self, user: UserId, provider: &str) -> Option<bool> {
        let slots = self.slots.read().ok()?;
        let slot = slots.get(&(user, provider.to_string()))?;
        Some(slot.served.load(Ordering::Relaxed))
    }

    fn forget(&self, user: UserId, provider: &str) {
        if let Ok(mut slots) = self.slots.write()
            && let Some(s) = slots.remove(&(user, provider.to_string()))
        {
            s.set(None);
        }
    }

    /// Drops every cached access token (the vault was sealed).
    fn clear_cache(&self) {
        if let Ok(slots) = self.slots.read() {
            for s in slots.values() {
                s.set(None);
            }
        }
    }

    fn queue_audit(&self, e: AuditEvent) -> bool {
        match self.audit_queue.lock() {
            Ok(mut q) => {
                q.push(e);
                q.len() >= AUDIT_QUEUE_CAP
            }
            Err(_) => false,
        }
    }

    fn note_use(&self, user: UserId, provider: &str, at: i64) {
        if let Ok(mut p) = self.pending_used.lock() {
            p.insert((user, provider.to_string()), at);
        }
    }

    /// Writes queued audit entries and last-used times (blocking; the
    /// refresher calls it every second, the shell once more at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        let events = match self.audit_queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => Vec::new(),
        };
        if let Err(e) = store::append_audit(self.vault.store(), events.clone()) {
            // Keep them for the next attempt: audit entries are not dropped.
            if let Ok(mut q) = self.audit_queue.lock() {
                let mut again = events;
                again.append(&mut q);
                *q = again;
            }
            return Err(e);
        }
        let used = match self.pending_used.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => HashMap::new(),
        };
        store::flush_last_used(self.vault.store(), &used)?;
        Ok(())
    }

    /// The caller's connections (or everyone's with `None`), without
    /// secrets.
    pub fn list(&self, user: Option<UserId>) -> Result<Vec<ConnectionView>, ConnectionError> {
        let rows = store::list(self.vault.store(), user)?;
        let pending = self
            .pending_used
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        Ok(rows
            .into_iter()
            .map(|(u, provider, c)| {
                let used = pending.get(&(u, provider.clone())).copied();
                ConnectionView {
                    user_id: u,
                    status: c.status,
                    scopes: c.scopes,
                    expires_at: c.expires_at,
                    connected_at: c.connected_at,
                    last_refresh_at: c.last_refresh_at,
                    last_used_at: used.max(c.last_used_at),
                    reconnect_by: c.refresh_token_expires_at,
                    provider,
                }
            })
            .collect())
    }
}

/// A provider's [`ClientOverride`] (the default when none is stored).
fn load_override(
    store: &crate::store::Store,
    provider: &str,
) -> Result<ClientOverride, StoreError> {
    Ok(store
        .meta_get(&client_meta_key(provider))?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default())
}

/// Stores (or, when empty, removes) a provider's [`ClientOverride`] and
/// its audit entry in one transaction.
fn save_override(
    store: &crate::store::Store,
    provider: &str,
    ov: &ClientOverride,
    event: AuditEvent,
) -> Result<(), StoreError> {
    let key = client_meta_key(provider);
    let txn = store.begin_write()?;
    {
        let mut meta = txn.open_table(crate::store::META)?;
        if *ov == ClientOverride::default() {
            meta.remove(key.as_slice())?;
        } else {
            // Two optional strings always serialize.
            let value = serde_json::to_vec(ov).unwrap_or_default();
            meta.insert(key.as_slice(), value.as_slice())?;
        }
    }
    crate::audit::append_in(&txn, event)?;
    txn.commit()?;
    Ok(())
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ConnectionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnectionError::Internal(format!("store task failed: {e}")))?
        .map_err(ConnectionError::from)
}

/// Constant-time equality of two digests.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// SHA-256 of a string.
fn digest(s: &str) -> [u8; 32] {
    row_digest(s.as_bytes())
}

/// SHA-256 of a connection row's sealed tokens (which row a cached token
/// came from; the sealed bytes change with every write of new tokens).
fn row_digest(sealed: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(sealed).into()
}

/// `bytes` random bytes from the OS, hex-encoded (≥ 128 bits for states,
/// binding cookies and nonces).
fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests;
