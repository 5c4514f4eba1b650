//! The app driven directly, as a shell would: open a data directory, serve
//! on a loopback listener, proxy a request to a mock upstream, shut down in
//! order — and find in the store, after reopening, what was only pending in
//! memory when the shutdown began.

use super::*;
use crate::auth::service::{LoginStep, now};
use crate::config::CONFIG_FILE;
use crate::http::{NoHostInfo, StaticToken};
use crate::proxy::usage::{UsageBook, UsageQuery, day_of};
use crate::secrecy::ExposeSecret;
use crate::vault::{Kind, NewRecord};
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "Tangerine-Lighthouse-Quartz-417";
const ADMIN: &str = "0123456789abcdef0123456789abcdef";

/// A mock LLM upstream: answers every completion with 3 input and 4
/// output tokens.
async fn mock_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"id":"c1","model":"mock-1","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            )
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

fn settings(dir: &Path, upstream: SocketAddr) -> Settings {
    std::fs::create_dir_all(dir).expect("data dir");
    let file = dir.join(CONFIG_FILE);
    std::fs::write(
        &file,
        format!(
            "[server]\ntls = false\nshutdown_grace = \"5s\"\n\
             [proxy]\n# Only the shutdown flush may write usage in this test.\n\
             usage_flush_secs = 3600\n\
             [providers.mock]\nupstream = \"http://{upstream}\"\nsecret = \"mock-key\"\n\
             auth_header = \"authorization\"\nauth_format = \"Bearer {{secret}}\"\n"
        ),
    )
    .expect("config");
    Settings::load(&file, true, Vec::new()).expect("settings")
}

/// A TOTP code for `uri` now (RFC 6238, the parameters the enrollment
/// names).
fn totp(uri: &str) -> String {
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .expect("secret in uri");
    let bytes = totp_rs::Secret::try_from_base32(secret).expect("base32");
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(bytes.as_ref())
        .build()
        .expect("totp")
        .generate(u64::try_from(now()).expect("after 1970"))
        .to_string()
}

/// The owner, signed in, mints an API key for `proxy:mock`.
fn proxy_key(app: &App) -> String {
    let auth = app.auth();
    let pw = SecretString::from(PASSWORD.to_string());
    let (_, enrollment, _) = auth.setup_host("owner", &pw).expect("setup");
    let LoginStep::MfaRequired { ticket } = auth.login("owner", &pw, None, None).expect("login")
    else {
        panic!("the owner has a second factor");
    };
    let code = totp(enrollment.otpauth_uri.0.expose_secret());
    let session = auth
        .mfa(ticket.expose_secret(), Some(&code), None, None, None)
        .expect("mfa");
    let p = auth
        .authenticate_session(session.token.expose_secret())
        .expect("session");
    let (_, key) = auth
        .create_key(&p, "agent", &["proxy:mock".into()], None)
        .expect("key");
    key.expose_secret().to_string()
}

async fn http(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_serve_proxy_and_shut_down_in_order() {
    let (upstream, upstream_task) = mock_upstream().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let s = settings(&dir, upstream);
    let source = s.master_key_source(&dir);
    let (app, key) = {
        let (s, dir, source) = (s.clone(), dir.clone(), source.clone());
        tokio::task::spawn_blocking(move || {
            let app = App::open(
                s,
                &dir,
                source,
                OpenOptions {
                    role: "serve",
                    unseal: true,
                },
            )
            .expect("open");
            app.put_as_host(
                &NewRecord {
                    name: "mock-key".into(),
                    kind: Kind::ApiKey,
                    provider: Some("mock".into()),
                    labels: Default::default(),
                },
                &SecretString::from("sk-upstream-0001".to_string()),
                false,
            )
            .expect("put");
            let key = proxy_key(&app);
            (app, key)
        })
        .await
        .expect("join")
    };

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = app
        .serve(Shell {
            host: Arc::new(NoHostInfo),
            admin: Arc::new(StaticToken::new(ADMIN)),
            transport: Transport::Plain,
            listeners: vec![listener],
            redirect_listeners: Vec::new(),
        })
        .expect("serve");
    let addr = running.local_addrs()[0];
    assert_eq!(running.scheme(), Scheme::Http);
    assert_eq!(running.api_url(), format!("http://{addr}"));
    let owner = crate::store::current_owner(&dir).expect("lock held");
    assert_eq!(owner.role, "serve");
    assert_eq!(owner.api_url.as_deref(), Some(running.api_url()));

    let body = r#"{"model":"mock-1","messages":[]}"#;
    let resp = http(
        addr,
        &format!(
            "POST /proxy/mock/v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""completion_tokens":4"#), "{resp}");
    // The admin token works from loopback, over plain HTTP.
    let resp = http(
        addr,
        &format!(
            "GET /api/vault HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Usage and last-used times are only in memory so far.
    let stored = |store: &Store| {
        let today = day_of(now());
        UsageBook::default()
            .query(
                store,
                &UsageQuery {
                    from: today.clone(),
                    to: today,
                    ..UsageQuery::default()
                },
            )
            .expect("usage")
    };
    assert!(stored(running.state().vault.store()).is_empty());

    let stopping = running.stopping();
    running.shutdown().await.expect("clean shutdown");
    assert!(*stopping.borrow(), "the shell's tasks were told to stop");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    upstream_task.abort();

    // The lock is free: the store was dropped. What was pending is there.
    let reopened = tokio::task::spawn_blocking(move || {
        App::open(
            s,
            &dir,
            source,
            OpenOptions {
                role: "cli",
                unseal: false,
            },
        )
    })
    .await
    .expect("join")
    .expect("reopen after shutdown");
    let rows = stored(reopened.store());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].provider, "mock");
    assert_eq!(rows[0].model, "mock-1");
    assert_eq!(
        (
            rows[0].totals.requests,
            rows[0].totals.input_tokens,
            rows[0].totals.output_tokens
        ),
        (1, 3, 4)
    );
    let meta = reopened.vault().meta("mock-key").expect("meta");
    assert!(meta.last_used_at.is_some(), "last-used time written");
    // The host's offline write was audited like the API's.
    let puts = crate::audit::query(
        reopened.store(),
        &crate::audit::AuditQuery {
            action: Some("vault.put".into()),
            ..Default::default()
        },
    )
    .expect("audit");
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(
        (
            puts[0].actor.as_str(),
            puts[0].target.as_deref(),
            puts[0].detail.as_deref()
        ),
        ("host", Some("mock-key"), Some("created"))
    );
}

/// A plain listener on the network without a trusted proxy is refused
/// before anything is created, naming the key.
#[test]
fn open_refuses_plain_network_listeners_before_creating_anything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut s = Settings::default();
    s.server.tls = false;
    s.server.listen = vec!["0.0.0.0:8080".parse().expect("addr")];
    let source = s.master_key_source(&dir);
    let err = App::open(
        s,
        &dir,
        source,
        OpenOptions {
            role: "serve",
            unseal: true,
        },
    )
    .expect_err("refused");
    assert!(err.to_string().starts_with("`server.tls`:"), "{err}");
    assert!(!dir.exists(), "nothing created");
}

#[test]
fn api_url_prefers_loopback() {
    let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
    let https = Scheme::Https;
    assert_eq!(
        api_url(&[a("0.0.0.0:8443")], https),
        "https://127.0.0.1:8443"
    );
    assert_eq!(api_url(&[a("[::]:9")], https), "https://[::1]:9");
    assert_eq!(
        api_url(&[a("192.168.1.2:5"), a("127.0.0.1:6")], https),
        "https://127.0.0.1:6"
    );
    assert_eq!(
        api_url(&[a("192.168.1.2:5")], https),
        "https://192.168.1.2:5"
    );
    assert_eq!(
        api_url(&[a("127.0.0.1:7")], Scheme::Http),
        "http://127.0.0.1:7"
    );
}

/// The monitor a watchdog pings on: ready once open and unsealed (the same
/// answer `/ready` gives), and alive only while the accept loop runs — a
/// runtime blocked by a stuck task stops its beat, and shutdown ends it.
#[test]
fn monitor_follows_readiness_and_a_stuck_accept_loop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // No upstream is contacted; any address will do.
    let s = settings(&dir, SocketAddr::from(([127, 0, 0, 1], 9)));
    let source = s.master_key_source(&dir);
    let app = App::open(
        s,
        &dir,
        source,
        OpenOptions {
            role: "serve",
            unseal: true,
        },
    )
    .expect("open");
    // One thread: a task that blocks it stalls the accept loop too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running = app
            .serve(Shell {
                host: Arc::new(NoHostInfo),
                admin: Arc::new(StaticToken::new(ADMIN)),
                transport: Transport::Plain,
                listeners: vec![listener],
                redirect_listeners: Vec::new(),
            })
            .expect("serve");
        let addr = running.local_addrs()[0];
        let monitor = running.monitor();
        let readiness = monitor.readiness();
        assert!(readiness.is_ready(), "{}", readiness.summary());
        let resp = http(
            addr,
            &format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(monitor.serving(Duration::from_secs(3)));

        // Observed from outside the runtime while its only thread is stuck.
        let watcher = {
            let monitor = monitor.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2500));
                monitor.serving(Duration::from_millis(2000))
            })
        };
        tokio::spawn(async {
            // A task that never yields: nothing else on this runtime runs.
            std::thread::sleep(Duration::from_millis(3500));
        });
        tokio::task::yield_now().await;
        let during = tokio::task::spawn_blocking(move || watcher.join().expect("watcher"))
            .await
            .expect("join");
        assert!(!during, "a stuck accept loop must not count as serving");
        // Unstuck: the loop beats again within its interval.
        tokio::time::sleep(crate::serve::heartbeat::BEAT_INTERVAL * 2).await;
        assert!(monitor.serving(Duration::from_secs(3)));

        let heartbeats = monitor.heartbeats.clone();
        drop(monitor);
        running.shutdown().await.expect("shutdown");
        assert!(
            heartbeats.iter().all(|h| h.age().is_none()),
            "a stopped loop never counts as serving again"
        );
    });
}
