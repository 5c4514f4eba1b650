//! Realtime sessions: WebSocket upgrades on `/proxy/<provider>/…` for
//! providers with `websocket = true` (docs/PROXY.md, "WebSockets").
//!
//! [`open`] admits the upgrade exactly as an HTTP request is admitted
//! (`forward::admit`: key, scope, provider, path, budget, rate), with one
//! more place a key may come from — a WebSocket subprotocol, since browsers
//! cannot set headers ([`client_key`]) — then the per-key session limit
//! ([`Sessions::reserve`]; across replicas see [`shared`]). The upstream gets the handshake with the
//! client's Latchkey key removed wherever it was (headers, `?key=`/
//! `?api_key=`, the subprotocol list) and the provider's credential added
//! in its form; no extension is offered, so the frames can be read. When
//! the upstream answers 101, the client gets its 101 (with the upstream's
//! `Sec-WebSocket-Accept` and chosen subprotocol) and [`relay`] splices
//! the two; any other answer is passed back as it is.
//!
//! A session ends with a close the client can tell apart
//! ([`End`]): its key revoked or expired, its owner disabled or the vault
//! sealed (`1008`, within a second: the revocation epoch wakes the
//! session's watcher, `crate::auth::lifetime`), a message over the limit
//! (`1009`), a broken frame (`1002`), the session's time limit (`4000`),
//! idleness (`4001`), an administrator (`4002`), the upstream gone
//! (`1011`). The upstream then gets `1001`. Usage is read by [`meter`].

mod meter;
mod relay;
pub mod shared;

pub use meter::{RealtimeEvent, ResponseUsage, read_event};

use super::ProxyError;
use super::forward::{
    ProxyContext, admit, client_key as http_client_key, credential, inject_header, split_path,
    upstream_error, upstream_uri,
};
use super::headers::{filter_request_headers, filter_response_headers};
use crate::auth::Via;
use crate::auth::lifetime::{Guard, until_revoked};
use crate::auth::store::UserId;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Why the proxy ended a session: the close code and reason the client
/// gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub code: u16,
    pub reason: &'static str,
}

impl End {
    /// The key no longer passes: revoked, expired, its owner disabled or
    /// its scope gone, or the vault sealed.
    pub const REVOKED: End = End {
        code: 1008,
        reason: "credential revoked",
    };
    pub const TOO_BIG: End = End {
        code: 1009,
        reason: "message too big",
    };
    pub const PROTOCOL: End = End {
        code: 1002,
        reason: "protocol error",
    };
    pub const SESSION_LIMIT: End = End {
        code: 4000,
        reason: "session time limit reached",
    };
    pub const IDLE: End = End {
        code: 4001,
        reason: "idle timeout",
    };
    pub const ADMIN: End = End {
        code: 4002,
        reason: "ended by an administrator",
    };
    pub const UPSTREAM_LOST: End = End {
        code: 1011,
        reason: "upstream connection lost",
    };
    /// The client went away: nothing to tell it.
    pub const PEER_GONE: End = End {
        code: 1001,
        reason: "going away",
    };
}

/// `[proxy]`'s realtime limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_key: u32,
    pub max_session: Duration,
    pub idle: Duration,
    pub max_message: u64,
}

/// One open session, as listed by `GET /api/realtime/sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    pub key_id: String,
    pub user: String,
    #[serde(skip)]
    pub user_id: UserId,
    pub provider: String,
    /// Unix seconds.
    pub started_at: i64,
}

struct Open {
    view: SessionView,
    end: watch::Sender<Option<End>>,
}

#[derive(Default)]
struct Inner {
    open: HashMap<u64, Open>,
    per_key: HashMap<String, u32>,
    /// Per key, the sessions other replicas had open when last read
    /// ([`shared`]); empty when the store is not shared.
    others: HashMap<String, u32>,
}

/// The open sessions: counted per key (here and, as last read, on the
/// other replicas), listed, ended by an administrator.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// What this replica last published ([`shared`]).
    published: Mutex<shared::Published>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.lock().open.len())
            .finish()
    }
}

/// A reserved place among the open sessions; dropping it frees it.
pub struct Reserved {
    sessions: Arc<super::Proxy>,
    id: u64,
    key_id: String,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut inner = self.sessions.realtime.lock();
        inner.open.remove(&self.id);
        if let Some(n) = inner.per_key.get_mut(&self.key_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.per_key.remove(&self.key_id);
            }
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a place for `view` under `per_key` (0: no limit).
    fn reserve(
        proxy: &Arc<super::Proxy>,
        per_key: u32,
        mut view: SessionView,
    ) -> Result<(Reserved, watch::Receiver<Option<End>>), ProxyError> {
        let s = &proxy.realtime;
        let id = s.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = s.lock();
        let n = inner.per_key.get(&view.key_id).copied().unwrap_or(0);
        let others = inner.others.get(&view.key_id).copied().unwrap_or(0);
        if per_key > 0 && n.saturating_add(others) >= per_key {
            return Err(ProxyError::TooManySessions { limit: per_key });
        }
        inner.per_key.insert(view.key_id.clone(), n + 1);
        view.id = format!("rt_{id}");
        let key_id = view.key_id.clone();
        let (end, rx) = watch::channel(None);
        inner.open.insert(id, Open { view, end });
        Ok((
            Reserved {
                sessions: Arc::clone(proxy),
                id,
                key_id,
            },
            rx,
        ))
    }

    /// The open sessions (of `user` only, when given), oldest first.
    pub fn list(&self, user: Option<UserId>) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = self
            .lock()
            .open
            .values()
            .filter(|o| user.is_none_or(|u| o.view.user_id == u))
            .map(|o| o.view.clone())
            .collect();
        out.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        out
    }

    /// Ends session `id` (close 4002); the session's view, or `None` when
    /// no such session is open.
    pub fn end(&self, id: &str) -> Option<SessionView> {
        let n: u64 = id.strip_prefix("rt_")?.parse().ok()?;
        let inner = self.lock();
        let open = inner.open.get(&n)?;
        let _ = open.end.send(Some(End::ADMIN));
        Some(open.view.clone())
    }

    /// How many sessions are open.
    pub fn count(&self) -> usize {
        self.lock().open.len()
    }
}

/// The Latchkey key of a WebSocket handshake: where an HTTP request may
/// carry it, else in `Sec-WebSocket-Protocol` — a protocol that is the key
/// itself (`lk_…`, Deepgram's browser form `token, <key>`) or ends with it
/// after a dot (OpenAI's `openai-insecure-api-key.<key>`).
fn client_key(headers: &HeaderMap, query: Option<&str>) -> Option<SecretString> {
    if let Some(k) = http_client_key(headers, query) {
        return Some(SecretString::from(k.into_owned()));
    }
    protocols(headers).find_map(|p| protocol_key(p).map(|k| SecretString::from(k.to_owned())))
}

/// The offered subprotocols, in order.
fn protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The key inside subprotocol `p`, if it carries one.
fn protocol_key(p: &str) -> Option<&str> {
    if p.starts_with("lk_") {
        return Some(p);
    }
    p.rsplit_once('.')
        .map(|(_, k)| k)
        .filter(|k| k.starts_with("lk_"))
}

/// The subprotocols the upstream is offered: the client's, minus the one
/// carrying the key and a bare `token` marker before it (Deepgram's
/// `token, <key>` form). `None` when nothing is left.
fn upstream_protocols(headers: &HeaderMap) -> Option<HeaderValue> {
    let offered: Vec<&str> = protocols(headers).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(offered.len());
    for (i, p) in offered.iter().enumerate() {
        let marks_key = *p == "token"
            && offered
                .get(i + 1)
                .is_some_and(|n| protocol_key(n).is_some());
        if protocol_key(p).is_none() && !marks_key {
            kept.push(p);
        }
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// A realtime session: admitted like any proxied request, then the
/// upstream's handshake, then the relay.
pub(super) async fn open(
    ctx: &ProxyContext<'_>,
    mut parts: Parts,
    client: OnUpgrade,
) -> Result<Response, ProxyError> {
    // Before the key is checked: a revocation from now on reaches the
    // session.
    let revocations = ctx.auth.revocations.subscribe();
    let key =
        client_key(&parts.headers, parts.uri.query()).ok_or_else(ProxyError::unauthenticated)?;
    let (principal, route) = admit(ctx, &parts, key.expose_secret())?;
    let p = &route.provider;
    if parts.method != Method::GET || parts.version != Version::HTTP_11 {
        return Err(ProxyError::WebSocketOverH2);
    }
    let Some(ws) = route.ws_client.as_ref().filter(|_| p.websocket) else {
        return Err(ProxyError::WebSocketDisabled(p.name.clone()));
    };
    let Via::ApiKey { id: key_id, .. } = &principal.via else {
        return Err(ProxyError::unauthenticated());
    };
    let limits = ctx.proxy.realtime_limits;
    let (reserved, ended) = Sessions::reserve(
        ctx.proxy,
        limits.per_key,
        SessionView {
            id: String::new(),
            key_id: key_id.clone(),
            user: principal.username.clone(),
            user_id: principal.user_id,
            provider: p.name.clone(),
            started_at: crate::auth::service::now(),
        },
    )?;
    let secret = credential(ctx, p, &principal, &parts.headers).await?;
    let (_, path) = split_path(&parts.uri);
    let uri = upstream_uri(p, path, parts.uri.query(), secret.as_ref())?;
    let model = parts.uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "model")
            .map(|(_, v)| v.into_owned())
    });

    // The upstream's handshake: the client's headers filtered as for HTTP
    // (its key, cookies, hop-by-hop), no extension (the frames must stay
    // readable), no browser `Origin`, the subprotocols without the key.
    let offered = upstream_protocols(&parts.headers);
    let mut headers = std::mem::take(&mut parts.headers);
    filter_request_headers(&mut headers);
    for n in [
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::ORIGIN,
    ] {
        headers.remove(n);
    }
    if let Some(v) = offered {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    for (n, v) in &p.default_headers {
        if !headers.contains_key(n) {
            headers.insert(n.clone(), v.clone());
        }
    }
    inject_header(p, secret.as_ref(), &mut headers)?;
    drop(secret);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut up = hyper::Request::new(http_body_util::Empty::<Bytes>::new());
    *up.method_mut() = Method::GET;
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(p.first_byte_timeout, ws.request(up)).await;
    let mut resp = match sent {
        Err(_) => {
            route.stats.failed();
            return Err(ProxyError::UpstreamTimeout {
                provider: p.name.clone(),
                after: p.first_byte_timeout,
            });
        }
        Ok(Err(e)) => {
            route.stats.failed();
            return Err(upstream_error(p, Box::new(e), 0));
        }
        Ok(Ok(r)) => r,
    };
    route
        .stats
        .answered(resp.status().as_u16(), started.elapsed());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream's refusal (401, 404, 429, …), as it gave it.
        let (mut rparts, rbody) = resp.into_parts();
        filter_response_headers(&mut rparts.headers);
        let mut out = Response::new(Body::new(rbody));
        *out.status_mut() = rparts.status;
        *out.headers_mut() = rparts.headers;
        return Ok(out);
    }
    if resp
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        return Err(ProxyError::UpstreamUnreachable {
            provider: p.name.clone(),
            source: "the upstream chose a WebSocket extension nobody offered".into(),
        });
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let mut h = std::mem::take(resp.headers_mut());
    filter_response_headers(&mut h);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = h;

    // The session lives as long as its key passes: the same check as at
    // the start, on every revocation and every 30 s (and the vault must
    // stay unsealed when the credential comes from it).
    let auth = Arc::clone(ctx.auth);
    let vault = Arc::clone(ctx.vault);
    let needs_vault = p.secret.is_some();
    let scope = p.scope.clone();
    let key = Arc::new(key);
    let revoked = until_revoked(Guard {
        revoked: revocations,
        still_valid: Box::new(move || {
            let (auth, vault, key, scope) = (
                Arc::clone(&auth),
                Arc::clone(&vault),
                Arc::clone(&key),
                scope.clone(),
            );
            Box::pin(async move {
                !(needs_vault && vault.is_sealed())
                    && auth
                        .authenticate_key(key.expose_secret())
                        .is_ok_and(|who| who.allows(&scope))
            })
        }),
    });
    let session = format!("rt_{}", reserved.id);
    let relay = relay::Relay {
        client,
        upstream,
        limits,
        ended,
        revoked,
        meter: meter::Meter::new(
            Arc::clone(ctx.proxy),
            Arc::clone(&route),
            key_id.clone(),
            model,
        ),
        provider: p.name.clone(),
        session,
    };
    tokio::spawn(async move {
        relay::run(relay).await;
        drop(reserved);
    });
    Ok(out)
}

/// The WebSocket client of a provider with `websocket = true`: HTTP/1.1
/// only (ALPN `http/1.1`), plain HTTP for loopback upstreams, one
/// connection per session (an upgraded connection never returns to a
/// pool).
pub type WsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

/// Builds [`WsClient`] for `route`'s provider with `tls`.
pub fn ws_client(p: &super::providers::Provider, tls: rustls::ClientConfig) -> WsClient {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(p.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    #[test]
    fn keys_in_subprotocols_are_found_and_never_offered_upstream() {
        let openai = h(&[(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.lk_abc, openai-beta.realtime-v1",
        )]);
        assert_eq!(
            client_key(&openai, None).map(|k| k.expose_secret().to_owned()),
            Some("lk_abc".into())
        );
        assert_eq!(
            upstream_protocols(&openai).expect("kept"),
            "realtime, openai-beta.realtime-v1"
        );
        let deepgram = h(&[("sec-websocket-protocol", "token, lk_xyz")]);
        assert_eq!(
            client_key(&deepgram, None).map(|k| k.expose_secret().to_owned()),
            Some("lk_xyz".into())
        );
        assert_eq!(upstream_protocols(&deepgram), None);
        // A header key wins; the query works too; other protocols pass.
        let both = h(&[
            ("authorization", "Bearer lk_head"),
            ("sec-websocket-protocol", "lk_proto, chat"),
        ]);
        assert_eq!(
            client_key(&both, None).map(|k| k.expose_secret().to_owned()),
            Some("lk_head".into())
        );
        assert_eq!(upstream_protocols(&both).expect("kept"), "chat");
        assert_eq!(
            client_key(&HeaderMap::new(), Some("api_key=lk_q&x=1"))
                .map(|k| k.expose_secret().to_owned()),
            Some("lk_q".into())
        );
        assert!(client_key(&h(&[("sec-websocket-protocol", "token, sk-real")]), None).is_none());
    }

    #[test]
    fn session_ids_round_trip_and_unknown_ones_are_refused() {
        let s = Sessions::default();
        assert!(s.end("rt_1").is_none());
        assert!(s.end("nope").is_none());
        assert!(s.end("rt_x").is_none());
        assert_eq!(s.count(), 0);
    }
}
