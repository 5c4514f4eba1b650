//! `ANY /agent/{name}/{*path}`: for a caller the HTTP layer has
//! authenticated ([`Caller`]), check scope and role, strip the caller's
//! Latchkey credentials and made-up identity, add the real identity and
//! its assertion, and stream to the backend and back (or splice a
//! WebSocket) — for no longer than the credential lasts
//! ([`crate::auth::lifetime`]).
//!
//! The path is checked like the provider proxy's (no `..`, encoded tricks
//! or absolute URLs) and the final URI's origin is compared with the
//! configured one, so only the configured backend is ever contacted.

use super::identity;
use super::websocket;
use super::{AgentError, Agents, Route};
use crate::auth::Principal;
use crate::auth::lifetime::{Guard, Revoked, until_revoked};
use crate::auth::scope::Scope;
use crate::net::body::{BoxError, DRAIN_LIMIT, DRAIN_TIME, Hooks, Streamed, drain};
use crate::net::error::causes;
use crate::net::headers::{API_KEY_HEADER, wants_websocket};
use crate::net::headers::{
    canonical_name, connection_listed, is_hop_by_hop, is_reserved_request_header,
};
use crate::net::path::check_path;
use crate::net::{client, cookie};
use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::Response;
use futures_util::future::BoxFuture;
use http_body_util::Limited;
use ipnet::IpNet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// What the handler reads besides the request and the caller.
#[derive(Clone)]
pub struct AgentContext<'a> {
    pub agents: &'a Agents,
    /// `auth.trusted_proxies`: the client address sent in
    /// `X-Forwarded-For`.
    pub trusted_proxies: &'a [IpNet],
    /// `X-Forwarded-Proto` sent to backends: the scheme clients reach
    /// Latchkey with.
    pub forwarded_proto: HeaderValue,
}

/// Runs the HTTP layer's authentication again on a request's parts (a
/// copy holding only the headers it reads); `None` once the credential no
/// longer passes.
pub type Reauthenticate = Arc<dyn Fn(Parts) -> BoxFuture<'static, Option<Principal>> + Send + Sync>;

/// The caller, as the HTTP layer authenticated it (authn's rules; the
/// backend's own credentials are not reasons to refuse).
pub struct Caller {
    pub who: Principal,
    /// Subscribed before the credential was checked, so a revocation in
    /// between is not missed.
    pub revocations: watch::Receiver<u64>,
    /// The same authentication, for a WebSocket or streamed answer that
    /// outlives the request.
    pub reauthenticate: Reauthenticate,
}

/// Answers a request to an agent. One refused before its body was used
/// has a small rest of it read first, so HTTP/2 clients still sending get
/// the answer, not a reset.
pub async fn respond(
    ctx: &AgentContext<'_>,
    caller: Caller,
    req: Request,
) -> Result<Response, AgentError> {
    let mut body = None;
    let answered = forward(ctx, caller, req, &mut body).await;
    if answered.is_err()
        && let Some(body) = body
    {
        drain(body, DRAIN_LIMIT, DRAIN_TIME).await;
    }
    answered
}

async fn forward(
    ctx: &AgentContext<'_>,
    caller: Caller,
    mut req: Request,
    body_out: &mut Option<Body>,
) -> Result<Response, AgentError> {
    let websocket = wants_websocket(req.headers());
    // Taken before the parts are split off; `none` unless hyper offered one.
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    *body_out = Some(body);

    // 1. Who: authenticated before this was called (unauthenticated
    // callers learn nothing about agent names).
    let Caller {
        who,
        revocations: epoch,
        reauthenticate,
    } = caller;

    // 2. Which agent, and the rest of the (still encoded) path.
    let raw = parts.uri.path();
    let rest = raw.strip_prefix("/agent/").unwrap_or_default();
    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
    let unknown = || AgentError::Unknown(name.chars().take(64).collect());
    let scope = Scope::agent(name).map_err(|_| unknown())?;
    if !who.allows(&scope) {
        return Err(AgentError::needs(&scope));
    }
    let route = ctx.agents.routes.get(name).cloned().ok_or_else(unknown)?;
    let agent = &route.agent;
    if !identity::role_allowed(&who, &agent.roles) {
        return Err(AgentError::RoleRefused {
            agent: agent.name.clone(),
            role: who.role,
        });
    }

    // 3. Where: only below the configured backend.
    check_path(path).map_err(AgentError::InvalidPath)?;
    if parts.method == Method::CONNECT {
        return Err(AgentError::WebSocketOverH2);
    }
    if websocket {
        if parts.version != Version::HTTP_11 {
            return Err(AgentError::WebSocketOverH2);
        }
        if !agent.websocket {
            return Err(AgentError::WebSocketDisabled(agent.name.clone()));
        }
    }
    let max = ctx.agents.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(AgentError::PayloadTooLarge { limit: max });
    }
    let uri = backend_uri(&route, path, parts.uri.query())?;

    // 4. The backend's request: the client's headers without credentials
    // or made-up identity, then ours.
    let mut headers = request_headers(&parts.headers);
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let audience = format!("agent:{}", agent.name);
    for (n, v) in identity::headers(&ctx.agents.signer, &who, &audience)? {
        headers.insert(n, v);
    }
    let ip = client::client_ip(ctx.trusted_proxies, &parts.headers, &parts.extensions);
    let forwarded_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_str(&ip.to_string())
            .map_err(|_| AgentError::Internal("client address header".into()))?,
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        ctx.forwarded_proto.clone(),
    );
    if let Some(h) = forwarded_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), h);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-prefix"),
        HeaderValue::from_str(&format!("/agent/{}", agent.name))
            .map_err(|_| AgentError::Internal("prefix header".into()))?,
    );

    let body = if websocket {
        Body::empty()
    } else {
        body_out.take().unwrap_or_default()
    };
    let mut up = hyper::Request::new(Limited::new(body, max));
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let sent = tokio::time::timeout(agent.first_byte_timeout, route.client.request(up)).await;
    let mut resp = match sent {
        Err(_) => {
            return Err(AgentError::Timeout {
                agent: agent.name.clone(),
                after: agent.first_byte_timeout,
            });
        }
        Ok(Err(e)) => return Err(upstream_error(&route, e, max)),
        Ok(Ok(r)) => r,
    };

    // 5. Back to the client.
    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status()) {
        let upstream = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(Body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let mut h = response_headers(resp.headers());
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        *out.headers_mut() = h;
        let idle = agent.idle_timeout;
        let name = agent.name.clone();
        let revoked = until_revoked(Guard {
            revoked: epoch,
            still_valid: recheck(reauthenticate, &parts, route, scope),
        });
        tokio::spawn(
            async move { websocket::splice(client, upstream, idle, &name, revoked).await },
        );
        return Ok(out);
    }
    let (rparts, rbody) = resp.into_parts();
    let body = Streamed::new(
        rbody,
        agent.idle_timeout,
        "agent backend idle timeout",
        Cut(until_revoked(Guard {
            revoked: epoch,
            still_valid: recheck(reauthenticate, &parts, route, scope),
        })),
    );
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = rparts.status;
    *out.headers_mut() = response_headers(&rparts.headers);
    Ok(out)
}

/// The re-check of a WebSocket's or streamed answer's credential: the
/// same authentication (the HTTP layer's), scope and role checks as at the
/// start, on a copy of only the headers they read (marked sensitive).
fn recheck(
    reauthenticate: Reauthenticate,
    parts: &Parts,
    route: Arc<Route>,
    scope: Scope,
) -> Box<dyn FnMut() -> BoxFuture<'static, bool> + Send> {
    let mut kept = HeaderMap::new();
    for name in [
        header::AUTHORIZATION,
        HeaderName::from_static(API_KEY_HEADER),
        header::COOKIE,
        header::HOST,
        header::ORIGIN,
        header::UPGRADE,
        HeaderName::from_static("sec-fetch-site"),
    ] {
        for v in parts.headers.get_all(&name) {
            let mut v = v.clone();
            v.set_sensitive(true);
            kept.append(name.clone(), v);
        }
    }
    let kept = Arc::new(kept);
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .copied();
    Box::new(move || {
        let (reauthenticate, kept, route, scope) = (
            Arc::clone(&reauthenticate),
            Arc::clone(&kept),
            Arc::clone(&route),
            scope.clone(),
        );
        let (method, uri) = (method.clone(), uri.clone());
        Box::pin(async move {
            let Ok(req) = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .version(Version::HTTP_11)
                .body(())
            else {
                return false;
            };
            let (mut p, ()) = req.into_parts();
            p.headers = (*kept).clone();
            if let Some(peer) = peer {
                p.extensions.insert(peer);
            }
            match reauthenticate(p).await {
                Some(who) => who.allows(&scope) && identity::role_allowed(&who, &route.agent.roles),
                None => false,
            }
        })
    })
}

/// `{scheme}://{authority}{base}/{path}?{query}`; refused if the result's
/// origin is not the backend's.
fn backend_uri(route: &Route, path: &str, query: Option<&str>) -> Result<Uri, AgentError> {
    let a = &route.agent;
    let mut s = format!("{}://{}{}/{}", a.scheme, a.authority, a.base_path, path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    let uri: Uri = s
        .parse()
        .map_err(|_| AgentError::InvalidPath("the path or query is not valid"))?;
    if uri.scheme() != Some(&a.scheme) || uri.authority() != Some(&a.authority) {
        return Err(AgentError::InvalidPath(
            "the path would leave the agent's backend",
        ));
    }
    Ok(uri)
}

/// The client's headers a backend may see: no hop-by-hop headers, no
/// `Host` (hyper sets the backend's), no forwarding or identity headers
/// the client made up (Latchkey sets its own) in any spelling
/// ([`canonical_name`]: case, `_` or `.` for `-`), no `Expect`/
/// `Content-Length` (hyper frames the body), no Latchkey cookie (session,
/// OAuth binding), and no header carrying anything shaped like a Latchkey
/// credential
/// (`lk_…`, `lka_…`, `lks_…`) — other `Authorization` values and cookies
/// belong to the backend and pass.
pub fn request_headers(client: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 8);
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in client {
        // Canonical: `X_Latchkey_User` is `HTTP_X_LATCHKEY_USER` to a
        // CGI/WSGI backend, the same as the header we set.
        let n = canonical_name(name.as_str());
        if is_reserved_request_header(&n) || listed.iter().any(|l| *l == n) {
            continue;
        }
        if n == "cookie" {
            let Ok(v) = value.to_str() else { continue };
            cookies.extend(
                cookie::pairs(v)
                    .filter(|p| {
                        let value = p.value.unwrap_or_default();
                        !is_latchkey_cookie(p.name)
                            && !identity::looks_like_credential(value.as_bytes())
                    })
                    .map(|p| p.raw.to_owned()),
            );
            continue;
        }
        if identity::looks_like_credential(value.as_bytes()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        out.insert(header::COOKIE, v);
    }
    out
}

/// Latchkey's own cookies (`__Host-latchkey_session`, the OAuth binding
/// `__Host-latchkey-oauth`, …) in any spelling: never a backend's.
fn is_latchkey_cookie(name: &str) -> bool {
    canonical_name(name.trim()).starts_with("--host-latchkey")
}

/// The backend's headers the client may see: no hop-by-hop headers, and no
/// cookie that would replace Latchkey's own session cookie.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if is_hop_by_hop(name) || listed.iter().any(|l| *l == canonical_name(name.as_str())) {
            continue;
        }
        if name == header::SET_COOKIE {
            let v = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            if v.trim_start().starts_with("__host-latchkey") {
                continue;
            }
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// 502, 504 for a connect timeout, 413 for a body over the limit. The
/// source goes to the log only.
fn upstream_error(route: &Route, e: hyper_util::client::legacy::Error, max: usize) -> AgentError {
    // The first telling cause: `true` for a body over the limit, `false`
    // for a timeout.
    let too_large = causes(&e).find_map(|err| {
        if err.is::<http_body_util::LengthLimitError>() {
            Some(true)
        } else {
            err.downcast_ref::<std::io::Error>()
                .filter(|io| io.kind() == std::io::ErrorKind::TimedOut)
                .map(|_| false)
        }
    });
    match too_large {
        Some(true) => AgentError::PayloadTooLarge { limit: max },
        Some(false) => AgentError::Timeout {
            agent: route.agent.name.clone(),
            after: route.agent.connect_timeout,
        },
        None => AgentError::Unreachable {
            agent: route.agent.name.clone(),
            source: Box::new(e),
        },
    }
}

/// The backend's body is cut off when the caller's credential ends.
struct Cut(Revoked);

impl Hooks for Cut {
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|()| "the caller's credential was revoked".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn credentials_and_spoofed_identity_never_reach_the_backend() {
        let h = map(&[
            ("authorization", "Bearer lk_secret"),
            ("x-api-key", "lk_secret"),
            ("x-goog-api-key", "lk_other"),
            (
                "cookie",
                "theme=dark; __Host-latchkey_session=lks_abc; app=1",
            ),
            (
                "cookie",
                "__Host-latchkey-oauth=0123abcd; __HOST_latchkey_x=1",
            ),
            ("cookie", "stolen=lks_zzz"),
            ("x-latchkey-user", "root"),
            ("X-Latchkey-Role", "admin"),
            ("x-latchkey-assertion", "forged"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("host", "evil.example"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("content-length", "3"),
            ("accept", "text/html"),
            ("x-app-token", "backend-own"),
        ]);
        let out = request_headers(&h);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "cookie", "x-app-token"]);
        assert_eq!(out[header::COOKIE], "theme=dark; app=1");
        // The backend's own Authorization passes.
        let out = request_headers(&map(&[("authorization", "Basic dXNlcjpwdw==")]));
        assert_eq!(out[header::AUTHORIZATION], "Basic dXNlcjpwdw==");
        // A cookie header holding only Latchkey's session disappears.
        let out = request_headers(&map(&[("cookie", "__Host-latchkey_session=x")]));
        assert!(out.get(header::COOKIE).is_none());
    }

    #[test]
    fn backends_cannot_set_the_session_cookie() {
        let h = map(&[
            (
                "set-cookie",
                "__Host-latchkey_session=fixated; Path=/; Secure",
            ),
            ("set-cookie", "app=1; Path=/agent/notes"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/html"),
        ]);
        let out = response_headers(&h);
        let cookies: Vec<_> = out.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["app=1; Path=/agent/notes"]);
        assert!(out.get("x-hop").is_none());
        assert!(out.get(header::TRANSFER_ENCODING).is_none());
    }

    #[test]
    fn websocket_requests_are_recognised() {
        assert!(wants_websocket(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
        assert!(!wants_websocket(&map(&[("upgrade", "websocket")])));
        assert!(!wants_websocket(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
    }
}
