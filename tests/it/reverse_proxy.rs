//! Latchkey behind a real reverse proxy: Debian's Caddy terminates TLS with
//! its internal CA (`tls internal`) and relays plain HTTP to the real
//! `latchkey` binary started with `LATCHKEY_SERVER__TLS=false` on
//! `127.0.0.1`, `server.public_url` set to Caddy's https origin and
//! `auth.trusted_proxies = ["127.0.0.1"]`.
//!
//! Telling peers apart on one machine: every 127.0.0.0/8 address is this
//! host's loopback on Linux, and a connection to 127.0.0.1 leaves from
//! 127.0.0.1 unless bound elsewhere. So Caddy reaches Latchkey from
//! 127.0.0.1 — the trusted proxy — while the test's own "direct" requests
//! bind 127.0.0.2 (`curl --interface`): a loopback peer that is not a
//! trusted proxy. Requests sent *through* Caddy bind 127.0.0.3, which Caddy
//! then names in `X-Forwarded-For`, so the address Latchkey records tells
//! who was believed.
//!
//! What it shows, each against the real processes:
//! - the owner signs in with password + TOTP through Caddy in Chromium
//!   (tests/ui/reverse_proxy.mjs), which trusts Caddy's root through an NSS
//!   database in its `$HOME` (no certificate error is ignored; the same
//!   browser without it refuses the site), and the session cookie as the
//!   browser holds it is `__Host-`, Secure, HttpOnly, SameSite=Strict;
//! - a cross-origin POST carrying the session is refused with 403 `csrf`
//!   (in the browser from another origin of the same site, and with curl),
//!   and forwarded scheme/host claims from a peer that is not a trusted
//!   proxy do not make a foreign origin "own";
//! - the official OpenAI Python SDK streams a chat completion through
//!   `/proxy/openai/v1` via Caddy from the mock upstream of `proxy.rs`,
//!   piece by piece (nothing buffers the stream on the way);
//! - `X-Forwarded-For` is believed only from the trusted proxy: the
//!   sessions list and the audit log show the client Caddy names, a direct
//!   request from 127.0.0.2 claiming another address is recorded as
//!   127.0.0.2;
//! - the admin token relayed by Caddy is refused, the same token straight
//!   to Latchkey's plain loopback port works;
//! - a plain listener on all interfaces without a trusted proxy is refused
//!   at startup with one line naming the keys.

use super::proxy::{Mock, OPENAI_SECRET, no_secrets, seeded};
use latchkey_e2e::caddy::{Caddy, Client, free_port, reverse_proxy_site, static_site};
use latchkey_e2e::ui::{artifacts_dir, print_uncaptured, ui_dir};
use latchkey_e2e::{
    Authenticator, Out, PASSWORD, Resp, ServeOpts, Server, TestDir, auth_config, run_cmd_for,
    spawn_server,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The browser script's bound: Chromium twice (without and with the root)
/// and a sign-in take well under a minute on two cores, plus up to 31 s of
/// waiting for a fresh TOTP step.
const UI_LIMIT: Duration = Duration::from_secs(180);

/// The trusted proxy's address (where Caddy connects from).
const PROXY_IP: &str = "127.0.0.1";
/// A loopback peer that is not a trusted proxy: the test's direct requests.
const DIRECT_IP: &str = "127.0.0.2";
/// The client the test plays when it goes through Caddy.
const CLIENT_IP: &str = "127.0.0.3";

const OWNER: &str = "owner";
const UI_KEY: &str = "from-the-browser";

/// Latchkey's configuration: the proxy's public origin, the trusted proxy,
/// and the OpenAI provider pointing at the mock. `server.tls = false` comes
/// from the environment (`LATCHKEY_SERVER__TLS`), as scripts set it.
fn config(public: &str, mock: u16) -> String {
    format!(
        "[server]\npublic_url = \"{public}\"\n\n{}\n\
         [providers.openai]\nupstream = \"http://127.0.0.1:{mock}\"\nsecret = \"openai-main\"\n",
        auth_config(&format!("trusted_proxies = [\"{PROXY_IP}\"]"))
    )
}

/// The one-time setup link the banner prints while no owner exists:
/// `(origin, token)`.
fn setup_link(s: &Server) -> (String, String) {
    let out = s.stdout();
    let (before, rest) = out
        .split_once("/setup#token=")
        .unwrap_or_else(|| panic!("no `/setup#token=` in the banner:\n{out}"));
    let origin = before
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or_default()
        .to_string();
    let token = rest
        .split(|c: char| c.is_whitespace() || c == ')')
        .next()
        .unwrap_or_default()
        .to_string();
    (origin, token)
}

fn status_is(r: &Resp, want: u16, what: &str) {
    assert_eq!(r.status, want, "{what}: {} {}", r.status, r.body);
}

/// Every `Set-Cookie` for the session cookie, as received.
fn session_set_cookie(r: &Resp) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, v)| k == "set-cookie" && v.starts_with("__Host-latchkey_session="))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The attributes a `Set-Cookie` value carries, lower-cased, without
/// `Max-Age` (which varies).
fn cookie_attrs(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| !a.starts_with("max-age="))
        .collect()
}

fn assert_session_cookie_flags(r: &Resp, what: &str) {
    let set = session_set_cookie(r);
    assert_eq!(
        set.len(),
        1,
        "{what}: one session cookie set: {:?}",
        r.headers
    );
    let attrs = cookie_attrs(&set[0]);
    for want in ["secure", "httponly", "samesite=strict", "path=/"] {
        assert!(
            attrs.iter().any(|a| a == want),
            "{what}: the session cookie lacks `{want}`: {attrs:?}"
        );
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain=")),
        "{what}: a __Host- cookie names no Domain: {attrs:?}"
    );
}

/// Password, then a TOTP code: the owner's sign-in as the web UI does it.
fn sign_in(c: &Client, totp: &Authenticator, what: &str) -> Resp {
    let r = c.post(
        "/api/auth/login",
        &json!({"username": OWNER, "password": PASSWORD}),
        &[],
    );
    status_is(&r, 200, &format!("{what}: login"));
    let v = r.json();
    assert_eq!(v["mfa_required"], true, "{what}: {}", r.body);
    let ticket = v["ticket"].as_str().expect("ticket").to_string();
    let r = c.post(
        "/api/auth/mfa",
        &json!({"ticket": ticket, "code": totp.code()}),
        &[],
    );
    status_is(&r, 200, &format!("{what}: mfa"));
    r
}

/// A failed sign-in as `username` (no such user), with `headers`.
fn failed_login(c: &Client, username: &str, headers: &[&str]) {
    let r = c.post(
        "/api/auth/login",
        &json!({"username": username, "password": "not-the-password-0"}),
        headers,
    );
    status_is(&r, 401, &format!("failed login as {username}"));
}

/// The address the audit log recorded for the failed login of `actor`,
/// read with the admin token straight from the host (waits at most 5 s).
fn audited_ip(admin: &Client, token: &str, actor: &str) -> String {
    let auth = format!("Authorization: Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin.get(&format!("/api/audit?actor={actor}&limit=10"), &[&auth]);
        status_is(&r, 200, "audit");
        let events = r.json()["events"].as_array().cloned().unwrap_or_default();
        if let Some(e) = events
            .iter()
            .find(|e| e["action"] == "login" && e["outcome"] == "failure")
        {
            return e["ip"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no failed login of {actor} in the audit log: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Chromium profile home whose NSS database (`~/.pki/nssdb`, what
/// Chromium on Linux reads for locally added roots) trusts `root` to
/// identify websites, made with NSS's own `certutil`.
fn nss_home(work: &Path, root: &Path) -> PathBuf {
    let home = work.join("chromium-home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap_or_else(|e| panic!("create {}: {e}", db.display()));
    let sql = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let mut c = Command::new("certutil");
        c.args(args);
        let out = run_cmd_for(c, b"", Duration::from_secs(30));
        assert!(
            out.status.success(),
            "certutil {args:?} failed (run scripts/install-deps.sh for libnss3-tools): {}{}",
            out.stdout,
            out.stderr
        );
    };
    certutil(&["-N", "-d", &sql, "--empty-password"]);
    let root = root.to_str().expect("utf8 path");
    certutil(&[
        "-A",
        "-d",
        &sql,
        "-n",
        "Caddy Local Authority (test)",
        "-t",
        "C,,",
        "-i",
        root,
    ]);
    home
}

/// `node tests/ui/reverse_proxy.mjs` with a clean environment, killed after
/// [`UI_LIMIT`]; the script closes its browsers before its own deadline.
fn run_browser(home: &Path, env: &[(&str, &str)]) -> Out {
    let dir = ui_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: run scripts/install-deps.sh (npm ci --prefix tests/ui)",
        dir.display()
    );
    let mut c = Command::new("node");
    c.arg(dir.join("reverse_proxy.mjs"))
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .env(
            "LK_DEADLINE_MS",
            UI_LIMIT.as_millis().saturating_sub(20_000).to_string(),
        );
    if let Some(chromium) = std::env::var_os("CHROMIUM") {
        c.env("CHROMIUM", chromium);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    run_cmd_for(c, b"", UI_LIMIT)
}

/// `python3 tests/sdk/openai_stream.py` against `url`, trusting `ca` only.
fn run_sdk(url: &str, key: &str, ca: &Path) -> Out {
    let c = latchkey_e2e::sdk_script("openai_stream.py", "openai", url, key, ca);
    run_cmd_for(c, b"", Duration::from_secs(60))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn caddy_terminates_tls_for_plain_latchkey() {
    let started = Instant::now();
    let mock = Mock::start();
    let d = seeded();
    let work = d.path().to_path_buf();
    let caddy_port = free_port();
    let other_port = free_port();
    let public = format!("https://localhost:{caddy_port}");
    let other = format!("https://localhost:{other_port}");

    // ---------------------------------------------------------- start
    let mut s = spawn_server(
        &d,
        &ServeOpts::new()
            .config(&config(&public, mock.port))
            .env("LATCHKEY_SERVER__TLS", "false"),
    );
    assert_eq!(s.scheme, "http", "the lock file names a plain http:// URL");
    let plain = format!("http://127.0.0.1:{}", s.port);
    let (link_origin, setup_token) = setup_link(&s);
    assert_eq!(
        link_origin,
        public,
        "the banner's setup link uses the public (proxy) origin:\n{}",
        s.stdout()
    );

    // A page on another origin of the same site, for the browser's
    // cross-origin POST: a plain form posting to Latchkey's key endpoint.
    let evil_root = work.join("other-site");
    std::fs::create_dir_all(&evil_root).expect("create other-site");
    std::fs::write(
        evil_root.join("csrf.html"),
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Other site</title></head>\
             <body><main><h1>Other site</h1><form method=\"post\" action=\"{public}/api/keys\">\
             <input type=\"hidden\" name=\"name\" value=\"csrf\"><button type=\"submit\">Send</button>\
             </form></main></body></html>\n"
        ),
    )
    .expect("write csrf.html");
    let sites = format!(
        "{}\n{}",
        reverse_proxy_site(caddy_port, &format!("127.0.0.1:{}", s.port)),
        static_site(other_port, &evil_root)
    );
    let caddy = Caddy::start(&work, caddy_port, &sites);
    let root = caddy.root_ca();
    let via = |ip: &str| {
        Client::new(&public, &work)
            .tls(&root, caddy_port)
            .from_ip(ip)
    };
    let direct = |ip: &str| Client::new(&plain, &work).from_ip(ip);
    let admin_token = s.admin_token();
    let admin_auth = format!("Authorization: Bearer {admin_token}");

    // ---------------------------------------------------------- setup
    // The owner is created through Caddy, with the banner's token.
    let owner = via(CLIENT_IP).browser();
    let r = owner.post(
        "/api/setup/begin",
        &json!({"token": setup_token, "username": OWNER, "password": PASSWORD}),
        &[],
    );
    status_is(&r, 200, "setup/begin through Caddy");
    let uri = r.json()["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_string();
    let totp = Authenticator::new(&uri);
    let r = owner.post(
        "/api/setup/confirm",
        &json!({"token": setup_token, "username": OWNER, "code": totp.code()}),
        &[],
    );
    status_is(&r, 200, "setup/confirm through Caddy");
    assert_session_cookie_flags(&r, "setup/confirm through Caddy");

    // ------------------------------------ X-Forwarded-For and who is believed
    // A fresh sign-in through Caddy from CLIENT_IP: the session is recorded
    // under the address Caddy names, not Caddy's own.
    let signed = via(CLIENT_IP).browser();
    let r = sign_in(&signed, &totp, "sign-in through Caddy");
    assert_session_cookie_flags(&r, "sign-in through Caddy");
    let r = signed.get("/api/account/sessions", &[]);
    status_is(&r, 200, "sessions through Caddy");
    let sessions = r.json();
    let current = sessions
        .as_array()
        .and_then(|a| a.iter().find(|v| v["current"] == true))
        .cloned()
        .unwrap_or_else(|| panic!("no current session: {sessions}"));
    assert_eq!(
        current["ip"], CLIENT_IP,
        "the session records the client Caddy forwarded for: {sessions}"
    );

    // A client claiming an address through Caddy: Caddy replaces the claim
    // with the address it saw, and that is what Latchkey records.
    failed_login(
        &via(CLIENT_IP),
        "probe-via-caddy",
        &["X-Forwarded-For: 203.0.113.7"],
    );
    // Straight to the plain port from a loopback address that is not a
    // trusted proxy, claiming another: not believed.
    failed_login(
        &direct(DIRECT_IP),
        "probe-direct",
        &["X-Forwarded-For: 203.0.113.8"],
    );
    // The same claim from the trusted proxy's address is believed: trust
    // follows the peer, not the header.
    failed_login(
        &direct(PROXY_IP),
        "probe-trusted",
        &["X-Forwarded-For: 203.0.113.9"],
    );
    let admin = direct(DIRECT_IP);
    assert_eq!(
        audited_ip(&admin, &admin_token, "probe-via-caddy"),
        CLIENT_IP
    );
    assert_eq!(
        audited_ip(&admin, &admin_token, "probe-direct"),
        DIRECT_IP,
        "X-Forwarded-For from a peer that is not a trusted proxy was believed"
    );
    assert_eq!(
        audited_ip(&admin, &admin_token, "probe-trusted"),
        "203.0.113.9"
    );

    // ---------------------------------------------------------- admin token
    for (c, what) in [
        (via(CLIENT_IP), "relayed by Caddy"),
        (via(DIRECT_IP), "relayed by Caddy from another client"),
    ] {
        let r = c.get("/api/status", &[&admin_auth]);
        assert!(
            matches!(r.status, 401 | 403),
            "the admin token {what} was not refused: {} {}",
            r.status,
            r.body
        );
        assert!(
            matches!(r.error_code().as_str(), "unauthenticated" | "forbidden"),
            "{}",
            r.body
        );
    }
    let r = direct(DIRECT_IP).get("/api/status", &[&admin_auth]);
    status_is(
        &r,
        200,
        "the admin token straight to the plain loopback port",
    );
    // A forwarding header sent straight to the port makes the request a
    // relayed one: no host authority either.
    let r = direct(DIRECT_IP).get("/api/status", &[&admin_auth, "X-Forwarded-For: 127.0.0.1"]);
    assert!(
        matches!(r.status, 401 | 403),
        "the admin token with a forwarding header: {} {}",
        r.status,
        r.body
    );

    // ---------------------------------------------------------- CSRF (curl)
    let owner_cookie = owner.cookie().expect("the owner's session cookie");
    let cookie = format!("Cookie: __Host-latchkey_session={owner_cookie}");
    let key_body = json!({"name": "csrf-probe", "scopes": ["proxy:openai"]});
    for origin in [
        "https://evil.example".to_string(),
        other.clone(),
        format!("http://localhost:{caddy_port}"),
    ] {
        let mut c = via(CLIENT_IP);
        c.origin = Some(origin.clone());
        let r = c.post("/api/keys", &key_body, &[&cookie]);
        status_is(&r, 403, &format!("cross-origin POST from {origin}"));
        assert_eq!(r.error_code(), "csrf", "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "the refusal is JSON: {:?}",
            r.headers
        );
    }
    // Forwarded scheme and host from a peer that is not a trusted proxy do
    // not turn a foreign origin into Latchkey's own.
    let mut c = direct(DIRECT_IP);
    c.origin = Some("https://evil.example".into());
    let r = c.post(
        "/api/keys",
        &key_body,
        &[
            &cookie,
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil.example",
        ],
    );
    status_is(&r, 403, "spoofed X-Forwarded-Host straight to the port");
    assert_eq!(r.error_code(), "csrf", "{}", r.body);
    // None of the refused posts made a key.
    let r = owner.get("/api/keys", &[]);
    status_is(&r, 200, "keys");
    assert!(!r.body.contains("csrf-probe"), "{}", r.body);

    // ---------------------------------------------------------- the browser
    let home = nss_home(&work, &root);
    let bare_home = work.join("chromium-bare-home");
    std::fs::create_dir_all(&bare_home).expect("create bare home");
    let artifacts = artifacts_dir("reverse_proxy");
    let secret = latchkey_e2e::totp_secret(&uri);
    let last_step = totp.last_step().expect("a TOTP step was used").to_string();
    let art = artifacts.to_str().expect("utf8 path").to_string();
    let bare = bare_home.to_str().expect("utf8 path").to_string();
    let out = run_browser(
        &home,
        &[
            ("LK_URL", &public),
            ("LK_ARTIFACTS", &art),
            ("LK_OTHER_ORIGIN", &other),
            ("LK_UNTRUSTED_HOME", &bare),
            ("LK_TOTP_SECRET", &secret),
            ("LK_TOTP_LAST_STEP", &last_step),
            ("LK_KEY_NAME", UI_KEY),
        ],
    );
    print_uncaptured(
        &out.stdout
            .lines()
            .filter(|l| l.starts_with("ui-cookie: ") || l.starts_with("ui-csrf: "))
            .map(|l| format!("reverse_proxy {l}\n"))
            .collect::<String>(),
    );
    assert!(
        out.status.success() && out.stdout.contains(" passed, 0 failed"),
        "the browser through Caddy failed ({:?}):\n--- stdout\n{}\n--- stderr\n{}\n--- latchkey log (tail)\n{}\n--- caddy log (tail)\n{}",
        out.status,
        out.stdout,
        out.stderr,
        tail(&s.stderr(), 30),
        tail(&caddy.log(), 30)
    );
    for line in [
        "ui-cookie: name=__Host-latchkey_session secure=true httpOnly=true sameSite=Strict path=/ domain=localhost",
        "ui-csrf: status=403 error=csrf sec-fetch-site=same-site",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing `{line}`:\n{}",
            out.stdout
        );
    }
    // The browser's same-origin POST made its key; the cross-origin one
    // made none.
    let r = admin.get("/api/keys?all=true", &[&admin_auth]);
    status_is(&r, 200, "keys (admin)");
    let keys = r.json();
    let names: Vec<&str> = keys
        .as_array()
        .map(|a| a.iter().filter_map(|k| k["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![UI_KEY], "keys after the browser: {keys}");

    // ---------------------------------------------------------- the SDK
    let r = owner.post(
        "/api/keys",
        &json!({"name": "sdk", "scopes": ["proxy:openai"]}),
        &[],
    );
    status_is(&r, 201, "create a key through Caddy");
    let key = r.json()["key"].as_str().expect("key").to_string();
    let out = run_sdk(&public, &key, &root);
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert!(
        out.status.success(),
        "the OpenAI SDK through Caddy failed:\n{text}\n--- caddy log (tail)\n{}",
        tail(&caddy.log(), 20)
    );
    for check in ["ok   plain", "ok   stream"] {
        assert!(text.contains(check), "missing `{check}`:\n{text}");
    }
    let timing: Value = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("stream-timing: "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no stream-timing line:\n{text}"));
    print_uncaptured(&format!(
        "reverse_proxy sdk stream through Caddy: {timing}\n"
    ));
    let at = |i: usize| timing[i]["at_ms"].as_u64().unwrap_or(0);
    assert_eq!(timing[0]["text"], "first", "{timing}");
    assert_eq!(timing[1]["text"], "second", "{timing}");
    // The mock pauses 1.5 s between the pieces: a relay that buffered the
    // stream would hand both over at once.
    assert!(
        at(1).saturating_sub(at(0)) >= 1000,
        "the stream arrived in one go through Caddy: {timing}"
    );
    no_secrets("what the SDK saw", &text);
    let seen = mock.seen();
    let calls: Vec<_> = seen
        .iter()
        .filter(|r| r.target.starts_with("/v1/chat/completions"))
        .collect();
    assert_eq!(calls.len(), 2, "{seen:?}");
    for call in calls {
        assert_eq!(
            call.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {OPENAI_SECRET}").as_str())
        );
        assert!(
            !format!("{:?}", call.headers).contains(&key),
            "the upstream saw the lk_ key"
        );
        assert!(
            !call.headers.keys().any(|k| k.starts_with("x-forwarded")),
            "the upstream saw the relay's forwarding headers: {:?}",
            call.headers
        );
    }

    // ---------------------------------------------------------- the end
    let logs = format!("{}{}{}", s.stdout(), s.stderr(), caddy.log());
    no_secrets("the logs", &logs);
    assert!(
        !logs.contains(&admin_token) && !logs.contains(&key) && !logs.contains(&owner_cookie),
        "a credential reached a log"
    );
    s.stop();
    drop(caddy);
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "the reverse-proxy test took {:?}",
        started.elapsed()
    );
}

/// A plain listener on every interface with no trusted proxy would hand
/// sessions and keys to the network in clear text: `serve` refuses to
/// start, exits non-zero with one line that names the keys to change, and
/// never listens. Both spellings of the switch (file and environment) and
/// both address families.
#[test]
fn plain_listener_on_all_interfaces_is_refused() {
    for (listen, in_file) in [("0.0.0.0:0", true), ("[::]:0", false)] {
        let d = TestDir::new();
        let mut cfg = auth_config("");
        if in_file {
            cfg = format!("[server]\ntls = false\n\n{cfg}");
        }
        d.write_config(&cfg);
        let mut c = d.cmd(&["serve", "--listen", listen]);
        if !in_file {
            c.env("LATCHKEY_SERVER__TLS", "false");
        }
        let out = run_cmd_for(c, b"", Duration::from_secs(30));
        assert!(
            !out.status.success(),
            "serve --listen {listen} with tls = false and no trusted proxy started:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(
            !out.stdout.contains("Listening on"),
            "it listened before refusing:\n{}",
            out.stdout
        );
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("latchkey: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "one error line for {listen}:\n{}",
            out.stderr
        );
        assert!(
            errors[0].contains("server.tls") && errors[0].contains("auth.trusted_proxies"),
            "the error names the keys to change: {}",
            errors[0]
        );
    }
}
