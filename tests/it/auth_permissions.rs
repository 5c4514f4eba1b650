//! The permission walk: every endpoint × every kind of caller (admin, user
//! and guest sessions, an admin's access token, API keys with a few scope
//! sets, nobody) against the table in docs/PERMISSIONS.md, over HTTPS
//! through the real binary.
//!
//! Each cell is what the caller must get: an exact status and error code
//! where it is stable, `P` where the request passes the permission check
//! and then fails for its own reasons (a missing user, a wrong code), `-`
//! where the call would end the caller itself (seal, logout; those run
//! once at the end).

use latchkey_e2e::{
    Browser, Resp, ServeOpts, Server, TestDir, auth_config, create_key, invited, spawn_server,
    web_setup,
};
use std::collections::BTreeSet;

/// The callers, in the table's column order.
const CALLERS: [&str; 9] = [
    "admin",       // the owner's browser session (recently signed in)
    "user",        // an invited user's session
    "guest",       // an invited guest's session
    "admin-token", // the owner's access token (POST /api/auth/token)
    "key:admin",   // the owner's key with scope `admin`
    "key:proxy",   // the owner's key with `proxy:*`
    "user-key",    // the user's key with `keys:manage`
    "guest-key",   // the guest's key with `proxy:*`
    "anonymous",   // no credentials
];

struct Row {
    method: &'static str,
    /// The route template (checked against the router's list).
    route: &'static str,
    /// The concrete path requested.
    path: &'static str,
    body: Option<&'static str>,
    expect: [&'static str; 9],
}

const fn row(
    method: &'static str,
    route: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: [&'static str; 9],
) -> Row {
    Row {
        method,
        route,
        path,
        body,
        expect,
    }
}

#[rustfmt::skip]
fn table() -> Vec<Row> {
    let all = |e| [e; 9];
    vec![
        // Operations and public auth endpoints: the same for everyone.
        row("GET", "/health", "/health", None, all("200")),
        row("GET", "/ready", "/ready", None, all("200")),
        row("GET", "/.well-known/jwks.json", "/.well-known/jwks.json", None, all("200")),
        // The web UI's files: public (the pages hold no data; the API does).
        row("GET", "/assets/{*path}", "/assets/app.js", None, all("200")),
        row("GET", "/api/verify", "/api/verify?agent=walk", None,
            ["200", "200", "200", "200", "200", "403", "403", "403", "401"]),
        row("GET", "/api/setup", "/api/setup", None, all("200")),
        row("POST", "/api/setup/begin", "/api/setup/begin",
            Some(r#"{"token":"lks_00","username":"x","password":"Tangerine-Lighthouse-Quartz-000"}"#),
            all("403:invalid_setup_token")),
        row("POST", "/api/setup/confirm", "/api/setup/confirm",
            Some(r#"{"token":"lks_00","username":"x","code":"123456"}"#),
            all("403:invalid_setup_token")),
        row("POST", "/api/invites/accept", "/api/invites/accept",
            Some(r#"{"token":"lki_00","username":"x","password":"Tangerine-Lighthouse-Quartz-000"}"#),
            all("403:invalid_invite")),
        row("POST", "/api/auth/refresh", "/api/auth/refresh",
            Some(r#"{"refresh_token":"lkr_00"}"#), all("401")),
        row("POST", "/api/auth/login", "/api/auth/login",
            Some(r#"{"username":"nobody","password":"Tangerine-Lighthouse-Quartz-000"}"#),
            all("401:invalid_credentials")),
        row("POST", "/api/auth/mfa", "/api/auth/mfa",
            Some(r#"{"ticket":"lkt_00","code":"123456"}"#), all("401:invalid_ticket")),
        //                                    admin  user   guest  a-token key:adm key:prx user-key guest-key anon
        row("GET", "/api/auth/me", "/api/auth/me", None,
            ["200", "200", "200", "200", "200", "200", "200", "200", "401"]),
        row("POST", "/api/auth/token", "/api/auth/token", None,
            ["200", "200", "200", "403:session_required", "403:session_required",
             "403:session_required", "403:session_required", "403:session_required", "401"]),
        row("POST", "/api/auth/reauth", "/api/auth/reauth", Some(r#"{"code":"000000"}"#),
            ["P", "P", "P", "403:session_required", "403:session_required",
             "403:session_required", "403:session_required", "403:session_required", "401"]),
        row("POST", "/api/setup/host", "/api/setup/host",
            Some(r#"{"username":"x","password":"Tangerine-Lighthouse-Quartz-000"}"#),
            ["403", "403", "403", "403", "403", "403", "403", "403", "401"]),
        // Keys: every role manages its own; keys need `keys:manage`, and
        // only an `admin` key may mint keys.
        row("GET", "/api/keys", "/api/keys", None,
            ["200", "200", "200", "200", "200", "403", "200", "403", "401"]),
        row("GET", "/api/keys", "/api/keys?all=true", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("POST", "/api/keys", "/api/keys", Some(r#"{"name":"walk","scopes":["proxy:openai"]}"#),
            ["201", "201", "201", "201", "201", "403", "403:scope_exceeds_role", "403", "401"]),
        row("DELETE", "/api/keys/{id}", "/api/keys/0123456789abcdef", None,
            ["404", "404", "404", "404", "404", "403", "404", "403", "401"]),
        // OAuth connections: `connections:<p>` under ManageConnections (not guests);
        // flows start in a browser session only; the callback is public.
        row("GET", "/api/connections/providers", "/api/connections/providers", None,
            ["200", "200", "403", "200", "200", "200", "200", "403", "401"]),
        row("GET", "/api/connections", "/api/connections", None,
            ["200", "200", "403", "200", "200", "200", "200", "403", "401"]),
        row("POST", "/api/connections/{provider}/start", "/api/connections/walk/start", None,
            ["404:unknown_provider", "404:unknown_provider", "403", "403:session_required",
             "403:session_required", "403", "403", "403", "401"]),
        row("GET", "/api/connections/{provider}/callback", "/api/connections/walk/callback?state=x&code=y", None,
            all("404:unknown_provider")),
        // A connection's token is a secret: the step-up rule (an access
        // token never has a recent re-authentication; keys are the grant).
        row("GET", "/api/connections/{provider}/token", "/api/connections/walk/token", None,
            ["404:unknown_provider", "404:unknown_provider", "403", "403:reauth_required",
             "404:unknown_provider", "403", "403", "403", "401"]),
        row("DELETE", "/api/connections/{provider}", "/api/connections/walk", None,
            ["404:unknown_provider", "404:unknown_provider", "403", "404:unknown_provider",
             "404:unknown_provider", "403", "403", "403", "401"]),
        // Setting a provider's client: ManageSettings (`admin` for keys) and,
        // for people, a recent re-authentication (access tokens cannot have one).
        row("PUT", "/api/connections/{provider}/client", "/api/connections/walk/client",
            Some(r#"{"client_id":"walk"}"#),
            ["404:unknown_provider", "403", "403", "403:reauth_required",
             "404:unknown_provider", "403", "403", "403", "401"]),
        // LiveKit room tokens: `livekit:<name>` under UseProxy (every
        // role), checked before the section is looked up.
        row("POST", "/api/livekit/{name}/token", "/api/livekit/walk/token",
            Some(r#"{"room":"standup","identity":"walk"}"#),
            ["404:unknown_livekit", "404:unknown_livekit", "404:unknown_livekit",
             "404:unknown_livekit", "404:unknown_livekit", "403", "403", "403", "401"]),
        row("PUT", "/api/keys/{id}/limits", "/api/keys/0123456789abcdef/limits", Some(r#"{"tokens_per_day":1}"#),
            ["404", "404", "404", "404", "404", "403", "404", "403", "401"]),
        // One's own account: people only (sessions, access tokens).
        row("GET", "/api/account/sessions", "/api/account/sessions", None,
            ["200", "200", "200", "200", "403", "403", "403", "403", "401"]),
        row("DELETE", "/api/account/sessions", "/api/account/sessions", None,
            ["-", "-", "-", "-", "403", "403", "403", "403", "401"]),
        row("DELETE", "/api/account/sessions/{id}", "/api/account/sessions/0123456789abcdef", None,
            ["404", "404", "404", "404", "403", "403", "403", "403", "401"]),
        row("POST", "/api/account/password", "/api/account/password",
            Some(r#"{"current_password":"Tangerine-Lighthouse-Quartz-000","new_password":"Another-Long-Passphrase-99"}"#),
            ["401:invalid_credentials", "401:invalid_credentials", "401:invalid_credentials",
             "401:invalid_credentials", "403", "403", "403", "403", "401"]),
        row("POST", "/api/account/totp", "/api/account/totp", None,
            ["200", "200", "200", "403:reauth_required", "403", "403", "403", "403", "401"]),
        row("POST", "/api/account/totp/confirm", "/api/account/totp/confirm", Some(r#"{"code":"000000"}"#),
            ["P", "P", "P", "P", "403", "403", "403", "403", "401"]),
        // Admins must keep their second factor; users and guests may drop it.
        row("DELETE", "/api/account/totp", "/api/account/totp", None,
            ["409:mfa_required_for_role", "204", "204", "409:mfa_required_for_role", "403", "403", "403", "403", "401"]),
        row("POST", "/api/account/recovery-codes", "/api/account/recovery-codes", None,
            ["200", "200", "200", "403:reauth_required", "403", "403", "403", "403", "401"]),
        // Users and the audit log: admins; keys need `admin`; changing a
        // role or MFA needs a recent sign-in (no key or token has one).
        row("GET", "/api/users", "/api/users", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("POST", "/api/users/invites", "/api/users/invites", Some(r#"{"role":"guest"}"#),
            ["201", "403", "403", "201", "201", "403", "403", "403", "401"]),
        row("POST", "/api/users/invites", "/api/users/invites", Some(r#"{"role":"admin"}"#),
            ["201", "403", "403", "403:reauth_required", "403:reauth_required", "403", "403", "403", "401"]),
        row("PUT", "/api/users/{username}/role", "/api/users/nobody/role", Some(r#"{"role":"guest"}"#),
            ["404", "403", "403", "403:reauth_required", "403:reauth_required", "403", "403", "403", "401"]),
        row("POST", "/api/users/{username}/disable", "/api/users/nobody/disable", None,
            ["404", "403", "403", "403:reauth_required", "403:reauth_required", "403", "403", "403", "401"]),
        row("POST", "/api/users/{username}/enable", "/api/users/nobody/enable", None,
            ["404", "403", "403", "403:reauth_required", "403:reauth_required", "403", "403", "403", "401"]),
        row("POST", "/api/users/{username}/reset-mfa", "/api/users/nobody/reset-mfa", None,
            ["404", "403", "403", "403:reauth_required", "403:reauth_required", "403", "403", "403", "401"]),
        row("GET", "/api/audit", "/api/audit?limit=5", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        // Proxy usage: admins see all, others their own keys' (`keys:manage`).
        row("GET", "/api/usage", "/api/usage", None,
            ["200", "200", "200", "200", "200", "403", "200", "403", "401"]),
        // Realtime sessions: listed like usage (admins all, others their
        // own); only `admin` ends one (none is open: 404).
        row("GET", "/api/realtime/sessions", "/api/realtime/sessions", None,
            ["200", "200", "200", "200", "200", "403", "200", "403", "401"]),
        row("DELETE", "/api/realtime/sessions/{id}", "/api/realtime/sessions/rt_1", None,
            ["404", "403", "403", "404", "404", "403", "403", "403", "401"]),
        // The proxy takes API keys only; the scope is checked before the
        // provider is looked up (none is configured here).
        row("GET", "/proxy/{provider}/{*path}", "/proxy/openai/v1/models", None,
            ["401", "401", "401", "401", "404:unknown_provider", "404:unknown_provider",
             "403", "404:unknown_provider", "401"]),
        // The vault and operations: admins (`admin` or `vault:…` scopes).
        row("GET", "/api/status", "/api/status", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("GET", "/api/vault", "/api/vault", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("POST", "/api/vault", "/api/vault",
            Some(r#"{"name":"walk-new","kind":"generic","secret":"walk-value","replace":true}"#),
            ["201", "403", "403", "403:reauth_required", "201", "403", "403", "403", "401"]),
        row("GET", "/api/vault/{name}", "/api/vault/walk", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("POST", "/api/vault/{name}/reveal", "/api/vault/walk/reveal", None,
            ["200", "403", "403", "403:reauth_required", "200", "403", "403", "403", "401"]),
        row("DELETE", "/api/vault/{name}", "/api/vault/no-such-entry", None,
            ["404", "403", "403", "404", "404", "403", "403", "403", "401"]),
        row("POST", "/api/vault/verify", "/api/vault/verify", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("POST", "/api/vault/init", "/api/vault/init", Some(r#"{"passphrase":"a long enough passphrase"}"#),
            ["409", "403", "403", "409", "409", "403", "403", "403", "401"]),
        row("POST", "/api/vault/unseal", "/api/vault/unseal", None,
            ["200", "403", "403", "200", "200", "403", "403", "403", "401"]),
        row("POST", "/api/vault/seal", "/api/vault/seal", None,
            ["-", "403", "403", "-", "-", "403", "403", "403", "401"]),
        row("POST", "/api/vault/rotate-master", "/api/vault/rotate-master", None,
            ["-", "403", "403", "-", "-", "403", "403", "403", "401"]),
        // A backup holds every secret: the step-up rule, as for a reveal.
        row("POST", "/api/backup", "/api/backup", Some(r#"{"passphrase":"a long backup passphrase"}"#),
            ["200", "403", "403", "403:reauth_required", "200", "403", "403", "403", "401"]),
        row("POST", "/api/auth/logout", "/api/auth/logout", None,
            ["-", "-", "-", "-", "204", "204", "204", "204", "401"]),
    ]
}

/// How one caller sends a request.
enum Caller<'a> {
    Session(&'a Browser<'a>),
    Bearer(String),
    Anonymous,
}

fn send(s: &Server, c: &Caller<'_>, r: &Row) -> Resp {
    match c {
        Caller::Session(b) => b.call(r.method, r.path, r.body),
        Caller::Bearer(t) => s.bearer(t, r.method, r.path, r.body),
        Caller::Anonymous => {
            let h: &[&str] = if r.body.is_some() {
                &["Content-Type: application/json"]
            } else {
                &[]
            };
            s.early_request(&[], r.method, r.path, h, r.body.map(str::as_bytes))
        }
    }
}

/// `None` when `got` matches `want`, else what was wrong.
fn mismatch(want: &str, got: &Resp) -> Option<String> {
    let code = || {
        serde_json::from_str::<serde_json::Value>(&got.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let ok = match want {
        "P" => {
            got.status != 403
                && !(got.status == 401 && code() == "unauthenticated")
                && (400..500).contains(&got.status)
        }
        "401" => got.status == 401 && code() == "unauthenticated",
        "403" => got.status == 403 && code() == "forbidden",
        w => match w.split_once(':') {
            Some((status, c)) => got.status.to_string() == status && code() == c,
            None => got.status.to_string() == w,
        },
    };
    (!ok).then(|| format!("want {want}, got {} {}", got.status, got.body))
}

/// The route templates the router serves (from its source, so a new
/// endpoint cannot be added without a row here).
fn served_routes() -> BTreeSet<String> {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src/http/mod.rs"),
    )
    .expect("read core/src/http/mod.rs");
    src.match_indices(".route(")
        .filter_map(|(i, _)| {
            let rest = src[i + 7..].trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .filter(|r| r != "/metrics")
        .collect()
}

#[test]
fn every_endpoint_for_every_caller_matches_the_permission_table() {
    let d = TestDir::new();
    // Failed codes and passwords below must not lock anyone out.
    let s = spawn_server(
        &d,
        &ServeOpts::new().config(&auth_config("lockout_threshold = 1000\n")),
    );
    let owner = web_setup(&s, "owner");
    let admin = &owner.browser;
    let r = admin.post(
        "/api/vault",
        &serde_json::json!({"name": "walk", "kind": "generic", "secret": "walk-secret-value"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let user = invited(&s, admin, "ursula", "user");
    let guest = invited(&s, admin, "gus", "guest");
    let token = admin.call("POST", "/api/auth/token", None).json()["access_token"]
        .as_str()
        .expect("access token")
        .to_string();
    let (_, key_admin) = create_key(admin, "k-admin", &["admin"]);
    let (_, key_proxy) = create_key(admin, "k-proxy", &["proxy:*"]);
    let (_, user_key) = create_key(&user, "k-user", &["keys:manage"]);
    let (_, guest_key) = create_key(&guest, "k-guest", &["proxy:*"]);
    let callers = [
        Caller::Session(admin),
        Caller::Session(&user),
        Caller::Session(&guest),
        Caller::Bearer(token),
        Caller::Bearer(key_admin),
        Caller::Bearer(key_proxy),
        Caller::Bearer(user_key),
        Caller::Bearer(guest_key),
        Caller::Anonymous,
    ];

    let table = table();
    let mut failures = Vec::new();
    let mut cells = 0;
    for r in &table {
        for (i, c) in callers.iter().enumerate() {
            let want = r.expect[i];
            if want == "-" {
                continue;
            }
            cells += 1;
            let got = send(&s, c, r);
            if let Some(m) = mismatch(want, &got) {
                failures.push(format!("{} {} as {}: {m}", r.method, r.path, CALLERS[i]));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cells} cells differ from the table:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The cells left out because they end the caller, once each.
    let r = user.call("DELETE", "/api/account/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.call("POST", "/api/vault/rotate-master", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.call("POST", "/api/vault/seal", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.call("POST", "/api/vault/unseal", None);
    assert_eq!(r.status, 200, "{}", r.body);
    for b in [&guest, &user, admin] {
        let r = b.call("POST", "/api/auth/logout", None);
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(b.get("/api/auth/me").status, 401);
    }

    // Every served route has a row.
    let walked: BTreeSet<String> = table.iter().map(|r| r.route.to_string()).collect();
    let missing: Vec<_> = served_routes().difference(&walked).cloned().collect();
    assert!(missing.is_empty(), "routes without a row: {missing:?}");

    // And the documented table names every route the walk covers (it
    // abbreviates: `/api/setup/begin`, `/confirm`; `{u}` for `{username}`).
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PERMISSIONS.md"),
    )
    .expect("docs/PERMISSIONS.md");
    let undocumented: Vec<_> = walked
        .iter()
        .filter(|r| {
            let full = r.replace("{username}", "{u}");
            let tail = &full[full.rfind('/').unwrap_or(0)..];
            !doc.contains(&format!("{full}`"))
                && !doc.contains(&format!("{full}?"))
                && !doc.contains(&format!("{full}["))
                && !doc.contains(&format!("{full},"))
                && !doc.contains(&format!("`{tail}`"))
                && !doc.contains(&format!("[{tail}]"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/PERMISSIONS.md has no row for {undocumented:?}"
    );
}

#[test]
fn permission_table_rows_are_well_formed() {
    for r in table() {
        assert!(r.path.starts_with('/'), "{}", r.path);
        for w in r.expect {
            assert!(
                ["P", "-", "401", "403"].contains(&w)
                    || w.split(':')
                        .next()
                        .is_some_and(|s| s.parse::<u16>().is_ok()),
                "{} {}: {w}",
                r.method,
                r.path
            );
        }
    }
}
