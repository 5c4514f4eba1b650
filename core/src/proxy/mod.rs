//! The agent proxy: `/proxy/<provider>/<path>` with credential injection,
//! streaming, per-key rate limits and usage accounting.
//!
//! - [`providers`]: presets and `[providers.<name>]`, checked at startup;
//! - [`headers`]: the path check (SSRF) and the headers kept each way;
//! - [`forward`]: the handler — the hot path, all in memory;
//! - [`usage`]: the tap that reads token counts, the totals counted in
//!   memory and written to `usage_daily` in batches;
//! - [`limits`]: per-key requests per minute and tokens per day, cached;
//! - [`rate`]: the per-key request windows, shared across replicas;
//! - [`pool`]: keep-alive connections to plain-HTTP upstreams;
//! - [`stats`]: per-provider counters for `/metrics`;
//! - [`realtime`]: WebSocket upgrades (realtime sessions): admission, the
//!   frame-aware relay, session limits, usage from server events, the
//!   list of open sessions.
//!
//! [`Proxy`] is built once from the settings and shared through the HTTP
//! layer's state, which hands it to [`forward`] in a [`ProxyContext`];
//! refusals are [`ProxyError`]s, mapped to HTTP by `crate::http::error`.
//! Each provider has its own pooled client ([`pool`] for plain-HTTP
//! upstreams; HTTP/1.1 and h2 over rustls with the ring provider, the
//! system's roots and the provider's `ca_file` for HTTPS ones,
//! `crate::net::tls`), so its connect timeout applies to it alone.

mod error;
pub mod forward;
pub mod headers;
pub(crate) mod json_scan;
pub mod limits;
pub mod pool;
pub mod providers;
pub mod rate;
pub mod realtime;
pub mod settings;
pub mod stats;
pub mod usage;

use crate::net::tls::{Trust, client_config};
use crate::store::{Store, StoreError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use limits::LimitCache;
use providers::Provider;
use settings::{ProviderSettings, ProxySettings};
use stats::ProviderStats;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use usage::UsageBook;

pub use error::ProxyError;
pub use forward::ProxyContext;
pub use rate::KeyLimiter;

/// A provider route's pooled client: [`pool::HttpPool`] for `http`
/// upstreams (the local servers), hyper-util's client over rustls (HTTP/1.1
/// and HTTP/2 by ALPN) for `https` ones.
pub enum UpstreamClient {
    Http(pool::HttpPool),
    Https(Box<Client<HttpsConnector<HttpConnector>, forward::SharedBody>>),
}

/// What an upstream exchange failed with (classified by
/// `forward::upstream_error`).
pub type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

impl UpstreamClient {
    /// Sends `req` (absolute URI) on a pooled (or new) connection.
    pub async fn request(
        &self,
        mut req: hyper::Request<forward::SharedBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        match self {
            UpstreamClient::Http(pool) => {
                // A connection to the origin takes the origin form.
                let origin = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
                *req.uri_mut() = origin.into();
                pool.send(req).await.map_err(Into::into)
            }
            UpstreamClient::Https(c) => c.request(req).await.map_err(Into::into),
        }
    }
}

/// One provider and its client.
pub struct Route {
    pub provider: Provider,
    pub client: UpstreamClient,
    pub stats: ProviderStats,
    /// `sse_keepalive_secs` of the provider, else of `[proxy]`; `None`:
    /// off.
    pub sse_keepalive: Option<Duration>,
    /// The WebSocket client, for a provider with `websocket = true`.
    pub ws_client: Option<realtime::WsClient>,
}

/// The proxy's shared state.
pub struct Proxy {
    /// By configured name. Fx: looked up on every request, filled only
    /// from the configuration (a client's name is only ever looked up).
    pub routes: rustc_hash::FxHashMap<String, Arc<Route>>,
    pub usage: UsageBook,
    pub limiter: KeyLimiter,
    pub limits: LimitCache,
    /// Where usage totals and limits are stored.
    pub store: Arc<Store>,
    /// `proxy.max_body_bytes`.
    pub max_body: usize,
    /// `proxy.usage_flush_secs`.
    pub flush_every: Duration,
    /// The open realtime sessions.
    pub realtime: realtime::Sessions,
    /// `proxy.realtime_*`.
    pub realtime_limits: realtime::Limits,
    /// This process among the replicas sharing the store (random per
    /// start; names its rows of open realtime sessions).
    pub replica: String,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("providers", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds the routes of `[providers.<name>]` under the limits of
    /// `[proxy]` (the error names the key) and loads the key limits and
    /// today's usage from `store`.
    pub fn new(
        settings: &ProxySettings,
        providers: &BTreeMap<String, ProviderSettings>,
        store: Arc<Store>,
    ) -> Result<Proxy, String> {
        let providers = providers::resolve_all(providers)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        let tls = if providers.is_empty() {
            None
        } else {
            Some(client_config(Trust::System(&[])).map_err(|e| e.to_string())?)
        };
        let mut routes = rustc_hash::FxHashMap::default();
        for p in providers {
            let Some(tls) = &tls else { break };
            let tls = if p.extra_roots.is_empty() {
                tls.clone()
            } else {
                client_config(Trust::System(&p.extra_roots))
                    .map_err(|e| format!("providers.{}.ca_file: {e}", p.name))?
            };
            let ws_client = p.websocket.then(|| realtime::ws_client(&p, tls.clone()));
            let client = build_client(&p, tls);
            let keepalive = p
                .sse_keepalive
                .unwrap_or(Duration::from_secs(settings.sse_keepalive_secs));
            routes.insert(
                p.name.clone(),
                Arc::new(Route {
                    provider: p,
                    client,
                    stats: ProviderStats::default(),
                    sse_keepalive: (!keepalive.is_zero()).then_some(keepalive),
                    ws_client,
                }),
            );
        }
        let today = usage::day_of(crate::auth::service::now());
        let usage = UsageBook::load(&store, &today)
            .map_err(|e| format!("reading proxy usage totals: {e}"))?;
        let limits =
            LimitCache::load(&store).map_err(|e| format!("reading per-key limits: {e}"))?;
        Ok(Proxy {
            routes,
            usage,
            limiter: KeyLimiter::new(settings.key_rpm),
            limits,
            store,
            max_body: settings.max_body_bytes,
            flush_every: Duration::from_secs(settings.usage_flush_secs.max(1)),
            realtime: realtime::Sessions::default(),
            realtime_limits: realtime::Limits {
                per_key: settings.realtime_sessions_per_key,
                max_session: settings.realtime_max_session,
                idle: settings.realtime_idle_timeout,
                max_message: settings.realtime_max_message_bytes,
            },
            replica: hex::encode(rand::random::<[u8; 8]>()),
        })
    }

    /// Writes pending usage totals (blocking: call off the async threads).
    pub fn flush_usage(&self) -> Result<usize, StoreError> {
        self.usage.flush(&self.store)
    }

    /// Flushes usage every `proxy.usage_flush_secs` until `stop` turns true.
    /// The shell flushes once more after its last request has finished.
    pub fn spawn_usage_flusher(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(self.flush_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let p = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || p.flush_usage()).await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(rows = n, "wrote proxy usage"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not write proxy usage"),
                    Err(e) => tracing::warn!(error = %e, "proxy usage flush task failed"),
                }
            }
        })
    }
}

impl Proxy {
    /// Shares the per-key request counts and open realtime sessions with
    /// the other replicas every [`rate::SYNC_EVERY`] until `stop` turns
    /// true. Ends at once when no other process shares the store; skips
    /// what no limit needs.
    pub fn spawn_rate_sync(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if !self.store.is_shared() {
                return;
            }
            let mut ticker = tokio::time::interval(rate::SYNC_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Logged when it starts failing and when it recovers, not
            // four times a second.
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let rates = self.limiter.default_rpm() > 0 || self.limits.any_rpm();
                let sessions = self.realtime_limits.per_key > 0;
                if !rates && !sessions {
                    continue;
                }
                let p = Arc::clone(&self);
                let done = tokio::task::spawn_blocking(move || {
                    if rates {
                        p.limiter.sync(&p.store, std::time::Instant::now())?;
                    }
                    if sessions {
                        let now_ms =
                            time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                        let now_ms = u64::try_from(now_ms).unwrap_or(0);
                        p.realtime.sync(&p.store, &p.replica, now_ms)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await;
                match done {
                    Ok(Ok(_)) if failing => {
                        failing = false;
                        tracing::info!("sharing request counts with the other replicas again");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "could not share request counts; each replica counts alone until it can");
                    }
                    Ok(Err(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "request count sync task failed"),
                }
            }
        })
    }

    /// Brings the key limits up to date with a change another replica
    /// committed (blocking: reads the store).
    pub fn on_store_change(
        &self,
        change: &crate::store::Changed,
    ) -> Result<(), limits::LimitsError> {
        if change.touches_table(latchkey_migrations::v3::KEY_LIMITS) {
            self.limits.reload(&self.store)?;
        }
        Ok(())
    }
}

fn build_client(p: &Provider, tls: rustls::ClientConfig) -> UpstreamClient {
    if p.scheme == hyper::http::uri::Scheme::HTTP {
        let authority = match p.authority.port_u16() {
            Some(_) => p.authority.to_string(),
            None => format!("{}:80", p.authority),
        };
        return UpstreamClient::Http(pool::HttpPool::new(authority, p.connect_timeout));
    }
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(p.connect_timeout));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector);
    UpstreamClient::Https(Box::new(client))
}
