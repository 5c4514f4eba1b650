//! Privilege boundaries (issue #19, items 1, 2, 4 and 19), attacked
//! through the real binary:
//!
//! - the step-up rule: nothing that yields a secret, or a credential that
//!   can, works from a stale session, an access token or a key standing in
//!   for a person (keys, backups, connection tokens, reveals);
//! - a `keys:manage` key never reaches another user's keys;
//! - account events end the credentials they should: a password change,
//!   disabling (also after a restart), promotion and demotion, and refresh
//!   families end with their session and at their absolute lifetime;
//! - the host's admin token cannot mint a key that belongs to nobody.

use latchkey_e2e::{
    Authenticator, Browser, PASSWORD, Resp, ServeOpts, Server, TestDir, auth_config, create_key,
    invited, spawn_server, web_setup,
};
use std::time::Duration;

/// A second password the policy accepts.
const NEW_PASSWORD: &str = "Marmalade-Observatory-Zinc-592";

fn err(r: &Resp) -> (u16, String) {
    (r.status, r.error_code())
}

fn opts(auth_extra: &str) -> ServeOpts {
    ServeOpts::new().config(&auth_config(&format!(
        "lockout_threshold = 1000\n{auth_extra}"
    )))
}

/// The audit entries (newest first) with `action`.
fn audit(s: &Server, action: &str) -> Vec<serde_json::Value> {
    let r = s.api(
        "GET",
        &format!("/api/audit?action={action}&limit=100"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["events"].as_array().expect("events").clone()
}

/// `(access_token, refresh_token)` for a browser's session.
fn token_pair(b: &Browser<'_>) -> (String, String) {
    let r = b.call("POST", "/api/auth/token", None);
    assert_eq!(r.status, 200, "token: {}", r.body);
    let v = r.json();
    (
        v["access_token"].as_str().expect("access").to_string(),
        v["refresh_token"].as_str().expect("refresh").to_string(),
    )
}

fn refresh(s: &Server, refresh_token: &str) -> Resp {
    s.anon(
        "POST",
        "/api/auth/refresh",
        Some(&serde_json::json!({ "refresh_token": refresh_token })),
    )
}

fn me_with(s: &Server, bearer: &str) -> u16 {
    s.bearer(bearer, "GET", "/api/auth/me", None).status
}

fn reauth(b: &Browser<'_>, totp: &Authenticator) {
    let r = b.post(
        "/api/auth/reauth",
        &serde_json::json!({ "code": totp.code() }),
    );
    assert_eq!(r.status, 204, "reauth: {}", r.body);
}

fn key_body(scopes: &[&str]) -> serde_json::Value {
    serde_json::json!({ "name": "attempt", "scopes": scopes })
}

/// Item 1: a stolen session that is no longer fresh, or a 15-minute access
/// token, used to mint a secret-reading key or take a backup under a
/// passphrase of its choosing. Both must fail with `reauth_required`, be
/// audited, and work after a fresh re-authentication.
#[test]
fn step_up_guards_every_path_to_a_secret() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts("reauth_window = \"5s\"\n"));
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let r = b.post(
        "/api/vault",
        &serde_json::json!({"name": "canary", "kind": "generic", "secret": "canary-value-7f3a"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // A key minted while the sign-in is fresh: `admin` needs the step-up.
    let (_, admin_key) = create_key(b, "ops", &["admin"]);
    let (access, _) = token_pair(b);
    std::thread::sleep(Duration::from_secs(6));

    // The session is now stale: every scope that reaches a secret is
    // refused, for the session and for its access token alike.
    let sensitive: [&[&str]; 7] = [
        &["vault:read:*"],
        &["vault:read:canary"],
        &["vault:write:*"],
        &["connections:*"],
        &["admin"],
        &["proxy:*", "vault:read:canary"],
        &["connections:walk"],
    ];
    for scopes in sensitive {
        let r = b.post("/api/keys", &key_body(scopes));
        assert_eq!(
            err(&r),
            (403, "reauth_required".into()),
            "session {scopes:?}: {}",
            r.body
        );
        let r = s.bearer(
            &access,
            "POST",
            "/api/keys",
            Some(&key_body(scopes).to_string()),
        );
        assert_eq!(
            err(&r),
            (403, "reauth_required".into()),
            "token {scopes:?}: {}",
            r.body
        );
    }
    // A key never stands in for a person when minting, not even `admin`.
    let r = s.bearer(
        &admin_key,
        "POST",
        "/api/keys",
        Some(&key_body(&["vault:read:canary"]).to_string()),
    );
    assert_eq!(err(&r), (403, "reauth_required".into()), "{}", r.body);
    // The backup holds every secret under a key the caller picks.
    let backup = r#"{"passphrase":"attacker chosen passphrase"}"#;
    let r = b.call("POST", "/api/backup", Some(backup));
    assert_eq!(err(&r), (403, "reauth_required".into()), "{}", r.body);
    let r = s.bearer(&access, "POST", "/api/backup", Some(backup));
    assert_eq!(err(&r), (403, "reauth_required".into()), "{}", r.body);
    // Reveals and connection tokens follow the same rule.
    let r = b.call("POST", "/api/vault/canary/reveal", None);
    assert_eq!(err(&r), (403, "reauth_required".into()), "{}", r.body);
    let r = s.bearer(&access, "GET", "/api/connections/walk/token", None);
    assert_eq!(err(&r), (403, "reauth_required".into()), "{}", r.body);
    // Nothing was made.
    let listed = b.get("/api/keys").json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // Every refusal is on record.
    let refused = |action: &str| {
        audit(&s, action)
            .iter()
            .filter(|e| e["outcome"] == "failure" && e["detail"] == "reauth_required")
            .count()
    };
    assert!(refused("key.create") >= 15, "key.create refusals audited");
    assert_eq!(refused("backup.create"), 2, "backup refusals audited");
    assert!(refused("vault.reveal") >= 1);
    assert_eq!(refused("connection.token"), 1);

    // What reaches no secret needs no step-up.
    let r = b.post(
        "/api/keys",
        &key_body(&["proxy:*", "agent:*", "keys:manage"]),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // The legitimate path: a fresh factor, then the same requests work.
    reauth(b, &owner.totp);
    let (_, reader) = create_key(b, "reader", &["vault:read:canary"]);
    let r = b.call(
        "POST",
        "/api/backup",
        Some(r#"{"passphrase":"a long backup passphrase"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A key used within its scopes is the grant (it was minted under the
    // rule): no re-authentication for agents.
    let r = s.bearer(&reader, "POST", "/api/vault/canary/reveal", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"], "canary-value-7f3a");
    let r = s.bearer(&admin_key, "POST", "/api/backup", Some(backup));
    assert_eq!(r.status, 200, "{}", r.body);
    // The access token never counts, however fresh the session is.
    let r = s.bearer(&access, "POST", "/api/backup", Some(backup));
    assert_eq!(err(&r), (403, "reauth_required".into()), "{}", r.body);
    // The host (someone at the machine) takes backups as before.
    let r = s.api("POST", "/api/backup", Some(backup));
    assert_eq!(r.status, 200, "{}", r.body);

    // Every backup taken is audited, with who took it and how it is
    // locked (never the passphrase).
    let taken: Vec<_> = audit(&s, "backup.create")
        .into_iter()
        .filter(|e| e["outcome"] == "success")
        .collect();
    assert_eq!(taken.len(), 3, "{taken:?}");
    let actors: Vec<&str> = taken.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert!(actors.contains(&"owner"), "{actors:?}");
    assert!(actors.contains(&"host"), "{actors:?}");
    assert!(
        actors.iter().any(|a| a.starts_with("owner (key ")),
        "{actors:?}"
    );
    let all = s.api("GET", "/api/audit?limit=500", None).body;
    assert!(!all.contains("attacker chosen passphrase"));

    // A new TOTP secret is a secret too: audited when handed out.
    reauth(b, &owner.totp);
    let r = b.call("POST", "/api/account/totp", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(audit(&s, "mfa.enroll_begin").len(), 1);
}

/// Item 2: an admin's `keys:manage` key changes limits on and revokes
/// another user's key. Only the `admin` scope reaches others' keys.
#[test]
fn keys_manage_never_reaches_another_users_keys() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts(""));
    let owner = web_setup(&s, "owner");
    let admin = &owner.browser;
    let user = invited(&s, admin, "ursula", "user");
    let (victim_id, victim) = create_key(&user, "ursula-agent", &["keys:manage"]);
    let (own_id, _) = create_key(admin, "owner-agent", &["proxy:*"]);
    let (_, manager) = create_key(admin, "manager", &["keys:manage"]);

    let limits = r#"{"tokens_per_day":1}"#;
    let r = s.bearer(
        &manager,
        "PUT",
        &format!("/api/keys/{victim_id}/limits"),
        Some(limits),
    );
    assert_eq!(err(&r), (404, "not_found".into()), "{}", r.body);
    let r = s.bearer(&manager, "DELETE", &format!("/api/keys/{victim_id}"), None);
    assert_eq!(err(&r), (404, "not_found".into()), "{}", r.body);
    let r = s.bearer(&manager, "GET", "/api/keys?all=true", None);
    assert_eq!(r.status, 403, "{}", r.body);
    // The victim's key is untouched.
    assert_eq!(me_with(&s, &victim), 200);
    let r = s.bearer(&victim, "GET", "/api/keys", None);
    let listed = r.json();
    assert_eq!(
        listed[0]["limits"]["tokens_per_day"],
        serde_json::Value::Null,
        "{listed}"
    );
    // Nor does the user's own `keys:manage` reach the owner's keys.
    let r = s.bearer(&victim, "DELETE", &format!("/api/keys/{own_id}"), None);
    assert_eq!(err(&r), (404, "not_found".into()));

    // The manager still manages its owner's own keys.
    let r = s.bearer(
        &manager,
        "PUT",
        &format!("/api/keys/{own_id}/limits"),
        Some(limits),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.bearer(&manager, "DELETE", &format!("/api/keys/{own_id}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    // The `admin` scope (an admin's session, an admin's `admin` key)
    // reaches everyone's.
    let (_, admin_key) = create_key(admin, "ops", &["admin"]);
    let r = s.bearer(
        &admin_key,
        "PUT",
        &format!("/api/keys/{victim_id}/limits"),
        Some(limits),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.call("DELETE", &format!("/api/keys/{victim_id}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(me_with(&s, &victim), 401);
}

/// Item 4: a password change ends every other session, every access token
/// and every refresh family of the user; the session that made the change
/// stays. Regenerating recovery codes does the same.
#[test]
fn password_change_ends_every_other_sign_in() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts(""));
    let owner = web_setup(&s, "owner");
    let here = invited(&s, &owner.browser, "ursula", "user");
    // The attacker's copy of the same account: another session, with tokens.
    let there = Browser::new(&s);
    there.login("ursula", PASSWORD, None);
    let (their_access, their_refresh) = token_pair(&there);
    let (my_access, my_refresh) = token_pair(&here);
    let (_, key) = create_key(&here, "agent", &["proxy:*"]);

    let r = here.post(
        "/api/account/password",
        &serde_json::json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    );
    assert_eq!(r.status, 204, "{}", r.body);

    assert_eq!(there.get("/api/auth/me").status, 401, "the other session");
    assert_eq!(me_with(&s, &their_access), 401, "its access token");
    assert_eq!(
        err(&refresh(&s, &their_refresh)).0,
        401,
        "its refresh token"
    );
    assert_eq!(me_with(&s, &my_access), 401, "tokens of this session too");
    assert_eq!(err(&refresh(&s, &my_refresh)).0, 401);
    // The session that changed it stays, and can take new tokens.
    assert_eq!(here.get("/api/auth/me").status, 200);
    let (fresh, _) = token_pair(&here);
    assert_eq!(me_with(&s, &fresh), 200);
    // Keys are separate credentials, listed and revoked on their own.
    assert_eq!(me_with(&s, &key), 200);
    // Only the new password signs in.
    let r = there.post(
        "/api/auth/login",
        &serde_json::json!({"username": "ursula", "password": PASSWORD}),
    );
    assert_eq!(r.status, 401);
    there.login("ursula", NEW_PASSWORD, None);

    // New recovery codes: the old ones may have made a sign-in, which
    // ends with its tokens; this sign-in stays whole, tokens included.
    let (their_access, _) = token_pair(&there);
    let r = here.call("POST", "/api/account/recovery-codes", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        there.get("/api/auth/me").status,
        401,
        "after new recovery codes"
    );
    assert_eq!(me_with(&s, &their_access), 401);
    assert_eq!(here.get("/api/auth/me").status, 200);
    assert_eq!(me_with(&s, &fresh), 200);
}

/// Item 4: refresh families renew themselves only while their session
/// lives, and never past `auth.refresh_absolute_lifetime`; their access
/// tokens end with them.
#[test]
fn refresh_families_end_with_their_session_and_at_their_absolute_lifetime() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts("refresh_absolute_lifetime = \"5s\"\n"));
    let owner = web_setup(&s, "owner");
    let user = invited(&s, &owner.browser, "ursula", "user");

    // Absolute lifetime: rotating does not extend the family.
    let (_, mut refresh_token) = token_pair(&user);
    let mut access = String::new();
    for _ in 0..2 {
        let r = refresh(&s, &refresh_token);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert!(v["expires_in"].as_i64().is_some_and(|n| n <= 5), "{v}");
        refresh_token = v["refresh_token"].as_str().expect("refresh").to_string();
        access = v["access_token"].as_str().expect("access").to_string();
    }
    assert_eq!(me_with(&s, &access), 200);
    std::thread::sleep(Duration::from_secs(6));
    let r = refresh(&s, &refresh_token);
    assert_eq!(
        err(&r),
        (401, "unauthenticated".into()),
        "past the family's end"
    );
    assert_eq!(me_with(&s, &access), 401, "its access token ended too");
    // The session itself is unaffected and may start a new family.
    let (fresh_access, _) = token_pair(&user);
    assert_eq!(me_with(&s, &fresh_access), 200);

    // A family whose session is gone (revoked from another device, which
    // deletes the session) cannot renew itself.
    let (_, refresh_token) = token_pair(&user);
    let other = Browser::new(&s);
    other.login("ursula", PASSWORD, None);
    let r = other.call("DELETE", "/api/account/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(user.get("/api/auth/me").status, 401);
    assert_eq!(refresh(&s, &refresh_token).status, 401);
}

/// Item 4: a session that went idle takes its refresh family with it.
#[test]
fn refresh_needs_a_live_session() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts("session_idle = \"4s\"\n"));
    let owner = web_setup(&s, "owner");
    let user = invited(&s, &owner.browser, "ursula", "user");
    let (_, refresh_token) = token_pair(&user);
    // Refreshing keeps the session alive (it is the session's activity)…
    std::thread::sleep(Duration::from_secs(1));
    let r = refresh(&s, &refresh_token);
    assert_eq!(r.status, 200, "{}", r.body);
    let refresh_token = r.json()["refresh_token"].as_str().expect("rt").to_string();
    // …but once the session is idle past its limit, the family is over.
    std::thread::sleep(Duration::from_secs(4));
    let r = refresh(&s, &refresh_token);
    assert_eq!(err(&r), (401, "unauthenticated".into()), "{}", r.body);
    assert_eq!(user.get("/api/auth/me").status, 401);
}

/// Item 4: disabling a user ends their sessions, tokens and keys — and
/// the keys stay dead after a restart and after re-enabling.
#[test]
fn disabling_a_user_ends_their_keys_for_good() {
    let d = TestDir::new();
    let o = opts("");
    let mut s = spawn_server(&d, &o);
    let owner = web_setup(&s, "owner");
    let (key, access, refresh_token) = {
        let user = invited(&s, &owner.browser, "ursula", "user");
        let (_, key) = create_key(&user, "agent", &["proxy:*", "keys:manage"]);
        let (access, refresh_token) = token_pair(&user);
        let r = owner
            .browser
            .call("POST", "/api/users/ursula/disable", None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(user.get("/api/auth/me").status, 401, "session");
        (key, access, refresh_token)
    };
    assert_eq!(me_with(&s, &key), 401, "key");
    assert_eq!(me_with(&s, &access), 401, "access token");
    assert_eq!(refresh(&s, &refresh_token).status, 401, "refresh token");
    let listed = s.api("GET", "/api/keys?all=true", None).json();
    let row = listed
        .as_array()
        .and_then(|a| a.iter().find(|k| k["name"] == "agent"))
        .cloned()
        .expect("the key is listed");
    assert!(row["revoked_at"].is_i64(), "revoked, for the record: {row}");

    drop(owner);
    s.stop();
    drop(s);
    s = spawn_server(&d, &o);
    assert_eq!(me_with(&s, &key), 401, "key after a restart");
    let r = s.api("POST", "/api/users/ursula/enable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(me_with(&s, &key), 401, "key after re-enabling");
    s.stop();
    drop(s);
    let s = spawn_server(&d, &o);
    assert_eq!(
        me_with(&s, &key),
        401,
        "key after re-enabling and a restart"
    );
    // Re-enabling gives back the sign-in.
    let b = Browser::new(&s);
    b.login("ursula", PASSWORD, None);
    assert_eq!(b.get("/api/auth/me").status, 200);
}

/// Item 4: a user promoted to admin keeps no password-only session, and no
/// key whose reach the promotion widens; a demoted admin loses admin
/// rights at once, and their admin keys do not come back with a later
/// promotion.
#[test]
fn role_changes_end_what_the_new_role_would_not_have_granted() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts(""));
    let owner = web_setup(&s, "owner");
    let admin = &owner.browser;
    let r = admin.post(
        "/api/vault",
        &serde_json::json!({"name": "canary", "kind": "generic", "secret": "canary-value-7f3a"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let user = invited(&s, admin, "ursula", "user");
    // A user may hold `vault:read:<name>` (own entries only): harmless
    // while a user, the household's entry once promoted.
    let (_, reader) = create_key(&user, "reader", &["vault:read:canary"]);
    let (_, proxy_key) = create_key(&user, "agent", &["proxy:*"]);
    let (user_access, _) = token_pair(&user);
    assert_eq!(
        s.bearer(&reader, "POST", "/api/vault/canary/reveal", None)
            .status,
        403
    );

    let r = admin.call("PUT", "/api/users/ursula/role", Some(r#"{"role":"admin"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    // The password-only session never carries admin rights.
    assert_eq!(user.get("/api/users").status, 401);
    assert_eq!(user.get("/api/auth/me").status, 401);
    assert_eq!(me_with(&s, &user_access), 401);
    // The widened key ended; the others keep working.
    assert_eq!(
        s.bearer(&reader, "POST", "/api/vault/canary/reveal", None)
            .status,
        401
    );
    assert_eq!(me_with(&s, &proxy_key), 200);
    // Signing in again means enrolling the second factor admins must have.
    let b = Browser::new(&s);
    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": "ursula", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["enroll"], true, "{v}");
    let totp = Authenticator::new(v["enrollment"]["otpauth_uri"].as_str().expect("uri"));
    let r = b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": v["ticket"], "code": totp.code()}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b.get("/api/users").status, 200, "now an admin, properly");
    let (_, admin_key) = create_key(&b, "ops", &["admin"]);
    assert_eq!(s.bearer(&admin_key, "GET", "/api/users", None).status, 200);

    // Demotion bites on the very next request, for the session and keys.
    let r = admin.call("PUT", "/api/users/ursula/role", Some(r#"{"role":"user"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(b.get("/api/users").status, 403);
    assert_eq!(b.get("/api/auth/me").json()["role"], "user");
    assert_eq!(me_with(&s, &admin_key), 401, "the admin key ended");
    assert_eq!(me_with(&s, &proxy_key), 200);
    // And a later promotion does not bring it back.
    let r = admin.call("PUT", "/api/users/ursula/role", Some(r#"{"role":"admin"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(me_with(&s, &admin_key), 401);
    assert_eq!(
        s.bearer(&reader, "POST", "/api/vault/canary/reveal", None)
            .status,
        401
    );
}

/// Item 19: the host's admin token used to answer `201` with a key that
/// belonged to nobody and failed on every request. It is refused now, and
/// the host keeps managing everyone's keys.
#[test]
fn the_host_token_cannot_mint_a_key_that_belongs_to_nobody() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts(""));
    let owner = web_setup(&s, "owner");
    let (user_key_id, user_key) = create_key(&owner.browser, "agent", &["proxy:*"]);
    for scopes in [r#"["proxy:*"]"#, r#"["admin"]"#, r#"["keys:manage"]"#] {
        let body = format!(r#"{{"name":"from-host","scopes":{scopes}}}"#);
        let r = s.api("POST", "/api/keys", Some(&body));
        assert_eq!(
            err(&r),
            (403, "host_cannot_own_keys".into()),
            "{scopes}: {}",
            r.body
        );
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("sign in"))
        );
    }
    let listed = s.api("GET", "/api/keys?all=true", None).json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["agent"], "no key was made");
    // The host still acts on everyone's keys.
    let r = s.api(
        "PUT",
        &format!("/api/keys/{user_key_id}/limits"),
        Some(r#"{"requests_per_minute":5}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.api("DELETE", &format!("/api/keys/{user_key_id}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(me_with(&s, &user_key), 401);
}

/// Item 4, raced: sign-ins and keys in flight while an admin disables the
/// account. Whatever the requests got, nothing made during the disable
/// works once the account is enabled again (before, a key committed after
/// the revocation, or a session whose password step ran before it, came
/// back with `/enable`).
#[test]
fn sign_ins_and_keys_racing_a_disable_do_not_survive_it() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts(""));
    let owner = web_setup(&s, "owner");
    drop(invited(&s, &owner.browser, "ursula", "user"));
    let login = serde_json::json!({"username": "ursula", "password": PASSWORD});
    let mut keys_made = Vec::new();
    let mut sessions_made = Vec::new();
    for round in 0..4 {
        let signed_in: Vec<Browser<'_>> = (0..4)
            .map(|_| {
                let b = Browser::new(&s);
                b.login("ursula", PASSWORD, None);
                b
            })
            .collect();
        std::thread::scope(|sc| {
            // Each signed-in browser mints keys until it is refused; sign-ins
            // start one after another: the disable lands among them.
            let minting: Vec<_> = signed_in
                .iter()
                .map(|b| {
                    sc.spawn(move || {
                        let mut made = Vec::new();
                        for _ in 0..40 {
                            let r = b.post("/api/keys", &key_body(&["proxy:*"]));
                            assert!(
                                r.status == 201 || r.status == 401,
                                "{} {}",
                                r.status,
                                r.body
                            );
                            if r.status != 201 {
                                break;
                            }
                            made.push(r.json()["key"].as_str().expect("key").to_string());
                        }
                        made
                    })
                })
                .collect();
            let logins: Vec<_> = (0..6u64)
                .map(|i| {
                    let login = &login;
                    let s = &s;
                    sc.spawn(move || {
                        std::thread::sleep(Duration::from_millis(40 * i));
                        let b = Browser::new(s);
                        let r = b.post("/api/auth/login", login);
                        assert!(
                            r.status == 200 || r.status == 401,
                            "{} {}",
                            r.status,
                            r.body
                        );
                        b.cookie()
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(60 + 40 * round));
            let r = owner
                .browser
                .call("POST", "/api/users/ursula/disable", None);
            assert_eq!(r.status, 200, "{}", r.body);
            for m in minting {
                keys_made.extend(m.join().expect("mint"));
            }
            for l in logins {
                sessions_made.extend(l.join().expect("login"));
            }
        });
        for b in &signed_in {
            assert_eq!(b.get("/api/auth/me").status, 401, "round {round}");
        }
        let r = owner.browser.call("POST", "/api/users/ursula/enable", None);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    eprintln!(
        "raced a disable: {} key(s) and {} session(s) were handed out",
        keys_made.len(),
        sessions_made.len()
    );
    for key in &keys_made {
        assert_eq!(me_with(&s, key), 401, "a key minted during a disable");
    }
    for cookie in &sessions_made {
        let header = format!("Cookie: __Host-latchkey_session={cookie}");
        let r = s.request("GET", "/api/auth/me", &[&header], None);
        assert_eq!(r.status, 401, "a session made during a disable");
    }
    // The account itself is fine.
    let b = Browser::new(&s);
    b.login("ursula", PASSWORD, None);
    assert_eq!(b.get("/api/auth/me").status, 200);
}

/// Item 4: someone who knew the old password and has passed the password
/// step holds an MFA ticket; a password change ends it (and with it the
/// sign-in the old password started), while the new password signs in.
#[test]
fn a_password_step_taken_before_a_password_change_cannot_finish_after_it() {
    let d = TestDir::new();
    let s = spawn_server(&d, &opts(""));
    let owner = web_setup(&s, "owner");
    let thief = Browser::new(&s);
    let r = thief.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let ticket = r.json()["ticket"].as_str().expect("ticket").to_string();
    let r = owner.browser.post(
        "/api/account/password",
        &serde_json::json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = thief.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, "code": owner.totp.code()}),
    );
    assert_eq!(err(&r), (401, "invalid_ticket".into()), "{}", r.body);
    assert_eq!(thief.get("/api/auth/me").status, 401);
    Browser::new(&s).login("owner", NEW_PASSWORD, Some(&owner.totp));
}
