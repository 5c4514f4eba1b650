//! The hot path: authenticate the key, check scope and rate, swap the
//! credential, stream to the upstream and back.
//!
//! Everything here is in memory: the key lookup, the scope check, the
//! key's limits (rate window and token budget) and the provider credential
//! (`Vault::reveal_cached`). Bodies are
//! streamed both ways; when the client goes away the response body is
//! dropped, which drops the upstream response and its connection, so the
//! upstream request is cancelled.

use super::headers::{filter_request_headers, filter_response_headers};
use super::providers::{Injection, Provider};
use super::usage::{UsageKey, UsageParser};
use super::{Proxy, ProxyError, Route};
use crate::auth::scope::Scope;
use crate::auth::{Auth, Via};
use crate::connections::Connections;
use crate::net::body::{DRAIN_LIMIT, DRAIN_TIME, Hooks, Streamed, drain};
use crate::net::client;
use crate::net::error::causes;
use crate::net::headers::{bearer, wants_websocket};
use crate::net::path::check_path;
use crate::vault::{Vault, VaultError};
use axum::body::Body;
use axum::extract::Request;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Uri, Version, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Limited;
use ipnet::IpNet;
use secrecy::ExposeSecret;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use zeroize::Zeroizing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the handler reads besides the request, borrowed from the HTTP
/// layer's state for the request's lifetime: the hot path clones nothing.
#[derive(Clone, Copy)]
pub struct ProxyContext<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub auth: &'a Arc<Auth>,
    pub vault: &'a Arc<Vault>,
    /// The broker of providers with `connection`.
    pub connections: &'a Connections,
    /// `auth.trusted_proxies`: the client address audited when a
    /// connection's token is issued.
    pub trusted_proxies: &'a [IpNet],
    /// The socket peer (`None` without a socket: handler tests).
    pub peer: Option<std::net::SocketAddr>,
}

/// Answers a proxied request. A request refused before its body was used
/// has a small rest of it read first, so HTTP/2 clients still sending it
/// get the answer, not a reset.
pub async fn respond(ctx: &ProxyContext<'_>, mut req: Request) -> Result<Response, ProxyError> {
    // A WebSocket upgrade becomes a realtime session; taken before the
    // parts are split off.
    let upgrade = wants_websocket(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    // The rare paths (a realtime session, draining a refused body) are
    // boxed: inline, their futures would make this one several KiB, and
    // every proxied request would copy that size at each move on its way
    // into the connection task (docs/PERFORMANCE.md, session 7).
    let answered = match upgrade {
        Some(upgrade) => Box::pin(super::realtime::open(ctx, parts, upgrade)).await,
        None => forward(ctx, parts, &mut body).await,
    };
    if answered.is_err()
        && let Some(body) = body
    {
        Box::pin(drain(body, DRAIN_LIMIT, DRAIN_TIME)).await;
    }
    answered
}

/// Largest rest of a request body read before a 502/504 is sent (the
/// caller is authenticated by then), and how long that may take.
const UPSTREAM_DRAIN_LIMIT: usize = 16 * 1024 * 1024;
const UPSTREAM_DRAIN_TIME: Duration = Duration::from_secs(2);

/// The request body as handed to the upstream client, with a second handle
/// that keeps it when the client drops the request: if the upstream then
/// fails, what the client is still uploading can be read before the 502/504
/// goes out, so an HTTP/2 client mid-upload gets the answer, not a reset.
#[derive(Clone)]
pub struct SharedBody(Arc<std::sync::Mutex<Option<Limited<Body>>>>);

impl SharedBody {
    pub(crate) fn new(body: Limited<Body>) -> Self {
        SharedBody(Arc::new(std::sync::Mutex::new(Some(body))))
    }

    /// Reads and discards what is left, within the limits above.
    async fn drain(&self) {
        let rest = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rest) = rest {
            drain(rest, UPSTREAM_DRAIN_LIMIT, UPSTREAM_DRAIN_TIME).await;
        }
    }
}

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Uncontended: only the upstream connection polls while the
        // request is in flight.
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .map_or(true, |g| g.as_ref().is_none_or(HttpBody::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(HttpBody::size_hint))
            .unwrap_or_default()
    }
}

/// The Latchkey key from `Authorization: Bearer lk_…` (or `Token lk_…`,
/// Deepgram's scheme), `x-api-key` or
/// `x-goog-api-key`, else from the query's `key=lk_…` or `api_key=lk_…`
/// (how Gemini's REST examples and Cartesia's WebSocket clients pass a
/// key; it is never forwarded, see [`upstream_uri`]).
pub(super) fn client_key<'a>(
    headers: &'a axum::http::HeaderMap,
    query: Option<&str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(b) = bearer(headers) {
        return Some(b.into());
    }
    // Deepgram's SDKs send `Authorization: Token <key>`.
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("token") && t.trim().starts_with("lk_"))
        .map(|(_, t)| t.trim())
    {
        return Some(t.into());
    }
    if let Some(h) = ["x-api-key", "x-goog-api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
    {
        return Some(h.trim().into());
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| QUERY_KEYS.contains(&k.as_ref()) && v.starts_with("lk_"))
        .map(|(_, v)| std::borrow::Cow::Owned(v.into_owned()))
}

/// The query parameters a client may put its Latchkey key in.
const QUERY_KEYS: [&str; 2] = ["key", "api_key"];

/// `/proxy/<name>/<path>` split into the provider's name and the rest of
/// the path (still encoded).
pub(super) fn split_path(uri: &Uri) -> (&str, &str) {
    let rest = uri.path().strip_prefix("/proxy/").unwrap_or_default();
    rest.split_once('/').unwrap_or((rest, ""))
}

/// Steps 1–5 of every proxied request, HTTP or WebSocket alike: the key
/// (verified in memory), the scope, the provider, the path, the key's
/// token budget and rate. The key's principal and the provider's route.
pub(super) fn admit(
    ctx: &ProxyContext<'_>,
    parts: &axum::http::request::Parts,
    key: &str,
) -> Result<(crate::auth::Principal, Arc<Route>), ProxyError> {
    let proxy: &Proxy = ctx.proxy;
    // 1. Who: an API key, verified in memory.
    if !key.starts_with("lk_") {
        return Err(ProxyError::unauthenticated());
    }
    let principal = ctx.auth.authenticate_key(key)?;
    let Via::ApiKey { id: key_id, .. } = &principal.via else {
        return Err(ProxyError::unauthenticated());
    };

    // 2. Which provider, and the rest of the path (still encoded). The
    // scope is checked before the provider is looked up, so a key without
    // it cannot probe which providers exist.
    let (name, path) = split_path(&parts.uri);
    let unknown = || ProxyError::UnknownProvider(name.chars().take(64).collect());
    let scope = Scope::proxy(name).map_err(|_| unknown())?;

    // 3. May this key use it?
    if !principal.allows(&scope) {
        return Err(ProxyError::needs(&scope));
    }
    let route = proxy.routes.get(name).cloned().ok_or_else(unknown)?;

    // 4. Where exactly: only below the configured upstream. Refused paths
    // do not count against the key's rate.
    check_path(path).map_err(ProxyError::InvalidPath)?;

    // 5. The key's limits: its token budget for today (a refusal does not
    // use up the minute), then its rate.
    let limits = proxy.limits.get(key_id);
    if let Some(budget) = limits.tokens_per_day {
        let now = crate::auth::service::now();
        if proxy.usage.spent(key_id, &super::usage::day_of(now)) >= budget {
            route.stats.refused_budget.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::TokenBudgetExhausted {
                budget,
                retry_after: Duration::from_secs(super::usage::secs_to_midnight(now)),
            });
        }
    }
    let rpm = limits
        .requests_per_minute
        .unwrap_or_else(|| proxy.limiter.default_rpm());
    if let Err(e) = proxy
        .limiter
        .check_with(key_id, rpm, std::time::Instant::now())
    {
        route.stats.refused_rpm.fetch_add(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok((principal, route))
}

/// The provider's credential for this request: the vault entry (cached
/// in memory), or the key owner's connection's access token.
pub(super) async fn credential(
    ctx: &ProxyContext<'_>,
    p: &Provider,
    principal: &crate::auth::Principal,
    headers: &axum::http::HeaderMap,
) -> Result<Option<secrecy::SecretString>, ProxyError> {
    Ok(match (&p.secret, &p.connection) {
        // The key owner's own connection: a fresh access token from the
        // broker (cached in memory, refreshed single-flight when due; the
        // issuance is audited in its batch). A key never reaches another
        // user's connection: it acts for its owner only.
        (None, Some(conn)) => {
            let ip = client::client_ip_of(ctx.trusted_proxies, headers, ctx.peer);
            // Boxed: the broker's future (a refresh is an HTTP exchange)
            // is ~2 KiB, and inline it would be copied with every
            // request's future, not only this rare path's.
            let issued = Box::pin(ctx.connections.token(
                principal.user_id,
                conn,
                &principal.actor(),
                Some(ip),
            ))
            .await?;
            Some(issued.access_token)
        }
        (Some(name), _) => Some(ctx.vault.reveal_cached(name).map_err(|e| match e {
            VaultError::NotFound(_) => ProxyError::CredentialMissing {
                provider: p.name.clone(),
                entry: name.clone(),
            },
            other => ProxyError::Vault(other),
        })?),
        (None, None) => None,
    })
}

/// Sets the provider's credential header (for `Injection::Header`), marked
/// sensitive; nothing for other injections.
pub(super) fn inject_header(
    p: &Provider,
    secret: Option<&secrecy::SecretString>,
    headers: &mut axum::http::HeaderMap,
) -> Result<(), ProxyError> {
    let (Injection::Header { name, format }, Some(s)) = (&p.injection, secret) else {
        return Ok(());
    };
    // `{secret}` is in the format exactly once (checked at start).
    // Found by a plain window scan: the formats are short
    // (`Bearer {secret}`), and `str::split_once` with a string
    // pattern sets up a two-way searcher each time (~0.4k
    // instructions per request).
    const MARK: &[u8] = b"{secret}";
    let (before, after) = format
        .as_bytes()
        .windows(MARK.len())
        .position(|w| w == MARK)
        .map_or((format.as_str(), ""), |at| {
            (&format[..at], &format[at + MARK.len()..])
        });
    let secret = s.expose_secret();
    let mut value = Zeroizing::new(String::with_capacity(
        before.len() + secret.len() + after.len(),
    ));
    value.push_str(before);
    value.push_str(secret);
    value.push_str(after);
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        ProxyError::Internal(format!(
            "the credential of provider `{}` is not a valid header value",
            p.name
        ))
    })?;
    v.set_sensitive(true);
    headers.insert(name.clone(), v);
    Ok(())
}

async fn forward(
    ctx: &ProxyContext<'_>,
    mut parts: axum::http::request::Parts,
    body: &mut Option<Body>,
) -> Result<Response, ProxyError> {
    let proxy: &Proxy = ctx.proxy;
    let key =
        client_key(&parts.headers, parts.uri.query()).ok_or_else(ProxyError::unauthenticated)?;
    let (principal, route) = admit(ctx, &parts, &key)?;
    drop(key);
    let Via::ApiKey { id: key_id, .. } = &principal.via else {
        return Err(ProxyError::unauthenticated());
    };
    let p = &route.provider;
    let path = split_path(&parts.uri).1;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > proxy.max_body as u64) {
        return Err(ProxyError::PayloadTooLarge {
            limit: proxy.max_body,
        });
    }
    let secret = credential(ctx, p, &principal, &parts.headers).await?;
    let uri = upstream_uri(p, path, parts.uri.query(), secret.as_ref())?;

    // 6. The upstream request: the client's headers filtered in place,
    // the real credential.
    let mut headers = std::mem::take(&mut parts.headers);
    filter_request_headers(&mut headers);
    for (n, v) in &p.default_headers {
        if !headers.contains_key(n) {
            headers.insert(n.clone(), v.clone());
        }
    }
    // Plain-HTTP upstreams speak HTTP/1.1 only: `Host` from a value made
    // once (the client would format it anew for every request). Over
    // HTTPS the client adds it only if ALPN chose HTTP/1.1 (HTTP/2 has
    // `:authority`).
    if p.scheme == axum::http::uri::Scheme::HTTP {
        headers.insert(header::HOST, p.host.clone());
    }
    // Compressed answers could not be read for usage.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    inject_header(p, secret.as_ref(), &mut headers)?;
    drop(secret);
    let body = body.take().unwrap_or_default();
    let shared = SharedBody::new(Limited::new(body, proxy.max_body));
    let mut up = hyper::Request::new(shared.clone());
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(p.first_byte_timeout, route.client.request(up)).await;
    let resp = match sent {
        Err(_) => {
            route.stats.failed();
            Box::pin(shared.drain()).await;
            return Err(ProxyError::UpstreamTimeout {
                provider: p.name.clone(),
                after: p.first_byte_timeout,
            });
        }
        Ok(Err(e)) => {
            route.stats.failed();
            Box::pin(shared.drain()).await;
            return Err(upstream_error(p, e, proxy.max_body));
        }
        Ok(Ok(r)) => r,
    };
    route
        .stats
        .answered(resp.status().as_u16(), started.elapsed());
    tracing::debug!(
        provider = %p.name,
        status = resp.status().as_u16(),
        first_byte_ms = started.elapsed().as_secs_f64() * 1000.0,
        "upstream answered"
    );

    // 7. Back to the client, streamed through the usage tap.
    let (mut rparts, rbody) = resp.into_parts();
    let content_type = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parser = UsageParser::for_content_type(content_type);
    let sse = content_type.is_some_and(|ct| {
        super::usage::starts_with_ignore_case(ct.trim_start(), "text/event-stream")
    });
    let tap = Tap {
        proxy: Arc::clone(ctx.proxy),
        route: Arc::clone(&route),
        key: UsageKey {
            day: String::new(),
            key_id: key_id.clone(),
            provider: p.name.clone(),
            model: String::new(),
        },
        parser,
        error: rparts.status.as_u16() >= 400,
    };
    let keepalive = route.sse_keepalive.filter(|_| sse).map(|every| KeepAlive {
        every,
        timer: Box::pin(tokio::time::sleep(every)),
        line_ends: 2,
    });
    let body = Streamed::new(
        rbody,
        p.idle_timeout,
        "upstream idle timeout",
        ProxyHooks {
            keepalive,
            tap: Some(tap),
        },
    );
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = rparts.status;
    filter_response_headers(&mut rparts.headers);
    *out.headers_mut() = rparts.headers;
    Ok(out)
}

/// `{scheme}://{authority}{base}/{path}?{query}`, with the credential added
/// to the query for `auth_query` providers (and any client value of that
/// parameter dropped). A client's `key=lk_…` is always dropped: the
/// Latchkey key never reaches an upstream.
pub(super) fn upstream_uri(
    p: &Provider,
    path: &str,
    query: Option<&str>,
    secret: Option<&secrecy::SecretString>,
) -> Result<Uri, ProxyError> {
    let injected = match (&p.injection, secret) {
        (Injection::Query { param }, Some(s)) => Some((param.as_str(), s)),
        _ => None,
    };
    let our_key = |k: &str, v: &str| QUERY_KEYS.contains(&k) && v.starts_with("lk_");
    let rewrite = injected.is_some()
        || query
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, v)| our_key(&k, &v)));
    let mut q: Option<Zeroizing<String>> = query.map(|q| Zeroizing::new(q.to_owned()));
    if rewrite {
        // Untouched parameters keep their order; only re-encoded.
        let mut ser = form_urlencoded::Serializer::new(String::new());
        if let Some(orig) = query {
            for (k, v) in form_urlencoded::parse(orig.as_bytes()) {
                let dropped = injected.is_some_and(|(param, _)| k == param) || our_key(&k, &v);
                if !dropped {
                    ser.append_pair(&k, &v);
                }
            }
        }
        if let Some((param, s)) = injected {
            ser.append_pair(param, s.expose_secret());
        }
        let out = Zeroizing::new(ser.finish());
        q = (!out.is_empty()).then_some(out);
    }
    // Built from its parts: the scheme and authority are the configured
    // ones by construction, and only the path and query (checked by
    // `check_path`, validated here) come from the client.
    let mut s = Zeroizing::new(String::with_capacity(
        p.base_path.len() + 1 + path.len() + q.as_ref().map_or(0, |q| q.len() + 1),
    ));
    s.push_str(&p.base_path);
    s.push('/');
    s.push_str(path);
    if let Some(q) = q {
        s.push('?');
        s.push_str(&q);
    }
    let invalid = || ProxyError::InvalidPath("the path or query is not valid");
    let mut parts = axum::http::uri::Parts::default();
    parts.scheme = Some(p.scheme.clone());
    parts.authority = Some(p.authority.clone());
    parts.path_and_query = Some(PathAndQuery::try_from(s.as_str()).map_err(|_| invalid())?);
    let uri = Uri::from_parts(parts).map_err(|_| invalid())?;
    // Belt and braces: whatever the path, the origin is the configured one.
    if uri.scheme() != Some(&p.scheme) || uri.authority() != Some(&p.authority) {
        return Err(ProxyError::InvalidPath(
            "the path would leave the provider's upstream",
        ));
    }
    Ok(uri)
}

/// 502, or 504 for a connect timeout; 413 when the client's body ran over
/// the limit. The source (which never holds the credential: hyper's errors
/// name no URL or header) goes to the log only.
pub(super) fn upstream_error(p: &Provider, e: super::UpstreamError, max_body: usize) -> ProxyError {
    /// What the first telling cause says.
    enum Cause {
        TooLarge,
        Tls,
        TimedOut,
    }
    let cause = causes(e.as_ref()).find_map(|err| {
        if err.is::<http_body_util::LengthLimitError>() {
            Some(Cause::TooLarge)
        } else if is_tls_error(err) {
            Some(Cause::Tls)
        } else {
            err.downcast_ref::<std::io::Error>()
                .filter(|io| io.kind() == std::io::ErrorKind::TimedOut)
                .map(|_| Cause::TimedOut)
        }
    });
    let provider = p.name.clone();
    match cause {
        Some(Cause::TooLarge) => ProxyError::PayloadTooLarge { limit: max_body },
        Some(Cause::Tls) => ProxyError::UpstreamTls {
            provider,
            source: e,
        },
        Some(Cause::TimedOut) => ProxyError::UpstreamTimeout {
            provider,
            after: p.connect_timeout,
        },
        None => ProxyError::UpstreamUnreachable {
            provider,
            source: e,
        },
    }
}

/// A rustls error, possibly inside `io::Error`s (hyper-rustls wraps
/// tokio-rustls's `io::Error` in another), whose `source()` skips them.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: &(dyn std::error::Error + 'static) = err;
    for _ in 0..4 {
        if cur.is::<rustls::Error>() {
            return true;
        }
        match cur
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => cur = inner,
            None => return false,
        }
    }
    false
}

/// Counts usage as the body passes and records it when the body ends or is
/// dropped (a client that disconnects still pays for what was produced).
struct Tap {
    proxy: Arc<Proxy>,
    route: Arc<Route>,
    key: UsageKey,
    parser: UsageParser,
    /// The upstream answered 400 or more.
    error: bool,
}

impl Tap {
    fn finish(self) {
        let Tap {
            proxy,
            route,
            mut key,
            parser,
            error,
        } = self;
        let mut usage = parser.finish();
        // Taken, not cloned: `record` reads only the counts.
        key.model = usage
            .model
            .take()
            .unwrap_or_else(|| super::usage::UNKNOWN_MODEL.into());
        key.day = super::usage::day_of(crate::auth::service::now());
        route.stats.tokens(usage.input_tokens, usage.output_tokens);
        proxy.usage.record(key, &usage, error);
    }
}

/// SSE keep-alive: a comment after `every` of upstream silence, sent only
/// between events so it can never split one.
struct KeepAlive {
    every: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Line ends in a row at the end of what was forwarded (`\r` ignored);
    /// two or more: an event boundary. Starts at 2: nothing sent yet.
    line_ends: u8,
}

impl KeepAlive {
    const COMMENT: &'static [u8] = b": keep-alive\n\n";

    /// Only the chunk's tail matters: scanned from the end.
    fn saw(&mut self, data: &[u8]) {
        let mut ends: u8 = 0;
        for &b in data.iter().rev() {
            match b {
                b'\n' => ends = ends.saturating_add(1),
                b'\r' => {}
                _ => {
                    self.line_ends = ends;
                    return;
                }
            }
        }
        // Nothing but line ends: they continue the previous run.
        self.line_ends = self.line_ends.saturating_add(ends);
    }

    fn at_boundary(&self) -> bool {
        self.line_ends >= 2
    }
}

/// What the proxy does with an upstream's body as it passes (see
/// [`Streamed`]): counts usage, and sends SSE keep-alives while the
/// upstream is silent.
struct ProxyHooks {
    keepalive: Option<KeepAlive>,
    tap: Option<Tap>,
}

impl Hooks for ProxyHooks {
    fn data(&mut self, data: &Bytes) {
        if let Some(tap) = self.tap.as_mut() {
            tap.parser.feed(data);
        }
        if let Some(ka) = self.keepalive.as_mut() {
            ka.saw(data);
        }
    }

    fn timed(&self) -> bool {
        self.keepalive.is_some()
    }

    fn reset(&mut self, now: tokio::time::Instant) {
        if let Some(ka) = self.keepalive.as_mut() {
            ka.timer.as_mut().reset(now + ka.every);
        }
    }

    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        let ka = self.keepalive.as_mut()?;
        if ka.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        let next = tokio::time::Instant::now() + ka.every;
        ka.timer.as_mut().reset(next);
        // Registers the new deadline with the waker.
        let _ = ka.timer.as_mut().poll(cx);
        // Inside an event: wait for its end (the next frame resets the
        // timer anyway).
        ka.at_boundary()
            .then(|| Bytes::from_static(KeepAlive::COMMENT))
    }

    fn end(&mut self) {
        if let Some(tap) = self.tap.take() {
            tap.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keepalive() -> KeepAlive {
        KeepAlive {
            every: Duration::from_secs(1),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            line_ends: 2,
        }
    }

    #[tokio::test]
    async fn keepalive_waits_for_an_event_boundary() {
        let mut ka = keepalive();
        assert!(ka.at_boundary(), "nothing sent yet");
        ka.saw(b"data: {\"a\":");
        assert!(!ka.at_boundary());
        ka.saw(b"1}\n");
        assert!(!ka.at_boundary(), "one line end is inside an event");
        ka.saw(b"\n");
        assert!(ka.at_boundary());
        ka.saw(b"event: x\r\ndata: y\r\n\r\n");
        assert!(ka.at_boundary(), "CRLF line ends count too");
        ka.saw(b"data: z\r\n\r");
        assert!(!ka.at_boundary());
    }

    /// `openai` on a local port nothing listens on.
    fn local_provider() -> Provider {
        super::super::providers::resolve(
            "openai",
            &crate::proxy::settings::ProviderSettings {
                upstream: Some("http://127.0.0.1:9".into()),
                secret: Some("e".into()),
                ..Default::default()
            },
        )
        .expect("provider")
    }

    #[test]
    fn pool_connect_failures_map_to_504_and_502() {
        let p = local_provider();
        let io = |kind| -> super::super::UpstreamError {
            Box::new(super::super::pool::PoolError::Connect(std::io::Error::new(
                kind, "x",
            )))
        };
        assert!(matches!(
            upstream_error(&p, io(std::io::ErrorKind::TimedOut), 1),
            ProxyError::UpstreamTimeout { .. }
        ));
        assert!(matches!(
            upstream_error(&p, io(std::io::ErrorKind::ConnectionRefused), 1),
            ProxyError::UpstreamUnreachable { .. }
        ));
    }

    #[test]
    fn query_keys_are_found_and_never_forwarded() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(
            client_key(&h, Some("alt=json&key=lk_abc")).as_deref(),
            Some("lk_abc")
        );
        assert_eq!(client_key(&h, Some("key=AIza123")), None);
        let mut t = axum::http::HeaderMap::new();
        t.insert("authorization", HeaderValue::from_static("Token lk_dg"));
        assert_eq!(client_key(&t, None).as_deref(), Some("lk_dg"));
        t.insert("authorization", HeaderValue::from_static("Token dg-real"));
        assert_eq!(client_key(&t, None), None);
        h.insert("x-api-key", HeaderValue::from_static("lk_header"));
        assert_eq!(
            client_key(&h, Some("key=lk_abc")).as_deref(),
            Some("lk_header")
        );
        let p = local_provider();
        let uri = upstream_uri(&p, "v1/x", Some("a=1&key=lk_abc&b=2"), None).expect("uri");
        assert_eq!(uri.to_string(), "http://127.0.0.1:9/v1/x?a=1&b=2");
        let uri = upstream_uri(&p, "v1/x", Some("key=lk_abc"), None).expect("uri");
        assert_eq!(uri.to_string(), "http://127.0.0.1:9/v1/x");
        // Anything else stays byte for byte.
        let uri = upstream_uri(&p, "v1/x", Some("key=AIza&q=a%20b"), None).expect("uri");
        assert_eq!(uri.query(), Some("key=AIza&q=a%20b"));
    }
}
