//! Issue #19, the edges (items 3, 9, 13, 14, 16), attacked through the real
//! binary: host authority through a relay, metrics labels from made-up
//! methods, cross-origin and outliving WebSockets, identity headers in
//! other spellings, and the connect flow's start and callback (with
//! parallel callbacks against the real OpenID Connect provider).

use crate::agent::Backend;
use crate::agent::tls_to;
use futures_util::{SinkExt, StreamExt};
use latchkey_e2e::oidc::{
    BINDING_COOKIE, Decision, Idp, OAuthBrowser, PROVIDER, SECRET_ENTRY, callback_urls,
    connection_config, free_port, with_param,
};
use latchkey_e2e::{
    Browser, ServeOpts, Server, TestDir, auth_config, create_key, invited, spawn_server, web_setup,
};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

// ---- item 3: a relayed request never has host authority ---------------

#[test]
fn relayed_requests_never_have_host_authority() {
    let d = TestDir::new();
    // A reverse proxy on this host that connects from 127.0.0.2.
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&auth_config("trusted_proxies = [\"127.0.0.2\"]\n")),
    );
    let token = format!("Authorization: Bearer {}", s.admin_token());
    // The host itself: the admin token and loopback metrics work.
    let r = s.request("GET", "/api/status", &[&token], None);
    assert_eq!(r.status, 200, "host: {}", r.body);
    assert_eq!(s.get("/metrics").status, 200);

    // The same loopback peer relaying for someone else: never the host,
    // whatever the spelling of the forwarding header.
    for relay in [
        "X-Forwarded-For: 203.0.113.77",
        "x-forwarded-for: 127.0.0.1",
        "X_Forwarded_For: 203.0.113.77",
        "Forwarded: for=203.0.113.77",
        "X-Real-IP: 203.0.113.77",
        "X-Forwarded-Host: latchkey.example",
        "X-Forwarded-Proto: https",
        "Via: 1.1 proxy",
        "True-Client-IP: 203.0.113.77",
    ] {
        let r = s.request("GET", "/api/status", &[&token, relay], None);
        assert_eq!(r.status, 401, "admin token with `{relay}`: {}", r.body);
        let r = s.request("GET", "/metrics", &[relay], None);
        assert_eq!(r.status, 403, "metrics with `{relay}`: {}", r.body);
    }
    // A trusted proxy's connection is relayed even when it says nothing.
    let from_proxy = ["--interface", "127.0.0.2"];
    let r = s.request_with(&from_proxy, "GET", "/api/status", &[&token], None);
    assert_eq!(r.status, 401, "admin token from the proxy: {}", r.body);
    let r = s.request_with(&from_proxy, "GET", "/metrics", &[], None);
    assert_eq!(r.status, 403, "metrics from the proxy: {}", r.body);
    // Nothing of it was audited as the host.
    let r = s.request("GET", "/api/audit?limit=200", &[&token], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("203.0.113.77"), "{}", r.body);
}

// ---- item 9: metrics labels come from bounded sets --------------------

#[test]
fn made_up_methods_never_become_metrics_labels() {
    let d = TestDir::new();
    let s = spawn_server(&d, &ServeOpts::new().config(&auth_config("")));
    let before = s.get("/metrics").body.len();
    // 120 requests with distinct 16 KiB methods, from 4 threads (HTTP/1.1:
    // HTTP/2's header-list limit refuses such a method with 431 first).
    let barrier = Arc::new(Barrier::new(4));
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, barrier) = (&s, Arc::clone(&barrier));
            scope.spawn(move || {
                barrier.wait();
                for i in 0..30 {
                    let method = format!("M{t}X{i}{}", "Q".repeat(16 * 1024));
                    let r = s.request_with(&["--http1.1"], &method, "/api/status", &[], None);
                    assert!(r.status >= 400, "{} {}", r.status, r.body);
                }
            });
        }
    });
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(!m.body.contains("QQQQ"), "a made-up method became a label");
    assert!(m.body.contains("method=\"OTHER\""), "{}", m.body);
    assert!(
        m.body.len() < before + 20_000,
        "/metrics grew from {before} to {} bytes",
        m.body.len()
    );
    // Real methods keep their own label.
    assert!(m.body.contains("method=\"GET\""));
}

// ---- items 13 and 14: agents ------------------------------------------

fn agent_config(backend: u16, extra: &str) -> String {
    format!(
        "{}\n[agents.notes]\nupstream = \"http://127.0.0.1:{backend}\"\n{extra}",
        auth_config("")
    )
}

fn cookie_of(b: &Browser<'_>) -> String {
    format!("__Host-latchkey_session={}", b.cookie().expect("signed in"))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket handshake to `path` with `headers`; `Err(status)` when
/// refused.
async fn ws_open(s: &Server, path: &str, headers: &[(&str, String)]) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://localhost:{}{path}", s.port)
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let tls = tls_to(s).await;
    match tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(req, tls),
    )
    .await
    .expect("handshake in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Opens a WebSocket and reads the backend's first message (the identity
/// it saw); then checks it echoes.
async fn ws_live(s: &Server, headers: &[(&str, String)]) -> Ws {
    let mut ws = ws_open(s, "/agent/notes/ws", headers)
        .await
        .unwrap_or_else(|status| panic!("refused with {status}"));
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("identity in time")
        .expect("a message")
        .expect("ok");
    assert!(first.to_text().expect("text").contains("\"user\""));
    ws.send(Message::text("ping")).await.expect("send");
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(back.to_text().expect("text"), "ping");
    ws
}

/// Waits until `ws` is closed by the server; returns the close code (if a
/// close frame came) and how long it took.
async fn closed_within(ws: &mut Ws, limit: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    loop {
        match tokio::time::timeout(limit, ws.next())
            .await
            .unwrap_or_else(|_| panic!("the WebSocket is still open after {limit:?}"))
        {
            None | Some(Err(_)) => return (None, started.elapsed()),
            Some(Ok(Message::Close(frame))) => {
                return (frame.map(|f| u16::from(f.code)), started.elapsed());
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Sends one message and expects the echo: the WebSocket still works.
async fn still_echoes(ws: &mut Ws) {
    ws.send(Message::text("still")).await.expect("send");
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(back.to_text().expect("text"), "still");
}

#[test]
fn cookie_websocket_upgrades_must_be_same_origin() {
    let backend = Backend::start();
    let d = TestDir::new();
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&agent_config(backend.port, "")),
    );
    let owner = web_setup(&s, "ada");
    let cookie = cookie_of(&owner.browser);
    let own = format!("https://localhost:{}", s.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Another port of the same host is same-site, not same-origin;
        // no Origin at all (a non-browser replaying a cookie) is refused
        // too, as are other schemes and hosts.
        for origin in [
            Some(format!("https://localhost:{}", s.port + 1)),
            Some(format!("http://localhost:{}", s.port)),
            Some("https://localhost".to_string()),
            Some("https://evil.example".to_string()),
            Some("null".to_string()),
            None,
        ] {
            let mut h = vec![("cookie", cookie.clone())];
            if let Some(o) = &origin {
                h.push(("origin", o.clone()));
            }
            // Sec-Fetch-Site does not stand in for Origin on an upgrade.
            h.push(("sec-fetch-site", "same-origin".to_string()));
            let status = ws_open(&s, "/agent/notes/ws", &h)
                .await
                .map(|_| 101)
                .unwrap_or_else(|st| st);
            assert_eq!(status, 403, "cookie upgrade with Origin {origin:?}");
        }
        assert_eq!(backend.count(), 0, "a refused upgrade reached the backend");
        // Our own page: works.
        let mut ws = ws_live(&s, &[("cookie", cookie.clone()), ("origin", own.clone())]).await;
        let _ = ws.close(None).await;
    });
    // The refusal is the CSRF error.
    let r = s.request_with(
        &["--http1.1"],
        "GET",
        "/agent/notes/ws",
        &[
            &format!("Cookie: {cookie}"),
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            &format!("Origin: https://localhost:{}", s.port + 1),
        ],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "csrf");
    // Keys are not sent by browsers on their own: no Origin needed.
    let (_, key) = create_key(&owner.browser, "ws", &["agent:notes"]);
    rt.block_on(async {
        let mut ws = ws_live(&s, &[("authorization", format!("Bearer {key}"))]).await;
        let _ = ws.close(None).await;
    });
}

#[test]
fn open_websockets_end_with_their_credential() {
    let backend = Backend::start();
    let d = TestDir::new();
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&agent_config(backend.port, "")),
    );
    let owner = web_setup(&s, "ada");
    let own = format!("https://localhost:{}", s.port);
    let bob = invited(&s, &owner.browser, "bob", "user");
    let carol = invited(&s, &owner.browser, "carol", "user");
    let dave = invited(&s, &owner.browser, "dave", "user");
    let erin = invited(&s, &owner.browser, "erin", "user");
    let (_, erin_key) = create_key(&erin, "ws", &["agent:notes"]);
    let (dave_key_id, dave_key) = create_key(&dave, "ws", &["agent:notes"]);
    let session = |b: &Browser<'_>| vec![("cookie", cookie_of(b)), ("origin", own.clone())];
    let bearer = |k: &str| vec![("authorization", format!("Bearer {k}"))];
    let limit = Duration::from_secs(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut by_logout = ws_live(&s, &session(&carol)).await;
        let mut by_disable = ws_live(&s, &bearer(&erin_key)).await;
        let mut by_role = ws_live(&s, &session(&bob)).await;
        let mut by_key_revoke = ws_live(&s, &bearer(&dave_key)).await;
        let mut bystander = ws_live(&s, &session(&dave)).await;

        // Logout ends the session's WebSocket, with a close frame saying
        // why, within about a second; others stay open.
        let r = carol.call("POST", "/api/auth/logout", None);
        assert!(r.status == 204 || r.status == 200, "logout: {}", r.body);
        let (code, took) = closed_within(&mut by_logout, limit).await;
        assert_eq!(code, Some(1008), "close code after logout");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        still_echoes(&mut bystander).await;
        still_echoes(&mut by_key_revoke).await;

        // A revoked key.
        let r = dave.call("DELETE", &format!("/api/keys/{dave_key_id}"), None);
        assert!(r.status == 204 || r.status == 200, "revoke: {}", r.body);
        let (_, took) = closed_within(&mut by_key_revoke, limit).await;
        assert!(took < Duration::from_millis(1500), "{took:?}");
        still_echoes(&mut bystander).await;

        // A role the agent does not admit (agents default to admin and
        // user): bob's session socket ends.
        let r = owner
            .browser
            .call("PUT", "/api/users/bob/role", Some(r#"{"role":"guest"}"#));
        assert_eq!(r.status, 200, "role: {}", r.body);
        let (_, took) = closed_within(&mut by_role, limit).await;
        assert!(took < Duration::from_millis(1500), "{took:?}");

        // A disabled account: its key's socket ends too.
        let r = owner.browser.call("POST", "/api/users/erin/disable", None);
        assert_eq!(r.status, 200, "disable: {}", r.body);
        let (_, took) = closed_within(&mut by_disable, limit).await;
        assert!(took < Duration::from_millis(1500), "{took:?}");

        // Through all of it, an unaffected user's socket kept working.
        still_echoes(&mut bystander).await;
        let _ = bystander.close(None).await;
        // And the ended credentials cannot open a new one.
        assert!(
            ws_open(&s, "/agent/notes/ws", &bearer(&dave_key))
                .await
                .is_err()
        );
        assert!(
            ws_open(&s, "/agent/notes/ws", &bearer(&erin_key))
                .await
                .is_err()
        );
        assert!(
            ws_open(&s, "/agent/notes/ws", &session(&bob))
                .await
                .is_err()
        );
    });
}

#[test]
fn identity_headers_in_any_spelling_never_reach_a_backend() {
    let backend = Backend::start();
    let d = TestDir::new();
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&agent_config(backend.port, "")),
    );
    let owner = web_setup(&s, "ada");
    let (_, key) = create_key(&owner.browser, "notes", &["agent:notes"]);
    let auth = format!("Authorization: Bearer {key}");
    let spoofed = [
        "X_Latchkey_User: owner",
        "x_latchkey_role: admin",
        "X_LATCHKEY_KEY: forged",
        "X_Latchkey_Assertion: forged.jwt.value",
        "X-Latchkey-User: bob",
        "X_Forwarded_For: 6.6.6.6",
        "X_Real_IP: 6.6.6.6",
        "X_Forwarded_Host: evil.example",
        "Proxy: http://evil.example:3128",
        "X_Api_Key: lk_stolen",
    ];
    let mut headers: Vec<&str> = vec![auth.as_str()];
    headers.extend(spoofed);
    headers.push("X_App_Token: kept");
    let r = s.request("GET", "/agent/notes/hello", &headers, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = backend.last();
    // What a CGI/WSGI backend would read as HTTP_X_LATCHKEY_USER etc.:
    // exactly one of each, Latchkey's.
    let canonical = |n: &str| n.to_ascii_lowercase().replace('_', "-");
    for (name, value) in &seen.headers {
        let c = canonical(name);
        if c.starts_with("x-latchkey-") || c.starts_with("x-forwarded-") || c == "x-real-ip" {
            assert_eq!(
                name, &c,
                "`{name}: {value}` reached the backend in a spelling Latchkey did not set"
            );
        }
        assert_ne!(c, "proxy", "httpoxy `Proxy:` reached the backend");
        assert!(!value.contains("lk_stolen"), "`{name}` carried a key");
    }
    assert_eq!(seen.header("x-latchkey-user"), Some("ada"));
    assert_eq!(seen.header("x-latchkey-role"), Some("admin"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x_app_token"), Some("kept"));
    // Forward-auth cannot strip what it does not relay: it refuses a
    // request carrying another spelling of its identity headers (the
    // proxy replaces only the hyphenated ones).
    let r = s.request(
        "GET",
        "/api/verify?agent=notes",
        &[&auth, "X_Latchkey_User: owner"],
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "reserved_header");
    let r = s.request("GET", "/api/verify?agent=notes", &[&auth], None);
    assert_eq!(r.status, 200, "{}", r.body);
}

// ---- item 16: the connect flow ----------------------------------------

const JSON: &str = "Accept: application/json";

struct Flow {
    idp: Idp,
    s: Server,
    _d: TestDir,
}

fn flow_server() -> Flow {
    let d = TestDir::new();
    let port = free_port();
    let idp = Idp::start(&callback_urls(port, PROVIDER), 600, d.path());
    d.ok(
        &["vault", "put", SECRET_ENTRY],
        idp.client_secret.as_bytes(),
    );
    let config = format!("{}\n{}\n", auth_config(""), connection_config(&idp, ""));
    let opts = ServeOpts {
        listen: format!("127.0.0.1:{port}"),
        ..ServeOpts::new().config(&config)
    };
    let s = spawn_server(&d, &opts);
    Flow { idp, s, _d: d }
}

fn connected(b: &Browser<'_>) -> bool {
    let r = b.get("/api/connections");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["connections"]
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["provider"] == PROVIDER))
}

#[test]
fn connect_start_is_a_same_origin_post_and_stray_callbacks_change_nothing() {
    let Flow { idp, s, _d } = flow_server();
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let start = format!("/api/connections/{PROVIDER}/start");
    // A link (GET) no longer starts a flow.
    let r = b.get(&start);
    assert_eq!(r.status, 405, "GET start: {}", r.body);
    // A POST from another origin (a page on another port of this host) is
    // refused before anything is stored or any cookie set.
    let cookie = format!("Cookie: {}", cookie_of(b));
    for origin in [
        format!("Origin: https://localhost:{}", s.port + 1),
        "Origin: https://evil.example".to_string(),
    ] {
        let r = s.request("POST", &start, &[&cookie, &origin], None);
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
        assert_eq!(r.error_code(), "csrf");
        assert!(
            !r.headers.iter().any(|(k, _)| k == "set-cookie"),
            "{:?}",
            r.headers
        );
    }
    let r = s.request("POST", &start, &[&cookie], None);
    assert_eq!(r.status, 403, "no Origin: {}", r.body);

    // The user's own flow, in progress.
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, &idp, PROVIDER);
    let cb = ob.authorize(&idp, &auth, Decision::Approve);
    let binding = ob
        .latchkey
        .get(BINDING_COOKIE)
        .expect("binding")
        .to_string();
    // Stray hits on the callback from a same-site page, with this
    // browser's cookies: a made-up state, no state, an error — none of
    // them clears the binding or spends anything.
    for stray in [
        with_param(&cb, "state", Some("made-up")),
        with_param(&cb, "state", None),
        with_param(
            &with_param(&cb, "state", Some("x")),
            "error",
            Some("access_denied"),
        ),
    ] {
        let r = ob.callback(&s, &stray, &[JSON]);
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            !r.headers
                .iter()
                .any(|(k, v)| k == "set-cookie" && v.starts_with(BINDING_COOKIE)),
            "a stray callback touched the binding cookie: {:?}",
            r.headers
        );
    }
    // The real state, from a browser without the binding (an attacker who
    // saw the URL): refused, and it does not spend the state.
    let mut other = OAuthBrowser::anonymous("mallory");
    let r = other.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "state_mismatch");
    assert_eq!(idp.count("code_requests"), 0, "{}", idp.stats());
    assert!(!connected(b));
    // The user's flow still completes; then the binding is spent.
    assert_eq!(ob.latchkey.get(BINDING_COOKIE), Some(binding.as_str()));
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 200, "the user's own callback: {}", r.body);
    assert!(ob.latchkey.get(BINDING_COOKIE).is_none());
    assert!(connected(b));
}

#[test]
fn concurrent_callbacks_with_one_state_connect_exactly_once() {
    let Flow { idp, s, _d } = flow_server();
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    for round in 0..2 {
        let mut ob = OAuthBrowser::new(b, "alice");
        let auth = ob.start_ok(&s, &idp, PROVIDER);
        let cb = ob.authorize(&idp, &auth, Decision::Approve);
        let codes = idp.count("code_requests");
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let (mut ob, cb, s, barrier) =
                        (ob.clone(), cb.clone(), &s, Arc::clone(&barrier));
                    scope.spawn(move || {
                        barrier.wait();
                        let r = ob.callback(s, &cb, &[JSON]);
                        let code = if r.status == 200 {
                            String::new()
                        } else {
                            r.error_code()
                        };
                        (r.status, code)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let ok = statuses.iter().filter(|(st, _)| *st == 200).count();
        assert_eq!(ok, 1, "round {round}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|(st, c)| *st == 200 || (*st == 400 && c == "invalid_state")),
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            idp.count("code_requests"),
            codes + 1,
            "round {round}: the code was exchanged more than once"
        );
        assert!(connected(b));
    }
}

#[test]
fn reserved_headers_in_any_spelling_never_reach_a_provider() {
    use crate::proxy::{Mock, config, seeded};
    let mock = Mock::start();
    let d = seeded();
    let s = spawn_server(&d, &ServeOpts::new().config(&config(mock.port, "")));
    let owner = web_setup(&s, "owner");
    let (_, key) = create_key(&owner.browser, "agent", &["proxy:openai"]);
    let bearer = format!("Authorization: Bearer {key}");
    // The key again under another spelling of a credential header, and
    // made-up identity and forwarding headers.
    let also = format!("X_Api_Key: {key}");
    let r = s.request_with(
        &["--http1.1"],
        "POST",
        "/proxy/openai/v1/chat/completions",
        &[
            &bearer,
            &also,
            "Content-Type: application/json",
            "X_Latchkey_User: admin",
            "X_Forwarded_For: 6.6.6.6",
            "x.forwarded.host: evil.example",
            "Proxy: http://evil.example:3128",
            "X_Goog_Api_Key: lk_other",
            "X_Request_Tag: kept",
        ],
        Some(br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.seen();
    let req = seen.last().expect("upstream saw the request");
    for (name, value) in &req.headers {
        let c = name.to_ascii_lowercase().replace(['_', '.'], "-");
        assert!(
            !(c.starts_with("x-latchkey-")
                || c.starts_with("x-forwarded-")
                || c == "proxy"
                || c == "x-api-key"
                || c == "x-goog-api-key"),
            "`{name}: {value}` reached the provider"
        );
        assert!(!value.contains("lk_"), "`{name}` carried a Latchkey key");
    }
    assert_eq!(
        req.headers.get("x_request_tag").map(String::as_str),
        Some("kept")
    );
}

/// A backend that answers every request with an endless event stream (a
/// chunk every 100 ms) until the connection goes away.
fn endless_backend() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                            Transfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while conn.write_all(b"9\r\ndata: x\n\n\r\n").is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    port
}

/// `curl -N` reading `/agent/events/` with `cookie`, in the background.
fn stream(s: &Server, cookie: &str) -> std::process::Child {
    let mut c = latchkey_e2e::curl_cmd();
    c.arg("--cacert")
        .arg(s.ca_pem())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", s.port))
        .args([
            "-sS",
            "-N",
            "-o",
            "/dev/null",
            "-H",
            &format!("Cookie: {cookie}"),
        ])
        .arg(format!("{}/agent/events/", s.url()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c.spawn().expect("curl")
}

#[test]
fn streamed_answers_end_with_their_credential() {
    let port = endless_backend();
    let d = TestDir::new();
    let cfg = format!(
        "{}\n[agents.events]\nupstream = \"http://127.0.0.1:{port}\"\n",
        auth_config("")
    );
    let s = spawn_server(&d, &ServeOpts::new().config(&cfg));
    let owner = web_setup(&s, "ada");
    let carol = invited(&s, &owner.browser, "carol", "user");
    let dave = invited(&s, &owner.browser, "dave", "user");
    let mut ended = stream(&s, &cookie_of(&carol));
    let mut bystander = stream(&s, &cookie_of(&dave));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        ended.try_wait().expect("wait").is_none(),
        "stream ended early"
    );
    assert!(bystander.try_wait().expect("wait").is_none());
    let r = carol.call("POST", "/api/auth/logout", None);
    assert!(r.status == 204 || r.status == 200, "logout: {}", r.body);
    let signed_out = Instant::now();
    while ended.try_wait().expect("wait").is_none() {
        assert!(
            signed_out.elapsed() < Duration::from_secs(3),
            "the stream outlived its session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        signed_out.elapsed() < Duration::from_millis(1500),
        "{:?}",
        signed_out.elapsed()
    );
    // Another user's stream is untouched.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bystander.try_wait().expect("wait").is_none(),
        "an unrelated stream was cut"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}
