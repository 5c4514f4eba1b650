//! OAuth connect in the desktop app (RFC 8252), end to end: the real
//! release binary under Xvfb (`latchkey_e2e::desktop`), a real OpenID
//! Connect provider on loopback (`oidc-provider`, `tests/oidc/`, its
//! client registered as a native app with the port-less loopback redirect
//! URI), and the "system browser" played by the test: the app hands the
//! authorization URL to `BROWSER` (which records it), the test walks the
//! provider's sign-in and consent pages with `OAuthBrowser` and follows the
//! redirect to the loopback port the app opened for the flow.
//!
//! Shown: the connect button hands the provider's page to the system
//! browser (the window stays on our page); the redirect comes back to a
//! per-flow loopback port of the shell, which completes the flow in the
//! core with the window's binding; the browser tab says it can be closed
//! and the window comes to the connections screen, connected; an agent
//! with a Latchkey key gets an access token from the loopback proxy's
//! broker, and the provider accepts it. Refused: a forged `state` on the
//! shell's port (and the flow still completes afterwards), the real
//! callback delivered straight to the core's listener (no binding there:
//! the provider is not even asked to redeem the code), and replays of the
//! used callback on either port.
//!
//! Then the tray and the notifications, through the session's tray host
//! and notification server (`tests/desktop/desktop_services.py`): the
//! tray item is registered and its menu says the vault is unlocked and the
//! proxy's port; a key refused for its rate limit and the connection
//! revoked at the provider (its refresh fails: needs reconnecting) each
//! bring a notification with the right text, and the menu counts the
//! connection; the menu's "Lock", clicked as a panel does over
//! `com.canonical.dbusmenu`, seals the vault: the proxy refuses and the
//! menu says so.

use crate::desktop::{STEP, complete_setup, quit, shot, shots_dir, wait_until};
use crate::proxy::Mock;
use latchkey_e2e::caddy::free_port;
use latchkey_e2e::desktop::{DesktopEnv, desktop_bin};
use latchkey_e2e::oidc::{
    Decision, Idp, OAuthBrowser, PROVIDER, SECRET_ENTRY, connection_config, http, query_params,
};
use latchkey_e2e::webdriver::Session;
use latchkey_e2e::{TestDir, auth_config, run_cmd_for};
use std::process::Command;
use std::time::Duration;

/// Makes a key in the window with `scopes` typed into "Other scopes" (and
/// a rate limit when `rpm`);
/// confirms with a TOTP code if the server asks for a fresh
/// re-authentication. Returns the key.
fn key_in_window(
    s: &Session,
    totp: &latchkey_e2e::Authenticator,
    name: &str,
    scopes: &str,
    rpm: Option<u32>,
) -> String {
    s.click(&s.button("API keys"));
    s.click(&s.button("Create key"));
    s.type_into(&s.field("Name"), name);
    s.type_into(&s.field("Other scopes"), scopes);
    if let Some(n) = rpm {
        s.type_into(&s.field("Requests per minute"), &n.to_string());
    }
    s.click(&s.button("Create"));
    let started = std::time::Instant::now();
    loop {
        let text = s.text();
        if text.contains("Your new key") {
            break;
        }
        if text.contains("Confirm it is you") {
            s.type_into(&s.field("Code from your authenticator app"), &totp.code());
            s.click(&s.button("Confirm"));
            s.wait_text("Your new key", STEP);
            break;
        }
        assert!(
            started.elapsed() < STEP,
            "no new key and no confirmation: {text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let once = s.element_text(&s.css(".secret-once"));
    let key = once
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .find(|w| w.starts_with("lk_"))
        .unwrap_or_else(|| panic!("no lk_ key shown: {once}"))
        .to_string();
    s.click(&s.button("Done"));
    key
}

/// The tray item's menu as the tray host sees it: (bus name, menu object
/// path, `GetLayout` answer as GVariant text).
fn tray_menu(env: &DesktopEnv) -> (String, String, String) {
    let (service, path) = env.tray_items().last().cloned().expect("a tray item");
    let menu = env.gdbus_call(&[
        "--dest",
        &service,
        "--object-path",
        &path,
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        "org.kde.StatusNotifierItem",
        "Menu",
    ]);
    let menu_path = menu
        .split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no menu path in {menu}"))
        .to_string();
    let layout = env.gdbus_call(&[
        "--dest",
        &service,
        "--object-path",
        &menu_path,
        "--method",
        "com.canonical.dbusmenu.GetLayout",
        "0",
        // Typed: a bare "-1" would be taken for an option.
        "int32 -1",
        "[]",
    ]);
    (service, menu_path, layout)
}

/// The id of the menu entry labelled `label` in a `GetLayout` answer.
fn menu_id(layout: &str, label: &str) -> Option<i32> {
    let at = layout.find(&format!("'label': <'{label}'>"))?;
    let open = layout[..at].rfind("<(")?;
    layout[open + 2..].split(',').next()?.trim().parse().ok()
}

/// Waits until the tray menu contains every one of `needles`; returns it.
fn wait_menu(env: &DesktopEnv, needles: &[&str]) -> (String, String, String) {
    let started = std::time::Instant::now();
    loop {
        if !env.tray_items().is_empty() {
            let m = tray_menu(env);
            if needles.iter().all(|n| m.2.contains(n)) {
                return m;
            }
            assert!(
                started.elapsed() < STEP,
                "the tray menu never said {needles:?}: {}",
                m.2
            );
        } else {
            assert!(started.elapsed() < STEP, "no tray item registered");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for a notification whose summary is `summary`; returns its body.
fn wait_notification(env: &DesktopEnv, summary: &str, limit: Duration) -> String {
    let started = std::time::Instant::now();
    loop {
        if let Some((_, body)) = env.notifications().into_iter().find(|(s, _)| s == summary) {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "no notification {summary:?}; shown: {:?}",
            env.notifications()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The URLs the app handed to the system browser so far.
fn handed(env: &DesktopEnv) -> Vec<String> {
    std::fs::read_to_string(&env.browser_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn desktop_app_connects_oauth_through_the_system_browser() {
    let bin = desktop_bin();
    let d = TestDir::new();
    let work = d.path().to_path_buf();
    let data = work.join("desktop-data");
    std::fs::create_dir_all(&data).expect("data dir");
    let port = free_port();
    // What a person registers for the desktop app: the loopback redirect
    // without a port (RFC 8252 §7.3).
    let registered = format!("http://127.0.0.1/api/connections/{PROVIDER}/callback");
    // Short-lived access tokens, so that a revoked grant shows at the next
    // refresh within the test.
    let idp = Idp::start_native(std::slice::from_ref(&registered), 20, &work);
    let mock = Mock::start();
    std::fs::write(
        data.join("latchkey.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n{}\n{}\n\
             [providers.openai]\nupstream = \"http://127.0.0.1:{}\"\nsecret = \"openai-main\"\n",
            auth_config(""),
            connection_config(&idp, "refresh_margin_secs = 4"),
            mock.port
        ),
    )
    .expect("config");
    let shots = shots_dir("oauth-connect");
    let data_s = data.display().to_string();
    let mut env = DesktopEnv::start(&work, true, &[("LATCHKEY_DATA_DIR", &data_s)]);
    let s = Session::start(
        env.driver_port,
        &bin.display().to_string(),
        Duration::from_secs(90),
    );
    let totp = complete_setup(&s, &shots);

    // The client secret and a provider key, stored with the CLI against
    // the running app.
    for (entry, value) in [
        (SECRET_ENTRY, idp.client_secret.as_str()),
        ("openai-main", "sk-desktop-tray-canary"),
    ] {
        let out = run_cmd_for(
            {
                let mut c = Command::new(latchkey_e2e::latchkey_bin());
                c.args(["vault", "put", entry])
                    .env("LATCHKEY_DATA_DIR", &data);
                c
            },
            value.as_bytes(),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "latchkey vault put {entry} against the app: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let key = key_in_window(
        &s,
        &totp,
        "oauth-agent",
        &format!("connections:{PROVIDER} proxy:openai"),
        None,
    );
    let limited = key_in_window(&s, &totp, "limited-agent", "proxy:openai", Some(1));

    // ------------------------------------------------ connect
    s.click(&s.button("Connections"));
    s.wait_text("Not connected", STEP);
    shot(&s, &shots, "05-connections");
    let page_before = s.url();
    let before = handed(&env).len();
    s.click(&s.button("Connect"));
    wait_until("the authorization URL in the system browser", STEP, || {
        handed(&env).len() > before
    });
    let authorize_url = handed(&env)[before].clone();
    assert!(
        authorize_url.starts_with(&format!("{}/", idp.issuer)),
        "handed to the browser: {authorize_url}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        s.url(),
        page_before,
        "the provider's page never loads in the window"
    );
    shot(&s, &shots, "06-handed-to-browser");
    let q = query_params(&authorize_url);
    let redirect = q.get("redirect_uri").expect("redirect_uri").clone();
    let flow_port: u16 = redirect
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix(&format!("/api/connections/{PROVIDER}/callback")))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("the redirect URI is not a loopback port of its own: {redirect}")
        });
    assert_ne!(flow_port, port, "not the agents' proxy port");
    assert!(q.get("state").is_some_and(|st| st.len() >= 32));

    // A forged state on the flow's port: refused; the flow waits on.
    let forged = http(
        "GET",
        &format!(
            "http://127.0.0.1:{flow_port}/api/connections/{PROVIDER}/callback?code=forged&state={}",
            "0".repeat(64)
        ),
        &[],
        None,
    );
    assert_eq!(forged.status, 400, "forged state: {}", forged.body);

    // The system browser: sign in at the provider and consent.
    let mut browser = OAuthBrowser::anonymous("alice");
    let callback = browser.authorize(&idp, &authorize_url, Decision::Approve);
    assert!(
        callback.starts_with(&format!("{redirect}?")),
        "the provider sent the browser to {callback}"
    );

    // The same callback taken straight to the core's listener (a local
    // program racing the browser there): refused for want of the binding,
    // and the provider is not even asked for a token.
    let direct = http(
        "GET",
        &callback.replacen(&format!(":{flow_port}/"), &format!(":{port}/"), 1),
        &["Accept: application/json"],
        None,
    );
    assert!(
        matches!(direct.status, 400 | 403),
        "callback at the core's port: {} {}",
        direct.status,
        direct.body
    );
    assert_eq!(idp.count("code_requests"), 0, "no code redeemed yet");

    // The browser follows the redirect to the flow's port.
    let done = http("GET", &callback, &[], None);
    assert_eq!(done.status, 200, "the flow's port: {}", done.body);
    assert!(
        done.body.contains("You can close this tab"),
        "{}",
        done.body
    );
    assert_eq!(idp.count("code_success"), 1, "the code was redeemed once");

    // The window comes to the connections screen, connected.
    s.wait_text("is connected", STEP);
    assert!(
        s.url().starts_with("latchkey://localhost/connections"),
        "{}",
        s.url()
    );
    s.wait_text("Disconnect", STEP);
    // The screen's example names where agents reach the broker — the
    // loopback listener — not the window's own `latchkey://` address.
    let shown = s.wait_text(
        &format!("http://127.0.0.1:{port}/api/connections/<provider>/token"),
        STEP,
    );
    assert!(
        !shown.contains("latchkey://localhost/api/"),
        "no example names the window's address: {shown}"
    );
    shot(&s, &shots, "07-connected");

    // Replays: the flow's port is closed, the core has spent the state.
    let again = http("GET", &callback, &[], None);
    assert_ne!(
        again.status, 200,
        "a replay on the flow's port: {}",
        again.body
    );
    let again_core = http(
        "GET",
        &callback.replacen(&format!(":{flow_port}/"), &format!(":{port}/"), 1),
        &["Accept: application/json"],
        None,
    );
    assert!(
        matches!(again_core.status, 400 | 403),
        "a replay at the core: {} {}",
        again_core.status,
        again_core.body
    );
    assert_eq!(
        idp.count("code_requests"),
        1,
        "no replay reached the provider"
    );

    // An agent on this machine: the broker on the loopback proxy.
    let auth = format!("Authorization: Bearer {key}");
    let tok = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/connections/{PROVIDER}/token"),
        &[&auth],
        None,
    );
    assert_eq!(tok.status, 200, "broker: {}", tok.body);
    let v = tok.json();
    assert!(v.get("refresh_token").is_none(), "{}", tok.body);
    let access = v["access_token"].as_str().expect("access_token");
    assert_eq!(
        idp.userinfo(access).status,
        200,
        "the provider accepts the brokered token"
    );
    let log = env.log_text();
    assert!(!log.contains(access), "the access token is not logged");
    assert!(
        !log.contains(q.get("state").map_or("-", String::as_str)),
        "the state is not logged"
    );

    // ------------------------------------------------ the tray
    wait_menu(
        &env,
        &[
            "Unlocked",
            &format!("proxy on port {port}"),
            "No connection needs attention",
            "'Lock'",
        ],
    );

    // A key refused for its rate (one request a minute): a notification.
    let models = format!("http://127.0.0.1:{port}/proxy/openai/v1/models");
    let limited_auth = format!("Authorization: Bearer {limited}");
    let first = http("GET", &models, &[&limited_auth], None);
    assert_ne!(first.status, 429, "the first request is within the limit");
    let second = http("GET", &models, &[&limited_auth], None);
    assert_eq!(second.status, 429, "the second is over it: {}", second.body);
    let body = wait_notification(&env, "A key hit its limit", Duration::from_secs(15));
    assert!(body.contains("rate or token budget"), "{body}");

    // The person removes Latchkey's access at the provider: the next
    // refresh fails, the connection needs reconnecting — a notification
    // naming it, and the tray counts it.
    // (A token fresh from the broker: revoking an expired one does nothing.)
    let fresh = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/connections/{PROVIDER}/token"),
        &[&auth],
        None,
    );
    assert_eq!(fresh.status, 200, "broker: {}", fresh.body);
    let fresh = fresh.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert_eq!(idp.revoke(&fresh), 200);
    let started = std::time::Instant::now();
    let refused = loop {
        let r = http(
            "GET",
            &format!("http://127.0.0.1:{port}/api/connections/{PROVIDER}/token"),
            &[&auth],
            None,
        );
        if r.status != 200 {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no failed refresh after the revocation"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(refused.status, 409, "{}", refused.body);
    let body = wait_notification(
        &env,
        "A connection needs reconnecting",
        Duration::from_secs(15),
    );
    assert!(body.contains(PROVIDER), "{body}");
    wait_menu(&env, &["1 connection needs reconnecting"]);

    let unlocked = http("GET", &models, &[&auth], None);
    assert_ne!(unlocked.status, 423, "unlocked: {}", unlocked.body);
    // "Lock" in the tray menu, clicked as a panel does: the vault seals,
    // the proxy refuses, the menu says so.
    let (service, menu_path, layout) = tray_menu(&env);
    let lock = menu_id(&layout, "Lock").unwrap_or_else(|| panic!("no Lock entry: {layout}"));
    env.gdbus_call(&[
        "--dest",
        &service,
        "--object-path",
        &menu_path,
        "--method",
        "com.canonical.dbusmenu.Event",
        &lock.to_string(),
        "'clicked'",
        "<int32 0>",
        "uint32 0",
    ]);
    wait_until("the proxy to refuse once sealed", STEP, || {
        let r = http("GET", &models, &[&auth], None);
        r.status == 423 && r.body.contains("vault_sealed")
    });
    wait_menu(&env, &["Sealed", &format!("proxy on port {port}")]);
    s.wait_text("Sign in", STEP);
    // The sealed card says how the desktop opens it again (the next
    // launch, from the keychain), not the appliance's `latchkey unseal`.
    let sealed = s.wait_text("Quit Latchkey from its tray menu", STEP);
    assert!(!sealed.contains("latchkey unseal"), "{sealed}");
    shot(&s, &shots, "08-locked-from-tray");

    quit(&data);
    s.end();
    env.stop_driver();
}
