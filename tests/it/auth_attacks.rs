//! Attacks on the front door, each of which must fail: wrong, replayed and
//! expired codes, reused recovery codes and refresh tokens, revoked
//! sessions, expired invites, cross-site requests with a valid cookie,
//! keys and roles reaching too far, brute force (lockout and per-IP rate
//! limit) and username enumeration.

use crate::auth_flow::Secrets;
use latchkey_e2e::{
    Browser, PASSWORD, Resp, ServeOpts, Server, TestDir, auth_config, create_key, invited,
    spawn_server, totp_code_at, web_setup,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn serve(d: &TestDir, auth_extra: &str) -> Server {
    spawn_server(d, &ServeOpts::new().config(&auth_config(auth_extra)))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn login_ticket(b: &Browser<'_>, username: &str) -> String {
    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": username, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["ticket"].as_str().expect("ticket").to_string()
}

fn mfa(b: &Browser<'_>, ticket: &str, field: &str, code: &str) -> Resp {
    b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, field: code}),
    )
}

fn err(r: &Resp) -> (u16, String) {
    (r.status, r.error_code())
}

/// Six digits that are not the code of any step near now.
fn wrong_code(uri: &str) -> String {
    let t = now();
    let near: Vec<String> = (0..=4)
        .map(|i| totp_code_at(uri, t + 60 - i * 30))
        .collect();
    (0..1_000_000u32)
        .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
        .find(|c| !near.contains(c))
        .expect("a wrong code")
}

#[test]
fn wrong_password_and_wrong_replayed_or_expired_totp_codes_fail() {
    let d = TestDir::new();
    // Many failures in a row here; lockout has its own test.
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let uri = owner.totp.uri.clone();
    let b = Browser::new(&s);

    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": "Tangerine-Lighthouse-Quartz-418"}),
    );
    assert_eq!(err(&r), (401, "invalid_credentials".into()));
    assert!(r.header("set-cookie").is_none());

    let ticket = login_ticket(&b, "owner");
    let r = mfa(&b, &ticket, "code", &wrong_code(&uri));
    assert_eq!(err(&r), (401, "invalid_code".into()));
    // Expired: the code of three steps ago (outside ±1 step of skew).
    let r = mfa(&b, &ticket, "code", &totp_code_at(&uri, now() - 90));
    assert_eq!(err(&r), (401, "invalid_code".into()), "a 90 s old code");
    // And one three steps ahead.
    let r = mfa(&b, &ticket, "code", &totp_code_at(&uri, now() + 90));
    assert_eq!(err(&r), (401, "invalid_code".into()), "a code 90 s ahead");
    for junk in ["", "12345", "1234567", "abcdef"] {
        let r = mfa(&b, &ticket, "code", junk);
        assert!(
            r.status == 401 || r.status == 400,
            "{junk:?}: {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(
        b.get("/api/auth/me").status,
        401,
        "no session from failures"
    );

    // Replay: a code accepted once is refused for another login, within
    // the same 30 s step. Start early in a step never used before, so the
    // second attempt cannot slip into the next step.
    let deadline = Instant::now() + Duration::from_secs(70);
    let code = loop {
        let t = now();
        let step = t / 30;
        if t % 30 < 20 && owner.totp.last_step().is_none_or(|l| step > l + 1) {
            break totp_code_at(&uri, t);
        }
        assert!(Instant::now() < deadline, "no fresh TOTP step within 70 s");
        std::thread::sleep(Duration::from_millis(250));
    };
    let ticket = login_ticket(&b, "owner");
    let r = mfa(&b, &ticket, "code", &code);
    assert_eq!(r.status, 200, "a fresh code: {}", r.body);
    let b2 = Browser::new(&s);
    let ticket = login_ticket(&b2, "owner");
    let r = mfa(&b2, &ticket, "code", &code);
    assert_eq!(err(&r), (401, "code_replayed".into()), "{}", r.body);
    assert_eq!(b2.get("/api/auth/me").status, 401);

    // The refusals are in the audit log with their reasons.
    let audit = b.get("/api/audit?outcome=failure&limit=100");
    assert_eq!(audit.status, 200, "{}", audit.body);
    for reason in ["wrong_password", "invalid_code", "code_replayed"] {
        assert!(audit.body.contains(reason), "no {reason} in {}", audit.body);
    }
}

#[test]
fn recovery_codes_work_once_and_regeneration_invalidates_the_old_set() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let b = Browser::new(&s);
    let ticket = login_ticket(&b, "owner");
    let used = &owner.recovery_codes[0];
    let r = mfa(&b, &ticket, "recovery_code", used);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["user"]["recovery_codes_left"], 9);

    let b2 = Browser::new(&s);
    let ticket = login_ticket(&b2, "owner");
    let r = mfa(&b2, &ticket, "recovery_code", used);
    assert_eq!(
        err(&r),
        (401, "invalid_code".into()),
        "reused recovery code"
    );
    let r = mfa(&b2, &ticket, "recovery_code", "aaaa-bbbb-cccc");
    assert_eq!(r.status, 401);
    assert_eq!(b2.get("/api/auth/me").status, 401);

    // Regenerating (needs a recent sign-in, which b has) replaces the set.
    let r = b.call("POST", "/api/account/recovery-codes", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh: Vec<String> = r.json()["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("str").to_string())
        .collect();
    assert_eq!(fresh.len(), 10);
    let r = mfa(&b2, &ticket, "recovery_code", &owner.recovery_codes[1]);
    assert_eq!(err(&r), (401, "invalid_code".into()), "an old-set code");
    let r = mfa(&b2, &ticket, "recovery_code", &fresh[0]);
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = b2.get("/api/audit?action=recovery_code.use");
    assert!(
        audit.json()["events"]
            .as_array()
            .is_some_and(|e| e.len() >= 2),
        "{}",
        audit.body
    );
}

#[test]
fn refresh_token_reuse_revokes_only_that_family() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let pair = |r: Resp| {
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        (
            v["access_token"].as_str().expect("a").to_string(),
            v["refresh_token"].as_str().expect("r").to_string(),
        )
    };
    let refresh = |rt: &str| {
        s.anon(
            "POST",
            "/api/auth/refresh",
            Some(&serde_json::json!({"refresh_token": rt})),
        )
    };
    let (a_fam1, r_fam1) = pair(b.call("POST", "/api/auth/token", None));
    let (a_fam2, r_fam2) = pair(b.call("POST", "/api/auth/token", None));
    let (a_fam1b, _r_fam1b) = pair(refresh(&r_fam1));
    // A thief replays the first refresh token.
    let r = refresh(&r_fam1);
    assert_eq!(err(&r), (401, "token_reused".into()));
    for a in [&a_fam1, &a_fam1b] {
        assert_eq!(s.bearer(a, "GET", "/api/auth/me", None).status, 401);
    }
    // The other sign-in's family lives on.
    assert_eq!(s.bearer(&a_fam2, "GET", "/api/auth/me", None).status, 200);
    let (a_fam2b, _) = pair(refresh(&r_fam2));
    assert_eq!(s.bearer(&a_fam2b, "GET", "/api/auth/me", None).status, 200);
    // Garbage and access tokens are not refresh tokens.
    for bad in ["lkr_00", a_fam2b.as_str(), ""] {
        let r = refresh(bad);
        assert!(r.status == 401 || r.status == 400, "{bad}: {}", r.body);
    }
    // Access tokens cannot mint more tokens (only sessions can).
    let r = s.bearer(&a_fam2b, "POST", "/api/auth/token", None);
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn revoked_sessions_and_disabled_users_are_refused_at_once() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let a = invited(&s, &owner.browser, "alice", "user");
    let a2 = Browser::new(&s);
    a2.login("alice", PASSWORD, None);
    let a3 = Browser::new(&s);
    a3.login("alice", PASSWORD, None);

    let r = a.get("/api/account/sessions");
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json();
    let list = list.as_array().expect("sessions");
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    let a2_cookie = a2.cookie().expect("a2 cookie");
    assert!(
        !r.body.contains(&a2_cookie),
        "session ids are not the cookies"
    );
    // Which one is a2's? The one that is "current" when a2 lists.
    let r = a2.get("/api/account/sessions");
    let a2_id = r
        .json()
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["current"] == true)
        .and_then(|s| s["id"].as_str().map(str::to_string))
        .expect("current session id");
    let r = a.call("DELETE", &format!("/api/account/sessions/{a2_id}"), None);
    assert!(r.status == 204 || r.status == 200, "{}", r.body);
    let r = a2.get("/api/auth/me");
    assert_eq!(err(&r), (401, "unauthenticated".into()), "revoked session");
    assert_eq!(a.get("/api/auth/me").status, 200);
    assert_eq!(a3.get("/api/auth/me").status, 200);
    // Another user's session id is not ours to revoke.
    let owner_id = owner
        .browser
        .get("/api/account/sessions")
        .json()
        .as_array()
        .expect("list")[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = a.call("DELETE", &format!("/api/account/sessions/{owner_id}"), None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(owner.browser.get("/api/auth/me").status, 200);

    // "Sign out everywhere else".
    let r = a.call("DELETE", "/api/account/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(a3.get("/api/auth/me").status, 401);
    assert_eq!(a.get("/api/auth/me").status, 200);

    // Disabling a user ends their session, tokens and keys on the next
    // request; login is refused with the usual answer.
    let tok = a.call("POST", "/api/auth/token", None);
    let access = tok.json()["access_token"].as_str().expect("a").to_string();
    let (_, key) = create_key(&a, "k", &["proxy:*"]);
    let r = owner.browser.call("POST", "/api/users/alice/disable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(a.get("/api/auth/me").status, 401);
    assert_eq!(s.bearer(&access, "GET", "/api/auth/me", None).status, 401);
    assert_eq!(s.bearer(&key, "GET", "/api/auth/me", None).status, 401);
    let r = s.anon(
        "POST",
        "/api/auth/login",
        Some(&serde_json::json!({"username": "alice", "password": PASSWORD})),
    );
    assert_eq!(err(&r), (401, "invalid_credentials".into()));
}

#[test]
fn invites_are_single_use_and_expire() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let accept = |token: &str, user: &str| {
        s.anon(
            "POST",
            "/api/invites/accept",
            Some(&serde_json::json!({"token": token, "username": user, "password": PASSWORD})),
        )
    };
    let r = owner.browser.post(
        "/api/users/invites",
        &serde_json::json!({"role": "guest", "expires_in_secs": 1}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let short = v["token"].as_str().expect("token").to_string();
    let url = v["url"].as_str().expect("url");
    assert!(
        url.ends_with(&format!("/invite#{short}")),
        "the token travels in the fragment: {url}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let r = accept(&short, "late");
    assert_eq!(err(&r), (403, "invalid_invite".into()), "expired invite");

    let r = owner
        .browser
        .post("/api/users/invites", &serde_json::json!({"role": "user"}));
    let token = r.json()["token"].as_str().expect("token").to_string();
    let r = accept(&token, "bob");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["user"]["role"], "user");
    let r = accept(&token, "bob2");
    assert_eq!(err(&r), (403, "invalid_invite".into()), "used invite");
    let r = accept("lki_0123456789abcdef", "mallory");
    assert_eq!(err(&r), (403, "invalid_invite".into()), "made-up invite");
    // None of the refused attempts created a user.
    let users = owner.browser.get("/api/users");
    let names: Vec<String> = users
        .json()
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["username"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["bob", "owner"]);
    // No open registration: nothing to sign up with but an invite.
    let r = s.anon(
        "POST",
        "/api/users",
        Some(&serde_json::json!({"username": "x", "password": PASSWORD})),
    );
    assert!(r.status == 405 || r.status == 401, "{}", r.body);
}

#[test]
fn invite_links_name_the_origin_the_admin_used() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    // HTTP/2 (what curl and browsers negotiate) has no Host header, only
    // `:authority`; HTTP/1.1 has Host.
    for flags in [&[][..], &["--http1.1"][..]] {
        let r = owner.browser.call_with(
            "POST",
            "/api/users/invites",
            &[],
            Some(r#"{"role":"guest"}"#),
        );
        let r = if flags.is_empty() {
            r
        } else {
            let jar_less = format!("Origin: {}", s.url());
            let cookie = format!(
                "Cookie: __Host-latchkey_session={}",
                owner.browser.cookie().expect("cookie")
            );
            s.request_with(
                flags,
                "POST",
                "/api/users/invites",
                &[&cookie, &jar_less, "Content-Type: application/json"],
                Some(br#"{"role":"guest"}"#),
            )
        };
        assert_eq!(r.status, 201, "{}", r.body);
        let v = r.json();
        let token = v["token"].as_str().expect("token");
        assert_eq!(
            v["url"].as_str().expect("url"),
            format!("{}/invite#{token}", s.url()),
            "{flags:?}"
        );
    }
}

#[test]
fn cross_origin_requests_with_a_valid_cookie_are_refused() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let cookie = owner.browser.cookie().expect("cookie");
    let with = |method: &str, path: &str, extra: &[&str], body: Option<&str>| {
        let c = format!("Cookie: __Host-latchkey_session={cookie}");
        let mut h = vec![c.as_str(), "Content-Type: application/json"];
        h.extend_from_slice(extra);
        s.early_request(&[], method, path, &h, body.map(str::as_bytes))
    };
    let key_body = r#"{"name":"evil","scopes":["proxy:*"]}"#;
    let own = format!("Origin: {}", s.url());
    let plain_http = format!("Origin: http://localhost:{}", s.port);
    for extra in [
        vec!["Origin: https://evil.example"],
        vec!["Origin: https://evil.example", "Sec-Fetch-Site: cross-site"],
        vec!["Sec-Fetch-Site: cross-site"],
        vec!["Sec-Fetch-Site: same-site"],
        vec!["Origin: null"],
        vec![plain_http.as_str()],
        vec![],
    ] {
        let r = with("POST", "/api/keys", &extra, Some(key_body));
        assert_eq!(err(&r), (403, "csrf".into()), "{extra:?}: {}", r.body);
        let r = with("POST", "/api/auth/logout", &extra, None);
        assert_eq!(err(&r), (403, "csrf".into()), "{extra:?}");
        let r = with("DELETE", "/api/account/sessions", &extra, None);
        assert_eq!(err(&r), (403, "csrf".into()), "{extra:?}");
    }
    // Nothing happened: no key, the session is alive.
    let keys = with("GET", "/api/keys", &["Origin: https://evil.example"], None);
    assert_eq!(keys.status, 200, "{}", keys.body);
    assert_eq!(keys.json().as_array().map(Vec::len), Some(0));
    // Same origin, by Origin or by Sec-Fetch-Site.
    let r = with("POST", "/api/keys", &[&own], Some(key_body));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = with(
        "POST",
        "/api/auth/token",
        &["Sec-Fetch-Site: same-origin"],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // JSON bodies only: a form post (what a cross-site form can send) is
    // refused even from our own origin.
    let c = format!("Cookie: __Host-latchkey_session={cookie}");
    let r = s.early_request(
        &[],
        "POST",
        "/api/keys",
        &[&c, &own, "Content-Type: application/x-www-form-urlencoded"],
        Some(b"name=x&scopes=proxy:*"),
    );
    assert_eq!(r.status, 415, "{}", r.body);
}

#[test]
fn keys_cannot_exceed_their_scopes_or_their_owners_role() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let admin = &owner.browser;
    for name in ["alpha", "beta"] {
        let r = admin.post(
            "/api/vault",
            &serde_json::json!({"name": name, "kind": "generic", "secret": format!("value-of-{name}-XYZ")}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let (_, proxy_key) = create_key(admin, "agent", &["proxy:openai"]);
    let me = s.bearer(&proxy_key, "GET", "/api/auth/me", None);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["via"], "api_key");
    assert_eq!(me.json()["scopes"], serde_json::json!(["proxy:openai"]));
    for (method, path, body) in [
        ("GET", "/api/users", None),
        ("GET", "/api/audit", None),
        ("GET", "/api/vault", None),
        ("GET", "/api/vault/alpha", None),
        ("POST", "/api/vault/alpha/reveal", None),
        (
            "POST",
            "/api/keys",
            Some(r#"{"name":"more","scopes":["admin"]}"#),
        ),
        ("POST", "/api/users/invites", Some(r#"{"role":"admin"}"#)),
        ("POST", "/api/vault/seal", None),
    ] {
        let r = s.bearer(&proxy_key, method, path, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
    }

    // vault:read:alpha reads alpha, not beta.
    let (_, alpha_key) = create_key(admin, "alpha-reader", &["vault:read:alpha"]);
    let r = s.bearer(&alpha_key, "POST", "/api/vault/alpha/reveal", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"], "value-of-alpha-XYZ");
    let r = s.bearer(&alpha_key, "POST", "/api/vault/beta/reveal", None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.contains("value-of-beta"));
    let r = s.bearer(&alpha_key, "GET", "/api/vault", None);
    if r.status == 200 {
        let names: Vec<&str> = r
            .json()
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|m| m["name"].as_str())
            .map(|n| if n == "alpha" { "alpha" } else { "other" })
            .collect();
        assert_eq!(names, ["alpha"], "a key lists only what it may read");
    }
    let r = s.bearer(&alpha_key, "DELETE", "/api/vault/alpha", None);
    assert_eq!(r.status, 403, "read is not write: {}", r.body);

    // A user (or guest) cannot grant what their role lacks.
    let user = invited(&s, admin, "ursula", "user");
    let guest = invited(&s, admin, "gus", "guest");
    for (b, scopes) in [
        (&user, vec!["admin"]),
        (&user, vec!["vault:read:*"]),
        (&guest, vec!["vault:read:alpha"]),
        (&guest, vec!["connections:spotify"]),
        (&guest, vec!["proxy:*", "admin"]),
    ] {
        let r = b.post(
            "/api/keys",
            &serde_json::json!({"name": "too-much", "scopes": scopes}),
        );
        assert_eq!(
            err(&r),
            (403, "scope_exceeds_role".into()),
            "{scopes:?}: {}",
            r.body
        );
    }
    // Typos never reach a lookup; revoked keys stop at once.
    let mut typo = alpha_key.clone().into_bytes();
    let i = typo.len() - 5;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).expect("ascii");
    assert_eq!(s.bearer(&typo, "GET", "/api/auth/me", None).status, 401);
    let keys = admin.get("/api/keys");
    let id = keys
        .json()
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "alpha-reader")
        .and_then(|k| k["id"].as_str().map(str::to_string))
        .expect("id");
    assert!(
        !keys.body.contains(&alpha_key),
        "keys are listed, never shown"
    );
    let r = admin.call("DELETE", &format!("/api/keys/{id}"), None);
    assert!(r.status == 204 || r.status == 200, "{}", r.body);
    assert_eq!(
        s.bearer(&alpha_key, "GET", "/api/auth/me", None).status,
        401
    );
    // An expired key is refused.
    let r = admin.post(
        "/api/keys",
        &serde_json::json!({"name": "short", "scopes": ["proxy:*"], "expires_at": now() + 2}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let short = r.json()["key"].as_str().expect("key").to_string();
    assert_eq!(s.bearer(&short, "GET", "/api/auth/me", None).status, 200);
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(s.bearer(&short, "GET", "/api/auth/me", None).status, 401);
}

#[test]
fn guests_and_users_cannot_touch_admin_endpoints() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let guest = invited(&s, &owner.browser, "gus", "guest");
    let user = invited(&s, &owner.browser, "ursula", "user");
    for b in [&guest, &user] {
        for (method, path, body) in [
            ("GET", "/api/users", None),
            ("POST", "/api/users/invites", Some(r#"{"role":"admin"}"#)),
            ("POST", "/api/users/invites", Some(r#"{"role":"guest"}"#)),
            ("PUT", "/api/users/gus/role", Some(r#"{"role":"admin"}"#)),
            ("PUT", "/api/users/ursula/role", Some(r#"{"role":"admin"}"#)),
            ("POST", "/api/users/owner/disable", None),
            ("POST", "/api/users/owner/reset-mfa", None),
            ("GET", "/api/audit", None),
            ("GET", "/api/keys?all=true", None),
            ("POST", "/api/vault/seal", None),
            (
                "POST",
                "/api/backup",
                Some(r#"{"passphrase":"a long backup passphrase"}"#),
            ),
        ] {
            let r = b.call(method, path, body);
            assert_eq!(
                err(&r),
                (403, "forbidden".into()),
                "{method} {path}: {}",
                r.body
            );
        }
    }
    // Still who they were.
    assert_eq!(guest.get("/api/auth/me").json()["role"], "guest");
    assert_eq!(user.get("/api/auth/me").json()["role"], "user");
    let users = owner.browser.get("/api/users").json();
    assert!(
        users
            .as_array()
            .expect("users")
            .iter()
            .all(|u| u["disabled"] == false)
    );
}

#[test]
fn lockout_after_five_failures_and_release_after_the_window() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_duration = \"3s\"\n");
    let owner = web_setup(&s, "owner");
    let login = |pw: &str| {
        s.anon(
            "POST",
            "/api/auth/login",
            Some(&serde_json::json!({"username": "owner", "password": pw})),
        )
    };
    let wait_released = |retry_after: u64| {
        assert!((1..=3).contains(&retry_after), "Retry-After {retry_after}");
        std::thread::sleep(Duration::from_millis(retry_after * 1000 + 600));
    };
    for i in 0..5 {
        let r = login("Tangerine-Lighthouse-Quartz-000");
        assert_eq!(err(&r), (401, "invalid_credentials".into()), "attempt {i}");
    }
    let r = login(PASSWORD);
    assert!(
        r.status == 429 || r.status == 423,
        "locked: {} {}",
        r.status,
        r.body
    );
    assert_eq!(r.error_code(), "account_locked");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(r.json().get("ticket").is_none());
    wait_released(retry);
    let r = login(PASSWORD);
    assert_eq!(r.status, 200, "released after the window: {}", r.body);

    // TOTP failures count too, and a locked account refuses a good code.
    let b = Browser::new(&s);
    let ticket = login_ticket(&b, "owner");
    for _ in 0..5 {
        let r = mfa(
            &b,
            &ticket,
            "code",
            &totp_code_at(&owner.totp.uri, now() - 300),
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = mfa(&b, &ticket, "code", &owner.totp.code());
    assert_eq!(err(&r), (429, "account_locked".into()));
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert_eq!(b.get("/api/auth/me").status, 401);
    wait_released(retry);
    let ticket = login_ticket(&b, "owner");
    let r = mfa(&b, &ticket, "code", &owner.totp.code());
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = b.get("/api/audit?action=lockout");
    assert!(
        audit.json()["events"]
            .as_array()
            .is_some_and(|e| e.len() >= 2),
        "lockouts audited: {}",
        audit.body
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn unknown_users_get_the_same_answer_in_comparable_time() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 1000\n");
    let owner = web_setup(&s, "owner");
    let ursula = invited(&s, &owner.browser, "ursula", "user");
    drop(ursula);
    let r = owner
        .browser
        .call("POST", "/api/users/ursula/disable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let attempt = |user: &str, pw: &str| {
        let t = Instant::now();
        let r = s.anon(
            "POST",
            "/api/auth/login",
            Some(&serde_json::json!({"username": user, "password": pw})),
        );
        (r, t.elapsed())
    };
    let (unknown, _) = attempt("nobody-here", "Tangerine-Lighthouse-Quartz-000");
    let (wrong, _) = attempt("owner", "Tangerine-Lighthouse-Quartz-000");
    let (disabled, _) = attempt("ursula", PASSWORD);
    assert_eq!(unknown.status, 401);
    for (what, r) in [("wrong password", &wrong), ("disabled user", &disabled)] {
        assert_eq!(
            (r.status, &r.body),
            (unknown.status, &unknown.body),
            "{what} vs unknown user"
        );
    }
    // Timing: each includes one argon2 verification (a dummy hash for
    // unknown users). Interleaved, medians of 7 each.
    let (mut t_unknown, mut t_wrong) = (Vec::new(), Vec::new());
    for i in 0..7 {
        t_unknown.push(attempt(&format!("ghost{i}"), "Tangerine-Lighthouse-Quartz-000").1);
        t_wrong.push(attempt("owner", "Tangerine-Lighthouse-Quartz-000").1);
    }
    let (mu, mw) = (median(t_unknown), median(t_wrong));
    let ratio = mu.as_secs_f64().max(mw.as_secs_f64()) / mu.as_secs_f64().min(mw.as_secs_f64());
    eprintln!("login median: unknown user {mu:?}, wrong password {mw:?} (ratio {ratio:.2})");
    assert!(ratio < 3.0, "unknown {mu:?} vs wrong password {mw:?}");
}

#[test]
fn lockout_does_not_reveal_which_usernames_exist() {
    // With the default threshold, an existing account locks after five
    // failures. An unknown name must answer the same way after the same
    // attempts, or the 429 tells an attacker the account exists.
    let d = TestDir::new();
    let s = serve(&d, "");
    web_setup(&s, "owner");
    let statuses = |user: &str| -> Vec<(u16, String)> {
        (0..6)
            .map(|_| {
                let r = s.anon(
                    "POST",
                    "/api/auth/login",
                    Some(&serde_json::json!({"username": user, "password": "Tangerine-Lighthouse-Quartz-000"})),
                );
                err(&r)
            })
            .collect()
    };
    let known = statuses("owner");
    let unknown = statuses("nobody-here");
    assert_eq!(known[5].0, 429, "{known:?}");
    assert_eq!(known, unknown, "lockout answers differ for unknown users");
}

#[test]
fn auth_endpoints_are_rate_limited_per_client_ip() {
    let d = TestDir::new();
    let s = serve(&d, "rate_limit_burst = 5\nrate_limit_per_minute = 6\n");
    let body =
        serde_json::json!({"username": "nobody", "password": "Tangerine-Lighthouse-Quartz-000"});
    let mut limited = None;
    for i in 0..20 {
        let r = s.anon("POST", "/api/auth/login", Some(&body));
        if r.status == 429 {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let (i, r) = limited.expect("no 429 within 20 requests with a burst of 5");
    assert!(i >= 5, "the burst is allowed: limited after {i}");
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    // Other auth endpoints share the bucket; a forged X-Forwarded-For from
    // an untrusted peer does not get a fresh one.
    let r = s.anon("GET", "/api/setup", None);
    assert_eq!(r.status, 429, "{}", r.body);
    let r = s.early_request(
        &[],
        "POST",
        "/api/auth/login",
        &[
            "Content-Type: application/json",
            "X-Forwarded-For: 203.0.113.7",
        ],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(
        r.status, 429,
        "X-Forwarded-For from an untrusted peer: {}",
        r.body
    );
    // Operations endpoints are not limited.
    assert_eq!(s.get("/health").status, 200);
}

/// The secrets of a server that went through most attacks stay out of its
/// logs (the flows in `auth_flow` check theirs).
#[test]
fn attack_traffic_leaves_no_secret_in_the_logs() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let mut secrets = Secrets::default();
    secrets.add("password", PASSWORD);
    secrets.add("TOTP secret", &latchkey_e2e::totp_secret(&owner.totp.uri));
    for c in &owner.recovery_codes {
        secrets.add("recovery code", c);
    }
    secrets.add("session cookie", &owner.browser.cookie().expect("cookie"));
    let (_, key) = create_key(&owner.browser, "k", &["proxy:*"]);
    secrets.add("API key", &key);
    let tok = owner.browser.call("POST", "/api/auth/token", None).json();
    let rt = tok["refresh_token"].as_str().expect("rt").to_string();
    secrets.add("access token", tok["access_token"].as_str().expect("at"));
    secrets.add("refresh token", &rt);
    let inv = owner
        .browser
        .post("/api/users/invites", &serde_json::json!({"role": "user"}))
        .json();
    let invite = inv["token"].as_str().expect("invite").to_string();
    secrets.add("invite token", &invite);
    // Failures that carry the secrets in their bodies.
    let wrong = "Wrong-Password-Canary-5521";
    secrets.add("wrong password", wrong);
    s.anon(
        "POST",
        "/api/auth/login",
        Some(&serde_json::json!({"username": "owner", "password": wrong})),
    );
    s.anon(
        "POST",
        "/api/auth/login",
        Some(&serde_json::json!({"username": "owner", "password": PASSWORD, "extra": 1})),
    );
    for _ in 0..2 {
        s.anon(
            "POST",
            "/api/auth/refresh",
            Some(&serde_json::json!({"refresh_token": rt})),
        );
    }
    s.anon(
        "POST",
        "/api/invites/accept",
        Some(&serde_json::json!({"token": invite, "username": "x y", "password": PASSWORD})),
    );
    s.bearer(&format!("{key}0"), "GET", "/api/auth/me", None);
    s.request("GET", "/api/auth/me", &[&format!("x-api-key: {key}")], None);
    let b = Browser::new(&s);
    let t = login_ticket(&b, "owner");
    secrets.add("MFA ticket", &t);
    mfa(&b, &t, "recovery_code", &owner.recovery_codes[9]);
    mfa(&b, &t, "recovery_code", &owner.recovery_codes[9]);
    secrets.absent_from_server(&s);
}
