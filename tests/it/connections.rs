//! OAuth connections through the real binary against a real OpenID Connect
//! provider on loopback (`oidc-provider`, see `tests/oidc/`): the connect
//! flow with PKCE driven by an HTTP client that behaves like a browser, the
//! credential broker, automatic and single-flight refresh with rotating
//! refresh tokens, restarts, revocation at the provider, disconnect — and
//! the attacks on the flow (forged, replayed and foreign `state`, a missing
//! binding cookie, code injection, a denied consent) and on the broker
//! (missing scope, another user's connection, refresh-token leaks).
//!
//! All of these need the connections code (core/src/connections, brief D1).

use latchkey_e2e::oidc::{
    BINDING_COOKIE, Decision, Idp, OAuthBrowser, PROVIDER, SECRET_ENTRY, callback_urls,
    connection_config, free_port, query_params, with_param,
};
use latchkey_e2e::{
    Browser, PASSWORD, Resp, ServeOpts, Server, TestDir, auth_config, contains_bytes, create_key,
    files_under, invited, spawn_server, web_setup,
};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Access-token lifetime at the provider, in seconds. Latchkey's background
/// task refreshes a connection *in use* from 10 s before its refresh point
/// (scanning every 5 s): with 20 s tokens a fresh one is left alone for
/// ~6 s, long enough for the 50-caller burst to be counted on its own.
const TTL: u64 = 20;
/// Latchkey's `refresh_margin_secs`: a token is refreshed once it has less
/// than this left.
const MARGIN: u64 = 4;
/// Bound for waits on a refresh that is due (background or on demand).
const REFRESH_WAIT: Duration = Duration::from_secs(40);
/// From a fresh token until the broker must refresh it, plus slack.
const UNTIL_STALE: Duration = Duration::from_millis((TTL - MARGIN) * 1000 + 1200);

const JSON: &str = "Accept: application/json";

/// A provider, a data directory with the client secret in the vault, and a
/// running Latchkey on a port registered at the provider.
struct Setup {
    idp: Idp,
    d: TestDir,
    opts: ServeOpts,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(|_| String::new())
    }

    /// With `extra` configuration, made from the running provider.
    fn with(extra: impl Fn(&Idp) -> String) -> Setup {
        let d = TestDir::new();
        let port = free_port();
        let idp = Idp::start(&callback_urls(port, PROVIDER), TTL, d.path());
        d.ok(
            &["vault", "put", SECRET_ENTRY],
            idp.client_secret.as_bytes(),
        );
        let config = format!(
            "{}\n{}\n{}",
            auth_config(""),
            connection_config(&idp, &format!("refresh_margin_secs = {MARGIN}")),
            extra(&idp)
        );
        let opts = ServeOpts {
            listen: format!("127.0.0.1:{port}"),
            ..ServeOpts::new().config(&config)
        };
        Setup { idp, d, opts }
    }

    fn serve(&self) -> Server {
        spawn_server(&self.d, &self.opts)
    }
}

/// `GET /api/connections` as `b`; the entry for `PROVIDER`, if any.
fn listed(b: &Browser<'_>) -> Option<serde_json::Value> {
    let r = b.get("/api/connections");
    assert_eq!(r.status, 200, "list: {}", r.body);
    r.json()["connections"]
        .as_array()
        .expect("connections array")
        .iter()
        .find(|c| c["provider"] == PROVIDER)
        .cloned()
}

/// The broker with an API key.
fn broker(s: &Server, key: &str) -> Resp {
    s.bearer(
        key,
        "GET",
        &format!("/api/connections/{PROVIDER}/token"),
        None,
    )
}

/// The broker's access token, asserting the answer's shape: exactly
/// `access_token`, `token_type`, `expires_at`, `scopes` — no refresh token.
fn token_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "broker: {}", r.body);
    let v = r.json();
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["access_token", "expires_at", "scopes", "token_type"],
        "{}",
        r.body
    );
    assert!(
        v["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "{}",
        r.body
    );
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Audit events whose action mentions connections (newest first).
fn connection_events(b: &Browser<'_>) -> Vec<serde_json::Value> {
    let r = b.get("/api/audit?limit=200");
    assert_eq!(r.status, 200, "audit: {}", r.body);
    r.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.contains("connection"))
        })
        .cloned()
        .collect()
}

/// Asserts that no refresh token the provider ever issued appears in `text`.
fn no_refresh_token(idp: &Idp, what: &str, text: &str) {
    let (refresh, _) = idp.issued();
    assert!(!refresh.is_empty(), "the provider issued no refresh token");
    for t in &refresh {
        assert!(
            !text.contains(t.as_str()),
            "{what} contains a refresh token"
        );
    }
}

#[test]
fn connect_broker_refresh_restart_revoke_disconnect() {
    let setup = Setup::new();
    let idp = &setup.idp;
    let mut s = setup.serve();
    let (key, totp, t3) = {
        let owner = web_setup(&s, "owner");
        let b = &owner.browser;

        // The provider is configured and its client secret found.
        let r = b.get("/api/connections/providers");
        assert_eq!(r.status, 200, "providers: {}", r.body);
        assert!(r.body.contains(PROVIDER), "{}", r.body);
        assert!(listed(b).is_none(), "connected before connecting");

        // The flow: /start redirects to the provider with PKCE S256, a strong
        // single-use state and a nonce.
        let mut ob = OAuthBrowser::new(b, "alice");
        let auth = ob.start_ok(&s, idp, PROVIDER);
        let q = query_params(&auth);
        assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
        assert_eq!(q.get("client_id").map(String::as_str), Some("latchkey"));
        assert_eq!(
            q.get("code_challenge_method").map(String::as_str),
            Some("S256")
        );
        let challenge = q.get("code_challenge").expect("code_challenge");
        assert_eq!(challenge.len(), 43, "S256 challenge is 32 bytes base64url");
        let state = q.get("state").expect("state");
        assert!(state.len() >= 22, "state has ≥128 bits: {state:?}");
        assert!(
            q.contains_key("nonce"),
            "OIDC request without nonce: {auth}"
        );
        let redirect = q.get("redirect_uri").expect("redirect_uri");
        assert!(
            callback_urls(s.port, PROVIDER).contains(redirect),
            "redirect_uri {redirect}"
        );
        assert_eq!(idp.count("code_requests"), 0);

        // Sign in and consent at the provider; the callback arrives without the
        // SameSite=Strict session cookie and still completes.
        let cb = ob.authorize(idp, &auth, Decision::Approve);
        let r = ob.callback(&s, &cb, &[]);
        assert_eq!(r.status, 303, "callback: {} {:?}", r.body, r.headers);
        assert_eq!(
            r.header("location"),
            Some(format!("/?connected={PROVIDER}").as_str())
        );
        assert!(
            ob.latchkey.get(BINDING_COOKIE).is_none(),
            "the binding cookie outlives the flow"
        );
        assert_eq!(idp.count("code_success"), 1, "{}", idp.stats());

        let c = listed(b).expect("listed after connecting");
        assert_eq!(c["status"], "connected", "{c}");
        assert!(
            c["scopes"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "openid")),
            "{c}"
        );

        let connected = Instant::now();
        let (_, key) = create_key(b, "agent", &[&format!("connections:{PROVIDER}")]);
        assert_eq!(idp.refreshes(), 0, "refreshed before any use");

        // The connection has not been used yet, so nothing refreshes it in
        // the background. Once its token is inside the refresh margin, 50
        // concurrent broker calls cause exactly one refresh (the provider
        // rotates refresh tokens: a second refresh with the old one would be
        // refused and revoke the grant), and every caller gets the new
        // token, one the provider accepts.
        std::thread::sleep(UNTIL_STALE.saturating_sub(connected.elapsed()));
        let go = Arc::new(Barrier::new(50));
        let answers: Vec<Resp> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..50)
                .map(|_| {
                    let go = Arc::clone(&go);
                    let (s, key) = (&s, &key);
                    sc.spawn(move || {
                        go.wait();
                        broker(s, key)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("broker thread"))
                .collect()
        });
        let mut distinct: Vec<String> = answers.iter().map(token_of).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let (_, access) = idp.issued();
        assert_eq!(
            distinct.len(),
            1,
            "concurrent callers got different tokens ({} refreshes; issued: {access:?}; answers: {:?})",
            idp.refreshes(),
            answers.iter().map(|r| r.body.as_str()).collect::<Vec<_>>()
        );
        let t1 = distinct[0].clone();
        for r in &answers {
            no_refresh_token(idp, "the broker's answer", &r.body);
        }
        assert_eq!(
            idp.refreshes(),
            1,
            "50 concurrent calls at expiry: {}",
            idp.stats()
        );
        assert_eq!(idp.count("refresh_errors"), 0, "{}", idp.stats());
        let (_, access) = idp.issued();
        assert_eq!(
            access.last(),
            Some(&t1),
            "the broker did not hand out the refreshed token"
        );
        assert_eq!(idp.introspect(&t1)["active"], true);
        let ui = idp.userinfo(&t1);
        assert_eq!(ui.status, 200, "userinfo: {}", ui.body);
        assert_eq!(ui.json()["sub"], "alice");

        // In use now: the background refreshes it before it goes stale,
        // with no broker call waiting for it.
        let deadline = Instant::now() + REFRESH_WAIT;
        while idp.refreshes() < 2 {
            assert!(
                Instant::now() < deadline,
                "no background refresh of a connection in use: {}",
                idp.stats()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(idp.count("refresh_errors"), 0, "{}", idp.stats());

        // A valid token is served from the cache: over quick successive
        // calls (key and session) every change of token is explained by a
        // provider refresh, and there is at most one (the background's).
        let before = idp.refreshes();
        let mut seen: Vec<String> = Vec::new();
        for i in 0..10 {
            let r = if i % 2 == 0 {
                broker(&s, &key)
            } else {
                b.get(&format!("/api/connections/{PROVIDER}/token"))
            };
            let t = token_of(&r);
            if seen.last() != Some(&t) {
                seen.push(t);
            }
        }
        let refreshed = idp.refreshes() - before;
        assert!(
            refreshed <= 1,
            "valid tokens were refreshed: {}",
            idp.stats()
        );
        assert_eq!(
            seen.len() as u64,
            refreshed + 1,
            "tokens changed without a refresh"
        );
        let t3 = seen.last().expect("a token").clone();
        assert_ne!(t3, t1);
        assert_eq!(idp.introspect(&t3)["active"], true);
        let c = listed(b).expect("listed");
        assert_eq!(c["status"], "connected", "{c}");
        assert!(!c["last_refresh_at"].is_null(), "{c}");
        assert!(!c["last_used_at"].is_null(), "{c}");
        no_refresh_token(idp, "the list", &b.get("/api/connections").body);
        (key, owner.totp, t3)
    };

    // Restart: the connection and the rotated refresh token survive (using
    // a stale refresh token would make the provider revoke the grant).
    s.stop();
    drop(s);
    let s = setup.serve();
    let t4 = token_of(&broker(&s, &key));
    assert_eq!(idp.count("refresh_errors"), 0, "{}", idp.stats());
    let before = idp.refreshes();
    // The next refresh (in the background, or on demand once stale) uses
    // the refresh token persisted before the restart.
    let deadline = Instant::now() + REFRESH_WAIT;
    let t5 = loop {
        let t = token_of(&broker(&s, &key));
        if t != t4 {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh after the restart: {}",
            idp.stats()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_ne!(t5, t3);
    assert!(idp.refreshes() > before, "{}", idp.stats());
    assert_eq!(idp.introspect(&t5)["active"], true);
    assert_eq!(idp.count("refresh_errors"), 0, "{}", idp.stats());
    let b = Browser::new(&s);
    b.login("owner", latchkey_e2e::PASSWORD, Some(&totp));
    assert_eq!(
        listed(&b).expect("listed after restart")["status"],
        "connected"
    );

    // The user removes access at the provider: the next refresh fails with
    // invalid_grant → needs_reconnect (listed, 409 from the broker, audited).
    assert_eq!(idp.revoke(&t5), 200);
    assert_eq!(idp.introspect(&t5)["active"], false);
    // Until the next refresh the cached token is all Latchkey knows of.
    let deadline = Instant::now() + REFRESH_WAIT;
    let r = loop {
        let r = broker(&s, &key);
        if r.status != 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no failed refresh after the revocation: {}",
            idp.stats()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(r.status, 409, "broker after revocation: {}", r.body);
    assert_eq!(r.error_code(), "needs_reconnect");
    let c = listed(&b).expect("still listed");
    assert_eq!(c["status"], "needs_reconnect", "{c}");
    let events = connection_events(&b);
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "connection.needs_reconnect" && e["outcome"] == "failure"),
        "no audit event for needs_reconnect: {events:?}"
    );
    let r = broker(&s, &key);
    assert_eq!(r.status, 409, "{}", r.body);

    // Reconnecting repairs it.
    let mut ob = OAuthBrowser::new(&b, "alice");
    let r = ob.connect(&s, idp, PROVIDER);
    assert_eq!(r.status, 303, "reconnect: {}", r.body);
    assert_eq!(listed(&b).expect("listed")["status"], "connected");
    let t6 = token_of(&broker(&s, &key));
    assert_eq!(idp.introspect(&t6)["active"], true);

    // Disconnect: revoked at the provider, gone from the list and broker.
    let revocations = idp.count("revocations");
    let r = b.call("DELETE", &format!("/api/connections/{PROVIDER}"), None);
    assert_eq!(r.status, 200, "disconnect: {}", r.body);
    assert_eq!(r.json()["revocation"], "revoked", "{}", r.body);
    assert!(
        idp.count("revocations") > revocations,
        "disconnect did not revoke ({}): {}",
        r.body,
        idp.stats()
    );
    assert_eq!(idp.introspect(&t6)["active"], false, "not revoked");
    assert!(listed(&b).is_none(), "listed after disconnect");
    let r = broker(&s, &key);
    assert_eq!(r.status, 404, "broker after disconnect: {}", r.body);
    assert_eq!(r.error_code(), "no_connection");

    // Every issuance was audited, and no refresh token reached the audit
    // log, the logs, or any file of the data directory in plain text.
    let events = connection_events(&b);
    assert!(events.len() >= 4, "{events:?}");
    let audit = b.get("/api/audit?limit=500").body;
    no_refresh_token(idp, "the audit log", &audit);
    let (refresh, access) = idp.issued();
    for t in refresh.iter().chain(&access) {
        assert!(!audit.contains(t.as_str()), "a token in the audit log");
        assert!(!s.stderr().contains(t.as_str()), "a token in the logs");
    }
    for f in files_under(&setup.d.data()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for t in &refresh {
            assert!(
                !contains_bytes(&bytes, t.as_bytes()),
                "{} holds a refresh token in plain text",
                f.display()
            );
        }
    }
}

/// Nothing stored for `b`'s user, and the provider exchanged no code.
fn nothing_stored(b: &Browser<'_>) {
    assert!(listed(b).is_none(), "a connection was stored");
}

#[test]
fn callback_refuses_forged_replayed_foreign_and_unbound_state() {
    let setup = Setup::new();
    let idp = &setup.idp;
    let s = setup.serve();
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let user = invited(&s, b, "mallory", "user");

    // Forged state: a real code with a state Latchkey never issued.
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Approve);
    // Callbacks that do not end this browser's flow leave its cookie
    // alone (checked below); putting it back is then a no-op.
    let binding = ob
        .latchkey
        .get(BINDING_COOKIE)
        .expect("binding")
        .to_string();
    let forged = with_param(
        &cb,
        "state",
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );
    let r = ob.callback(&s, &forged, &[JSON]);
    assert_eq!(r.status, 400, "forged state: {}", r.body);
    assert_eq!(r.error_code(), "invalid_state");
    let r = ob.callback(&s, &with_param(&cb, "state", None), &[JSON]);
    assert_eq!(r.status, 400, "no state: {}", r.body);
    nothing_stored(b);
    assert_eq!(idp.count("code_requests"), 0, "a code was exchanged");
    assert_eq!(
        ob.latchkey.get(BINDING_COOKIE),
        Some(binding.as_str()),
        "a stray callback cleared the binding cookie of a flow in progress"
    );

    // Replayed state: the genuine callback works once, then never again
    // (even with the old binding cookie put back).
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 200, "genuine callback (JSON): {}", r.body);
    assert_eq!(r.json()["status"], "connected", "{}", r.body);
    assert_eq!(listed(b).expect("connected")["status"], "connected");
    ob.latchkey.set(BINDING_COOKIE, &binding);
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "replayed callback: {}", r.body);
    assert_eq!(r.error_code(), "invalid_state");
    assert_eq!(idp.count("code_requests"), 1, "{}", idp.stats());
    let r = b.call("DELETE", &format!("/api/connections/{PROVIDER}"), None);
    assert!(r.status == 200 || r.status == 204, "{}", r.body);
    nothing_stored(b);

    // State from another user's session: mallory starts a flow and lures
    // the owner's browser (which has its own pending flow) through it.
    let mut mb = OAuthBrowser::new(&user, "mallory");
    let m_auth = mb.start_ok(&s, idp, PROVIDER);
    let mut ob = OAuthBrowser::new(b, "alice");
    let _own = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &m_auth, Decision::Approve);
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "foreign state: {}", r.body);
    assert_eq!(r.error_code(), "state_mismatch");
    nothing_stored(b);
    nothing_stored(&user);
    // The foreign callback did not end the owner's own flow: its binding
    // cookie is still there. (It no longer spends mallory's state either:
    // a callback without a state's binding changes nothing — issue #19
    // item 16; the code was issued for mallory's PKCE challenge, and only
    // a browser holding mallory's binding could deliver it.)
    assert!(ob.latchkey.get(BINDING_COOKIE).is_some(), "{:?}", r.headers);
    let codes = idp.count("code_requests");
    assert_eq!(codes, 1, "a foreign state led to a code exchange");

    // No binding cookie (another browser, or cookies blocked): refused,
    // and the flow is left alone — the browser that started it still
    // completes it, once.
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Approve);
    let binding = ob
        .latchkey
        .get(BINDING_COOKIE)
        .expect("binding")
        .to_string();
    ob.latchkey.remove(BINDING_COOKIE);
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "no binding cookie: {}", r.body);
    assert_eq!(r.error_code(), "state_mismatch");
    assert_eq!(idp.count("code_requests"), codes, "{}", idp.stats());
    ob.latchkey.set(BINDING_COOKIE, &binding);
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(
        r.status, 200,
        "the flow's own browser after a stray hit: {}",
        r.body
    );
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "state reused: {}", r.body);
    assert_eq!(r.error_code(), "invalid_state");
    let r = b.call("DELETE", &format!("/api/connections/{PROVIDER}"), None);
    assert!(r.status == 200 || r.status == 204, "{}", r.body);
    nothing_stored(b);
    let codes = codes + 1;
    // A wrong binding cookie value is no better.
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Approve);
    ob.latchkey.set(BINDING_COOKIE, "forged-binding-value");
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "forged binding cookie: {}", r.body);
    assert_eq!(r.error_code(), "state_mismatch");
    nothing_stored(b);
    assert_eq!(idp.count("code_requests"), codes, "{}", idp.stats());

    // Browsers get a page, not a redirect to "connected".
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Approve);
    let r = ob.callback(&s, &with_param(&cb, "state", Some("nope")), &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.header("location").is_none(), "{:?}", r.headers);
    nothing_stored(b);
}

#[test]
fn callback_refuses_injected_codes_and_reports_denial() {
    let setup = Setup::new();
    let idp = &setup.idp;
    let s = setup.serve();
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let user = invited(&s, b, "mallory", "user");

    // Code injection: mallory completes her own flow at the provider but
    // keeps the code; it is injected into the owner's callback (the owner's
    // state and binding cookie). Latchkey sends the owner's PKCE verifier,
    // which does not match mallory's challenge: the provider refuses.
    let mut mb = OAuthBrowser::new(&user, "mallory");
    let m_auth = mb.start_ok(&s, idp, PROVIDER);
    let m_cb = mb.authorize(idp, &m_auth, Decision::Approve);
    let stolen = query_params(&m_cb)["code"].clone();
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Approve);
    let injected = with_param(&cb, "code", Some(&stolen));
    let errors = idp.count("code_errors");
    let r = ob.callback(&s, &injected, &[JSON]);
    assert_eq!(r.status, 400, "injected code: {}", r.body);
    assert_eq!(r.error_code(), "exchange_failed");
    assert!(idp.count("code_errors") > errors, "{}", idp.stats());
    nothing_stored(b);
    nothing_stored(&user);

    // A code issued for another redirect URI and PKCE pair, obtained from
    // the provider directly (an attacker's own client session): refused at
    // the exchange too.
    let mut ab = OAuthBrowser::anonymous("alice");
    let other_redirect = callback_urls(s.port, PROVIDER)
        .into_iter()
        .find(|u| u.as_str() != query_params(&auth)["redirect_uri"])
        .expect("second redirect URI");
    let verifier_challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let direct = format!(
        "{}/auth?{}",
        idp.issuer,
        latchkey_e2e::oidc::form_encode(&[
            ("response_type", "code"),
            ("client_id", "latchkey"),
            ("redirect_uri", &other_redirect),
            ("scope", "openid offline_access"),
            ("state", "attacker"),
            ("code_challenge", verifier_challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    let a_cb = ab.authorize(idp, &direct, Decision::Approve);
    let foreign_code = query_params(&a_cb)["code"].clone();
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Approve);
    let errors = idp.count("code_errors");
    let r = ob.callback(&s, &with_param(&cb, "code", Some(&foreign_code)), &[JSON]);
    assert_eq!(r.status, 400, "code for another redirect: {}", r.body);
    assert_eq!(r.error_code(), "exchange_failed");
    assert!(idp.count("code_errors") > errors, "{}", idp.stats());
    nothing_stored(b);
    // The provider itself refuses a code exchange without the verifier
    // (PKCE is required for this client).
    let r = idp.client_post(
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &query_params(&cb)["code"]),
            ("redirect_uri", &query_params(&auth)["redirect_uri"]),
        ],
    );
    assert_eq!(r.status, 400, "exchange without verifier: {}", r.body);

    // The user denies consent: a clear error, nothing stored, no exchange.
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Deny);
    assert_eq!(
        query_params(&cb).get("error").map(String::as_str),
        Some("access_denied"),
        "{cb}"
    );
    let codes = idp.count("code_requests");
    let r = ob.callback(&s, &cb, &[JSON]);
    assert_eq!(r.status, 400, "denied: {}", r.body);
    assert_eq!(r.error_code(), "oauth_denied");
    assert_eq!(idp.count("code_requests"), codes);
    nothing_stored(b);
    let events = connection_events(b);
    assert!(
        events.iter().any(|e| e["action"] == "connection.connect"
            && e["outcome"] == "failure"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("oauth_denied"))),
        "the denial is not in the audit log: {events:?}"
    );
    // … and a browser sees a page saying so, not a redirect.
    let mut ob = OAuthBrowser::new(b, "alice");
    let auth = ob.start_ok(&s, idp, PROVIDER);
    let cb = ob.authorize(idp, &auth, Decision::Deny);
    let r = ob.callback(&s, &cb, &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.header("location").is_none(), "{:?}", r.headers);
    nothing_stored(b);
}

#[test]
fn broker_needs_the_scope_and_never_serves_another_users_connection() {
    let setup = Setup::new();
    let idp = &setup.idp;
    let s = setup.serve();
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let guest = invited(&s, b, "guest1", "guest");

    let mut ob = OAuthBrowser::new(b, "alice");
    let r = ob.connect(&s, idp, PROVIDER);
    assert_eq!(r.status, 303, "connect: {}", r.body);

    // Keys: only `connections:testidp` or `connections:*` reach the broker.
    let (_, good) = create_key(b, "good", &[&format!("connections:{PROVIDER}")]);
    let (_, wild) = create_key(b, "wild", &["connections:*"]);
    let (_, other) = create_key(b, "other", &["connections:spotify"]);
    let (_, proxy) = create_key(b, "proxy", &["proxy:*"]);
    let owner_token = token_of(&broker(&s, &good));
    assert_eq!(token_of(&broker(&s, &wild)), owner_token);
    for (what, key) in [("connections:spotify", &other), ("proxy:*", &proxy)] {
        let r = broker(&s, key);
        assert_eq!(r.status, 403, "key with {what}: {}", r.body);
        assert!(!r.body.contains(&owner_token), "{what} got the token");
        // Its list leaves the connection out (or is refused).
        let r = s.bearer(key, "GET", "/api/connections", None);
        assert!(
            r.status == 403 || (r.status == 200 && !r.body.contains(PROVIDER)),
            "key with {what} lists: {} {}",
            r.status,
            r.body
        );
    }
    let r = broker(&s, "lk_not-a-real-key");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = s.get(&format!("/api/connections/{PROVIDER}/token"));
    assert_eq!(r.status, 401, "anonymous: {}", r.body);

    // Keys may not start flows.
    let r = s.bearer(
        &good,
        "POST",
        &format!("/api/connections/{PROVIDER}/start"),
        None,
    );
    assert_eq!(r.status, 403, "key starts a flow: {}", r.body);
    assert_eq!(r.error_code(), "session_required");

    // A guest never gets the owner's connection: not through the broker
    // (its own, absent), not through the list, not by naming the owner.
    let r = guest.get(&format!("/api/connections/{PROVIDER}/token"));
    assert!(
        r.status == 403 || r.status == 404,
        "guest broker: {} {}",
        r.status,
        r.body
    );
    assert!(!r.body.contains(&owner_token));
    for path in [
        "/api/connections".to_string(),
        "/api/connections?all=1".to_string(),
        "/api/connections?user=owner".to_string(),
        format!("/api/connections/{PROVIDER}/token?user=owner"),
    ] {
        let r = guest.get(&path);
        assert!(
            r.status == 403
                || r.status == 404
                || r.status == 400
                || (r.status == 200 && !r.body.contains(PROVIDER)),
            "guest {path}: {} {}",
            r.status,
            r.body
        );
        assert!(!r.body.contains(&owner_token), "guest {path} got the token");
    }
    // A guest's key with `connections:*` (if a guest may hold one) finds
    // nothing of the owner's either.
    let r = guest.post(
        "/api/keys",
        &serde_json::json!({"name": "g", "scopes": ["connections:*"]}),
    );
    if r.status == 201 {
        let key = r.json()["key"].as_str().expect("key").to_string();
        let r = broker(&s, &key);
        assert!(r.status == 403 || r.status == 404, "{}", r.body);
        assert!(!r.body.contains(&owner_token));
    }
    // A guest cannot disconnect the owner either.
    let r = guest.call("DELETE", &format!("/api/connections/{PROVIDER}"), None);
    assert!(r.status == 403 || r.status == 404, "{}", r.body);
    assert_eq!(listed(b).expect("still there")["status"], "connected");
    assert_eq!(idp.introspect(&owner_token)["active"], true);
}

/// The provider `PROVIDER` as `b` sees it in `GET /api/connections/providers`.
fn provider_as(b: &Browser<'_>) -> serde_json::Value {
    let r = b.get("/api/connections/providers");
    assert_eq!(r.status, 200, "providers: {}", r.body);
    r.json()["providers"]
        .as_array()
        .expect("providers array")
        .iter()
        .find(|p| p["name"] == PROVIDER)
        .cloned()
        .expect("the provider is listed")
}

#[test]
fn an_admin_sets_the_client_over_the_api_and_the_flow_uses_it() {
    // The section names neither a client id nor a secret entry: an
    // administrator sets both from the UI (`PUT …/client`).
    let d = TestDir::new();
    let port = free_port();
    let idp = Idp::start(&callback_urls(port, PROVIDER), TTL, d.path());
    let config = format!(
        "{}\n[connections.{PROVIDER}]\nissuer = \"{}\"\nscopes = [\"openid\", \"offline_access\"]\n",
        auth_config(""),
        idp.issuer
    );
    let opts = ServeOpts {
        listen: format!("127.0.0.1:{port}"),
        ..ServeOpts::new().config(&config)
    };
    let mut s = spawn_server(&d, &opts);
    let secret = idp.client_secret.clone();
    let path = format!("/api/connections/{PROVIDER}/client");
    let mut answers = String::new();
    let totp = {
        let owner = web_setup(&s, "owner");
        let b = &owner.browser;
        let user = invited(&s, b, "bob", "user");

        let p = provider_as(b);
        assert_eq!(p["client_id_source"], "missing", "{p}");
        assert!(p["client_id"].is_null(), "{p}");
        assert!(p["client_secret_present"].is_null(), "{p}");
        let redirect = p["redirect_uri"].as_str().expect("redirect_uri");
        assert!(
            callback_urls(port, PROVIDER).iter().any(|u| u == redirect),
            "{redirect}"
        );
        // Only administrators see the client id.
        assert!(provider_as(&user).get("client_id").is_none());
        // Until a client id exists, connecting says so.
        let r = b.call_with(
            "POST",
            &format!("/api/connections/{PROVIDER}/start"),
            &[JSON],
            None,
        );
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.error_code(), "client_id_missing");

        let body =
            serde_json::json!({ "client_id": "latchkey", "client_secret": secret }).to_string();
        // A user may not set it; nothing changes.
        let r = user.call("PUT", &path, Some(&body));
        assert_eq!(r.status, 403, "{}", r.body);
        answers.push_str(&r.body);
        assert_eq!(provider_as(b)["client_id_source"], "missing");
        // Bad input is refused without echoing anything.
        let r = b.call("PUT", &path, Some("{}"));
        assert_eq!(r.status, 400, "{}", r.body);
        let r = b.call(
            "PUT",
            &path,
            Some(
                &serde_json::json!({ "client_id": "a\u{7}b", "client_secret": secret }).to_string(),
            ),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        answers.push_str(&r.body);
        let r = b.call("PUT", "/api/connections/nope/client", Some(&body));
        assert_eq!(r.error_code(), "unknown_provider", "{}", r.body);
        answers.push_str(&r.body);

        // The administrator sets it: the secret goes into the vault, the id
        // overrides the (missing) configured one.
        let r = b.call("PUT", &path, Some(&body));
        assert_eq!(r.status, 200, "{}", r.body);
        answers.push_str(&r.body);
        let p = &r.json()["provider"];
        assert_eq!(p["client_id"], "latchkey", "{p}");
        assert_eq!(p["client_id_source"], "ui", "{p}");
        assert_eq!(p["client_secret_present"], true, "{p}");
        assert_eq!(
            p["client_secret_entry"],
            format!("{PROVIDER}-client-secret"),
            "{p}"
        );
        let r = b.get("/api/vault");
        assert!(
            r.body.contains(&format!("{PROVIDER}-client-secret")),
            "{}",
            r.body
        );
        answers.push_str(&r.body);

        // The flow now uses that client (the provider refuses any other id or
        // secret at the token endpoint).
        let mut ob = OAuthBrowser::new(b, "alice");
        let auth = ob.start_ok(&s, &idp, PROVIDER);
        assert_eq!(
            query_params(&auth).get("client_id").map(String::as_str),
            Some("latchkey")
        );
        let cb = ob.authorize(&idp, &auth, Decision::Approve);
        let r = ob.callback(&s, &cb, &["Accept: text/html"]);
        assert_eq!(r.status, 303, "callback: {} {:?}", r.body, r.headers);
        assert_eq!(
            r.header("location"),
            Some(format!("/?connected={PROVIDER}").as_str())
        );
        assert_eq!(idp.count("code_success"), 1, "{}", idp.stats());
        assert_eq!(listed(b).expect("connected")["status"], "connected");

        // A failed callback in a browser lands on the Connections screen,
        // which explains the code; API clients still get JSON.
        let mut ob = OAuthBrowser::new(b, "alice");
        let auth = ob.start_ok(&s, &idp, PROVIDER);
        let cb = ob.authorize(&idp, &auth, Decision::Approve);
        let r = ob.callback(
            &s,
            &with_param(&cb, "state", Some("nope")),
            &["Accept: text/html,application/xhtml+xml"],
        );
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(
            r.header("location"),
            Some(format!("/connections?error=invalid_state&provider={PROVIDER}").as_str())
        );

        // Audited, naming what changed and never the value.
        let events = connection_events(b);
        let client: Vec<_> = events
            .iter()
            .filter(|e| e["action"] == "connection.client")
            .collect();
        assert_eq!(client.len(), 1, "{events:?}");
        assert_eq!(client[0]["detail"], "client_secret,client_id", "{events:?}");
        assert_eq!(client[0]["target"], PROVIDER);
        answers.push_str(&b.get("/api/audit?limit=500").body);
        owner.totp
    };

    // The settings survive a restart.
    s.stop();
    drop(s);
    let s = spawn_server(&d, &opts);
    let b = Browser::new(&s);
    let r = b.login("owner", PASSWORD, Some(&totp));
    assert_eq!(r.status, 200, "{}", r.body);
    let p = provider_as(&b);
    assert_eq!(p["client_id"], "latchkey", "{p}");
    assert_eq!(p["client_id_source"], "ui", "{p}");
    assert_eq!(p["client_secret_present"], true, "{p}");
    answers.push_str(&b.get("/api/connections/providers").body);
    let mut ob = OAuthBrowser::new(&b, "alice");
    let r = ob.connect(&s, &idp, PROVIDER);
    assert_eq!(r.status, 303, "reconnect after restart: {}", r.body);

    assert!(
        !answers.contains(&secret),
        "an answer echoed the client secret"
    );
    assert!(
        !s.stderr().contains(&secret),
        "the client secret is in the log"
    );
    for f in files_under(&d.data()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains_bytes(&bytes, secret.as_bytes()),
            "{} holds the client secret in plain text",
            f.display()
        );
    }
}

/// The agent proxy in front of the provider's own API (here its UserInfo
/// endpoint `/me`), with the calling key's owner's connection token
/// injected: the agent holds only a `proxy:` key and never a token.
#[test]
fn the_proxy_injects_the_key_owners_connection_token_and_never_shows_it() {
    let setup = Setup::with(|idp| {
        format!(
            "[providers.idp-api]\nupstream = \"{}\"\nconnection = \"{PROVIDER}\"\n\
             auth_header = \"authorization\"\nauth_format = \"Bearer {{secret}}\"\n",
            idp.issuer
        )
    });
    let idp = &setup.idp;
    let s = setup.serve();
    let owner = web_setup(&s, "owner");
    let b = &owner.browser;
    let mut ob = OAuthBrowser::new(b, "alice");
    let r = ob.connect(&s, idp, PROVIDER);
    assert_eq!(r.status, 303, "connect: {}", r.body);

    let (key_id, key) = create_key(b, "agent", &["proxy:idp-api"]);
    let r = s.bearer(&key, "GET", "/proxy/idp-api/me", None);
    assert_eq!(r.status, 200, "through the proxy: {}", r.body);
    let me = r.json();
    assert_eq!(me["sub"], "alice", "the provider saw alice's token: {me}");

    // The agent never saw the token: not in the answer, and its key
    // cannot fetch it from the broker either.
    let (_, broker_key) = create_key(b, "broker", &[&format!("connections:{PROVIDER}")]);
    let token = token_of(&broker(&s, &broker_key));
    assert!(
        !r.body.contains(&token),
        "the proxied answer leaks the token"
    );
    assert_eq!(
        broker(&s, &key).status,
        403,
        "a proxy key reaches the broker"
    );
    // Without a key, or with a key for another provider: refused before
    // any token is fetched.
    let (_, other) = create_key(b, "other", &["proxy:openai"]);
    assert_eq!(
        s.bearer(&other, "GET", "/proxy/idp-api/me", None).status,
        403
    );
    assert_eq!(s.get("/proxy/idp-api/me").status, 401);

    // Another user's key uses that user's own connection — here none.
    let ursula = invited(&s, b, "ursula", "user");
    let (_, theirs) = create_key(&ursula, "theirs", &["proxy:idp-api"]);
    let r = s.bearer(&theirs, "GET", "/proxy/idp-api/me", None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error_code(), "no_connection");
    assert!(!r.body.contains(&token));

    // Each use is an audited issuance by the key (written in batches).
    let by_key = format!("owner (key {key_id})");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = connection_events(b);
        if events
            .iter()
            .any(|e| e["action"] == "connection.token" && e["actor"] == by_key.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection.token by {by_key}: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
