//! The front door both shells serve: one service per request.
//!
//! `/proxy/…` requests take a short path straight to
//! [`super::proxy::respond`]; everything else goes through the
//! [`super::router`]. The proxy is the hot path (agents call it for every
//! model request) and gains nothing from the router's general machinery —
//! route matching, two `from_fn` layers each cloning [`AppState`], a
//! tracing span whose fields are formatted three times — which cost it
//! about a quarter of its CPU per request (docs/PERFORMANCE.md). The short
//! path keeps what the router's middleware promises every response: the
//! request id, the security headers, the per-route metrics, a
//! `request finished` log line, and a panic turned into an opaque 500.

use super::AppState;
use super::middleware;
use super::origin::Scheme;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::Request;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

/// The route template proxied requests are counted and logged under (the
/// same as the router's, so metrics do not depend on the path taken).
pub const PROXY_ROUTE: &str = "/proxy/{provider}/{*path}";

/// What a shell serves: the router, plus the short path for `/proxy/`.
#[derive(Clone)]
pub struct Front {
    router: Router,
    state: Option<Arc<AppState>>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("proxy_short_path", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

impl Front {
    /// The whole HTTP surface for `state`.
    pub fn new(state: AppState) -> Front {
        Front {
            router: super::router(state.clone()),
            state: Some(Arc::new(state)),
        }
    }

    /// Serves `router` alone, for every path (shell tests, tools).
    pub fn router_only(router: Router) -> Front {
        Front {
            router,
            state: None,
        }
    }

    /// Answers one request that arrived from `peer` over a connection of
    /// `scheme`. The router's handlers find both in the request's
    /// extensions (`ConnectInfo`, [`Scheme`]); the proxy's short path is
    /// handed the peer instead: the first extension inserted allocates
    /// the request's extension map, and each value a box of its own.
    pub fn call<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> impl Future<Output = Response> + Send + use<B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut req = req.map(Body::new);
        match &self.state {
            // Boxed once here, so the few moves on the way into hyper's
            // connection copy a pointer, not the whole (several KiB)
            // future: those copies were ~10 % of a proxied request's
            // instructions.
            Some(state) if req.uri().path().starts_with("/proxy/") => {
                Either::Left(Box::pin(proxy(Arc::clone(state), req, peer)))
            }
            _ => {
                let ext = req.extensions_mut();
                ext.insert(ConnectInfo(peer));
                ext.insert(scheme);
                Either::Right(
                    self.router
                        .clone()
                        .oneshot(req)
                        .map(|r| r.unwrap_or_else(|never| match never {})),
                )
            }
        }
    }
}

/// A proxied request, wrapped in what `request_context` does for the
/// router's routes.
async fn proxy(state: Arc<AppState>, req: Request<Body>, peer: SocketAddr) -> Response {
    let started = Instant::now();
    let id = middleware::request_id(req.headers());
    let method = req.method().clone();
    // Boxed: moved by value, the answer's future (a few KiB) was copied
    // four times on its way into this one (the wrapper, `catch_unwind`,
    // `.await`) and made this future as large, which `Front::call` copies
    // once more: ~1.3 k instructions a request in `memcpy`, against one
    // allocation here.
    let answered = AssertUnwindSafe(Box::pin(super::proxy::respond(&state, req, Some(peer))))
        .catch_unwind()
        .await;
    let mut resp = answered.unwrap_or_else(middleware::panic_response);
    let latency = started.elapsed();
    let status = resp.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    // One event with the request's facts as fields (no span: nothing
    // below logs per request at info, and a span's fields would be
    // formatted again for every event).
    // The level must be known where the event is declared: one macro,
    // two call sites.
    macro_rules! finished {
        ($level:ident) => {
            // The message as a plain `&str` field (where a format string
            // would put it, first): recorded as a string, not formatted
            // through `fmt::Arguments` (~1 k instructions a line). The
            // line reads the same.
            tracing::$level!(
                message = "request finished",
                method = super::metrics::method_label(&method),
                route = PROXY_ROUTE,
                request_id = id.as_str(),
                status,
                latency_ms,
            )
        };
    }
    if resp.status().is_server_error() {
        finished!(warn);
    } else {
        finished!(info);
    }
    state
        .metrics
        .observe_request(&method, PROXY_ROUTE, status, latency);
    middleware::finish_headers(resp.headers_mut(), id.as_str());
    resp
}
