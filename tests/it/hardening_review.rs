//! Issue #19, second review, against the real binary with real parallel
//! requests: sign-ins in progress do not survive the account event that
//! should end them (a password change, new recovery codes), and the
//! lockout counts an attempt before verifying it, so parallel guesses get
//! no more evaluations than sequential ones and the account-wide throttle
//! never makes anyone wait more than one interval.

use latchkey_e2e::race::at_once;
use latchkey_e2e::{
    Browser, PASSWORD, Resp, ServeOpts, Server, TestDir, auth_config, invited, spawn_server,
    web_setup,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn serve(d: &TestDir, auth_extra: &str) -> Server {
    spawn_server(d, &ServeOpts::new().config(&auth_config(auth_extra)))
}

fn login_body(username: &str, password: &str) -> String {
    serde_json::json!({"username": username, "password": password}).to_string()
}

/// `POST /api/auth/login` as a client at `ip` (the server trusts
/// `X-Forwarded-For` from 127.0.0.1 in these tests).
fn login_from(b: &Browser<'_>, ip: &str, password: &str) -> Resp {
    let xff = format!("X-Forwarded-For: {ip}");
    b.call_with(
        "POST",
        "/api/auth/login",
        &[&xff],
        Some(&login_body("owner", password)),
    )
}

#[test]
fn sign_ins_with_the_old_password_in_progress_do_not_survive_a_password_change() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 100000\n");
    let owner = web_setup(&s, "owner");
    let bob = invited(&s, &owner.browser, "bob", "user");
    let passwords = [
        PASSWORD,
        "Marigold-Harbour-Velvet-902",
        "Juniper-Cascade-Lantern-318",
        "Obsidian-Meadow-Trumpet-655",
    ];
    let mut started_before = 0;
    for round in 0..3 {
        let (old, new) = (passwords[round], passwords[round + 1]);
        let changed = AtomicBool::new(false);
        // Attackers holding the old password sign in over and over while
        // bob changes it; each attempt in a browser of its own.
        let attempts: Vec<Vec<(Browser<'_>, u16)>> = std::thread::scope(|sc| {
            let attackers: Vec<_> = (0..4)
                .map(|_| {
                    let (s, changed) = (&s, &changed);
                    sc.spawn(move || {
                        let mut out = Vec::new();
                        // A few attempts after the change answered, for
                        // the ones that started just before it.
                        let mut after = 0;
                        while after < 3 && out.len() < 60 {
                            if changed.load(Ordering::SeqCst) {
                                after += 1;
                            }
                            let b = Browser::new(s);
                            let r =
                                b.call("POST", "/api/auth/login", Some(&login_body("bob", old)));
                            out.push((b, r.status));
                        }
                        out
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(400));
            let r = bob.post(
                "/api/account/password",
                &serde_json::json!({"current_password": old, "new_password": new}),
            );
            assert_eq!(r.status, 204, "{}", r.body);
            changed.store(true, Ordering::SeqCst);
            attackers
                .into_iter()
                .map(|h| h.join().expect("attacker"))
                .collect()
        });
        for (b, status) in attempts.iter().flatten() {
            assert!(matches!(status, 200 | 401), "{status}");
            if *status == 200 {
                started_before += 1;
                assert_eq!(
                    b.get("/api/auth/me").status,
                    401,
                    "round {round}: a sign-in with the old password outlived the change"
                );
            }
        }
        // The legitimate side: bob's own session stays, the new password works.
        assert_eq!(bob.get("/api/auth/me").status, 200);
        Browser::new(&s).login("bob", new, None);
    }
    assert!(started_before > 0, "no attempt overlapped the changes");
}

#[test]
fn recovery_codes_in_flight_do_not_survive_their_regeneration() {
    let d = TestDir::new();
    let s = serve(&d, "lockout_threshold = 100000\n");
    let owner = web_setup(&s, "owner");
    let mut codes = owner.recovery_codes.clone();
    for round in 0..2 {
        assert!(codes.len() >= 8, "{codes:?}");
        // Eight password steps, then their recovery codes all at once with
        // the regeneration.
        let tickets: Vec<(Browser<'_>, String)> = (0..8)
            .map(|_| {
                let b = Browser::new(&s);
                let r = b.call(
                    "POST",
                    "/api/auth/login",
                    Some(&login_body("owner", PASSWORD)),
                );
                assert_eq!(r.status, 200, "{}", r.body);
                let t = r.json()["ticket"].as_str().expect("ticket").to_string();
                (b, t)
            })
            .collect();
        let rs = at_once(9, |i| match tickets.get(i) {
            Some((b, t)) => b.post(
                "/api/auth/mfa",
                &serde_json::json!({"ticket": t, "recovery_code": codes[i]}),
            ),
            None => owner
                .browser
                .call("POST", "/api/account/recovery-codes", None),
        });
        let regen = &rs[8];
        assert_eq!(regen.status, 200, "{}", regen.body);
        for (i, r) in rs[..8].iter().enumerate() {
            assert!(matches!(r.status, 200 | 401), "{}: {}", r.status, r.body);
            // Whether it finished before or during the regeneration, a
            // sign-in made with an old code is over once it answered.
            assert_eq!(
                tickets[i].0.get("/api/auth/me").status,
                401,
                "round {round}: code {i} made a session that outlived new recovery codes"
            );
        }
        assert_eq!(owner.browser.get("/api/auth/me").status, 200);
        codes = regen.json()["recovery_codes"]
            .as_array()
            .expect("codes")
            .iter()
            .map(|c| c.as_str().expect("code").to_string())
            .collect();
    }
    // A new code signs in.
    let b = Browser::new(&s);
    let r = b.call(
        "POST",
        "/api/auth/login",
        Some(&login_body("owner", PASSWORD)),
    );
    let t = r.json()["ticket"].as_str().expect("ticket").to_string();
    let r = b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": t, "recovery_code": codes[0]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b.get("/api/auth/me").status, 200);
}

#[test]
fn parallel_guesses_from_one_source_are_evaluated_no_more_than_the_threshold() {
    let d = TestDir::new();
    let s = serve(&d, "trusted_proxies = [\"127.0.0.1\"]\n");
    let owner = web_setup(&s, "owner");
    let rs = at_once(20, |_| {
        login_from(&Browser::new(&s), "203.0.113.9", "Tangerine-Quartz-000")
    });
    let evaluated = rs.iter().filter(|r| r.status == 401).count();
    let refused = rs
        .iter()
        .filter(|r| r.status == 429 && r.error_code() == "account_locked")
        .count();
    assert_eq!(
        evaluated + refused,
        20,
        "{:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        evaluated <= 5,
        "{evaluated} parallel guesses evaluated (threshold 5)"
    );
    // The locked source stays locked even with the right password; the
    // owner elsewhere signs in.
    let r = login_from(&Browser::new(&s), "203.0.113.9", PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    let b = Browser::new(&s);
    let r = login_from(&b, "198.51.100.21", PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json()["ticket"].as_str().expect("ticket").to_string();
    let body = serde_json::json!({"ticket": t, "code": owner.totp.code()}).to_string();
    let r = b.call_with(
        "POST",
        "/api/auth/mfa",
        &["X-Forwarded-For: 198.51.100.21"],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_distributed_parallel_burst_slows_a_new_source_by_at_most_one_interval() {
    let d = TestDir::new();
    let s = serve(&d, "trusted_proxies = [\"127.0.0.1\"]\n");
    web_setup(&s, "owner");
    // Ten addresses, six parallel guesses each: at most five evaluated
    // per address, fifty in all — the account-wide burst.
    let rs = at_once(60, |i| {
        login_from(
            &Browser::new(&s),
            &format!("203.0.113.{}", i % 10),
            "Tangerine-Quartz-000",
        )
    });
    assert!(rs.iter().all(|r| matches!(r.status, 401 | 429)));
    let evaluated = rs.iter().filter(|r| r.status == 401).count();
    assert!(evaluated <= 50, "{evaluated} evaluated");
    // A new address with the right password: served, or slowed by one
    // interval (3 min by default) at most — never locked for longer.
    let r = login_from(&Browser::new(&s), "198.51.100.30", PASSWORD);
    match r.status {
        200 => {}
        429 => {
            let wait: u64 = r
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .expect("secs");
            assert!((1..=180).contains(&wait), "waited {wait} s: {}", r.body);
        }
        other => panic!("{other}: {}", r.body),
    }
}
