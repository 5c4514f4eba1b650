//! Issue #19, items 5, 7, 10, 12 and 18 against the real binary: single-use
//! things consumed by concurrent requests (threads released together, each
//! its own curl), invites that a refused request does not burn, audit
//! fields capped and cleaned and the CLI escaping what it prints, and
//! lockout per (account, source) so an attacker elsewhere cannot lock the
//! owner out.

use latchkey_e2e::race::at_once;
use latchkey_e2e::{
    Browser, PASSWORD, Resp, ServeOpts, Server, TestDir, auth_config, spawn_server, web_setup,
};

fn serve(d: &TestDir, auth_extra: &str) -> Server {
    spawn_server(d, &ServeOpts::new().config(&auth_config(auth_extra)))
}

fn statuses(rs: &[Resp]) -> Vec<(u16, String)> {
    rs.iter()
        .map(|r| {
            let code = if r.status < 300 {
                String::new()
            } else {
                r.error_code()
            };
            (r.status, code)
        })
        .collect()
}

fn successes(rs: &[Resp]) -> usize {
    rs.iter().filter(|r| r.status == 200).count()
}

/// A password-verified login step for `username` in a fresh browser.
fn ticket<'a>(s: &'a Server, username: &str) -> (Browser<'a>, String) {
    let b = Browser::new(s);
    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": username, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json()["ticket"].as_str().expect("ticket").to_string();
    (b, t)
}

fn mfa(b: &Browser<'_>, ticket: &str, field: &str, code: &str) -> Resp {
    b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, field: code}),
    )
}

#[test]
fn one_totp_code_on_three_tickets_at_once_gives_one_session() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    for round in 0..2 {
        let tickets: Vec<_> = (0..3).map(|_| ticket(&s, "owner")).collect();
        let code = owner.totp.code();
        let rs = at_once(3, |i| mfa(&tickets[i].0, &tickets[i].1, "code", &code));
        assert_eq!(successes(&rs), 1, "round {round}: {:?}", statuses(&rs));
        for r in rs.iter().filter(|r| r.status != 200) {
            assert_eq!(r.status, 401, "{}", r.body);
        }
        let signed_in = tickets
            .iter()
            .filter(|(b, _)| b.get("/api/auth/me").status == 200)
            .count();
        assert_eq!(signed_in, 1, "round {round}");
    }
}

#[test]
fn one_recovery_code_on_six_tickets_at_once_gives_one_session() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let code = owner.recovery_codes[0].clone();
    let tickets: Vec<_> = (0..6).map(|_| ticket(&s, "owner")).collect();
    let rs = at_once(6, |i| {
        mfa(&tickets[i].0, &tickets[i].1, "recovery_code", &code)
    });
    assert_eq!(successes(&rs), 1, "{:?}", statuses(&rs));
    let me = owner.browser.get("/api/auth/me").json();
    assert_eq!(me["recovery_codes_left"], 9, "{me}");
}

#[test]
fn two_recovery_codes_at_once_are_both_spent() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let codes = [
        owner.recovery_codes[1].clone(),
        owner.recovery_codes[2].clone(),
        owner.recovery_codes[3].clone(),
    ];
    let tickets: Vec<_> = (0..3).map(|_| ticket(&s, "owner")).collect();
    let rs = at_once(3, |i| {
        mfa(&tickets[i].0, &tickets[i].1, "recovery_code", &codes[i])
    });
    assert_eq!(successes(&rs), 3, "{:?}", statuses(&rs));
    let me = owner.browser.get("/api/auth/me").json();
    assert_eq!(me["recovery_codes_left"], 7, "no lost update: {me}");
    // None of them works again later.
    for c in &codes {
        let (b, t) = ticket(&s, "owner");
        let r = mfa(&b, &t, "recovery_code", c);
        assert_eq!((r.status, r.error_code()), (401, "invalid_code".into()));
    }
}

#[test]
fn one_ticket_used_twice_at_once_gives_one_session() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let (b, t) = ticket(&s, "owner");
    let code = owner.totp.code();
    let rc = owner.recovery_codes[4].clone();
    let rs = at_once(2, |i| {
        if i == 0 {
            mfa(&b, &t, "code", &code)
        } else {
            mfa(&b, &t, "recovery_code", &rc)
        }
    });
    assert_eq!(successes(&rs), 1, "{:?}", statuses(&rs));
}

#[test]
fn one_totp_code_for_reauth_from_two_sessions_at_once_counts_once() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let other = Browser::new(&s);
    other.login("owner", PASSWORD, Some(&owner.totp));
    for round in 0..2 {
        let code = owner.totp.code();
        let browsers = [&owner.browser, &other];
        let rs = at_once(2, |i| {
            browsers[i].post("/api/auth/reauth", &serde_json::json!({"code": code}))
        });
        let ok = rs.iter().filter(|r| r.status == 204).count();
        assert_eq!(ok, 1, "round {round}: {:?}", statuses(&rs));
    }
}

#[test]
fn one_refresh_token_presented_at_once_rotates_once() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let r = owner
        .browser
        .post("/api/auth/token", &serde_json::json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let refresh = r.json()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let body = serde_json::json!({ "refresh_token": refresh });
    let rs = at_once(3, |_| s.anon("POST", "/api/auth/refresh", Some(&body)));
    assert!(successes(&rs) <= 1, "{:?}", statuses(&rs));
    for r in rs.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 401, "{}", r.body);
    }
}

#[test]
fn setup_confirmed_twice_at_once_activates_one_owner() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let token = latchkey_e2e::setup_token(&s);
    let b = Browser::new(&s);
    let r = b.post(
        "/api/setup/begin",
        &serde_json::json!({"token": token, "username": "owner", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let uri = r.json()["otpauth_uri"].as_str().expect("uri").to_string();
    let code = latchkey_e2e::Authenticator::new(&uri).code();
    let browsers: Vec<Browser<'_>> = (0..6).map(|_| Browser::new(&s)).collect();
    let body = serde_json::json!({"token": token, "username": "owner", "code": code});
    let rs = at_once(6, |i| browsers[i].post("/api/setup/confirm", &body));
    assert_eq!(successes(&rs), 1, "{:?}", statuses(&rs));
    let with_codes = rs
        .iter()
        .filter(|r| r.status == 200 && r.json()["recovery_codes"].is_array())
        .count();
    assert_eq!(with_codes, 1);
}

fn invite(admin: &Browser<'_>, extra: serde_json::Value) -> Resp {
    let mut body = serde_json::json!({"role": "user"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    admin.post("/api/users/invites", &body)
}

fn accept(s: &Server, token: &str, username: &str, password: &str) -> Resp {
    s.anon(
        "POST",
        "/api/invites/accept",
        Some(&serde_json::json!({"token": token, "username": username, "password": password})),
    )
}

#[test]
fn an_invite_survives_a_refused_acceptance_and_is_used_once_under_concurrency() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    let r = invite(&owner.browser, serde_json::json!({}));
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().expect("token").to_string();
    // A taken name (in another case), a bad name, a weak password: refused
    // without burning the invite.
    let r = accept(&s, &token, "OWNER", PASSWORD);
    assert_eq!((r.status, r.error_code()), (409, "username_taken".into()));
    let r = accept(&s, &token, "-x", PASSWORD);
    assert_eq!((r.status, r.error_code()), (400, "invalid_field".into()));
    let r = accept(&s, &token, "alice", "password");
    assert_eq!((r.status, r.error_code()), (400, "invalid_field".into()));
    // Three different names at once: one user.
    let rs = at_once(3, |i| accept(&s, &token, &format!("user{i}"), PASSWORD));
    let created = rs.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "{:?}", statuses(&rs));
    for r in rs.iter().filter(|r| r.status != 201) {
        assert_eq!((r.status, r.error_code()), (403, "invalid_invite".into()));
    }
    let users = owner.browser.get("/api/users").json();
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
}

#[test]
fn invite_lifetimes_out_of_range_are_refused_naming_the_field() {
    let d = TestDir::new();
    let s = serve(&d, "");
    let owner = web_setup(&s, "owner");
    for secs in [
        serde_json::json!(0),
        serde_json::json!(30 * 86400 + 1),
        serde_json::json!(i64::MAX - 5),
        serde_json::json!(u64::MAX),
    ] {
        let r = invite(
            &owner.browser,
            serde_json::json!({ "expires_in_secs": secs }),
        );
        assert_eq!(
            (r.status, r.error_code()),
            (400, "invalid_field".into()),
            "{secs}: {}",
            r.body
        );
        assert!(r.body.contains("expires_in_secs"), "{}", r.body);
    }
    let r = invite(
        &owner.browser,
        serde_json::json!({ "expires_in_secs": 30 * 86400 }),
    );
    assert_eq!(r.status, 201, "the maximum is allowed: {}", r.body);
    assert_eq!(s.get("/health").status, 200, "the server is still up");
}

/// Characters that act on a terminal.
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || ('\u{202A}'..='\u{202E}').contains(&c)
}

#[test]
fn failed_sign_in_names_are_stored_capped_and_clean_and_audit_tail_escapes() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let forged = "x\n     1  2026-01-01T00:00:00Z  success  login                owner    \
                  \x1b[2K\r\u{202E}";
    let long = format!("{forged}{}", "a".repeat(200_000));
    for name in [forged.to_string(), long] {
        let r = s.anon(
            "POST",
            "/api/auth/login",
            Some(&serde_json::json!({"username": name, "password": "Tangerine-000000"})),
        );
        assert_eq!(r.status, 401, "{}", &r.body[..r.body.len().min(200)]);
    }
    let page = owner
        .browser
        .get("/api/audit?action=login&outcome=failure")
        .json();
    let events = page["events"].as_array().expect("events").clone();
    assert!(events.len() >= 2, "{page}");
    for e in &events {
        let actor = e["actor"].as_str().expect("actor");
        assert!(actor.chars().count() <= 128, "{} chars", actor.len());
        assert!(!actor.chars().any(acts_on_terminal), "{actor:?}");
    }
    // The CLI (through the running server) prints one line per entry, with
    // nothing a terminal would act on.
    let out = d.ok(&["audit", "tail", "--lines", "100"], b"");
    assert!(!out.stdout.contains('\x1b') && !out.stdout.contains('\r'));
    assert!(!out.stdout.chars().any(|c| c != '\n' && acts_on_terminal(c)));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.trim_start().starts_with("1  2026-01-01")),
        "a forged line: {}",
        out.stdout
    );
    let json = d.ok(&["audit", "tail", "--lines", "100", "--json"], b"");
    assert_eq!(json.stdout.lines().count(), out.stdout.lines().count());
}

/// `POST /api/auth/login` as a client at `ip` (the server trusts
/// `X-Forwarded-For` from 127.0.0.1 in these tests).
fn login_from(b: &Browser<'_>, ip: &str, password: &str) -> Resp {
    let xff = format!("X-Forwarded-For: {ip}");
    let body = serde_json::json!({"username": "owner", "password": password}).to_string();
    b.call_with("POST", "/api/auth/login", &[&xff], Some(&body))
}

#[test]
fn an_attacker_locks_only_their_own_source_out() {
    let d = TestDir::new();
    let s = serve(&d, "trusted_proxies = [\"127.0.0.1\"]\n");
    let owner = web_setup(&s, "owner");
    let attacker = Browser::new(&s);
    for i in 0..12 {
        let r = login_from(&attacker, "203.0.113.77", "Tangerine-Lighthouse-Quartz-000");
        let want = if i < 5 { 401 } else { 429 };
        assert_eq!(r.status, want, "attempt {i}: {}", r.body);
    }
    // The attacker stays locked out, even with the right password…
    let r = login_from(&attacker, "203.0.113.77", PASSWORD);
    assert_eq!((r.status, r.error_code()), (429, "account_locked".into()));
    assert!(r.header("retry-after").is_some());
    // …while the owner, elsewhere, signs in all the way.
    let b = Browser::new(&s);
    let r = login_from(&b, "198.51.100.20", PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json()["ticket"].as_str().expect("ticket").to_string();
    let xff = "X-Forwarded-For: 198.51.100.20";
    let body = serde_json::json!({"ticket": t, "code": owner.totp.code()}).to_string();
    let r = b.call_with("POST", "/api/auth/mfa", &[xff], Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b.get("/api/auth/me").status, 200);
    let audit = b.get("/api/audit?action=lockout").json();
    let ips: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["ip"].as_str())
        .collect();
    assert!(ips.contains(&"203.0.113.77"), "{audit}");
}

#[test]
fn one_enrollment_confirmed_twice_at_once_enrolls_once_and_keeps_the_factor() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 50\n");
    let owner = web_setup(&s, "owner");
    let other = Browser::new(&s);
    other.login("owner", PASSWORD, Some(&owner.totp));
    let r = owner.browser.post(
        "/api/auth/reauth",
        &serde_json::json!({"code": owner.totp.code()}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = owner
        .browser
        .post("/api/account/totp", &serde_json::json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let new = latchkey_e2e::Authenticator::new(r.json()["otpauth_uri"].as_str().expect("uri"));
    let code = new.code();
    let browsers = [&owner.browser, &other];
    let rs = at_once(2, |i| {
        browsers[i].post(
            "/api/account/totp/confirm",
            &serde_json::json!({"code": code}),
        )
    });
    assert_eq!(successes(&rs), 1, "{:?}", statuses(&rs));
    // The second factor is still on, and it is the new one. Re-enrolment
    // ends every *other* sign-in of the account, so ask the winner.
    let winner = rs
        .iter()
        .position(|r| r.status == 200)
        .expect("one success");
    let me = browsers[winner].get("/api/auth/me").json();
    assert_eq!(me["mfa_enabled"], true, "{me}");
    assert_eq!(
        browsers[1 - winner].get("/api/auth/me").status,
        401,
        "the loser's session is another sign-in: it ends with the re-enrolment"
    );
    let b = Browser::new(&s);
    b.login("owner", PASSWORD, Some(&new));
}

#[test]
fn a_known_device_signs_in_while_guessing_from_many_addresses_is_slowed() {
    let d = TestDir::new();
    let s = serve(&d, "trusted_proxies = [\"127.0.0.1\"]\n");
    let owner = web_setup(&s, "owner");
    // Setup signed this browser in: it holds the known-device cookie.
    let jar = std::fs::read_to_string(
        s.work_dir()
            .read_dir()
            .expect("work dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_to_string(p).is_ok_and(|t| t.contains("__Host-latchkey_device"))
            })
            .expect("a jar with the device cookie"),
    )
    .expect("jar");
    assert!(jar.contains("__Host-latchkey_device"));
    // Ten addresses, five failures each: the account-wide ceiling.
    let attacker = Browser::new(&s);
    for n in 0..10 {
        for _ in 0..5 {
            let r = login_from(&attacker, &format!("203.0.113.{n}"), "Tangerine-Quartz-000");
            assert_eq!(r.status, 401, "{}", r.body);
        }
    }
    // A new address is slowed (one attempt per interval), not served now…
    let fresh = Browser::new(&s);
    let r = login_from(&fresh, "198.51.100.30", PASSWORD);
    assert_eq!((r.status, r.error_code()), (429, "account_locked".into()));
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=180).contains(&wait), "slowed, not locked: {wait}");
    // …a forged device cookie changes nothing…
    let r = fresh.call_with(
        "POST",
        "/api/auth/login",
        &[
            "X-Forwarded-For: 198.51.100.30",
            "Cookie: __Host-latchkey_device=v1.00000000000000000000000000000000.1.00",
        ],
        Some(&serde_json::json!({"username": "owner", "password": PASSWORD}).to_string()),
    );
    assert_eq!(r.status, 429, "{}", r.body);
    // …while the owner's known browser signs in, even from a locked address.
    let r = login_from(&owner.browser, "203.0.113.0", PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json()["ticket"].as_str().expect("ticket").to_string();
    let body = serde_json::json!({"ticket": t, "code": owner.totp.code()}).to_string();
    let r = owner.browser.call_with(
        "POST",
        "/api/auth/mfa",
        &["X-Forwarded-For: 203.0.113.0"],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
