//! Handler tests: the router driven with `oneshot`, no socket.

mod auth;
mod livekit;
mod ui;

use super::*;
use crate::config::{MetricsAccess, Settings};
use crate::store::Store;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

pub(super) struct TestApp {
    _dir: tempfile::TempDir,
    pub(super) state: AppState,
}

/// The router's state over a fresh, unsealed data directory (also used by
/// the unit tests of `http`'s submodules).
pub(super) fn app_with(settings: Settings) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let vault = Arc::new(Vault::new(store));
    vault
        .open_with(&settings.master_key_source(dir.path()))
        .expect("unseal");
    let auth = Auth::new(
        Arc::clone(vault.store()),
        Arc::clone(&vault),
        settings.auth.clone(),
    )
    .expect("auth");
    let state = AppState::new(
        vault,
        auth,
        Arc::new(settings),
        Arc::new(NoHostInfo),
        Arc::new(Metrics::new()),
        Arc::new(StaticToken::new(TOKEN)),
    )
    .expect("state");
    TestApp { _dir: dir, state }
}

fn app() -> TestApp {
    app_with(Settings::default())
}

impl TestApp {
    async fn send(&self, req: Request<Body>) -> Response {
        router(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible")
    }
}

/// A request from a loopback peer carrying the host's admin token.
fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
}

fn json_req(method: &str, uri: &str, body: serde_json::Value) -> Request<Body> {
    req(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn empty(method: &str, uri: &str) -> Request<Body> {
    req(method, uri).body(Body::empty()).expect("request")
}

async fn body_json(resp: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes).into_owned()))
}

async fn assert_error(resp: Response, status: StatusCode, code: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("application/json")
    );
    let body = body_json(resp).await;
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    body
}

fn put_body(name: &str, secret: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "kind": "api_key", "provider": "openai",
        "labels": {"env": "prod"}, "secret": secret,
    })
}

#[tokio::test]
async fn health_needs_no_token_and_has_headers() {
    let app = app();
    let resp = app
        .send(
            Request::get("/health")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(
        h["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(
        h["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(body_json(resp).await, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn request_id_generated_when_absent_or_unsafe() {
    let app = app();
    let resp = app
        .send(Request::get("/health").body(Body::empty()).expect("req"))
        .await;
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    assert_eq!(id.len(), 32);
    let resp = app
        .send(
            Request::get("/health")
                .header("x-request-id", "evil\"id with spaces")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_ne!(resp.headers()["x-request-id"], "evil\"id with spaces");
}

#[tokio::test]
async fn api_requires_the_admin_token() {
    let app = app();
    for (method, uri) in [
        ("GET", "/api/vault"),
        ("POST", "/api/vault/x/reveal"),
        ("POST", "/api/vault/seal"),
        ("GET", "/api/status"),
        ("POST", "/api/backup"),
    ] {
        let resp = app
            .send(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        let resp = app
            .send(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .header(header::AUTHORIZATION, "Bearer wrong")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        let headers = resp.headers().clone();
        assert_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        assert!(headers.contains_key("x-request-id"));
    }
    assert!(!app.state.vault.is_sealed(), "unauthenticated seal ran");
}

#[tokio::test]
async fn vault_round_trip() {
    let app = app();
    let resp = app
        .send(json_req(
            "POST",
            "/api/vault",
            put_body("openai", "sk-test-1"),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let meta = body_json(resp).await;
    assert_eq!(meta["name"], "openai");
    assert!(!meta.to_string().contains("sk-test-1"));

    let resp = app
        .send(json_req("POST", "/api/vault", put_body("openai", "sk-2")))
        .await;
    assert_error(resp, StatusCode::CONFLICT, "already_exists").await;

    let list = body_json(app.send(empty("GET", "/api/vault")).await).await;
    assert_eq!(list.as_array().expect("array").len(), 1);
    // The CLI reads these back.
    let parsed: Vec<crate::vault::RecordMeta> = serde_json::from_value(list).expect("meta");
    assert_eq!(parsed[0].labels["env"], "prod");

    let resp = app.send(empty("POST", "/api/vault/openai/reveal")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(body_json(resp).await["value"], "sk-test-1");

    let resp = app.send(empty("GET", "/api/vault/openai")).await;
    assert_eq!(body_json(resp).await["kind"], "api_key");

    let resp = app.send(empty("DELETE", "/api/vault/openai")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.send(empty("GET", "/api/vault/openai")).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app.send(empty("GET", "/api/vault/bad%20name")).await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_field").await;
}

#[tokio::test]
async fn vault_writes_and_deletes_are_audited_without_the_value() {
    let app = app();
    for (body, status) in [
        (put_body("openai", "sk-audit-canary-1"), StatusCode::CREATED),
        (
            serde_json::json!({"name": "openai", "kind": "api_key", "secret": "sk-audit-canary-2", "replace": true}),
            StatusCode::CREATED,
        ),
        // Refused writes change nothing and record nothing.
        (
            put_body("openai", "sk-audit-canary-3"),
            StatusCode::CONFLICT,
        ),
    ] {
        let resp = app.send(json_req("POST", "/api/vault", body)).await;
        assert_eq!(resp.status(), status);
    }
    let resp = app.send(empty("DELETE", "/api/vault/openai")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let events = crate::audit::query(
        app.state.vault.store(),
        &crate::audit::AuditQuery::default(),
    )
    .expect("audit");
    let seen: Vec<(String, String, Option<String>)> = events
        .iter()
        .filter(|e| e.action.starts_with("vault."))
        .map(|e| {
            (
                e.action.clone(),
                e.target.clone().unwrap_or_default(),
                e.detail.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "vault.delete".into(),
                "openai".into(),
                Some("deleted".into())
            ),
            ("vault.put".into(), "openai".into(), Some("replaced".into())),
            ("vault.put".into(), "openai".into(), Some("created".into())),
        ]
    );
    let all = format!("{events:?}");
    assert!(!all.contains("sk-audit-canary"), "{all}");
}

#[tokio::test]
async fn entries_named_like_actions_stay_reachable() {
    let app = app();
    let resp = app
        .send(json_req("POST", "/api/vault", put_body("seal", "v")))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app.send(empty("GET", "/api/vault/seal")).await;
    assert_eq!(body_json(resp).await["name"], "seal");
    let resp = app.send(empty("POST", "/api/vault/seal/reveal")).await;
    assert_eq!(body_json(resp).await["value"], "v");
    let resp = app.send(empty("DELETE", "/api/vault/seal")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn seal_then_reveal_is_vault_sealed_then_unseal() {
    let app = app();
    app.send(json_req("POST", "/api/vault", put_body("k", "v1")))
        .await;
    let resp = app.send(empty("POST", "/api/vault/seal")).await;
    assert_eq!(body_json(resp).await["sealed"], true);
    let resp = app.send(empty("POST", "/api/vault/k/reveal")).await;
    assert_error(resp, StatusCode::LOCKED, "vault_sealed").await;
    // Metadata stays readable while sealed.
    let resp = app.send(empty("GET", "/api/vault")).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = app
        .send(Request::get("/ready").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = body_json(resp).await;
    let vault_check = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "vault")
        .expect("vault check")
        .clone();
    assert_eq!(vault_check["ok"], false);

    // Key-file mode: unseal with no body re-reads the key file.
    let resp = app.send(empty("POST", "/api/vault/unseal")).await;
    assert_eq!(body_json(resp).await["sealed"], false);
    let resp = app.send(empty("POST", "/api/vault/k/reveal")).await;
    assert_eq!(body_json(resp).await["value"], "v1");
    let resp = app
        .send(Request::get("/ready").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_json_gets_our_shape() {
    let app = app();
    let resp = app
        .send(
            req("POST", "/api/vault")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"name\": "))
                .expect("req"),
        )
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;

    let resp = app
        .send(json_req(
            "POST",
            "/api/vault",
            serde_json::json!({"name": "x", "kind": "api_key", "secret": 5}),
        ))
        .await;
    let body = assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(
        body["message"].as_str().expect("msg").contains("secret"),
        "{body}"
    );

    let resp = app
        .send(json_req(
            "POST",
            "/api/vault",
            serde_json::json!({"name": "x", "kind": "password-ish", "secret": "s"}),
        ))
        .await;
    let body = assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(
        !body["message"]
            .as_str()
            .expect("msg")
            .contains("password-ish")
    );

    let resp = app
        .send(
            req("POST", "/api/vault")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("hello"))
                .expect("req"),
        )
        .await;
    assert_error(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn oversized_bodies_are_413_json() {
    let mut settings = Settings::default();
    settings.server.max_body_bytes = 1024;
    let app = app_with(settings);
    let big = put_body("k", &"x".repeat(4096));
    // Declared length over the limit: refused before reading.
    let resp = app.send(json_req("POST", "/api/vault", big.clone())).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // No declared length (streamed): cut off while reading.
    let stream = futures_stream(big.to_string().into_bytes());
    let resp = app
        .send(
            req("POST", "/api/vault")
                .header(header::CONTENT_TYPE, "application/json")
                .body(stream)
                .expect("req"),
        )
        .await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

/// A body without a known length, like a chunked upload.
fn futures_stream(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(100).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn unknown_route_and_method_are_json() {
    let app = app();
    let resp = app
        .send(Request::get("/nope").body(Body::empty()).expect("req"))
        .await;
    let headers = resp.headers().clone();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert!(headers.contains_key("x-content-type-options"));
    let resp = app
        .send(Request::delete("/health").body(Body::empty()).expect("req"))
        .await;
    assert_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn slow_handlers_time_out() {
    let mut settings = Settings::default();
    settings.server.request_timeout = Duration::from_millis(50);
    let app = app_with(settings);
    // A body that never finishes arriving holds the request open.
    let (_tx, body) = pending_body();
    let resp = app
        .send(
            req("POST", "/api/vault")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .expect("req"),
        )
        .await;
    assert_error(resp, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
}

fn pending_body() -> (tokio::sync::mpsc::Sender<()>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await;
        None::<(Result<Vec<u8>, std::io::Error>, _)>
    });
    (tx, Body::from_stream(stream))
}

#[tokio::test]
async fn metrics_access_modes() {
    // loopback (default): only loopback peers.
    let app = app();
    app.send(Request::get("/health").body(Body::empty()).expect("req"))
        .await;
    let from = |peer: &str| {
        let mut r = Request::get("/metrics").body(Body::empty()).expect("req");
        r.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().expect("addr")));
        r
    };
    let resp = app.send(from("127.0.0.1:5000")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(
            "latchkey_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
        ),
        "{text}"
    );
    let resp = app.send(from("192.168.1.20:5000")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // off: as if absent.
    let mut s = Settings::default();
    s.metrics.access = MetricsAccess::Off;
    let resp = app_with(s).send(from("127.0.0.1:5000")).await;
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    // token: bearer must match.
    let mut s = Settings::default();
    s.metrics.access = MetricsAccess::Token;
    s.metrics.token = Some("metrics-token-0123456789".into());
    let app = app_with(s);
    let resp = app.send(from("127.0.0.1:5000")).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let mut r = from("192.168.1.20:5000");
    r.headers_mut().insert(
        header::AUTHORIZATION,
        "Bearer metrics-token-0123456789".parse().expect("hv"),
    );
    assert_eq!(app.send(r).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn backup_over_http_opens() {
    let app = app();
    app.send(json_req("POST", "/api/vault", put_body("k", "v1")))
        .await;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let resp = app
        .send(json_req(
            "POST",
            "/api/backup",
            serde_json::json!({"recipient": recipient}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-latchkey-vault-records"], "1");
    let signed_by = resp.headers()["x-latchkey-backup-key"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(signed_by.starts_with("SHA256:"), "{signed_by}");
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let opened = crate::backup::open(&bytes, &crate::backup::BackupIdentity::Identity(identity))
        .expect("open");
    assert_eq!(opened.summary.vault_records, 1);
    assert_eq!(
        opened.summary.signed_by.as_deref(),
        Some(signed_by.as_str())
    );

    // A passphrase backup is one more 256 MiB derivation: while another
    // one runs it waits its turn (an administrator's request), never runs
    // beside it.
    {
        let running = app
            .state
            .vault
            .gate()
            .enter(std::time::Instant::now(), true)
            .expect("gate");
        let router = router(app.state.clone());
        let waiting = tokio::spawn(router.oneshot(json_req(
            "POST",
            "/api/backup",
            serde_json::json!({"passphrase": "a long backup passphrase"}),
        )));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "ran beside another derivation");
        drop(running);
        let resp = waiting.await.expect("join").expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = app
        .send(json_req(
            "POST",
            "/api/backup",
            serde_json::json!({"recipient": "nope"}),
        ))
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_recipient").await;
    let resp = app
        .send(json_req("POST", "/api/backup", serde_json::json!({})))
        .await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn status_and_rotation() {
    let app = app();
    let status = body_json(app.send(empty("GET", "/api/status")).await).await;
    assert_eq!(status["sealed"], false);
    assert_eq!(status["master_key_source"], "keyfile");
    app.send(json_req("POST", "/api/vault", put_body("k", "v1")))
        .await;
    let resp = app.send(empty("POST", "/api/vault/rotate-master")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Still opens with the (new) key file.
    app.send(empty("POST", "/api/vault/seal")).await;
    app.send(empty("POST", "/api/vault/unseal")).await;
    let resp = app.send(empty("POST", "/api/vault/k/reveal")).await;
    assert_eq!(body_json(resp).await["value"], "v1");
}
