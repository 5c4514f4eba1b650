//! The agent proxy: `/proxy/<provider>/<path>` with credential injection,
//! streaming, per-key rate limits and usage accounting.
//!
//! - [`providers`]: presets and `[providers.<name>]`, checked at startup;
//! - [`headers`]: the path check (SSRF) and the headers kept each way;
//! - [`forward`]: the handler — the hot path, all in memory;
//! - [`usage`]: the tap that reads token counts and the in-memory totals.
//!
//! [`Proxy`] is built once from the settings and shared through
//! `AppState`; each provider has its own pooled client (HTTP/1.1 and h2
//! over rustls with the ring provider and the system's roots), so its
//! connect timeout applies to it alone.

pub mod forward;
pub mod headers;
pub mod providers;
pub mod usage;

use crate::config::Settings;
use crate::http::ApiError;
use axum::body::Body;
use http_body_util::Limited;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use providers::Provider;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use usage::UsageBook;

/// The pooled client every provider route uses.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Limited<Body>>;

/// One provider and its client.
pub struct Route {
    pub provider: Provider,
    pub client: UpstreamClient,
}

/// The proxy's shared state.
pub struct Proxy {
    pub routes: HashMap<String, Arc<Route>>,
    pub usage: UsageBook,
    pub limiter: KeyLimiter,
    /// `proxy.max_body_bytes`.
    pub max_body: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("providers", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds the routes for `settings.providers`; the error names the key.
    pub fn new(settings: &Settings) -> Result<Proxy, String> {
        let providers = providers::resolve_all(&settings.providers)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        let tls = if providers.is_empty() {
            None
        } else {
            Some(tls_config()?)
        };
        let mut routes = HashMap::new();
        for p in providers {
            let Some(tls) = &tls else { break };
            let client = build_client(&p, tls.clone());
            routes.insert(
                p.name.clone(),
                Arc::new(Route {
                    provider: p,
                    client,
                }),
            );
        }
        Ok(Proxy {
            routes,
            usage: UsageBook::default(),
            limiter: KeyLimiter::new(settings.proxy.key_rpm),
            max_body: settings.proxy.max_body_bytes,
        })
    }
}

/// rustls with the ring provider and the system's root certificates.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A single unparsable system certificate must not stop the server.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "no system root certificates found: HTTPS upstreams will fail (install ca-certificates)"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn build_client(p: &Provider, tls: rustls::ClientConfig) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(p.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// `proxy.key_rpm`: a fixed one-minute window per key, in memory.
#[derive(Debug)]
pub struct KeyLimiter {
    rpm: u32,
    start: Instant,
    windows: Mutex<HashMap<String, (u64, u32)>>,
}

impl KeyLimiter {
    pub fn new(rpm: u32) -> Self {
        KeyLimiter {
            rpm,
            start: Instant::now(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// One request for `key_id` at `now`; 429 with `Retry-After` when the
    /// key has used up this minute.
    pub fn check(&self, key_id: &str, now: Instant) -> Result<(), ApiError> {
        if self.rpm == 0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.start);
        let minute = elapsed.as_secs() / 60;
        let mut w = self
            .windows
            .lock()
            .map_err(|_| ApiError::Internal("rate windows".into()))?;
        let entry = w.entry(key_id.to_string()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= self.rpm {
            let next = Duration::from_secs((minute + 1) * 60);
            return Err(ApiError::KeyRateLimited {
                rpm: self.rpm,
                retry_after: next.saturating_sub(elapsed),
            });
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rpm_window() {
        let l = KeyLimiter::new(2);
        let t = l.start;
        assert!(l.check("a", t).is_ok());
        assert!(l.check("a", t).is_ok());
        let err = l.check("a", t + Duration::from_secs(10));
        assert!(
            matches!(err, Err(ApiError::KeyRateLimited { retry_after, .. }) if retry_after == Duration::from_secs(50))
        );
        assert!(l.check("b", t).is_ok());
        assert!(l.check("a", t + Duration::from_secs(61)).is_ok());
        assert!(KeyLimiter::new(0).check("a", t).is_ok());
    }
}
