//! Databases written by every released schema version open and migrate.
//! The fixtures are real data directories made by `migrations/fixtures/make.sh`.

use latchkey_e2e::TestDir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn copy_fixture(version: u32, d: &TestDir) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations/fixtures")
        .join(format!("v{version}"));
    std::fs::create_dir_all(d.data()).expect("mkdir");
    std::fs::set_permissions(d.data(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for f in ["latchkey.redb", "master.key"] {
        let to = d.data().join(f);
        std::fs::copy(src.join(f), &to).unwrap_or_else(|e| panic!("copy fixture {f}: {e}"));
        // git does not keep modes beyond the executable bit.
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

#[test]
fn v1_fixture_opens_and_reads() {
    let d = TestDir::new();
    copy_fixture(1, &d);
    let out = d.ok(&["vault", "list", "--json"], b"");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["anthropic", "openai", "spotify-me"]);
    assert_eq!(
        d.ok(&["vault", "get", "openai", "--reveal"], b"").stdout,
        "sk-fixture-openai-v1"
    );
    assert_eq!(
        d.ok(&["vault", "get", "spotify-me", "--reveal"], b"")
            .stdout,
        r#"{"access_token":"fixture-at","refresh_token":"fixture-rt"}"#
    );
    d.ok(&["vault", "verify"], b"");
    // And it is writable afterwards at the current version.
    d.ok(&["vault", "put", "new-after-migration"], b"v");
}

#[test]
fn v2_fixture_keeps_its_vault_and_its_owner() {
    let d = TestDir::new();
    copy_fixture(2, &d);
    assert_eq!(
        d.ok(&["vault", "get", "openai", "--reveal"], b"").stdout,
        "sk-fixture-openai-v1"
    );
    d.ok(&["vault", "verify"], b"");
    let users: serde_json::Value =
        serde_json::from_str(&d.ok(&["user", "list", "--json"], b"").stdout).expect("json");
    let owner = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "owner"))
        .expect("the fixture's owner is still there");
    assert_eq!(owner["role"], "admin");
    assert_eq!(owner["mfa_enabled"], true);
    // The stored password hash still verifies: the owner gets to the MFA step.
    let s = latchkey_e2e::spawn_server(&d, &latchkey_e2e::ServeOpts::new());
    let body = serde_json::json!({"username": "owner", "password": "fixture owner passphrase v2"});
    let r = s.anon("POST", "/api/auth/login", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["mfa_required"], true, "{}", r.body);
}

#[test]
fn v3_fixture_migrates_to_the_session_index_and_signs_in() {
    let d = TestDir::new();
    copy_fixture(3, &d);
    assert_eq!(
        d.ok(&["vault", "get", "anthropic", "--reveal"], b"").stdout,
        "sk-ant-fixture-v1"
    );
    d.ok(&["vault", "verify"], b"");
    let users: serde_json::Value =
        serde_json::from_str(&d.ok(&["user", "list", "--json"], b"").stdout).expect("json");
    assert_eq!(users[0]["username"], "owner", "{users}");
    // v4 added `auth_index`: sessions, tokens and sign-in keep working on
    // the migrated file (the password gets to the MFA step; a new invitee
    // signs in, gets tokens and logs out through the index).
    let s = latchkey_e2e::spawn_server(&d, &latchkey_e2e::ServeOpts::new());
    let body = serde_json::json!({"username": "owner", "password": "fixture owner passphrase v2"});
    let r = s.anon("POST", "/api/auth/login", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["mfa_required"], true, "{}", r.body);
    let token = s.api("POST", "/api/users/invites", Some(r#"{"role":"user"}"#));
    assert_eq!(token.status, 201, "{}", token.body);
    let token = token.json()["token"].as_str().expect("token").to_string();
    let r = s.anon(
        "POST",
        "/api/invites/accept",
        Some(&serde_json::json!({"token": token, "username": "carol", "password": latchkey_e2e::PASSWORD})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let b = latchkey_e2e::Browser::new(&s);
    b.login("carol", latchkey_e2e::PASSWORD, None);
    let pair = b.post("/api/auth/token", &serde_json::json!({}));
    assert_eq!(pair.status, 200, "{}", pair.body);
    let access = pair.json()["access_token"]
        .as_str()
        .expect("at")
        .to_string();
    assert_eq!(s.bearer(&access, "GET", "/api/auth/me", None).status, 200);
    assert_eq!(
        b.post("/api/auth/logout", &serde_json::json!({})).status,
        204
    );
    assert_eq!(s.bearer(&access, "GET", "/api/auth/me", None).status, 401);
}
