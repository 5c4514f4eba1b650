//! What wraps every request: a request id, a tracing span, metrics,
//! security headers, a body-size limit and a time limit.
//!
//! The span records method, route template, status, latency and request id
//! — never headers, query strings or bodies, which may carry tokens and
//! secrets.

use super::AppState;
use super::error::ApiError;
use crate::net::body::{DRAIN_LIMIT, DRAIN_TIME, drain};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The configured body limit, so extractors can name it in their error.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Built at compile time: `from_static` checks its argument, which at run
/// time would be done again for every response.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 5] = [
    (
        HeaderName::from_static("strict-transport-security"),
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    ),
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    ),
    (
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    ),
    (
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    ),
];

/// Longest client-supplied request id kept.
const MAX_REQUEST_ID: usize = 64;

/// A request id, held inline (no allocation per request): a client's
/// short plain id, or 32 lower-case hex digits made here.
#[derive(Clone, Copy)]
pub(crate) struct IdText {
    buf: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl IdText {
    pub(crate) fn as_str(&self) -> &str {
        // ASCII by construction (checked or written as hex).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Display for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client-supplied id is kept when it is short and plain (so it cannot
/// smuggle anything into logs); otherwise a new one is made.
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> IdText {
    let given = headers.get(&REQUEST_ID).map(HeaderValue::as_bytes);
    match given {
        Some(v)
            if !v.is_empty()
                && v.len() <= MAX_REQUEST_ID
                && v.iter().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                }) =>
        {
            let mut id = IdText {
                buf: [0; MAX_REQUEST_ID],
                len: 0,
            };
            id.buf[..v.len()].copy_from_slice(v);
            // At most 64: fits.
            id.len = u8::try_from(v.len()).unwrap_or(0);
            id
        }
        _ => new_request_id(),
    }
}

/// 128 random bits as 32 lower-case hex digits, written by hand into the
/// inline buffer (through `format!` this was ~1 % of a proxied request's
/// instructions, and a `String` an allocation).
fn new_request_id() -> IdText {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u128>();
    let mut id = IdText {
        buf: [0; MAX_REQUEST_ID],
        len: 32,
    };
    for (i, slot) in id.buf[..32].iter_mut().enumerate() {
        *slot = HEX[((n >> (4 * (31 - i))) & 0xf) as usize];
    }
    id
}

/// Outermost layer: request id, span, metrics and response headers.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    // Made-up methods are logged and counted as `OTHER` (bounded).
    let method_label = super::metrics::method_label(&method);
    req.extensions_mut()
        .insert(RequestId(id.as_str().to_owned()));
    let span = tracing::info_span!(
        "request",
        method = method_label,
        route = %route,
        request_id = %id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut resp = next.run(req).instrument(span.clone()).await;
    let latency = started.elapsed();
    let status = resp.status();
    span.record("status", status.as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    // Probes arrive every few seconds from systemd/Kubernetes/Prometheus;
    // logging each at info would bury everything else (and cost a third of
    // the server's time per request, measured in docs/PERFORMANCE.md).
    let probe = matches!(route.as_str(), "/health" | "/ready" | "/metrics");
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!("request finished");
        } else if probe && status.is_success() {
            tracing::debug!("request finished");
        } else {
            tracing::info!("request finished");
        }
    });
    state
        .metrics
        .observe_request(&method, &route, status.as_u16(), latency);

    finish_headers(resp.headers_mut(), id.as_str());
    resp
}

/// The request id, the security headers and, unless the handler chose
/// otherwise, `Cache-Control: no-store`, on every response.
pub(crate) fn finish_headers(headers: &mut axum::http::HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID, v);
    }
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, value);
    }
    // Everything served so far is dynamic and some of it secret; a page
    // that wants caching (the UI's assets) sets its own header.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Body-size and time limits. A declared `Content-Length` over the limit is
/// refused before any byte is read; chunked bodies are cut off by
/// `DefaultBodyLimit` when an extractor reads them.
pub async fn limits(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // The proxy streams bodies of its own size limit, and a generation may
    // take minutes: its per-provider timeouts apply instead.
    if req.uri().path().starts_with("/proxy/") {
        return next.run(req).await;
    }
    let max = state.settings.server.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::PayloadTooLarge { limit: max }.into_response();
    }
    req.extensions_mut().insert(BodyLimit(max));
    let limit = state.settings.server.request_timeout;
    let (parts, body) = req.into_parts();
    let unread = UnreadBody::new(body);
    let req = Request::from_parts(
        parts,
        axum::body::Body::new(TakenBody {
            slot: unread.clone(),
            body: None,
        }),
    );
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => {
            // Answered without reading the body (401, 403, 429 …): read a
            // small rest first, so an HTTP/2 client still sending it gets
            // this answer rather than a stream reset after it.
            if resp.status().is_client_error() || resp.status().is_server_error() {
                unread.drain().await;
            }
            resp
        }
        Err(_) => {
            let mut resp = ApiError::Timeout(limit.as_secs()).into_response();
            // The client may still be sending; don't reuse the connection.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// A panic in a handler becomes an opaque 500 in our shape.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".into()).into_response()
}

/// A request body that stays with the middleware until a handler first
/// polls it: if none does (the request was refused by an extractor), the
/// middleware can still read what the client is sending.
#[derive(Clone)]
struct UnreadBody(std::sync::Arc<std::sync::Mutex<Option<axum::body::Body>>>);

impl UnreadBody {
    fn new(body: axum::body::Body) -> Self {
        UnreadBody(std::sync::Arc::new(std::sync::Mutex::new(Some(body))))
    }

    fn take(&self) -> Option<axum::body::Body> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Reads and discards the body if no handler took it, within limits.
    async fn drain(&self) {
        if let Some(body) = self.take() {
            drain(body, DRAIN_LIMIT, DRAIN_TIME).await;
        }
    }
}

/// The handler's side: the first poll takes the body out of the shared
/// slot, so the middleware never reads a body a handler has started on.
struct TakenBody {
    slot: UnreadBody,
    body: Option<axum::body::Body>,
}

impl http_body::Body for TakenBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.body.is_none() {
            let taken = self.slot.take();
            self.body = taken;
        }
        match self.body.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self
                .slot
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map(http_body::Body::size_hint)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_plain_and_made_otherwise() {
        let made = new_request_id();
        let made = made.as_str();
        assert_eq!(made.len(), 32);
        assert!(
            made.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(made, new_request_id().as_str(), "random, not fixed");
        let mut h = axum::http::HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("trace-1:a.b_c"));
        assert_eq!(request_id(&h).as_str(), "trace-1:a.b_c");
        let longest = "a".repeat(MAX_REQUEST_ID);
        h.insert(REQUEST_ID, HeaderValue::from_str(&longest).expect("hv"));
        assert_eq!(request_id(&h).as_str(), longest);
        for bad in ["x\"y", "", &"a".repeat(MAX_REQUEST_ID + 1), "a b"] {
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).expect("hv"));
            let replaced = request_id(&h);
            assert_eq!(replaced.as_str().len(), 32, "{replaced}");
            assert_ne!(replaced.as_str(), bad);
        }
    }
}
