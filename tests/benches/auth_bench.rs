//! Auth benchmark: prints the figures recorded in docs/PERFORMANCE.md
//! ("Auth (issue 4)").
//!
//! ```sh
//! cargo build --release -p latchkey-e2e --bin auth-bench
//! target/release/auth-bench
//! ```
//!
//! `AUTH_BENCH_REQUESTS` (default 20000 per request type),
//! `AUTH_BENCH_KEY_SECS` (default 3) and `AUTH_BENCH_LOGINS` (default 20)
//! change the sample sizes.
//!
//! Figures, all in one process on a temporary data directory (keyfile
//! master key), no network:
//! - **authenticated-request overhead**: core's real router (every
//!   middleware: request id, limits, tracing span, rate limit, security
//!   headers, metrics) driven with `tower::ServiceExt::oneshot`, one request
//!   at a time on a current-thread tokio runtime with its blocking pool
//!   (what the server uses for session and access-token lookups). Request
//!   types are interleaved round-robin so drift hits all alike: `GET
//!   /health` (no auth), `GET /api/auth/me` without credentials (401),
//!   and `GET /api/auth/me` with a session cookie, an access token and an
//!   API key. p50/p99 per type, and p50 minus `/health`'s p50;
//! - **API-key verifications per second on one thread**: `Auth::authenticate_key`
//!   in a loop (checksum, in-memory lookup, constant-time hash compare, the
//!   owner's row read from redb), and the same for keys with a bad checksum
//!   (rejected before any lookup);
//! - **login latency**: `Auth::login` with the right password (argon2id
//!   verification with the parameters printed), median and p90 of
//!   `AUTH_BENCH_LOGINS`; and for unknown usernames (a dummy-hash
//!   verification, so both take the same time).

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use latchkey_core::auth::Auth;
use latchkey_core::auth::password::Argon2Params;
use latchkey_core::auth::service::LoginStep;
use latchkey_core::config::Settings;
use latchkey_core::http::{AppState, Metrics, NoHostInfo, StaticToken, router};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::store::Store;
use latchkey_core::vault::Vault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const PASSWORD: &str = "Tangerine-Lighthouse-Quartz-417";
const HOST_TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Kind {
    name: &'static str,
    path: &'static str,
    header: Option<(header::HeaderName, String)>,
    want: StatusCode,
    samples: Vec<Duration>,
}

fn main() {
    let requests = env_num("AUTH_BENCH_REQUESTS", 20_000) as usize;
    let key_secs = env_num("AUTH_BENCH_KEY_SECS", 3);
    let logins = env_num("AUTH_BENCH_LOGINS", 20).max(1) as usize;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::default();
    // The bench's own traffic must never be rate limited.
    settings.auth.rate_limit_burst = 10_000_000;
    settings.auth.rate_limit_per_minute = 10_000_000;
    let store = Store::open(dir.path(), "auth-bench").expect("open store");
    let vault = Arc::new(Vault::new(store));
    vault
        .open_with(&settings.master_key_source(dir.path()))
        .expect("open vault");
    let auth = Auth::new(
        Arc::clone(vault.store()),
        Arc::clone(&vault),
        settings.auth.clone(),
    )
    .expect("auth");

    // The owner, signed in with a recovery code (no clock dependence).
    let pw = SecretString::from(PASSWORD.to_string());
    let (_, _, codes) = auth.setup_host("owner", &pw).expect("setup");
    let LoginStep::MfaRequired { ticket } = auth.login("owner", &pw, None, None).expect("login")
    else {
        panic!("the owner has TOTP: a second step is expected");
    };
    let session = auth
        .mfa(
            ticket.expose_secret(),
            None,
            Some(codes[0].expose_secret()),
            None,
            None,
        )
        .expect("mfa");
    let cookie = session.token.expose_secret().to_string();
    let principal = auth.authenticate_session(&cookie).expect("session");
    let pair = auth.issue_tokens(&principal).expect("tokens");
    let access = pair.access_token.0.expose_secret().to_string();
    let (_, key) = auth
        .create_key(&principal, "bench", &["proxy:*".to_string()], None)
        .expect("key");
    let key = key.expose_secret().to_string();

    let state = AppState::new(
        Arc::clone(&vault),
        Arc::clone(&auth),
        Arc::new(settings.clone()),
        Arc::new(NoHostInfo),
        Arc::new(Metrics::new()),
        Arc::new(StaticToken::new(HOST_TOKEN)),
    )
    .expect("state");
    let app = router(state);

    let mut kinds = [
        Kind {
            name: "GET /health (no auth)",
            path: "/health",
            header: None,
            want: StatusCode::OK,
            samples: Vec::new(),
        },
        Kind {
            name: "GET /api/auth/me, no credentials (401)",
            path: "/api/auth/me",
            header: None,
            want: StatusCode::UNAUTHORIZED,
            samples: Vec::new(),
        },
        Kind {
            name: "GET /api/auth/me, session cookie",
            path: "/api/auth/me",
            header: Some((header::COOKIE, format!("__Host-latchkey_session={cookie}"))),
            want: StatusCode::OK,
            samples: Vec::new(),
        },
        Kind {
            name: "GET /api/auth/me, access token",
            path: "/api/auth/me",
            header: Some((header::AUTHORIZATION, format!("Bearer {access}"))),
            want: StatusCode::OK,
            samples: Vec::new(),
        },
        Kind {
            name: "GET /api/auth/me, API key",
            path: "/api/auth/me",
            header: Some((header::AUTHORIZATION, format!("Bearer {key}"))),
            want: StatusCode::OK,
            samples: Vec::new(),
        },
    ];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let warmup = (requests / 10).max(100);
    rt.block_on(async {
        for round in 0..(warmup + requests) {
            for k in kinds.iter_mut() {
                let mut b = Request::builder()
                    .method("GET")
                    .uri(k.path)
                    .header(header::HOST, "localhost:8443")
                    .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
                if let Some((name, value)) = &k.header {
                    b = b.header(name, value);
                }
                let req = b.body(Body::empty()).expect("request");
                let t = Instant::now();
                let resp = app.clone().oneshot(req).await.expect("infallible");
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .expect("body");
                let took = t.elapsed();
                assert_eq!(
                    status,
                    k.want,
                    "{}: {}",
                    k.name,
                    String::from_utf8_lossy(&body)
                );
                if round >= warmup {
                    k.samples.push(took);
                }
            }
        }
    });

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Auth benchmark (in-process router, {requests} requests per type, interleaved); load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>14}",
        "request", "p50 µs", "p99 µs", "mean µs", "p50 - /health"
    );
    let mut base = Duration::ZERO;
    for (i, k) in kinds.iter_mut().enumerate() {
        k.samples.sort();
        let p50 = pct(&k.samples, 0.5);
        let p99 = pct(&k.samples, 0.99);
        let mean = k.samples.iter().sum::<Duration>() / k.samples.len() as u32;
        if i == 0 {
            base = p50;
        }
        println!(
            "{:<42} {:>9.1} {:>9.1} {:>9.1} {:>+12.1} µs",
            k.name,
            us(p50),
            us(p99),
            us(mean),
            us(p50) - us(base)
        );
    }

    // API-key verification on one thread.
    let mut bad = key.clone().into_bytes();
    let i = bad.len() - 3;
    bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).expect("ascii");
    assert!(auth.authenticate_key(&bad).is_err(), "typo must be refused");
    for (what, k, ok) in [
        ("valid API key", key.as_str(), true),
        ("API key with a typo (bad checksum)", bad.as_str(), false),
    ] {
        let deadline = Instant::now() + Duration::from_secs(key_secs);
        let t = Instant::now();
        let mut n: u64 = 0;
        while Instant::now() < deadline {
            for _ in 0..1000 {
                let r = auth.authenticate_key(std::hint::black_box(k));
                assert_eq!(r.is_ok(), ok);
                n += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "Auth::authenticate_key, {what}: {:.0} verifications/s on one thread ({:.2} µs each)",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    }

    // Login latency.
    let p = Argon2Params::default();
    let mut right = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..logins {
        let t = Instant::now();
        let step = auth.login("owner", &pw, None, None).expect("login");
        right.push(t.elapsed());
        assert!(matches!(step, LoginStep::MfaRequired { .. }));
        let t = Instant::now();
        let r = auth.login(&format!("nobody-{i}"), &pw, None, None);
        unknown.push(t.elapsed());
        assert!(r.is_err());
    }
    right.sort();
    unknown.sort();
    println!(
        "Auth::login (argon2id m = {} KiB, t = {}, p = {}), {logins} runs: right password median {:.1} ms \
         (p90 {:.1} ms); unknown user median {:.1} ms (p90 {:.1} ms)",
        p.memory_kib,
        p.iterations,
        p.parallelism,
        ms(pct(&right, 0.5)),
        ms(pct(&right, 0.9)),
        ms(pct(&unknown, 0.5)),
        ms(pct(&unknown, 0.9)),
    );
    drop(app);
    drop(auth);
}
