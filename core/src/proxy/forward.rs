//! The hot path: authenticate the key, check scope and rate, swap the
//! credential, stream to the upstream and back.
//!
//! Everything here is in memory: the key lookup, the scope check, the rate
//! window and the provider credential (`Vault::reveal_cached`). Bodies are
//! streamed both ways; when the client goes away the response body is
//! dropped, which drops the upstream response and its connection, so the
//! upstream request is cancelled.

use super::Proxy;
use super::headers::{check_path, request_headers, response_headers};
use super::providers::{Injection, Provider};
use super::usage::{UsageKey, UsageParser};
use crate::auth::Via;
use crate::auth::scope::Scope;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::bearer;
use crate::vault::VaultError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use secrecy::ExposeSecret;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use zeroize::Zeroizing;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `ANY /proxy/{provider}/{*path}`.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    match forward(&state, parts, &mut body).await {
        Ok(resp) => resp,
        Err(e) => {
            // Refused before the body was used: read a small one first, so
            // HTTP/2 clients still sending it get the answer, not a reset.
            if let Some(body) = body {
                let limited = Limited::new(body, DRAIN_LIMIT);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    http_body_util::BodyExt::collect(limited),
                )
                .await;
            }
            e.into_response()
        }
    }
}

/// Largest unused request body read before a refusal is sent.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The Latchkey key from `Authorization: Bearer lk_…`, `x-api-key` or
/// `x-goog-api-key`.
fn client_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(b) = bearer(headers) {
        return Some(b);
    }
    ["x-api-key", "x-goog-api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

async fn forward(
    state: &AppState,
    parts: axum::http::request::Parts,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let proxy: &Proxy = &state.proxy;
    // 1. Who: an API key, verified in memory.
    let key = client_key(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
    if !key.starts_with("lk_") {
        return Err(ApiError::unauthenticated());
    }
    let principal = state.auth.authenticate_key(key)?;
    let Via::ApiKey { id: key_id, .. } = &principal.via else {
        return Err(ApiError::unauthenticated());
    };

    // 2. Which provider, and the rest of the path (still encoded). The
    // scope is checked before the provider is looked up, so a key without
    // it cannot probe which providers exist.
    let raw = parts.uri.path();
    let rest = raw.strip_prefix("/proxy/").unwrap_or_default();
    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
    let unknown = || ApiError::UnknownProvider(name.chars().take(64).collect());
    let scope = Scope::proxy(name).map_err(|_| unknown())?;

    // 3. May this key use it?
    if !principal.allows(&scope) {
        return Err(ApiError::forbidden(format!("this needs `{scope}`")));
    }
    let route = proxy.routes.get(name).cloned().ok_or_else(unknown)?;
    let p = &route.provider;

    // 4. Where exactly: only below the configured upstream. Refused paths
    // do not count against the key's rate.
    check_path(path).map_err(|m| ApiError::bad_request("invalid_path", m))?;
    proxy.limiter.check(key_id, std::time::Instant::now())?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > proxy.max_body as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit: proxy.max_body,
        });
    }
    let secret = match &p.secret {
        Some(name) => Some(state.vault.reveal_cached(name).map_err(|e| match e {
            VaultError::NotFound(_) => ApiError::conflict(
                "provider_credential_missing",
                format!(
                    "provider `{}` is configured with vault entry `{name}`, which does not exist",
                    p.name
                ),
            ),
            other => ApiError::Vault(other),
        })?),
        None => None,
    };
    let uri = upstream_uri(p, path, parts.uri.query(), secret.as_ref())?;

    // 5. The upstream request: filtered headers, the real credential.
    let mut headers = request_headers(&parts.headers);
    for (n, v) in &p.default_headers {
        if !headers.contains_key(n) {
            headers.insert(n.clone(), v.clone());
        }
    }
    // Compressed answers could not be read for usage.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let (Injection::Header { name, format }, Some(s)) = (&p.injection, &secret) {
        let value = Zeroizing::new(format.replace("{secret}", s.expose_secret()));
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            ApiError::Internal(format!(
                "the credential of provider `{}` is not a valid header value",
                p.name
            ))
        })?;
        v.set_sensitive(true);
        headers.insert(name.clone(), v);
    }
    drop(secret);
    let body = body.take().unwrap_or_default();
    let mut up = hyper::Request::new(Limited::new(body, proxy.max_body));
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(p.first_byte_timeout, route.client.request(up)).await;
    let resp = match sent {
        Err(_) => {
            return Err(ApiError::UpstreamTimeout {
                provider: p.name.clone(),
                after: p.first_byte_timeout,
            });
        }
        Ok(Err(e)) => return Err(upstream_error(p, e, proxy.max_body)),
        Ok(Ok(r)) => r,
    };
    tracing::debug!(
        provider = %p.name,
        status = resp.status().as_u16(),
        first_byte_ms = started.elapsed().as_secs_f64() * 1000.0,
        "upstream answered"
    );

    // 6. Back to the client, streamed through the usage tap.
    let (rparts, rbody) = resp.into_parts();
    let parser = UsageParser::for_content_type(
        rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let tap = Tap {
        proxy: Arc::clone(&state.proxy),
        key: UsageKey {
            day: String::new(),
            key_id: key_id.clone(),
            user_id: principal.user_id,
            provider: p.name.clone(),
            model: String::new(),
        },
        parser,
    };
    let body = TapBody {
        inner: rbody,
        idle: p.idle_timeout,
        timer: Box::pin(tokio::time::sleep(p.idle_timeout)),
        tap: Some(tap),
    };
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = rparts.status;
    *out.headers_mut() = response_headers(&rparts.headers);
    Ok(out)
}

/// `{scheme}://{authority}{base}/{path}?{query}`, with the credential added
/// to the query for `auth_query` providers (and any client value of that
/// parameter dropped).
fn upstream_uri(
    p: &Provider,
    path: &str,
    query: Option<&str>,
    secret: Option<&secrecy::SecretString>,
) -> Result<Uri, ApiError> {
    let mut q: Option<String> = query.map(str::to_owned);
    if let (Injection::Query { param }, Some(s)) = (&p.injection, secret) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        if let Some(orig) = query {
            for (k, v) in form_urlencoded::parse(orig.as_bytes()) {
                if k != param.as_str() {
                    ser.append_pair(&k, &v);
                }
            }
        }
        ser.append_pair(param, s.expose_secret());
        q = Some(ser.finish());
    }
    let mut s = Zeroizing::new(format!(
        "{}://{}{}/{}",
        p.scheme, p.authority, p.base_path, path
    ));
    if let Some(q) = q {
        let q = Zeroizing::new(q);
        s.push('?');
        s.push_str(&q);
    }
    let uri: Uri = s
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_path", "the path or query is not valid"))?;
    // Belt and braces: whatever the path, the origin is the configured one.
    if uri.scheme() != Some(&p.scheme) || uri.authority() != Some(&p.authority) {
        return Err(ApiError::bad_request(
            "invalid_path",
            "the path would leave the provider's upstream",
        ));
    }
    Ok(uri)
}

/// 502, or 504 for a connect timeout; 413 when the client's body ran over
/// the limit. The source (which never holds the credential: hyper's errors
/// name no URL or header) goes to the log only.
fn upstream_error(p: &Provider, e: hyper_util::client::legacy::Error, max_body: usize) -> ApiError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge { limit: max_body };
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return ApiError::UpstreamTimeout {
                provider: p.name.clone(),
                after: p.connect_timeout,
            };
        }
        cur = err.source();
    }
    ApiError::UpstreamUnreachable {
        provider: p.name.clone(),
        source: Box::new(e),
    }
}

/// Counts usage as the body passes and records it when the body ends or is
/// dropped (a client that disconnects still pays for what was produced).
struct Tap {
    proxy: Arc<Proxy>,
    key: UsageKey,
    parser: UsageParser,
}

impl Tap {
    fn finish(self) {
        let Tap {
            proxy,
            mut key,
            parser,
        } = self;
        let usage = parser.finish();
        key.model = usage.model.clone().unwrap_or_else(|| "unknown".into());
        key.day = super::usage::day_of(crate::auth::service::now());
        proxy.usage.record(key, &usage);
    }
}

/// The upstream's body, passed on frame by frame with an idle timeout and
/// the usage tap.
struct TapBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    tap: Option<Tap>,
}

impl HttpBody for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(tap)) = (frame.data_ref(), this.tap.as_mut()) {
                    tap.parser.feed(data);
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                if let Some(tap) = this.tap.take() {
                    tap.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("upstream idle timeout".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        if let Some(tap) = self.tap.take() {
            tap.finish();
        }
    }
}
