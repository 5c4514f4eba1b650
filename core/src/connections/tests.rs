//! The flows against a small in-process OAuth server on loopback: state
//! handling, PKCE, rotation, single-flight refresh, needs-reconnect. (The
//! end-to-end tests in `tests/it/connections.rs` use a real OpenID Connect
//! server; these pin the logic cheaply and attack it directly.)

use super::*;
use crate::audit::Outcome;
use crate::vault::{Kind, MasterKeySource, NewRecord};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use base64::Engine;
use std::collections::HashSet;
use std::time::Duration;

const SECRET: &str = "client-secret-canary";

#[derive(Default)]
struct Idp {
    /// code → (challenge, redirect_uri)
    codes: HashMap<String, (String, String)>,
    valid_refresh: HashSet<String>,
    refreshes: u64,
    revoked: Vec<String>,
    issued: u64,
    /// expires_in of the next tokens.
    ttl: u64,
    /// Delay of refresh answers (to widen races).
    refresh_delay: Duration,
    /// Refresh answers with HTTP 500 (a transient failure).
    broken: bool,
    /// The client (id, secret) the token endpoint accepts; default
    /// `latchkey` and [`SECRET`].
    client: Option<(String, String)>,
}

type Shared = Arc<Mutex<Idp>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Idp> {
    s.lock().expect("idp lock")
}

async fn token_endpoint(
    State(idp): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    match check_grant(&idp, &headers, &form) {
        Err(resp) => *resp,
        Ok(delay) => {
            tokio::time::sleep(delay).await;
            issue(&idp)
        }
    }
}

/// Checks a token request; `Ok(delay)`: answer with new tokens after it.
fn check_grant(
    idp: &Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Duration, Box<axum::response::Response>> {
    use axum::response::IntoResponse;
    use sha2::Digest;
    let (id, secret) = lock(idp)
        .client
        .clone()
        .unwrap_or_else(|| ("latchkey".into(), SECRET.into()));
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    );
    let err = |code: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": code })),
        )
            .into_response()
    };
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Err(Box::new(err("invalid_client")));
    }
    let mut s = lock(idp);
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect)) = s.codes.remove(&code) else {
                return Err(Box::new(err("invalid_grant")));
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge || form.get("redirect_uri") != Some(&redirect) {
                return Err(Box::new(err("invalid_grant")));
            }
            Ok(Duration::ZERO)
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            s.refreshes += 1;
            if s.broken {
                return Err(Box::new(
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
                ));
            }
            if !s.valid_refresh.remove(&rt) {
                return Err(Box::new(err("invalid_grant")));
            }
            Ok(s.refresh_delay)
        }
        _ => Err(Box::new(err("unsupported_grant_type"))),
    }
}

fn issue(idp: &Shared) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut s = lock(idp);
    s.issued += 1;
    let n = s.issued;
    let rt = format!("rt-{n}");
    s.valid_refresh.insert(rt.clone());
    axum::Json(serde_json::json!({
        "access_token": format!("at-{n}"),
        "token_type": "Bearer",
        "expires_in": s.ttl,
        "refresh_token": rt,
        "scope": "openid offline_access",
        "id_token": "not.validated.here",
    }))
    .into_response()
}

async fn revoke_endpoint(State(idp): State<Shared>, body: String) -> &'static str {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut s = lock(&idp);
    if let Some(t) = form.get("token") {
        s.valid_refresh.remove(t);
        s.revoked.push(t.clone());
    }
    ""
}

/// Starts the mock server; returns its origin and state.
async fn spawn_idp() -> (String, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let idp: Shared = Arc::new(Mutex::new(Idp {
        ttl: 3600,
        ..Idp::default()
    }));
    let doc = serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/auth"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "code_challenge_methods_supported": ["S256"],
    });
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(doc) }),
        )
        .route("/token", post(token_endpoint))
        .route("/revoke", post(revoke_endpoint))
        .with_state(Arc::clone(&idp));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, idp)
}

struct Env {
    _dir: tempfile::TempDir,
    vault: Arc<Vault>,
    /// `[connections.<name>]`.
    settings: BTreeMap<String, ConnectionSettings>,
    conns: Arc<Connections>,
    idp: Shared,
}

async fn env() -> Env {
    let (base, idp) = spawn_idp().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::store::Store::open(dir.path(), "test").expect("store");
    let vault = Arc::new(Vault::new(store));
    vault
        .open_with(&MasterKeySource::KeyFile {
            path: dir.path().join("master.key"),
        })
        .expect("unseal");
    vault
        .put(
            &NewRecord {
                name: "idp-secret".into(),
                kind: Kind::Generic,
                provider: None,
                labels: Default::default(),
            },
            &SecretString::from(SECRET),
            false,
        )
        .expect("put secret");
    let mut settings = BTreeMap::new();
    settings.insert(
        "idp".into(),
        ConnectionSettings {
            issuer: Some(base),
            client_id: Some("latchkey".into()),
            client_secret_entry: Some("idp-secret".into()),
            scopes: Some(vec!["openid".into(), "offline_access".into()]),
            refresh_margin_secs: Some(1),
            ..Default::default()
        },
    );
    let conns =
        Arc::new(Connections::new(&settings, None, Arc::clone(&vault)).expect("connections"));
    Env {
        _dir: dir,
        vault,
        settings,
        conns,
        idp,
    }
}

const ALICE: UserId = UserId(0xa11ce);
const BOB: UserId = UserId(0xb0b);
const ORIGIN: &str = "https://latchkey.test:8443";
const SESSION: [u8; 32] = [7; 32];

/// The session check of a callback: the starting session is alive.
fn alive() -> SessionCheck {
    Box::new(|user, hash| hash == SESSION && (user == ALICE || user == BOB))
}

fn query(url: &str) -> HashMap<String, String> {
    let u = url::Url::parse(url).expect("authorize url");
    u.query_pairs().into_owned().collect()
}

/// Starts a flow for `user` and plays the provider's part: returns the
/// callback parameters and the binding cookie.
async fn authorize(e: &Env, user: UserId) -> (CallbackParams, String, HashMap<String, String>) {
    let started = e
        .conns
        .start(user, "alice", "idp", ORIGIN, SESSION)
        .await
        .expect("start");
    let q = query(&started.authorize_url);
    let code = format!("code-{}", random_hex(8));
    lock(&e.idp).codes.insert(
        code.clone(),
        (q["code_challenge"].clone(), q["redirect_uri"].clone()),
    );
    let params = CallbackParams {
        code: Some(code),
        state: Some(q["state"].clone()),
        error: None,
        iss: None,
    };
    (params, started.binding.expose_secret().to_string(), q)
}

async fn connect(e: &Env, user: UserId) {
    let (params, binding, _) = authorize(e, user).await;
    e.conns
        .callback("idp", params, Some(&binding), alive(), None)
        .await
        .expect("callback");
}

fn audit_actions(e: &Env) -> Vec<(String, crate::audit::Outcome, Option<String>)> {
    crate::audit::query(e.vault.store(), &Default::default())
        .expect("audit")
        .into_iter()
        .map(|ev| (ev.action, ev.outcome, ev.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_asks_for_pkce_s256_and_stores_no_plain_state() {
    let e = env().await;
    let (params, binding, q) = authorize(&e, ALICE).await;
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "latchkey");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid offline_access");
    assert_eq!(
        q["redirect_uri"],
        "https://latchkey.test:8443/api/connections/idp/callback"
    );
    let state = params.state.clone().expect("state");
    assert_eq!(state.len(), 64, "256 random bits");
    assert!(q.get("nonce").is_some_and(|n| n.len() == 32));
    // The database holds neither the state, the binding nor the verifier.
    let txn = e.vault.store().begin_read().expect("read");
    let t = txn
        .open_table(latchkey_migrations::v3::OAUTH_STATES)
        .expect("table");
    let mut rows = 0;
    for item in t.iter().expect("iter") {
        let (k, v) = item.expect("row");
        rows += 1;
        let raw = [k.value(), v.value()].concat();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(&state));
        assert!(!text.contains(&binding));
        assert_eq!(k.value(), digest(&state).as_slice());
    }
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_unbound_states_are_refused_and_store_nothing() {
    let e = env().await;
    let (params, binding, _) = authorize(&e, ALICE).await;
    let forged = CallbackParams {
        state: Some(random_hex(32)),
        code: params.code.clone(),
        ..Default::default()
    };
    let r = e
        .conns
        .callback("idp", forged, Some(&binding), alive(), None)
        .await;
    assert!(matches!(r, Err(ConnectionError::InvalidState)), "{r:?}");
    // Right state, another browser's (or no) binding cookie: refused, and
    // the state is left alone (whoever sent it cannot end the flow).
    let again = || CallbackParams {
        state: params.state.clone(),
        code: params.code.clone(),
        ..Default::default()
    };
    let o = e
        .conns
        .callback_flow("idp", again(), Some("other"), alive(), None)
        .await;
    assert!(
        matches!(o.result, Err(ConnectionError::StateMismatch)),
        "{o:?}"
    );
    assert!(!o.flow_ended);
    // No binding at all.
    let (p2, _, _) = authorize(&e, ALICE).await;
    let o = e.conns.callback_flow("idp", p2, None, alive(), None).await;
    assert!(
        matches!(o.result, Err(ConnectionError::StateMismatch)),
        "{o:?}"
    );
    assert!(!o.flow_ended);
    assert!(e.conns.list(None).expect("list").is_empty());
    let failures: Vec<_> = audit_actions(&e)
        .into_iter()
        .filter(|(a, o, _)| a == "connection.connect" && *o == Outcome::Failure)
        .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    // The browser that started the flow still completes it, once.
    let o = e
        .conns
        .callback_flow("idp", again(), Some(&binding), alive(), None)
        .await;
    assert!(o.result.is_ok() && o.flow_ended, "{o:?}");
    let r = e
        .conns
        .callback("idp", again(), Some(&binding), alive(), None)
        .await;
    assert!(matches!(r, Err(ConnectionError::InvalidState)), "{r:?}");
    assert_eq!(e.conns.list(None).expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_and_code_injection_store_nothing() {
    let e = env().await;
    let (params, binding, _) = authorize(&e, ALICE).await;
    let denied = CallbackParams {
        state: params.state.clone(),
        error: Some("access_denied".into()),
        ..Default::default()
    };
    let r = e
        .conns
        .callback("idp", denied, Some(&binding), alive(), None)
        .await;
    assert!(
        matches!(&r, Err(ConnectionError::Denied(c)) if c == "access_denied"),
        "{r:?}"
    );
    // A code issued for another flow (another PKCE challenge) is refused
    // at the token endpoint: the attacker lacks this flow's verifier.
    let (victim, victim_binding, _) = authorize(&e, ALICE).await;
    let (attacker, _, _) = authorize(&e, BOB).await;
    let injected = CallbackParams {
        state: victim.state,
        code: attacker.code,
        ..Default::default()
    };
    let r = e
        .conns
        .callback("idp", injected, Some(&victim_binding), alive(), None)
        .await;
    assert!(
        matches!(&r, Err(ConnectionError::ExchangeFailed { code, .. }) if code == "invalid_grant"),
        "{r:?}"
    );
    // The session that started the flow has ended (signed out): refused.
    let (p, b, _) = authorize(&e, ALICE).await;
    let ended: SessionCheck = Box::new(|_, _| false);
    let r = e.conns.callback("idp", p, Some(&b), ended, None).await;
    assert!(matches!(r, Err(ConnectionError::SessionEnded)), "{r:?}");
    // An `iss` naming someone else (mix-up) is refused.
    let (p, b, _) = authorize(&e, ALICE).await;
    let mixed = CallbackParams {
        iss: Some("https://evil.example".into()),
        ..p
    };
    let r = e
        .conns
        .callback("idp", mixed, Some(&b), alive(), None)
        .await;
    assert!(matches!(r, Err(ConnectionError::IssuerMismatch)), "{r:?}");
    assert!(e.conns.list(None).expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_broker_refresh_rotation_and_restart() {
    let e = env().await;
    lock(&e.idp).ttl = 0; // the first token is already due
    connect(&e, ALICE).await;
    let list = e.conns.list(Some(ALICE)).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, Status::Connected);
    assert_eq!(list[0].scopes, ["openid", "offline_access"]);
    assert!(e.conns.list(Some(BOB)).expect("list").is_empty());

    lock(&e.idp).ttl = 3600;
    let t = e
        .conns
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token");
    assert_eq!(t.access_token.expose_secret(), "at-2", "refreshed");
    assert_eq!(lock(&e.idp).refreshes, 1);
    // Cached now: no refresh.
    let t = e
        .conns
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token");
    assert_eq!(t.access_token.expose_secret(), "at-2");
    assert_eq!(lock(&e.idp).refreshes, 1);
    assert!(matches!(
        e.conns.token(BOB, "idp", "bob", None).await,
        Err(ConnectionError::NoConnection(_))
    ));

    // "Restart": a new service over the same database must use the rotated
    // refresh token (`rt-1` is no longer valid at the provider).
    assert!(!lock(&e.idp).valid_refresh.contains("rt-1"));
    lock(&e.idp).ttl = 0;
    let restarted =
        Connections::new(&e.settings, None, Arc::clone(&e.vault)).expect("connections again");
    let t = restarted
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token after restart");
    assert_eq!(
        t.access_token.expose_secret(),
        "at-2",
        "stored token still valid"
    );
    // Force the next refresh: it works with the persisted `rt-2`.
    {
        let slot = restarted.slot(ALICE, "idp");
        let _g = slot.refresh.lock().await;
        let rt = restarted.provider("idp").expect("rt");
        restarted
            .load_or_refresh(rt, ALICE, &slot, Due::Idle(0))
            .await
            .expect("refresh after restart");
    }
    assert_eq!(lock(&e.idp).refreshes, 2);
    restarted.flush().expect("flush");
    let actions = audit_actions(&e);
    assert!(
        actions
            .iter()
            .any(|(a, o, _)| a == "connection.token" && *o == Outcome::Success)
    );
    assert!(actions.iter().any(|(a, _, _)| a == "connection.refresh"));
    assert!(
        actions.iter().any(
            |(a, _, d)| a == "connection.connect" && d.as_deref() == Some("with_refresh_token")
        )
    );
}

/// Fifty concurrent `token` calls for ALICE's expired connection, spread
/// round-robin over `replicas` (one `Connections` or several over one
/// store), while the provider takes `delay` to answer a refresh: every call
/// gets the refreshed token, and the provider saw exactly one refresh.
async fn fifty_calls_refresh_once(idp: &Shared, replicas: &[Arc<Connections>], delay: Duration) {
    {
        let mut s = lock(idp);
        s.ttl = 3600;
        s.refresh_delay = delay;
    }
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = Arc::clone(&replicas[i % replicas.len()]);
        tasks.push(tokio::spawn(async move {
            c.token(ALICE, "idp", "alice", None)
                .await
                .map(|t| t.access_token.expose_secret().to_string())
        }));
    }
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("in time")
            .expect("task")
            .expect("token: no caller refreshed with a rotated-away token");
        assert_eq!(got, "at-2");
    }
    assert_eq!(lock(idp).refreshes, 1, "exactly one refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_calls_at_expiry_refresh_once() {
    let e = env().await;
    lock(&e.idp).ttl = 0;
    connect(&e, ALICE).await;
    fifty_calls_refresh_once(&e.idp, &[Arc::clone(&e.conns)], Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_marks_needs_reconnect_and_transient_errors_do_not() {
    let e = env().await;
    lock(&e.idp).ttl = 0;
    connect(&e, ALICE).await;
    // A transient failure keeps the connection (and counts the failure).
    lock(&e.idp).broken = true;
    let r = e.conns.token(ALICE, "idp", "alice", None).await;
    assert!(
        matches!(r, Err(ConnectionError::ProviderResponse { .. })),
        "{r:?}"
    );
    let row = store::get(e.vault.store(), ALICE, "idp")
        .expect("get")
        .expect("row");
    assert_eq!(row.status, Status::Connected);
    assert_eq!(row.failures, 1);
    assert!(row.next_attempt_at.is_some());
    // In backoff: callers get a quick error, the provider no new request.
    let before = lock(&e.idp).refreshes;
    let r = e.conns.token(ALICE, "idp", "alice", None).await;
    assert!(
        matches!(r, Err(ConnectionError::ProviderUnreachable { .. })),
        "{r:?}"
    );
    assert_eq!(lock(&e.idp).refreshes, before);
    store::update(
        e.vault.store(),
        ALICE,
        "idp",
        |c| c.next_attempt_at = None,
        None,
    )
    .expect("end the backoff");
    // Revoked at the provider: invalid_grant → needs reconnect, audited.
    {
        let mut s = lock(&e.idp);
        s.broken = false;
        s.valid_refresh.clear();
    }
    let r = e.conns.token(ALICE, "idp", "alice", None).await;
    assert!(
        matches!(r, Err(ConnectionError::NeedsReconnect(_))),
        "{r:?}"
    );
    let list = e.conns.list(Some(ALICE)).expect("list");
    assert_eq!(list[0].status, Status::NeedsReconnect);
    let before = lock(&e.idp).refreshes;
    let r = e.conns.token(ALICE, "idp", "alice", None).await;
    assert!(matches!(r, Err(ConnectionError::NeedsReconnect(_))));
    assert_eq!(lock(&e.idp).refreshes, before, "no more refresh attempts");
    assert!(
        audit_actions(&e)
            .iter()
            .any(|(a, o, d)| a == "connection.needs_reconnect"
                && *o == Outcome::Failure
                && d.as_deref() == Some("invalid_grant"))
    );
    // Reconnecting brings it back.
    lock(&e.idp).ttl = 3600;
    connect(&e, ALICE).await;
    assert_eq!(
        e.conns.list(Some(ALICE)).expect("list")[0].status,
        Status::Connected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_revokes_the_refresh_token_and_deletes() {
    let e = env().await;
    connect(&e, ALICE).await;
    let r = e
        .conns
        .disconnect(ALICE, "idp", "alice", None)
        .await
        .expect("disconnect");
    assert_eq!(r, Revocation::Revoked);
    assert_eq!(lock(&e.idp).revoked, ["rt-1"]);
    assert!(e.conns.list(None).expect("list").is_empty());
    assert!(matches!(
        e.conns.token(ALICE, "idp", "alice", None).await,
        Err(ConnectionError::NoConnection(_))
    ));
    assert!(matches!(
        e.conns.disconnect(ALICE, "idp", "alice", None).await,
        Err(ConnectionError::NoConnection(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_vault_serves_no_cached_token_and_secrets_stay_out_of_the_vault_list() {
    let e = env().await;
    connect(&e, ALICE).await;
    e.conns
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token");
    // Connection tokens are not vault records.
    let names: Vec<String> = e
        .vault
        .list()
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["idp-secret"]);
    e.vault.seal();
    let r = e.conns.token(ALICE, "idp", "alice", None).await;
    assert!(
        matches!(r, Err(ConnectionError::Vault(VaultError::Sealed))),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_secret_is_reported_before_the_flow() {
    let e = env().await;
    e.vault.remove("idp-secret").expect("remove");
    let r = e.conns.start(ALICE, "alice", "idp", ORIGIN, SESSION).await;
    assert!(
        matches!(r, Err(ConnectionError::ClientSecretMissing { .. })),
        "{r:?}"
    );
    assert_eq!(
        e.conns.list_providers()[0].client_secret_present,
        Some(false)
    );
    assert!(matches!(
        e.conns.start(ALICE, "alice", "nope", ORIGIN, SESSION).await,
        Err(ConnectionError::UnknownProvider(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_sets_the_client_and_the_flows_use_it() {
    let e = env().await;
    let view = &e.conns.list_providers()[0];
    assert_eq!(view.client_id.as_deref(), Some("latchkey"));
    assert_eq!(view.client_id_source, "config");
    // The provider now knows another client: the configured one fails.
    lock(&e.idp).client = Some(("ui-client".into(), "ui-secret".into()));
    let (params, binding, _) = authorize(&e, ALICE).await;
    let r = e
        .conns
        .callback("idp", params, Some(&binding), alive(), None)
        .await;
    assert!(
        matches!(r, Err(ConnectionError::ExchangeFailed { .. })),
        "{r:?}"
    );

    // Nothing at all, a bad id, or a sealed vault change nothing.
    assert!(matches!(
        e.conns.set_client("idp", None, None, "alice", None),
        Err(ConnectionError::BadRequest(_))
    ));
    assert!(matches!(
        e.conns.set_client("idp", Some(" "), None, "alice", None),
        Err(ConnectionError::BadRequest(_))
    ));
    assert!(matches!(
        e.conns.set_client("nope", Some("x"), None, "alice", None),
        Err(ConnectionError::UnknownProvider(_))
    ));
    e.vault.seal();
    let secret = SecretString::from("ui-secret");
    let r = e
        .conns
        .set_client("idp", Some("ui-client"), Some(&secret), "alice", None);
    assert!(
        matches!(r, Err(ConnectionError::Vault(VaultError::Sealed))),
        "{r:?}"
    );
    assert_eq!(e.conns.list_providers()[0].client_id_source, "config");
    e.vault
        .open_with(&MasterKeySource::KeyFile {
            path: e._dir.path().join("master.key"),
        })
        .expect("unseal");

    let view = e
        .conns
        .set_client("idp", Some(" ui-client "), Some(&secret), "alice", None)
        .expect("set");
    assert_eq!(view.client_id.as_deref(), Some("ui-client"));
    assert_eq!(view.client_id_source, "ui");
    assert_eq!(view.client_secret_present, Some(true));
    // The secret went into the provider's configured entry.
    assert_eq!(
        e.vault
            .reveal("idp-secret")
            .expect("reveal")
            .expose_secret(),
        "ui-secret"
    );
    let (_, _, q) = authorize(&e, ALICE).await;
    assert_eq!(q["client_id"], "ui-client");
    connect(&e, ALICE).await;
    assert_eq!(
        e.conns
            .token(ALICE, "idp", "alice", None)
            .await
            .expect("token")
            .access_token
            .expose_secret(),
        "at-1"
    );
    let audit = audit_actions(&e);
    assert!(
        audit.contains(&(
            "connection.client".into(),
            Outcome::Success,
            Some("client_secret,client_id".into())
        )),
        "{audit:?}"
    );

    // Kept across a restart (a new service over the same database).
    let again = Connections::new(&e.settings, None, Arc::clone(&e.vault)).expect("connections");
    let view = &again.list_providers()[0];
    assert_eq!(view.client_id.as_deref(), Some("ui-client"));
    assert_eq!(view.client_id_source, "ui");
    // Setting the configured id again removes the override.
    let view = again
        .set_client("idp", Some("latchkey"), None, "alice", None)
        .expect("set back");
    assert_eq!(view.client_id_source, "config");
    assert!(
        e.vault
            .store()
            .meta_get(&client_meta_key("idp"))
            .expect("meta")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_gets_a_secret_entry_of_its_own() {
    let e = env().await;
    let mut settings = e.settings.clone();
    if let Some(c) = settings.get_mut("idp") {
        c.client_secret_entry = None;
        c.client_id = None;
    }
    let conns = Connections::new(&settings, None, Arc::clone(&e.vault)).expect("connections");
    let view = &conns.list_providers()[0];
    assert_eq!(view.client_id, None);
    assert_eq!(view.client_id_source, "missing");
    assert_eq!(view.client_secret_present, None);
    assert!(matches!(
        conns.start(ALICE, "alice", "idp", ORIGIN, SESSION).await,
        Err(ConnectionError::ClientIdMissing(_))
    ));
    let view = conns
        .set_client("idp", None, Some(&SecretString::from("s2")), "alice", None)
        .expect("set");
    assert_eq!(
        view.client_secret_entry.as_deref(),
        Some("idp-client-secret")
    );
    assert_eq!(view.client_secret_present, Some(true));
    assert_eq!(view.client_id_source, "missing");
    let again = Connections::new(&settings, None, Arc::clone(&e.vault)).expect("connections");
    assert_eq!(
        again.list_providers()[0].client_secret_entry.as_deref(),
        Some("idp-client-secret")
    );
}

#[test]
fn the_margin_is_at_most_half_the_lifetime() {
    assert_eq!(refresh_after(Some(1010), 1000, 60), Some(1005));
    assert_eq!(refresh_after(Some(5000), 1000, 60), Some(4940));
    assert_eq!(refresh_after(None, 1000, 60), None);
    let c = Cached {
        access_token: SecretString::from("x"),
        token_type: "Bearer".into(),
        expires_at: Some(100),
        refresh_after: Some(90),
        scopes: vec![],
        row: [0; 32],
    };
    assert!(c.fresh(89));
    assert!(!c.fresh(90));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scan_refreshes_connections_in_use_only() {
    let e = env().await;
    lock(&e.idp).ttl = 10; // refresh point 9 s away: inside the scan's lead
    connect(&e, ALICE).await;
    // Never used: idle, left alone (until the daily refresh).
    e.conns.scan().await;
    assert_eq!(lock(&e.idp).refreshes, 0);
    // Its token handed out since the last refresh: refreshed ahead of its
    // refresh point.
    e.conns
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token");
    e.conns.scan().await;
    assert_eq!(lock(&e.idp).refreshes, 1);
    // Not used since: no second refresh.
    e.conns.scan().await;
    assert_eq!(lock(&e.idp).refreshes, 1);
    // Used again (same second as the refresh): in use again.
    e.conns
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token");
    e.conns.scan().await;
    assert_eq!(lock(&e.idp).refreshes, 2);
    // A connection marked "needs reconnect" is never retried by the scan.
    store::update(
        e.vault.store(),
        ALICE,
        "idp",
        |c| c.status = Status::NeedsReconnect,
        None,
    )
    .expect("mark");
    e.conns.token(ALICE, "idp", "alice", None).await.ok();
    e.conns.scan().await;
    assert_eq!(lock(&e.idp).refreshes, 2);
}

/// The same flows with several replicas sharing one store.
mod replicas;

/// The same across processes, on PostgreSQL.
mod replicas_pg;
