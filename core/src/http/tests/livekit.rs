//! `POST /api/livekit/{name}/token` through the router: the answer's
//! shape, the body's TTL forms, and each refusal's status and code.

use super::*;
use crate::secrecy::SecretString;
use crate::vault::{Kind, NewRecord};

const SECRET: &str = "lk-handler-CANARY-0123456789abcdef";

fn livekit_app() -> TestApp {
    let settings = Settings {
        livekit: toml::from_str(
            "[home]\napi_key = \"APIhome\"\nsecret = \"lk-secret\"\nurl = \"ws://127.0.0.1:7880\"\n\
             rooms = [\"standup\"]\nmax_ttl = \"30m\"\n",
        )
        .expect("livekit"),
        ..Settings::default()
    };
    let app = app_with(settings);
    let record = NewRecord {
        name: "lk-secret".into(),
        kind: Kind::Generic,
        provider: None,
        labels: Default::default(),
    };
    app.state
        .vault
        .put(&record, &SecretString::from(SECRET.to_string()), false)
        .expect("put");
    app
}

async fn answer(
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let resp = app.send(json_req("POST", path, body)).await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(!text.contains(SECRET), "{text}");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

#[tokio::test]
async fn the_host_mints_a_token_for_its_own_identity() {
    let app = livekit_app();
    let before = time::OffsetDateTime::now_utc().unix_timestamp();
    // The host's principal is called `host`: the default identities are
    // `{user}` and `{user}-*`.
    let (status, body) = answer(
        &app,
        "/api/livekit/home/token",
        serde_json::json!({"room": "standup", "identity": "host-bot", "ttl": "15m"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["url"], "ws://127.0.0.1:7880");
    let exp = body["expires_at"].as_i64().expect("expires_at");
    assert!((before + 900..=before + 905).contains(&exp), "{exp}");
    let token = body["token"].as_str().expect("token");
    assert_eq!(token.split('.').count(), 3);
    let (status, body) = answer(
        &app,
        "/api/livekit/home/token",
        serde_json::json!({"room": "standup", "identity": "host", "ttl": 60}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn refusals_have_their_own_codes() {
    let app = livekit_app();
    for (path, body, status, code) in [
        (
            "/api/livekit/office/token",
            serde_json::json!({"room": "standup", "identity": "host"}),
            StatusCode::NOT_FOUND,
            "unknown_livekit",
        ),
        (
            "/api/livekit/Bad..Name/token",
            serde_json::json!({"room": "standup", "identity": "host"}),
            StatusCode::NOT_FOUND,
            "unknown_livekit",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "other", "identity": "host"}),
            StatusCode::FORBIDDEN,
            "room_not_allowed",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "standup", "identity": "alice"}),
            StatusCode::FORBIDDEN,
            "identity_not_allowed",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "standup", "identity": "host", "grants": {"roomAdmin": true}}),
            StatusCode::FORBIDDEN,
            "grant_not_allowed",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "standup", "identity": "host", "ttl": "31m"}),
            StatusCode::BAD_REQUEST,
            "ttl_too_long",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "standup", "identity": "host", "ttl": "soon"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "standup", "identity": "host", "metadata": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"identity": "host"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/livekit/home/token",
            serde_json::json!({"room": "stand up", "identity": "host"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
    ] {
        let (got, reply) = answer(&app, path, body.clone()).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert_eq!(reply["error"], code, "{body}: {reply}");
        assert!(reply["message"].is_string(), "{reply}");
    }
    app.state.vault.remove("lk-secret").expect("remove");
    let (got, reply) = answer(
        &app,
        "/api/livekit/home/token",
        serde_json::json!({"room": "standup", "identity": "host"}),
    )
    .await;
    assert_eq!(got, StatusCode::CONFLICT, "{reply}");
    assert_eq!(reply["error"], "livekit_secret_missing");
}
