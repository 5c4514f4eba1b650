//! The web UI in a real browser (Debian's headless Chromium driven by
//! `playwright-core`, scripts in `tests/ui/`) against the real binary: the
//! owner's whole journey, screenshots and accessibility of every screen,
//! page weight and speed, and an OAuth connection completed through the
//! provider's own pages. Each script's steps are named in its output;
//! failing steps leave `target/ui-artifacts/<test>/failures/<step>.png`.
//! After each script the server's own records are checked as well.

use super::proxy::Mock;
use latchkey_e2e::oidc::{
    Idp, PROVIDER, SECRET_ENTRY, callback_urls, connection_config, free_port,
};
use latchkey_e2e::ui::{artifacts_dir, print_uncaptured, run_script};
use latchkey_e2e::{
    Browser, Out, ServeOpts, Server, TestDir, auth_config, setup_token, spawn_server, web_setup,
};
use std::time::{Duration, Instant};

/// The journey, with every screenshot and check, takes about a minute on
/// two cores; the bound leaves room for a slow machine.
const LIMIT: Duration = Duration::from_secs(240);

const VAULT_ENTRY: &str = "openai-main";
const KEY_NAME: &str = "ui-agent";
/// The model the mock upstream names in its answer.
const MODEL: &str = "gpt-4o-mini";

fn script_ok(out: &Out, what: &str, s: &Server) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n--- stdout\n{}\n--- stderr\n{}\n--- server log (tail)\n{}",
        out.status,
        out.stdout,
        out.stderr,
        tail(&s.stderr(), 40)
    );
    assert!(
        out.stdout.contains("ui-steps: ") && out.stdout.contains(" passed, 0 failed"),
        "{what}: no clean summary line:\n{}",
        out.stdout
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Audit events (newest first) as the admin token sees them.
fn audit(s: &Server) -> Vec<serde_json::Value> {
    let r = s.api("GET", "/api/audit?limit=500", None);
    assert_eq!(r.status, 200, "audit: {}", r.body);
    r.json()["events"].as_array().expect("events").clone()
}

fn has_event(events: &[serde_json::Value], action: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| e["action"] == action && e["outcome"] == outcome)
}

#[test]
fn ui_journey_screens_a11y_perf() {
    let started = Instant::now();
    let mock = Mock::start();
    let d = TestDir::new();
    let config = format!(
        "{}\n[providers.openai]\nupstream = \"http://127.0.0.1:{}\"\nsecret = \"{VAULT_ENTRY}\"\n",
        auth_config(""),
        mock.port
    );
    let mut s = spawn_server(&d, &ServeOpts::new().config(&config));
    let token = setup_token(&s);
    let provider_secret = format!("sk-ui-{}", latchkey_e2e::oidc::random_hex(12));
    let artifacts = artifacts_dir("journey");

    let out = run_script(
        &s,
        "journey.mjs",
        &artifacts,
        &[
            ("LK_SETUP_TOKEN", &token),
            ("LK_PROVIDER_SECRET", &provider_secret),
            ("LK_VAULT_ENTRY", VAULT_ENTRY),
            ("LK_KEY_NAME", KEY_NAME),
            ("LK_MODEL", MODEL),
        ],
        LIMIT,
    );
    let perf: String = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("ui-perf: "))
        .map(|l| format!("{l}\n"))
        .collect();
    print_uncaptured(&perf);
    script_ok(&out, "the browser journey", &s);
    assert_eq!(
        perf.lines().count(),
        2,
        "ui-perf lines for login and home:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&provider_secret) && !out.stderr.contains(&provider_secret),
        "the script printed the provider secret"
    );

    // The key the browser created reached the mock with the real
    // credential injected, and only that.
    let seen = mock.seen();
    let calls: Vec<_> = seen
        .iter()
        .filter(|r| r.target == "/v1/chat/completions")
        .collect();
    assert_eq!(calls.len(), 1, "the upstream saw {seen:?}");
    assert_eq!(
        calls[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {provider_secret}").as_str()),
        "the upstream did not get the vault's credential"
    );
    assert!(
        !format!("{:?}", calls[0].headers).contains("lk_"),
        "the upstream saw a Latchkey key"
    );

    // What the server recorded of the journey.
    let vault = s.api("GET", "/api/vault", None);
    assert_eq!(vault.status, 200, "{}", vault.body);
    let entry = vault
        .json()
        .as_array()
        .expect("vault list")
        .iter()
        .find(|e| e["name"] == VAULT_ENTRY)
        .cloned()
        .unwrap_or_else(|| panic!("no {VAULT_ENTRY} in the vault: {}", vault.body));
    assert_eq!(entry["kind"], "api_key");
    assert_eq!(entry["provider"], "openai");

    let keys = s.api("GET", "/api/keys?all=true", None);
    assert_eq!(keys.status, 200, "{}", keys.body);
    let key = keys
        .json()
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == KEY_NAME)
        .cloned()
        .unwrap_or_else(|| panic!("no key {KEY_NAME}: {}", keys.body));
    assert_eq!(key["scopes"], serde_json::json!(["proxy:openai"]));
    assert!(key["expires_at"].is_number(), "30 days was chosen: {key}");
    assert!(key["last_used_at"].is_number(), "the key was used: {key}");

    let users = s.api("GET", "/api/users", None);
    assert_eq!(users.status, 200, "{}", users.body);
    let owner = users
        .json()
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "owner")
        .cloned()
        .expect("owner");
    assert_eq!(owner["role"], "admin");
    assert_eq!(owner["mfa_enabled"], true);
    assert_eq!(
        owner["recovery_codes_left"], 9,
        "exactly one recovery code was used"
    );

    let events = audit(&s);
    for (action, outcome) in [
        ("setup.complete", "success"),
        ("recovery_code.use", "success"),
        ("key.create", "success"),
        ("vault.put", "success"),
        ("session.revoke", "success"),
        ("invite.accept", "success"),
    ] {
        assert!(
            has_event(&events, action, outcome),
            "no {action} {outcome} in the audit log: {events:?}"
        );
    }
    let logins = |detail: &str| {
        events
            .iter()
            .filter(|e| {
                e["action"] == "login" && e["outcome"] == "success" && e["detail"] == detail
            })
            .count()
    };
    assert_eq!(
        logins("totp"),
        3,
        "TOTP sign-ins: this browser, the second one, the keyboard-only one: {events:?}"
    );
    assert_eq!(
        logins("recovery_code"),
        1,
        "one recovery-code sign-in: {events:?}"
    );
    assert!(
        !serde_json::to_string(&events)
            .expect("json")
            .contains(&provider_secret),
        "the audit log holds the provider secret"
    );
    s.stop();
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "the UI test took {:?}",
        started.elapsed()
    );
}

#[test]
fn ui_connect_provider_in_browser() {
    let d = TestDir::new();
    let port = free_port();
    let idp = Idp::start(&callback_urls(port, PROVIDER), 60, d.path());
    d.ok(
        &["vault", "put", SECRET_ENTRY],
        idp.client_secret.as_bytes(),
    );
    let config = format!("{}\n{}", auth_config(""), connection_config(&idp, ""));
    let opts = ServeOpts {
        listen: format!("127.0.0.1:{port}"),
        ..ServeOpts::new().config(&config)
    };
    let mut s = spawn_server(&d, &opts);
    let owner = web_setup(&s, "owner");
    let session = owner.browser.cookie().expect("session cookie after setup");
    let artifacts = artifacts_dir("connect");

    let out = run_script(
        &s,
        "connect.mjs",
        &artifacts,
        &[
            ("LK_SESSION", &session),
            ("LK_PROVIDER", PROVIDER),
            ("LK_IDP", &idp.issuer),
        ],
        LIMIT,
    );
    script_ok(&out, "connecting in the browser", &s);

    // The connection exists for the owner, made through the callback that
    // carried only the SameSite=Lax binding cookie.
    let b: &Browser<'_> = &owner.browser;
    let r = b.get("/api/connections");
    assert_eq!(r.status, 200, "{}", r.body);
    let conn = r.json()["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["provider"] == PROVIDER)
        .cloned()
        .unwrap_or_else(|| panic!("no {PROVIDER} connection: {}", r.body));
    assert_eq!(conn["status"], "connected");
    assert_eq!(idp.count("code_success"), 1, "one code exchange");
    let events = audit(&s);
    assert!(
        has_event(&events, "connection.connect", "success"),
        "no connection.connect in the audit log: {events:?}"
    );
    s.stop();
}

/// Passphrase mode in the browser: the server starts sealed, and the setup
/// and sign-in pages unseal it themselves (nobody could sign in otherwise),
/// as does Home after "Seal now" (tests/ui/unseal.mjs).
#[test]
fn ui_passphrase_vault_is_unsealed_from_the_pages() {
    let d = TestDir::new();
    let passphrase = format!("ui-passphrase-{}", latchkey_e2e::oidc::random_hex(8));
    let config = format!(
        "{}\n[vault]\nmaster_key = \"passphrase\"\n",
        auth_config("")
    );
    d.write_config(&config);
    d.ok(
        &["vault", "init", "--passphrase-stdin"],
        format!("{passphrase}\n").as_bytes(),
    );
    let s = spawn_server(&d, &ServeOpts::new().config(&config));
    assert_eq!(s.get("/ready").status, 503, "passphrase mode starts sealed");
    let token = setup_token(&s);
    let admin = s.admin_token();
    let out = run_script(
        &s,
        "unseal.mjs",
        &artifacts_dir("unseal"),
        &[
            ("LK_SETUP_TOKEN", &token),
            ("LK_PASSPHRASE", &passphrase),
            ("LK_ADMIN_TOKEN", &admin),
        ],
        LIMIT,
    );
    script_ok(&out, "the passphrase-mode pages", &s);
    // Unsealed at the end, and the passphrase never reached the log.
    assert_eq!(s.get("/ready").status, 200);
    assert!(
        !s.stderr().contains(&passphrase) && !s.stdout().contains(&passphrase),
        "the passphrase is in the server's output"
    );
}
