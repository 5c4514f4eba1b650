//! The OAuth redirect listener's rules, with a recording stand-in for the
//! core's callback route (the real core and a real provider are in
//! `tests/it/desktop_oauth.rs`): only the flow's own callback, with its
//! own `state`, on its own `Host`, once, reaches the core — and then with
//! the binding cookie alone.

use super::*;
use axum::routing::get;
use std::sync::Mutex as StdMutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STATE: &str = "3f1c0a9e5b7d4c2a8e6f0b1d3c5a7e9f";
const BINDING: &str = "binding-value-0123";

/// What the stand-in core received.
#[derive(Debug, Clone)]
struct Seen {
    query: String,
    cookie: Option<String>,
    accept: Option<String>,
}

struct Rig {
    flows: Arc<Flows>,
    jar: Arc<Jar>,
    seen: Arc<StdMutex<Vec<Seen>>>,
    went: Arc<StdMutex<Vec<String>>>,
    port: u16,
}

fn core_standin(seen: Arc<StdMutex<Vec<Seen>>>) -> Front {
    let router = axum::Router::new().route(
        "/api/connections/{p}/callback",
        get(move |req: Request<Body>| {
            let seen = Arc::clone(&seen);
            async move {
                let h = |n: header::HeaderName| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let query = req.uri().query().unwrap_or("").to_string();
                seen.lock().expect("seen").push(Seen {
                    query: query.clone(),
                    cookie: h(header::COOKIE),
                    accept: h(header::ACCEPT),
                });
                let mut r = if query.contains("code=bad") {
                    let mut r = Response::new(Body::from(
                        r#"{"error":"invalid_grant","message":"the provider refused the code"}"#,
                    ));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                } else {
                    Response::new(Body::from(r#"{"provider":"testidp","status":"connected"}"#))
                };
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "__Host-latchkey-oauth=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                    ),
                );
                r
            }
        }),
    );
    Front::router_only(router)
}

async fn rig() -> Rig {
    let went = Arc::new(StdMutex::new(Vec::new()));
    let w = Arc::clone(&went);
    let flows = Arc::new(Flows::new(Arc::new(move |p: String| {
        w.lock().expect("went").push(p);
    })));
    let jar = Arc::new(Jar::default());
    jar.store("__Host-latchkey_session=session-secret; Path=/; Secure; HttpOnly");
    jar.store(&format!("{BINDING_COOKIE}={BINDING}; Path=/; Max-Age=600"));
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let bound = Bound::new().await.expect("bind");
    let port = bound.port;
    flows.begin(
        bound,
        "testidp",
        Zeroizing::new(STATE.to_string()),
        core_standin(Arc::clone(&seen)),
        Arc::clone(&jar),
    );
    Rig {
        flows,
        jar,
        seen,
        went,
        port,
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body), or `None`
/// when nothing listens.
async fn send(port: u16, method: &str, host: &str, target: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .ok()?;
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn host(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn recognises_the_paths() {
    assert_eq!(
        start_provider(&Method::POST, "/api/connections/google/start"),
        Some("google")
    );
    assert_eq!(
        start_provider(&Method::GET, "/api/connections/google/start"),
        None
    );
    assert_eq!(
        start_provider(&Method::POST, "/api/connections//start"),
        None
    );
    assert_eq!(
        start_provider(&Method::POST, "/api/connections/a/b/start"),
        None
    );
    assert_eq!(start_provider(&Method::POST, "/api/keys"), None);
    assert!(names_redirect_uri("/api/connections/providers"));
    assert!(names_redirect_uri("/api/connections/google/client"));
    assert!(!names_redirect_uri("/api/connections/google/token"));
    assert!(!names_redirect_uri("/api/connections"));
    assert_eq!(
        state_of("https://idp.example/auth?client_id=x&state=abc%2Bd&scope=openid")
            .as_deref()
            .map(String::as_str),
        Some("abc+d")
    );
    assert!(state_of("https://idp.example/auth?state=a&state=b").is_none());
    assert!(state_of("https://idp.example/auth?state=").is_none());
    assert!(state_of("https://idp.example/auth").is_none());
}

#[tokio::test]
async fn only_the_flows_own_callback_reaches_the_core_once() {
    let r = rig().await;
    let cb = "/api/connections/testidp/callback";
    let h = host(r.port);

    // Refused, and nothing forwarded: another method, another Host (a
    // DNS-rebound page), another path or provider, a wrong, missing or
    // repeated state.
    let refused = [
        ("POST", h.clone(), format!("{cb}?code=c&state={STATE}"), 405),
        (
            "GET",
            format!("evil.example:{}", r.port),
            format!("{cb}?code=c&state={STATE}"),
            400,
        ),
        (
            "GET",
            format!("localhost:{}", r.port),
            format!("{cb}?code=c&state={STATE}"),
            400,
        ),
        (
            "GET",
            h.clone(),
            format!("/api/connections/other/callback?code=c&state={STATE}"),
            404,
        ),
        ("GET", h.clone(), format!("/?code=c&state={STATE}"), 404),
        (
            "GET",
            h.clone(),
            format!("{cb}?code=c&state=0{}", &STATE[1..]),
            400,
        ),
        ("GET", h.clone(), format!("{cb}?code=c&state={STATE}x"), 400),
        ("GET", h.clone(), format!("{cb}?code=c"), 400),
        (
            "GET",
            h.clone(),
            format!("{cb}?code=c&state={STATE}&state={STATE}"),
            400,
        ),
    ];
    for (method, host, target, status) in &refused {
        let got = send(r.port, method, host, target).await;
        assert_eq!(
            got.as_ref().map(|(s, _)| *s),
            Some(*status),
            "{method} {host} {target}: {got:?}"
        );
    }
    assert!(
        r.seen.lock().expect("seen").is_empty(),
        "nothing reached the core"
    );
    assert!(
        r.went.lock().expect("went").is_empty(),
        "the window did not move"
    );
    assert!(r.flows.pending(), "the flow still waits");

    // The flow's own callback: replayed with the binding cookie alone (not
    // the session), asking for JSON; the tab is told to close; the window
    // goes to the connections screen.
    let (status, body) = send(
        r.port,
        "GET",
        &h,
        &format!("{cb}?code=good&state={STATE}&iss=x"),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("You can close this tab"), "{body}");
    assert!(
        !body.contains("<script") && !body.contains("href"),
        "{body}"
    );
    let seen = r.seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].query, format!("code=good&state={STATE}&iss=x"));
    assert_eq!(
        seen[0].cookie.as_deref(),
        Some(format!("{BINDING_COOKIE}={BINDING}").as_str())
    );
    assert_eq!(seen[0].accept.as_deref(), Some("application/json"));
    assert_eq!(
        r.went.lock().expect("went").as_slice(),
        ["/connections?connected=testidp"]
    );
    assert!(
        r.jar.get(BINDING_COOKIE).is_none(),
        "the core's clearing applies"
    );
    assert!(r.jar.get("__Host-latchkey_session").is_some());

    // Single use: the listener is gone, a replay finds nothing.
    let mut closed = false;
    for _ in 0..50 {
        let replay = send(r.port, "GET", &h, &format!("{cb}?code=good&state={STATE}")).await;
        if replay.is_none() && !r.flows.pending() {
            closed = true;
            break;
        }
        if let Some((status, _)) = replay {
            assert_ne!(status, 200, "a replay was accepted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the listener closed after its callback");
    assert_eq!(
        r.seen.lock().expect("seen").len(),
        1,
        "no replay reached the core"
    );
}

#[tokio::test]
async fn a_refused_code_sends_the_window_to_the_error() {
    let r = rig().await;
    let (status, body) = send(
        r.port,
        "GET",
        &host(r.port),
        &format!("/api/connections/testidp/callback?code=bad&state={STATE}"),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    assert_eq!(
        r.went.lock().expect("went").as_slice(),
        ["/connections?error=invalid_grant&provider=testidp"]
    );
}

#[tokio::test]
async fn a_newer_flow_or_stop_closes_the_listener() {
    let r = rig().await;
    let first = r.port;
    let bound = Bound::new().await.expect("bind");
    let second = bound.port;
    r.flows.begin(
        bound,
        "testidp",
        Zeroizing::new("another-state".into()),
        core_standin(Arc::clone(&r.seen)),
        Arc::clone(&r.jar),
    );
    let gone = |port: u16| async move {
        for _ in 0..50 {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(gone(first).await, "the older flow's port closed");
    assert!(r.flows.pending());
    r.flows.stop();
    assert!(gone(second).await, "stop closed the newer one");
    assert!(r.seen.lock().expect("seen").is_empty());
}
