//! Auth over HTTP, attacked: cross-site requests with a valid cookie,
//! guests on admin endpoints, keys beyond their scopes, bursts past the
//! rate limit, and username enumeration.

use super::*;
use crate::auth::scope::Role;
use crate::secrecy::ExposeSecret;

const HOST: &str = "latchkey.test:8443";
const PASSWORD: &str = "correct horse battery staple 9";

fn peer(ip: [u8; 4]) -> ConnectInfo<SocketAddr> {
    ConnectInfo(SocketAddr::from((ip, 50000)))
}

/// A request from a LAN peer with no credentials.
fn anon(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST)
        .extension(peer([192, 168, 1, 20]))
}

fn with_json(b: axum::http::request::Builder, body: serde_json::Value) -> Request<Body> {
    b.header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn cookie_of(resp: &Response) -> String {
    let set = resp.headers()[header::SET_COOKIE].to_str().expect("ascii");
    assert!(set.starts_with("__Host-latchkey_session=lks_"), "{set}");
    for attr in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    set.split(';').next().expect("pair").to_string()
}

/// The owner (via the host, as `latchkey setup` does) signed in with a
/// recovery code: returns the cookie pair.
async fn owner_session(app: &TestApp) -> String {
    let (_, _, codes) = app
        .state
        .auth
        .setup_host("owner", &PASSWORD.to_string().into())
        .expect("setup");
    let resp = app
        .send(with_json(
            anon("POST", "/api/auth/login"),
            serde_json::json!({"username": "owner", "password": PASSWORD}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_json(resp).await;
    assert_eq!(body["mfa_required"], true, "{body}");
    let resp = app
        .send(with_json(
            anon("POST", "/api/auth/mfa"),
            serde_json::json!({"ticket": body["ticket"], "recovery_code": codes[0].expose_secret()}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = cookie_of(&resp);
    assert_eq!(body_json(resp).await["user"]["username"], "owner");
    cookie
}

/// A user of `role` invited by the host; no TOTP, so the password alone
/// signs them in.
async fn member_session(app: &TestApp, name: &str, role: Role) -> String {
    let auth = &app.state.auth;
    let (token, _) = auth
        .create_invite(&auth.host_principal(), role, None)
        .expect("invite");
    let resp = app
        .send(with_json(
            anon("POST", "/api/invites/accept"),
            serde_json::json!({"token": token.expose_secret(), "username": name, "password": PASSWORD}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app
        .send(with_json(
            anon("POST", "/api/auth/login"),
            serde_json::json!({"username": name, "password": PASSWORD}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = cookie_of(&resp);
    assert_eq!(body_json(resp).await["mfa_required"], false);
    cookie
}

fn same_origin(method: &str, uri: &str, cookie: &str) -> axum::http::request::Builder {
    anon(method, uri)
        .header(header::COOKIE, cookie)
        .header(header::ORIGIN, format!("https://{HOST}"))
}

#[tokio::test]
async fn cross_origin_post_with_a_valid_cookie_is_refused() {
    let app = app();
    let cookie = owner_session(&app).await;
    let key = serde_json::json!({"name": "agent", "scopes": ["proxy:openai"]});
    // The attack: a page on another origin posts with the browser's cookie.
    for evil in [
        Some(("origin", "https://evil.example")),
        Some(("origin", "http://latchkey.test:8443")),
        Some(("sec-fetch-site", "cross-site")),
        None,
    ] {
        let mut b = anon("POST", "/api/keys").header(header::COOKIE, &cookie);
        if let Some((k, v)) = evil {
            b = b.header(k, v);
        }
        let resp = app.send(with_json(b, key.clone())).await;
        assert_error(resp, StatusCode::FORBIDDEN, "csrf").await;
    }
    let resp = app
        .send(with_json(
            anon("DELETE", "/api/account/sessions")
                .header(header::COOKIE, &cookie)
                .header(header::ORIGIN, "https://evil.example"),
            serde_json::json!({}),
        ))
        .await;
    assert_error(resp, StatusCode::FORBIDDEN, "csrf").await;
    // Reads need no Origin; same-origin writes pass.
    let resp = app
        .send(
            anon("GET", "/api/auth/me")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let me = body_json(resp).await;
    assert_eq!(
        (me["username"].as_str(), me["via"].as_str()),
        (Some("owner"), Some("session"))
    );
    let resp = app
        .send(with_json(
            same_origin("POST", "/api/keys", &cookie),
            key.clone(),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app
        .send(with_json(
            anon("POST", "/api/keys")
                .header(header::COOKIE, &cookie)
                .header("sec-fetch-site", "same-origin"),
            key,
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn guests_and_users_are_refused_admin_endpoints() {
    let app = app();
    let _owner = owner_session(&app).await;
    for (name, role) in [("gina", Role::Guest), ("uma", Role::User)] {
        let cookie = member_session(&app, name, role).await;
        for (method, uri, body) in [
            ("GET", "/api/users", None),
            ("GET", "/api/audit", None),
            (
                "POST",
                "/api/users/invites",
                Some(serde_json::json!({"role": "admin"})),
            ),
            ("POST", "/api/users/owner/disable", None),
            ("POST", "/api/users/owner/reset-mfa", None),
            (
                "PUT",
                "/api/users/owner/role",
                Some(serde_json::json!({"role": "guest"})),
            ),
            ("GET", "/api/keys?all=true", None),
            ("GET", "/api/status", None),
            ("GET", "/api/vault", None),
            ("POST", "/api/vault/seal", None),
            ("POST", "/api/vault/x/reveal", None),
            (
                "POST",
                "/api/backup",
                Some(serde_json::json!({"passphrase": "a long passphrase"})),
            ),
        ] {
            let b = same_origin(method, uri, &cookie);
            let req = match body {
                Some(j) => with_json(b, j),
                None => b.body(Body::empty()).expect("req"),
            };
            let resp = app.send(req).await;
            assert_eq!(
                resp.status(),
                StatusCode::FORBIDDEN,
                "{name} {method} {uri}"
            );
            assert_eq!(
                body_json(resp).await["error"],
                "forbidden",
                "{name} {method} {uri}"
            );
        }
        // …while their own keys work.
        let resp = app
            .send(
                same_origin("GET", "/api/keys", &cookie)
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
    }
    assert!(!app.state.vault.is_sealed());
}

#[tokio::test]
async fn api_keys_never_exceed_their_scopes() {
    let app = app();
    let cookie = owner_session(&app).await;
    let resp = app
        .send(json_req("POST", "/api/vault", put_body("openai", "sk-1")))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app
        .send(json_req("POST", "/api/vault", put_body("other", "sk-2")))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app
        .send(with_json(
            same_origin("POST", "/api/keys", &cookie),
            serde_json::json!({"name": "agent", "scopes": ["proxy:openai", "vault:read:openai"]}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let key = body_json(resp).await["key"]
        .as_str()
        .expect("key")
        .to_string();
    assert!(key.starts_with("lk_"));
    let with_key = |m: &str, u: &str, bearer: bool| {
        let b = anon(m, u);
        if bearer {
            b.header(header::AUTHORIZATION, format!("Bearer {key}"))
        } else {
            b.header("x-api-key", &key)
        }
    };
    // Allowed: what the scopes name.
    for bearer in [true, false] {
        let resp = app
            .send(
                with_key("GET", "/api/vault/openai", bearer)
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = app
        .send(
            with_key("POST", "/api/vault/openai/reveal", true)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(body_json(resp).await["value"], "sk-1");
    let resp = app
        .send(
            with_key("GET", "/api/vault", true)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    let listed = body_json(resp).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // The attacks: everything else.
    for (method, uri, body) in [
        ("GET", "/api/vault/other", None),
        ("POST", "/api/vault/other/reveal", None),
        ("DELETE", "/api/vault/openai", None),
        ("POST", "/api/vault", Some(put_body("openai", "sk-evil"))),
        ("GET", "/api/users", None),
        ("GET", "/api/audit", None),
        ("GET", "/api/keys", None),
        (
            "POST",
            "/api/keys",
            Some(serde_json::json!({"name": "more", "scopes": ["admin"]})),
        ),
        ("POST", "/api/vault/seal", None),
        (
            "POST",
            "/api/account/password",
            Some(serde_json::json!({"current_password": "x", "new_password": "y"})),
        ),
    ] {
        let b = with_key(method, uri, true);
        let req = match body {
            Some(j) => with_json(b, j),
            None => b.body(Body::empty()).expect("req"),
        };
        let resp = app.send(req).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{method} {uri}");
    }
    // A revoked key stops at once.
    let id = key[3..11].to_string();
    let resp = app
        .send(
            same_origin("DELETE", &format!("/api/keys/{id}"), &cookie)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app
        .send(
            with_key("GET", "/api/vault/openai", true)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn auth_endpoints_answer_429_with_retry_after_past_the_burst() {
    let mut settings = Settings::default();
    settings.auth.rate_limit_burst = 3;
    settings.auth.rate_limit_per_minute = 1;
    let app = app_with(settings);
    let login = || {
        with_json(
            anon("POST", "/api/auth/login"),
            serde_json::json!({"username": "nobody", "password": "wrong password 123"}),
        )
    };
    for _ in 0..3 {
        assert_eq!(app.send(login()).await.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = app.send(login()).await;
    let retry: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let resp = app
        .send(anon("GET", "/api/setup").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address has its own bucket; an X-Forwarded-For from an
    // untrusted peer changes nothing.
    let other = |xff: Option<&str>, ip: [u8; 4]| {
        let mut b = Request::get("/api/setup").extension(peer(ip));
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        b.body(Body::empty()).expect("req")
    };
    assert_eq!(
        app.send(other(None, [10, 0, 0, 9])).await.status(),
        StatusCode::OK
    );
    let resp = app.send(other(Some("10.0.0.77"), [192, 168, 1, 20])).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn login_does_not_reveal_whether_a_username_exists() {
    let app = app();
    let _ = owner_session(&app).await;
    let mut answers = Vec::new();
    for user in ["owner", "no-such-user"] {
        let resp = app
            .send(with_json(
                anon("POST", "/api/auth/login"),
                serde_json::json!({"username": user, "password": "not the password 42"}),
            ))
            .await;
        let status = resp.status();
        let www = resp.headers().get(header::WWW_AUTHENTICATE).cloned();
        answers.push((status, www, body_json(resp).await));
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].2["error"], "invalid_credentials");
}

#[tokio::test]
async fn host_token_only_from_loopback() {
    let app = app();
    let resp = app
        .send(
            Request::get("/api/status")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .extension(peer([192, 168, 1, 20]))
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let resp = app.send(empty("GET", "/api/auth/me")).await;
    assert_eq!(body_json(resp).await["via"], "host");
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let app = app();
    let cookie = owner_session(&app).await;
    let resp = app
        .send(
            same_origin("POST", "/api/auth/logout", &cookie)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let set = resp.headers()[header::SET_COOKIE].to_str().expect("ascii");
    assert!(set.contains("Max-Age=0"), "{set}");
    let resp = app
        .send(
            anon("GET", "/api/auth/me")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn reauth_and_token_logout_work() {
    let app = app();
    let _owner = owner_session(&app).await;
    let cookie = member_session(&app, "uma", Role::User).await;
    let resp = app
        .send(with_json(
            same_origin("POST", "/api/auth/reauth", &cookie),
            serde_json::json!({"password": "wrong password here"}),
        ))
        .await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_code").await;
    let resp = app
        .send(with_json(
            same_origin("POST", "/api/auth/reauth", &cookie),
            serde_json::json!({"password": PASSWORD}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app
        .send(
            same_origin("POST", "/api/auth/token", &cookie)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let pair = body_json(resp).await;
    let access = pair["access_token"].as_str().expect("access").to_string();
    let bearer = |m: &str, u: &str| {
        anon(m, u)
            .header(header::AUTHORIZATION, format!("Bearer {access}"))
            .body(Body::empty())
            .expect("req")
    };
    let resp = app.send(bearer("GET", "/api/auth/me")).await;
    assert_eq!(body_json(resp).await["via"], "access_token");
    // Tokens are issued to sessions only.
    let resp = app.send(bearer("POST", "/api/auth/token")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "session_required").await;
    let resp = app.send(bearer("POST", "/api/auth/logout")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app.send(bearer("GET", "/api/auth/me")).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let resp = app
        .send(with_json(
            anon("POST", "/api/auth/refresh"),
            serde_json::json!({"refresh_token": pair["refresh_token"]}),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
