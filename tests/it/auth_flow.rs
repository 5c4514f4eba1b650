//! Accounts end to end through the real binary over HTTPS: first run with
//! the banner's setup link (QR code decoded by `zbarimg`, codes computed by
//! `oathtool`), login with a second factor, token exchange and rotation,
//! reuse detection, logout; `latchkey setup` on the host; and no secret of
//! any of it in the server's logs.

use latchkey_e2e::{
    Authenticator, Browser, PASSWORD, ServeOpts, Server, TestDir, auth_config, run_cmd,
    setup_token, spawn_server, totp_secret, uri_param,
};
use std::process::Command;

/// Every secret a flow handled, to look for in the logs afterwards.
#[derive(Default)]
pub struct Secrets(Vec<(String, String)>);

impl Secrets {
    pub fn add(&mut self, what: &str, value: &str) {
        assert!(value.len() >= 6, "{what} is too short to search for");
        self.0.push((what.to_string(), value.to_string()));
    }

    /// Asserts none of the secrets is in `text` (named `place`).
    pub fn absent_from(&self, place: &str, text: &str) {
        for (what, value) in &self.0 {
            assert!(!text.contains(value.as_str()), "{what} found in {place}");
        }
    }

    /// The server's logs (stderr, at debug level) and, except for the
    /// setup token the banner shows by design, its stdout.
    pub fn absent_from_server(&self, s: &Server) {
        let err = s.stderr();
        assert!(
            err.lines().count() > 10,
            "debug logging was on; expected a real log:\n{err}"
        );
        self.absent_from("the server log", &err);
        let out = s.stdout();
        for (what, value) in &self.0 {
            if what != "setup token" {
                assert!(!out.contains(value.as_str()), "{what} found on stdout");
            }
        }
    }
}

fn cookie_of(r: &latchkey_e2e::Resp) -> String {
    let c = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {:?}", r.headers));
    let value = c
        .strip_prefix("__Host-latchkey_session=")
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("not the session cookie: {c}"));
    let attrs: Vec<String> = c
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for want in ["secure", "httponly", "samesite=strict", "path=/"] {
        assert!(attrs.iter().any(|a| a == want), "{want} missing: {c}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain")),
        "__Host- cookies have no Domain: {c}"
    );
    value.to_string()
}

/// `GET /api/auth/me` with exactly this cookie value (no jar).
fn me_with_cookie(s: &Server, value: &str) -> latchkey_e2e::Resp {
    s.request(
        "GET",
        "/api/auth/me",
        &[&format!("Cookie: __Host-latchkey_session={value}")],
        None,
    )
}

fn decode_qr_png(s: &Server, b64: &str) -> String {
    let png = s.work_dir().join("enroll-qr.png");
    let mut c = Command::new("openssl");
    c.args(["base64", "-d", "-A", "-out"]).arg(&png);
    let out = run_cmd(c, b64.as_bytes());
    assert!(out.status.success(), "base64: {}", out.stderr);
    let head = std::fs::read(&png).expect("png");
    assert!(head.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let mut c = Command::new("zbarimg");
    c.args(["--raw", "-q"]).arg(&png);
    let out = run_cmd(c, b"");
    assert!(
        out.status.success(),
        "zbarimg found no QR code: {}",
        out.stderr
    );
    out.stdout.trim_end_matches('\n').to_string()
}

fn audit_actions(b: &Browser<'_>, query: &str) -> Vec<serde_json::Value> {
    let r = b.get(&format!("/api/audit?{query}"));
    assert_eq!(r.status, 200, "audit: {}", r.body);
    r.json()["events"].as_array().expect("events").clone()
}

#[test]
fn web_setup_login_mfa_tokens_refresh_reuse_and_logout() {
    let d = TestDir::new();
    let s = spawn_server(&d, &ServeOpts::new().config(&auth_config("")));
    let mut secrets = Secrets::default();
    secrets.add("password", PASSWORD);

    let r = s.get("/api/setup");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["needed"], true);
    let token = setup_token(&s);
    secrets.add("setup token", &token);

    // The setup API refuses everything without the token.
    let b = Browser::new(&s);
    for bad in ["", "lks_0000", &format!("{token}x")] {
        let r = b.post(
            "/api/setup/begin",
            &serde_json::json!({"token": bad, "username": "owner", "password": PASSWORD}),
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "invalid_setup_token"),
            "{bad:?}"
        );
    }

    let r = b.post(
        "/api/setup/begin",
        &serde_json::json!({"token": token, "username": "owner", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let uri = v["otpauth_uri"].as_str().expect("otpauth_uri").to_string();
    secrets.add("otpauth URI", &uri);
    let secret = totp_secret(&uri);
    secrets.add("TOTP secret", &secret);
    assert!(
        secret.len() >= 32
            && secret
                .bytes()
                .all(|c| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567=".contains(&c)),
        "base32, ≥ 160 bits: {} characters",
        secret.len()
    );
    // What Google Authenticator, Authy and Microsoft Authenticator expect.
    assert!(uri.starts_with("otpauth://totp/"), "scheme/type");
    let label = uri["otpauth://totp/".len()..]
        .split('?')
        .next()
        .expect("label");
    assert!(
        label == "Latchkey:owner" || label == "Latchkey%3Aowner",
        "label: {label}"
    );
    for (k, want) in [
        ("issuer", "Latchkey"),
        ("algorithm", "SHA1"),
        ("digits", "6"),
        ("period", "30"),
    ] {
        assert_eq!(uri_param(&uri, k).as_deref(), Some(want), "{k}");
    }
    // The QR code a phone scans is exactly that URI.
    let scanned = decode_qr_png(&s, v["qr_png_base64"].as_str().expect("png"));
    assert_eq!(scanned, uri, "the PNG QR code encodes the otpauth URI");
    let svg = v["qr_svg"].as_str().expect("svg");
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "SVG");

    // The account is not active before a valid code confirms it.
    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": PASSWORD}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "invalid_credentials")
    );
    assert_eq!(s.get("/api/setup").json()["needed"], true);

    let totp = Authenticator::new(&uri);
    let stale = latchkey_e2e::totp_code_at(&uri, now() - 120);
    let r = b.post(
        "/api/setup/confirm",
        &serde_json::json!({"token": token, "username": "owner", "code": stale}),
    );
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_code"));
    let msg = r.json()["message"].as_str().expect("message").to_string();
    assert!(
        msg.contains(&year()) && msg.contains("clock"),
        "a rejected code tells the server's time: {msg}"
    );

    let r = b.post(
        "/api/setup/confirm",
        &serde_json::json!({"token": token, "username": "owner", "code": totp.code()}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let first_cookie = cookie_of(&r);
    secrets.add("session cookie", &first_cookie);
    let v = r.json();
    assert_eq!(v["user"]["username"], "owner");
    assert_eq!(v["user"]["role"], "admin");
    let codes: Vec<String> = v["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().expect("string").to_string())
        .collect();
    assert_eq!(codes.len(), 10, "{codes:?}");
    let mut unique = codes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "distinct codes");
    for c in &codes {
        secrets.add("recovery code", c);
    }
    assert_eq!(
        b.cookie().as_deref(),
        Some(first_cookie.as_str()),
        "curl kept the __Host- cookie"
    );
    assert_eq!(s.get("/api/setup").json()["needed"], false);

    // The setup link is single use.
    for (path, body) in [
        (
            "/api/setup/begin",
            serde_json::json!({"token": token, "username": "owner2", "password": PASSWORD}),
        ),
        (
            "/api/setup/confirm",
            serde_json::json!({"token": token, "username": "owner", "code": totp_now(&uri)}),
        ),
    ] {
        let r = s.anon("POST", path, Some(&body));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "invalid_setup_token"),
            "{path}: {}",
            r.body
        );
    }

    // Signed in by setup.
    let me = b.get("/api/auth/me");
    assert_eq!(me.status, 200, "{}", me.body);
    let me = me.json();
    assert_eq!(
        (&me["username"], &me["role"], &me["mfa_enabled"], &me["via"]),
        (
            &serde_json::json!("owner"),
            &serde_json::json!("admin"),
            &serde_json::json!(true),
            &serde_json::json!("session")
        )
    );
    // Where agents reach this server, for the UI's examples: the origin
    // this request was sent to (no `server.public_url` here).
    let base = me["base_url"].as_str().unwrap_or_default();
    assert!(
        base.starts_with("https://") && base.ends_with(&format!(":{}", s.port)),
        "base_url {base:?}"
    );

    // Logout takes effect on the very next request, even for a client
    // that keeps the cookie.
    let r = b.call("POST", "/api/auth/logout", None);
    assert!(r.status == 204 || r.status == 200, "{}", r.body);
    let r = me_with_cookie(&s, &first_cookie);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "unauthenticated")
    );
    assert_eq!(b.get("/api/auth/me").status, 401);

    // Login: password, then a TOTP code from oathtool.
    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["mfa_required"], true);
    assert!(
        r.header("set-cookie").is_none(),
        "no session before the second factor"
    );
    let ticket = v["ticket"].as_str().expect("ticket").to_string();
    secrets.add("MFA ticket", &ticket);
    let r = b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, "code": totp.code()}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["user"]["username"], "owner");
    let cookie = cookie_of(&r);
    secrets.add("session cookie", &cookie);
    assert_ne!(cookie, first_cookie);
    assert_eq!(b.get("/api/auth/me").json()["username"], "owner");
    // The ticket is spent.
    let r = b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, "code": totp_now(&uri)}),
    );
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_ticket"));

    // Session → access + refresh token.
    let r = b.call("POST", "/api/auth/token", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let t1 = r.json();
    let (a1, r1) = (
        t1["access_token"].as_str().expect("access").to_string(),
        t1["refresh_token"].as_str().expect("refresh").to_string(),
    );
    secrets.add("access token", &a1);
    secrets.add("refresh token", &r1);
    let ttl = t1["expires_in"].as_i64().expect("expires_in");
    assert!(
        (1..=900).contains(&ttl),
        "access tokens live ≤ 15 min: {ttl}"
    );
    assert_eq!(t1["token_type"], "Bearer");
    let me = s.bearer(&a1, "GET", "/api/auth/me", None);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["via"], "access_token");
    assert_eq!(me.json()["username"], "owner");

    // Rotation: a new pair; the old access token of the family still works
    // until it expires, the old refresh token is spent.
    let refresh = |rt: &str| {
        s.anon(
            "POST",
            "/api/auth/refresh",
            Some(&serde_json::json!({"refresh_token": rt})),
        )
    };
    let r = refresh(&r1);
    assert_eq!(r.status, 200, "{}", r.body);
    let t2 = r.json();
    let (a2, r2) = (
        t2["access_token"].as_str().expect("access").to_string(),
        t2["refresh_token"].as_str().expect("refresh").to_string(),
    );
    secrets.add("access token", &a2);
    secrets.add("refresh token", &r2);
    assert_ne!(r2, r1);
    assert_ne!(a2, a1);
    assert_eq!(s.bearer(&a2, "GET", "/api/auth/me", None).status, 200);

    // Reuse of the spent refresh token: 401 token_reused, the whole family
    // is dead, and it is a security event in the audit log.
    let r = refresh(&r1);
    assert_eq!((r.status, r.error_code().as_str()), (401, "token_reused"));
    for a in [&a1, &a2] {
        let r = s.bearer(a, "GET", "/api/auth/me", None);
        assert_eq!(r.status, 401, "family access token still works: {}", r.body);
    }
    let r = refresh(&r2);
    assert_eq!(
        r.status, 401,
        "the family's newest refresh token is dead too"
    );
    let events = audit_actions(&b, "action=token.reuse");
    assert!(
        events.iter().any(|e| e["action"] == "token.reuse"
            && e["outcome"] == "failure"
            && e["actor"] == "owner"),
        "token reuse not audited: {events:?}"
    );
    // The browser session that issued the family is unaffected.
    assert_eq!(b.get("/api/auth/me").status, 200);

    // Logging out ends the session and the tokens issued from it.
    let r = b.call("POST", "/api/auth/token", None);
    let a3 = r.json()["access_token"]
        .as_str()
        .expect("access")
        .to_string();
    let r3 = r.json()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    secrets.add("access token", &a3);
    secrets.add("refresh token", &r3);
    let r = b.call("POST", "/api/auth/logout", None);
    assert!(r.status == 204 || r.status == 200, "{}", r.body);
    assert_eq!(me_with_cookie(&s, &cookie).status, 401);
    assert_eq!(s.bearer(&a3, "GET", "/api/auth/me", None).status, 401);
    assert_eq!(refresh(&r3).status, 401);

    // Audit trail of the flow, without secrets.
    let b2 = Browser::new(&s);
    b2.login("owner", PASSWORD, Some(&totp));
    let all = b2.get("/api/audit?limit=500");
    assert_eq!(all.status, 200);
    for action in ["setup.complete", "login", "logout", "token.reuse"] {
        assert!(
            all.json()["events"]
                .as_array()
                .expect("events")
                .iter()
                .any(|e| e["action"] == action),
            "no {action} in the audit log"
        );
    }
    secrets.absent_from("the audit log", &all.body);
    secrets.absent_from_server(&s);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn year() -> String {
    // Good for this century: the server names its time in RFC 3339.
    let days = now() / 86400;
    let mut y = 1970;
    let mut left = days;
    loop {
        let len = if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
            366
        } else {
            365
        };
        if left < len {
            return y.to_string();
        }
        left -= len;
        y += 1;
    }
}

/// The current code, without marking anything (for requests that must be
/// refused before the code matters).
fn totp_now(uri: &str) -> String {
    latchkey_e2e::totp_code(uri)
}

/// `latchkey setup … --json` output checked; returns `(uri, codes)`.
fn check_setup_json(stdout: &str, username: &str) -> (String, Vec<String>) {
    let v: serde_json::Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("setup --json ({e}): {stdout}"));
    assert_eq!(v["username"], username);
    let uri = v["otpauth_uri"].as_str().expect("otpauth_uri").to_string();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert_eq!(uri_param(&uri, "issuer").as_deref(), Some("Latchkey"));
    assert!(v["qr_svg"].as_str().is_some_and(|s| s.contains("<svg")));
    let codes: Vec<String> = v["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().expect("string").to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    (uri, codes)
}

#[test]
fn cli_setup_on_a_fresh_data_dir_then_login_with_oathtool() {
    let d = TestDir::new();
    d.write_config(&auth_config(""));
    let pw = format!("{PASSWORD}\n");
    let out = d.ok(
        &["setup", "--username", "owner", "--password-stdin", "--json"],
        pw.as_bytes(),
    );
    assert!(!out.stderr.contains(PASSWORD), "password echoed");
    let (uri, codes) = check_setup_json(&out.stdout, "owner");
    let mut secrets = Secrets::default();
    secrets.add("password", PASSWORD);
    secrets.add("TOTP secret", &totp_secret(&uri));
    for c in &codes {
        secrets.add("recovery code", c);
    }
    secrets.absent_from("setup's stderr", &out.stderr);

    // Only one owner.
    let err = d.fails(
        &["setup", "--username", "other", "--password-stdin", "--json"],
        pw.as_bytes(),
    );
    assert!(err.contains("owner") || err.contains("already"), "{err}");

    let s = spawn_server(&d, &ServeOpts::new().config(&auth_config("")));
    assert!(
        !s.stdout().contains("/setup#token="),
        "no setup link once an owner exists:\n{}",
        s.stdout()
    );
    assert_eq!(s.get("/api/setup").json()["needed"], false);
    let totp = Authenticator::new(&uri);
    let b = Browser::new(&s);
    let r = b.login("owner", PASSWORD, Some(&totp));
    secrets.add("session cookie", &b.cookie().expect("cookie"));
    assert_eq!(r.json()["user"]["role"], "admin");
    let me = b.get("/api/auth/me").json();
    assert_eq!(
        (&me["username"], &me["mfa_enabled"]),
        (&serde_json::json!("owner"), &serde_json::json!(true))
    );

    // A recovery code signs in once instead of a TOTP code.
    let b2 = Browser::new(&s);
    let r = b2.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": PASSWORD}),
    );
    let ticket = r.json()["ticket"].as_str().expect("ticket").to_string();
    let r = b2.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, "recovery_code": codes[3]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b2.get("/api/auth/me").status, 200);
    secrets.absent_from_server(&s);
}

#[test]
fn cli_setup_against_a_running_server() {
    let d = TestDir::new();
    let s = spawn_server(&d, &ServeOpts::new().config(&auth_config("")));
    let token = setup_token(&s);
    let pw = format!("{PASSWORD}\n");
    let out = d.ok(
        &["setup", "--username", "owner", "--password-stdin", "--json"],
        pw.as_bytes(),
    );
    let (uri, codes) = check_setup_json(&out.stdout, "owner");
    assert_eq!(s.get("/api/setup").json()["needed"], false);

    // The banner's link no longer creates anything.
    let r = s.anon(
        "POST",
        "/api/setup/begin",
        Some(&serde_json::json!({"token": token, "username": "intruder", "password": PASSWORD})),
    );
    assert_eq!(r.status, 403, "{}", r.body);

    let totp = Authenticator::new(&uri);
    let b = Browser::new(&s);
    b.login("owner", PASSWORD, Some(&totp));
    assert_eq!(b.get("/api/auth/me").json()["role"], "admin");

    // Host tools: the user list, and the audit log from the terminal.
    let list = d.ok(&["user", "list"], b"");
    assert!(list.stdout.contains("owner"), "{}", list.stdout);
    let tail = d.ok(&["audit", "tail", "-n", "50", "--json"], b"");
    assert!(tail.stdout.contains("setup.complete"), "{}", tail.stdout);
    assert!(tail.stdout.contains("login"), "{}", tail.stdout);

    // Last resort for a lost authenticator: reset-mfa on the host, audited;
    // the user signs in with the password alone and enrolls again.
    d.ok(&["user", "reset-mfa", "owner"], b"");
    assert_eq!(b.get("/api/auth/me").status, 401, "reset-mfa ends sessions");
    let b2 = Browser::new(&s);
    let r = b2.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let tail = d.ok(&["audit", "tail", "-n", "50"], b"");
    assert!(tail.stdout.contains("mfa.reset"), "{}", tail.stdout);

    let mut secrets = Secrets::default();
    secrets.add("password", PASSWORD);
    secrets.add("TOTP secret", &totp_secret(&uri));
    for c in &codes {
        secrets.add("recovery code", c);
    }
    secrets.absent_from("audit tail", &tail.stdout);
    secrets.absent_from_server(&s);
}
