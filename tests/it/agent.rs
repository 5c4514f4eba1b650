//! Local agent backends through the real binary: `/agent/<name>/…` in
//! front of a backend on loopback that records what it sees and answers
//! with it, over HTTP and WebSocket. The identity assertion is verified
//! here independently (jsonwebtoken, with the key fetched from
//! `/.well-known/jwks.json`), never with Latchkey's own code.

use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use latchkey_e2e::{ServeOpts, Server, TestDir, auth_config, create_key, invited, web_setup};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Every header line, for "never contains" checks.
    pub fn all(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    }
}

/// A backend on 127.0.0.1 (its own thread and runtime): records every
/// request and answers `{"seen": true}` with a cookie that tries to replace
/// Latchkey's session; `/ws` upgrades to a WebSocket that first sends the
/// identity headers it saw as JSON, then echoes.
pub struct Backend {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Backend {
    pub fn start() -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        conn = listener.accept() => {
                            let Ok((stream, _)) = conn else { continue };
                            let s = Arc::clone(&s);
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let s = Arc::clone(&s);
                                    async move { backend_answer(req, s).await }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .with_upgrades()
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Backend {
            port,
            seen,
            stop: Some(tx),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the backend saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn backend_answer(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<UnsyncBoxBody<Bytes, std::convert::Infallible>>, hyper::Error> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let websocket = target.ends_with("/ws");
    let record_target_is_slow = target.ends_with("/slow");
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let body = if websocket {
        String::new()
    } else {
        let b = req.into_body().collect().await?.to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    };
    let record = Seen {
        method,
        target,
        headers: headers.clone(),
        body,
    };
    seen.lock().expect("seen").push(record);
    if let Some(on_upgrade) = on_upgrade {
        let key = headers
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or_default();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let identity = serde_json::json!({
            "user": headers.get("x-latchkey-user"),
            "role": headers.get("x-latchkey-role"),
            "key": headers.get("x-latchkey-key"),
            "assertion": headers.get("x-latchkey-assertion"),
            "authorization": headers.get("authorization"),
        })
        .to_string();
        tokio::spawn(async move {
            let Ok(up) = on_upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            if ws.send(Message::text(identity)).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                } else if msg.is_close() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()).boxed_unsync())
            .expect("101"));
    }
    if record_target_is_slow {
        // Two lines 1.5 s apart: the first must reach the client long
        // before the second exists.
        let frames = futures_util::stream::unfold(0u8, |i| async move {
            let line = match i {
                0 => "first\n",
                1 => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "second\n"
                }
                _ => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(line))),
                i + 1,
            ))
        });
        return Ok(Response::builder()
            .header("content-type", "text/plain")
            .body(StreamBody::new(frames).boxed_unsync())
            .expect("200"));
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header(
            "set-cookie",
            "__Host-latchkey_session=fixated-by-backend; Path=/; Secure",
        )
        .header("set-cookie", "app=1; Path=/agent/notes")
        .body(Full::new(Bytes::from_static(b"{\"seen\":true}")).boxed_unsync())
        .expect("200"))
}

/// `(header, claims)` of an assertion verified against the server's JWKS
/// for `audience`; `Err` if it does not verify.
pub fn verify_assertion(
    s: &Server,
    jwt: &str,
    audience: &str,
) -> Result<(jsonwebtoken::Header, serde_json::Value), jsonwebtoken::errors::Error> {
    let jwks = s.get("/.well-known/jwks.json");
    assert_eq!(jwks.status, 200, "{}", jwks.body);
    let jwks = jwks.json();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    let decoding =
        DecodingKey::from_ed_components(key["x"].as_str().expect("x")).expect("public key");
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_issuer(&["latchkey"]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    v.leeway = 5;
    let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &decoding, &v)?;
    assert_eq!(data.header.kid.as_deref(), key["kid"].as_str(), "kid");
    Ok((data.header, data.claims))
}

pub(crate) fn config(backend: u16, extra: &str) -> String {
    format!(
        "{}\n[agents.notes]\nupstream = \"http://127.0.0.1:{backend}/base\"\n\n\
         [agents.guestbook]\nupstream = \"http://127.0.0.1:{backend}\"\nroles = [\"guest\"]\n\n\
         [agents.nows]\nupstream = \"http://127.0.0.1:{backend}\"\nwebsocket = false\n\n\
         [agents.quiet]\nupstream = \"http://127.0.0.1:{backend}\"\nidle_timeout = \"1s\"\n{extra}",
        auth_config("")
    )
}

fn start(backend: &Backend) -> (TestDir, Server) {
    let d = TestDir::new();
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&config(backend.port, "")));
    (d, s)
}

fn key_header(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

#[test]
fn backend_sees_identity_and_an_assertion_that_verifies() {
    let backend = Backend::start();
    let (_d, s) = start(&backend);
    let owner = web_setup(&s, "ada");
    let (key_id, key) = create_key(&owner.browser, "notes", &["agent:notes"]);

    let auth = key_header(&key);
    let r = s.request(
        "GET",
        "/agent/notes/hello/world?x=1&y=%20z",
        &[
            &auth,
            "X-Latchkey-User: root",
            "X-Latchkey-Role: admin",
            "X-Latchkey-Key: forged",
            "X-Latchkey-Assertion: forged.jwt.here",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Host: evil.example",
            "Cookie: theme=dark",
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "{\"seen\":true}");
    let seen = backend.last();
    assert_eq!(seen.target, "/base/hello/world?x=1&y=%20z");
    assert_eq!(seen.header("x-latchkey-user"), Some("ada"));
    assert_eq!(seen.header("x-latchkey-role"), Some("admin"));
    assert_eq!(seen.header("x-latchkey-key"), Some(key_id.as_str()));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/agent/notes"));
    assert_ne!(seen.header("x-forwarded-host"), Some("evil.example"));
    assert_eq!(seen.header("cookie"), Some("theme=dark"));
    // The Latchkey key never reaches the backend, in any header.
    assert!(seen.header("authorization").is_none(), "{}", seen.all());
    assert!(!seen.all().contains(&key), "{}", seen.all());
    assert!(!seen.all().contains("lk_"), "{}", seen.all());

    // The assertion verifies on its own and says the same.
    let jwt = seen.header("x-latchkey-assertion").expect("assertion");
    let (header, claims) = verify_assertion(&s, jwt, "agent:notes").expect("verifies");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(claims["name"], "ada");
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["key_id"], key_id.as_str());
    assert_eq!(claims["aud"], "agent:notes");
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 60);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((iat - now).abs() <= 10, "iat {iat} vs now {now}");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // Attacks on the assertion: another audience, a raised role with the
    // old signature, a flipped signature, an HMAC token keyed with the
    // public key (algorithm confusion), `alg: none`.
    assert!(verify_assertion(&s, jwt, "agent:other").is_err());
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut forged = claims.clone();
    forged["role"] = "superuser".into();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(forged.to_string());
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert!(verify_assertion(&s, &tampered, "agent:notes").is_err());
    let mut sig = b64.decode(parts[2]).expect("sig");
    sig[0] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], b64.encode(&sig));
    assert!(verify_assertion(&s, &flipped, "agent:notes").is_err());
    let jwks = s.get("/.well-known/jwks.json").json();
    let x = b64
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("x bytes");
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &forged,
        &jsonwebtoken::EncodingKey::from_secret(&x),
    )
    .expect("hmac token");
    assert!(verify_assertion(&s, &hmac, "agent:notes").is_err());
    let none = format!("{}.{payload}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
    assert!(verify_assertion(&s, &none, "agent:notes").is_err());

    // The JWKS needs no credentials and may be cached.
    let r = s.get("/.well-known/jwks.json");
    assert!(
        r.header("cache-control")
            .is_some_and(|c| c.contains("max-age")),
        "{:?}",
        r.headers
    );

    // Bodies stream to the backend; `/agent/notes` alone is the root.
    let r = s.request(
        "POST",
        "/agent/notes/echo",
        &[&auth, "Content-Type: text/plain"],
        Some(b"hello backend"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = backend.last();
    assert_eq!(
        (seen.method.as_str(), seen.body.as_str()),
        ("POST", "hello backend")
    );
    let r = s.request("GET", "/agent/notes", &[&auth], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend.last().target, "/base/");

    // The backend cannot set Latchkey's session cookie; its own pass.
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["app=1; Path=/agent/notes"], "{:?}", r.headers);
}

#[test]
fn refusals_never_reach_the_backend() {
    let backend = Backend::start();
    let (_d, s) = start(&backend);
    let owner = web_setup(&s, "ada");
    let (_, notes_key) = create_key(&owner.browser, "notes", &["agent:notes"]);
    let (_, proxy_key) = create_key(&owner.browser, "proxy", &["proxy:*"]);
    let (_, any_agent) = create_key(&owner.browser, "all", &["agent:*"]);

    let before = backend.count();
    // No credentials: 401 JSON.
    let r = s.get("/agent/notes/x");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.error_code(), "unauthenticated");
    // Made-up identity headers are no credential.
    let r = s.request(
        "GET",
        "/agent/notes/x",
        &["X-Latchkey-User: ada", "X-Latchkey-Role: admin"],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // A wrong key.
    let r = s.request("GET", "/agent/notes/x", &[&key_header("lk_nope")], None);
    assert_eq!(r.status, 401, "{}", r.body);
    // A key without `agent:notes`.
    let r = s.request("GET", "/agent/notes/x", &[&key_header(&proxy_key)], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent:notes"), "{}", r.body);
    // A key for one agent cannot reach another, nor probe which exist.
    let r = s.request(
        "GET",
        "/agent/guestbook/x",
        &[&key_header(&notes_key)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s.request("GET", "/agent/nothere/x", &[&key_header(&notes_key)], None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s.request("GET", "/agent/nothere/x", &[&key_header(&any_agent)], None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error_code(), "unknown_agent");
    // The admin on a guest-only agent: refused by its roles.
    let r = s.request(
        "GET",
        "/agent/guestbook/x",
        &[&key_header(&any_agent)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // SSRF through the path.
    for path in [
        "/agent/notes/..%2f..%2fetc",
        "/agent/notes/a/../../x",
        "/agent/notes/%2e%2e/x",
        "/agent/notes//evil.example/x",
        "/agent/notes/x@evil.example",
    ] {
        let r = s.request_with(
            &["--path-as-is"],
            "GET",
            path,
            &[&key_header(&notes_key)],
            None,
        );
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_path", "{path}");
    }
    // The host's admin token stands for no person.
    let admin = key_header(&s.admin_token());
    let r = s.request("GET", "/agent/notes/x", &[&admin], None);
    assert_eq!(r.status, 403, "{}", r.body);
    // A cross-site POST with the session cookie: CSRF.
    let r = owner.browser.call_with(
        "POST",
        "/agent/notes/x",
        &["Origin: https://evil.example"],
        Some("{}"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "csrf");
    // WebSocket to an agent that does not allow it.
    let r = s.request_with(
        &["--http1.1"],
        "GET",
        "/agent/nows/ws",
        &[
            &key_header(&any_agent),
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.error_code(), "websocket_disabled");
    assert_eq!(backend.count(), before, "{:?}", backend.seen());
}

#[test]
fn sessions_roles_and_guests() {
    let backend = Backend::start();
    let (_d, s) = start(&backend);
    let owner = web_setup(&s, "ada");

    // A signed-in browser: identity without a key, no Latchkey cookie
    // passed on; same-origin POSTs work.
    // (A made-up key id from the browser must not survive either: with a
    // session no `X-Latchkey-Key` is set, so only stripping removes it.)
    let r = owner.browser.call_with(
        "GET",
        "/agent/notes/page",
        &["X-Latchkey-Key: forged-key-id", "X-Latchkey-User: root"],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = backend.last();
    assert_eq!(seen.header("x-latchkey-user"), Some("ada"));
    assert!(seen.header("x-latchkey-key").is_none(), "{}", seen.all());
    assert!(!seen.all().contains("latchkey_session"), "{}", seen.all());
    assert!(!seen.all().contains("lks_"), "{}", seen.all());
    let jwt = seen.header("x-latchkey-assertion").expect("assertion");
    let (_, claims) = verify_assertion(&s, jwt, "agent:notes").expect("verifies");
    assert!(claims.get("key_id").is_none(), "{claims}");
    let r = owner
        .browser
        .call("POST", "/agent/notes/form", Some("{\"a\":1}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend.last().body, "{\"a\":1}");

    // A guest: refused by `notes` (admin, user), admitted by `guestbook`.
    let guest = invited(&s, &owner.browser, "gus", "guest");
    let before = backend.count();
    let r = guest.get("/agent/notes/x");
    assert_eq!(r.status, 403, "{}", r.body);
    let (_, guest_key) = create_key(&guest, "g", &["agent:notes", "agent:guestbook"]);
    let r = s.request("GET", "/agent/notes/x", &[&key_header(&guest_key)], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(backend.count(), before);
    let r = s.request(
        "GET",
        "/agent/guestbook/x",
        &[&key_header(&guest_key)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = backend.last();
    assert_eq!(seen.header("x-latchkey-user"), Some("gus"));
    assert_eq!(seen.header("x-latchkey-role"), Some("guest"));
}

/// A TLS connection to the server trusting only its CA, speaking HTTP/1.1.
pub(crate) async fn tls_to(s: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(s.ca_pem()).expect("ca") {
        roots.add(cert.expect("cert")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("tls handshake")
}

pub(crate) async fn ws_connect(
    s: &Server,
    path: &str,
    key: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("wss://localhost:{}{path}", s.port);
    let mut req = url.into_client_request().expect("request");
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().expect("hv"));
    }
    req.headers_mut()
        .insert("x-latchkey-user", "root".parse().expect("hv"));
    let tls = tls_to(s).await;
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
}

#[test]
fn websocket_echo_with_identity() {
    let backend = Backend::start();
    let (_d, s) = start(&backend);
    let owner = web_setup(&s, "ada");
    let (key_id, key) = create_key(&owner.browser, "ws", &["agent:notes"]);
    let (_, wrong) = create_key(&owner.browser, "other", &["proxy:*"]);
    let (_, all_key) = create_key(&owner.browser, "all", &["agent:*"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let limit = Duration::from_secs(20);
        let mut ws = tokio::time::timeout(limit, ws_connect(&s, "/agent/notes/ws", Some(&key)))
            .await
            .expect("in time")
            .expect("websocket through latchkey");
        // First message: what the backend saw.
        let first = tokio::time::timeout(limit, ws.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("ok");
        let seen: serde_json::Value =
            serde_json::from_str(first.to_text().expect("text")).expect("json");
        assert_eq!(seen["user"], "ada", "{seen}");
        assert_eq!(seen["role"], "admin");
        assert_eq!(seen["key"], key_id.as_str());
        assert!(seen["authorization"].is_null(), "{seen}");
        let jwt = seen["assertion"].as_str().expect("assertion").to_string();
        // Echo, both ways, several times.
        for i in 0..5 {
            let text = format!("ping {i}");
            ws.send(Message::text(text.clone())).await.expect("send");
            let back = tokio::time::timeout(limit, ws.next())
                .await
                .expect("in time")
                .expect("a message")
                .expect("ok");
            assert_eq!(back.to_text().expect("text"), text);
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send");
        let back = tokio::time::timeout(limit, ws.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(back.into_data().as_ref(), &[0u8, 1, 2, 255]);
        let _ = ws.close(None).await;
        let (_, claims) = verify_assertion(&s, &jwt, "agent:notes").expect("verifies");
        assert_eq!(claims["name"], "ada");

        // Refused handshakes: no key, a key without the scope.
        for k in [None, Some(wrong.as_str())] {
            let err = tokio::time::timeout(limit, ws_connect(&s, "/agent/notes/ws", k))
                .await
                .expect("in time")
                .expect_err("refused");
            match err {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    assert!(
                        matches!(resp.status().as_u16(), 401 | 403),
                        "{}",
                        resp.status()
                    );
                }
                other => panic!("expected an HTTP refusal, got {other}"),
            }
        }

        // A silent WebSocket is closed after the agent's idle timeout (1 s
        // for `quiet`), not kept forever.
        let started = std::time::Instant::now();
        let mut ws = ws_connect(&s, "/agent/quiet/ws", Some(&all_key))
            .await
            .expect("websocket to quiet");
        let _identity = tokio::time::timeout(limit, ws.next())
            .await
            .expect("in time");
        loop {
            match tokio::time::timeout(limit, ws.next())
                .await
                .expect("closed within the limit")
            {
                None | Some(Err(_)) => break,
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
            }
        }
        let lived = started.elapsed();
        assert!(
            lived >= Duration::from_millis(900) && lived < Duration::from_secs(10),
            "closed after {lived:?}"
        );
    });
    let ws_seen = backend
        .seen()
        .iter()
        .filter(|r| r.target.ends_with("/ws"))
        .count();
    assert_eq!(
        ws_seen, 2,
        "only the authorised handshakes reached the backend"
    );
}

#[test]
fn signing_key_is_stable_across_restarts() {
    let backend = Backend::start();
    let d = TestDir::new();
    let opts = ServeOpts::new().config(&config(backend.port, ""));
    let mut s = latchkey_e2e::spawn_server(&d, &opts);
    let first = s.get("/.well-known/jwks.json");
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    s.stop();
    let s = latchkey_e2e::spawn_server(&d, &opts);
    let second = s.get("/.well-known/jwks.json").json();
    assert_eq!(first, second);
    assert!(
        first["keys"][0]["kid"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    // The private key is not in the database file in clear (its PKCS#8
    // form carries the Ed25519 OID 1.3.101.112, bytes 06 03 2b 65 70).
    drop(s);
    let db = latchkey_e2e::files_under(&d.data())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "redb"))
        .collect::<Vec<_>>();
    assert!(!db.is_empty(), "no database file");
    for p in db {
        let bytes = latchkey_e2e::file_bytes(&p);
        assert!(!latchkey_e2e::contains_bytes(
            &bytes,
            &[0x06, 0x03, 0x2b, 0x65, 0x70]
        ));
    }
}

#[test]
fn agent_config_errors_name_the_key() {
    for (toml, key) in [
        ("[agents.notes]\n", "agents.notes.upstream"),
        (
            "[agents.notes]\nupstream = \"http://example.com\"\n",
            "agents.notes.upstream",
        ),
        (
            "[agents.notes]\nupstream = \"http://127.0.0.1:1\"\nroles = [\"owner\"]\n",
            "agents.notes.roles",
        ),
        (
            "[agents.notes]\nupstream = \"http://127.0.0.1:1\"\nwebsocket = \"yes\"\n",
            "agents.notes.websocket",
        ),
        (
            "[agents.Notes]\nupstream = \"http://127.0.0.1:1\"\n",
            "agents.Notes",
        ),
    ] {
        let d = TestDir::new();
        d.write_config(toml);
        let err = d.fails(&["config", "check"], b"");
        assert!(err.contains(key), "{toml}: {err}");
    }
}

#[test]
fn responses_stream_and_client_ips_come_from_trusted_proxies_only() {
    let backend = Backend::start();
    let d = TestDir::new();
    let cfg = format!(
        "{}\n[agents.notes]\nupstream = \"http://127.0.0.1:{}\"\n",
        auth_config("trusted_proxies = [\"127.0.0.1\"]\n"),
        backend.port
    );
    let s = latchkey_e2e::spawn_server(&d, &ServeOpts::new().config(&cfg));
    let owner = web_setup(&s, "ada");
    let (_, key) = create_key(&owner.browser, "notes", &["agent:notes"]);
    let auth = key_header(&key);

    // The peer (127.0.0.1) is trusted: its X-Forwarded-For names the client.
    let r = s.request(
        "GET",
        "/agent/notes/ip",
        &[&auth, "X-Forwarded-For: 203.0.113.9"],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        backend.last().header("x-forwarded-for"),
        Some("203.0.113.9")
    );

    // Streaming: the first line arrives while the backend is still
    // producing the second.
    let mut c = latchkey_e2e::curl_cmd();
    c.arg("--cacert")
        .arg(s.ca_pem())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", s.port))
        .args(["-sS", "-N", "-H", &auth])
        .arg(format!("{}/agent/notes/slow", s.url()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let started = std::time::Instant::now();
    let mut child = c.spawn().expect("curl");
    let out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut times = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.expect("line");
            times.push((line, started.elapsed()));
        }
        times
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "curl hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let times = reader.join().expect("reader");
    let lines: Vec<&str> = times.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["first", "second"]);
    let gap = times[1].1.saturating_sub(times[0].1);
    assert!(
        gap >= Duration::from_millis(1000),
        "the first line was held back: {times:?}"
    );
}
