//! Scale benchmark: the embedded redb file and a shared PostgreSQL database
//! side by side, on one machine, in one process. Prints the figures
//! recorded in docs/PERFORMANCE.md ("Scale: redb and PostgreSQL side by
//! side").
//!
//! ```sh
//! cargo build --release -p latchkey-e2e --bin scale-bench
//! target/release/scale-bench
//! ```
//!
//! The servers are core's own `App` (what `latchkey serve` runs), opened
//! from a `latchkey.toml` and served on a loopback listener over plain
//! HTTP; PostgreSQL is Debian's server started for the run with its
//! durable defaults (`latchkey_e2e::postgres::PgServer::start_durable`:
//! `fsync` on); the master key is one key file. Figures:
//!
//! - **proxied-request overhead**: `POST /proxy/mock/v1/chat/completions`
//!   with an API key, one at a time over one keep-alive connection, minus
//!   the same request sent to the mock upstream directly (interleaved
//!   rounds; p50 and p99). The proxy's hot path reads no store, so this
//!   should not depend on the backend;
//! - **vault write**: `Vault::put` replacing one entry (a durable commit);
//! - **sign-in**: the password step (`Auth::login`, argon2id included, up
//!   to the MFA ticket);
//! - **token refresh**: `Auth::refresh`, rotating the refresh token;
//! - **across replicas** (PostgreSQL, two apps serving on one database):
//!   a vault entry replaced on one until the other's hot-path read returns
//!   the new value, and an API key revoked on one until the other refuses
//!   it — the change feed (`NOTIFY`) plus one cache reload.
//!
//! `SCALE_BENCH_REQUESTS` (default 2000 per round and target),
//! `SCALE_BENCH_OPS` (default 300) and `SCALE_BENCH_LOGINS` (default 20)
//! change the sample sizes.

use latchkey_core::app::{App, OpenOptions, Running, Shell};
use latchkey_core::auth::service::LoginStep;
use latchkey_core::config::{CONFIG_FILE, Settings};
use latchkey_core::http::{NoHostInfo, StaticToken};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::serve::Transport;
use latchkey_core::vault::{Kind, NewRecord, Vault};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "Tangerine-Lighthouse-Quartz-417";
const ADMIN: &str = "0123456789abcdef0123456789abcdef";
const BODY: &str = r#"{"model":"mock-1","messages":[]}"#;

fn env_num(name: &str, default: u64) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default) as usize
}

fn pct(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The mock upstream: every completion answered with a small JSON body.
async fn mock_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"id":"c1","model":"mock-1","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            )
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    io: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Conn {
            io: BufReader::new(tcp),
            host: addr.to_string(),
        }
    }

    /// POSTs `BODY` to `path`; the status (the body is read and dropped).
    async fn post(&mut self, path: &str, auth: Option<&str>) -> u16 {
        let auth = auth.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{BODY}",
            self.host,
            BODY.len()
        );
        self.io
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        self.io.read_line(&mut line).await.expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.io.read_line(&mut line).await.expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().expect("content-length");
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                self.io.read_line(&mut line).await.expect("chunk size");
                let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                let mut skip = vec![0; n + 2];
                self.io.read_exact(&mut skip).await.expect("chunk");
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut skip = vec![0; length];
            self.io.read_exact(&mut skip).await.expect("body");
        }
        status
    }
}

/// Writes `dir/latchkey.toml` and opens the app there, unsealed, with the
/// provider's key stored.
fn open_app(dir: &Path, key_file: &Path, upstream: SocketAddr, store: &str) -> App {
    std::fs::create_dir_all(dir).expect("data dir");
    let file = dir.join(CONFIG_FILE);
    std::fs::write(
        &file,
        format!(
            "[server]\ntls = false\n\n[vault]\nkey_file = \"{}\"\n\n{store}\n\
             [auth]\nrate_limit_burst = 10000000\nrate_limit_per_minute = 10000000\n\n\
             [providers.mock]\nupstream = \"http://{upstream}\"\nsecret = \"mock-key\"\n\
             auth_header = \"authorization\"\nauth_format = \"Bearer {{secret}}\"\n",
            key_file.display()
        ),
    )
    .expect("config");
    let settings = Settings::load(&file, true, Vec::new()).expect("settings");
    let source = settings.master_key_source(dir);
    App::open(
        settings,
        dir,
        source,
        OpenOptions {
            role: "serve",
            unseal: true,
        },
    )
    .expect("open app")
}

fn put_secret(vault: &Vault, value: &str) {
    vault
        .put(
            &NewRecord {
                name: "mock-key".into(),
                kind: Kind::ApiKey,
                provider: Some("mock".into()),
                labels: Default::default(),
            },
            &SecretString::from(value.to_string()),
            true,
        )
        .expect("put");
}

async fn serve(app: App) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    app.serve(Shell {
        host: Arc::new(NoHostInfo),
        admin: Arc::new(StaticToken::new(ADMIN)),
        transport: Transport::Plain,
        listeners: vec![listener],
        redirect_listeners: Vec::new(),
    })
    .expect("serve")
}

/// What one backend measured.
struct Figures {
    name: &'static str,
    proxied: Vec<Duration>,
    direct: Vec<Duration>,
    vault_write: Vec<Duration>,
    sign_in: Vec<Duration>,
    refresh: Vec<Duration>,
}

/// The owner (setup, then signed in with a recovery code), an API key
/// for the mock, and the password-step, refresh and vault-write samples.
fn store_figures(app: &App, name: &'static str) -> (Figures, String, String) {
    let ops = env_num("SCALE_BENCH_OPS", 300);
    let logins = env_num("SCALE_BENCH_LOGINS", 20).max(1);
    let auth = app.auth();
    let pw = SecretString::from(PASSWORD.to_string());
    let (_, _, codes) = auth.setup_host("owner", &pw).expect("setup");
    let LoginStep::MfaRequired { ticket } = auth.login("owner", &pw, None, None).expect("login")
    else {
        panic!("the owner has a second factor");
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
    let p = auth
        .authenticate_session(session.token.expose_secret())
        .expect("session");
    let (_, key) = auth
        .create_key(&p, "bench", &["proxy:mock".into()], None)
        .expect("key");
    let mut f = Figures {
        name,
        proxied: Vec::new(),
        direct: Vec::new(),
        vault_write: Vec::new(),
        sign_in: Vec::new(),
        refresh: Vec::new(),
    };
    for i in 0..ops {
        let t = Instant::now();
        put_secret(app.vault(), &format!("sk-upstream-{i:06}"));
        f.vault_write.push(t.elapsed());
    }
    for _ in 0..logins {
        let t = Instant::now();
        let step = auth.login("owner", &pw, None, None).expect("login");
        f.sign_in.push(t.elapsed());
        assert!(matches!(step, LoginStep::MfaRequired { .. }));
    }
    let mut pair = auth.issue_tokens(&p).expect("tokens");
    for _ in 0..ops {
        let t = Instant::now();
        pair = auth
            .refresh(pair.refresh_token.0.expose_secret(), None)
            .expect("refresh");
        f.refresh.push(t.elapsed());
    }
    (
        f,
        key.expose_secret().to_string(),
        session.token.expose_secret().to_string(),
    )
}

/// Interleaved rounds of direct and proxied requests.
async fn proxy_figures(f: &mut Figures, addr: SocketAddr, upstream: SocketAddr, key: &str) {
    let n = env_num("SCALE_BENCH_REQUESTS", 2000);
    let mut direct = Conn::open(upstream).await;
    let mut proxied = Conn::open(addr).await;
    // Warm-up: pools, caches, the first decryption.
    for _ in 0..200 {
        assert_eq!(direct.post("/v1/chat/completions", None).await, 200);
        assert_eq!(
            proxied
                .post("/proxy/mock/v1/chat/completions", Some(key))
                .await,
            200
        );
    }
    for _round in 0..3 {
        for _ in 0..n {
            let t = Instant::now();
            direct.post("/v1/chat/completions", None).await;
            f.direct.push(t.elapsed());
        }
        for _ in 0..n {
            let t = Instant::now();
            let status = proxied
                .post("/proxy/mock/v1/chat/completions", Some(key))
                .await;
            f.proxied.push(t.elapsed());
            assert_eq!(status, 200);
        }
    }
}

fn report(f: &Figures) {
    println!("\n== {} ==", f.name);
    let over50 = pct(&f.proxied, 0.5).saturating_sub(pct(&f.direct, 0.5));
    let over99 = pct(&f.proxied, 0.99).saturating_sub(pct(&f.direct, 0.99));
    println!(
        "proxied request: p50 {:.0} µs, p99 {:.0} µs; direct p50 {:.0} µs, p99 {:.0} µs; \
         overhead p50 {:.0} µs, p99 {:.0} µs ({} each)",
        us(pct(&f.proxied, 0.5)),
        us(pct(&f.proxied, 0.99)),
        us(pct(&f.direct, 0.5)),
        us(pct(&f.direct, 0.99)),
        us(over50),
        us(over99),
        f.proxied.len()
    );
    for (what, s) in [
        ("vault write (Vault::put, replace)", &f.vault_write),
        ("sign-in, password step (argon2id included)", &f.sign_in),
        ("token refresh (rotation)", &f.refresh),
    ] {
        println!(
            "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms ({} samples)",
            ms(pct(s, 0.5)),
            ms(pct(s, 0.9)),
            ms(pct(s, 0.99)),
            s.len()
        );
    }
}

/// A change on replica `a` until replica `b` serves it, `n` times each:
/// a vault entry replaced, an API key revoked.
async fn propagation(a: &App, session: &str, b_vault: &Vault, b_auth: &latchkey_core::auth::Auth) {
    let n = 50;
    let mut secret = Vec::new();
    for i in 0..n {
        let value = format!("sk-propagated-{i:04}");
        let t = Instant::now();
        put_secret(a.vault(), &value);
        loop {
            let seen = b_vault.reveal_cached("mock-key").expect("reveal");
            if seen.expose_secret() == value {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the change never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        secret.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = a.auth().authenticate_session(session).expect("session");
    let (mut made, mut revoked) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let (view, key) = a
            .auth()
            .create_key(&p, &format!("k{i}"), &["proxy:mock".into()], None)
            .expect("key");
        let key = key.expose_secret().to_string();
        while b_auth.authenticate_key(&key).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the key never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        made.push(t.elapsed());
        let t = Instant::now();
        a.auth().revoke_key(&p, &view.id).expect("revoke");
        while b_auth.authenticate_key(&key).is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the revocation never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        revoked.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("\n== across two PostgreSQL replicas (commit on one until the other acts on it) ==");
    for (what, s) in [
        (
            "vault entry replaced → the other's hot-path read returns it",
            &secret,
        ),
        ("API key made → the other accepts it", &made),
        ("API key revoked → the other refuses it", &revoked),
    ] {
        println!(
            "{what}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms ({n} samples)",
            ms(pct(s, 0.5)),
            ms(pct(s, 0.9)),
            ms(pct(s, 1.0))
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let upstream = mock_upstream().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let key_file = tmp.path().join("master.key");
    // Durable, as in production: every commit waits for its WAL flush,
    // as every redb commit waits for its fsync.
    let pg = latchkey_e2e::postgres::PgServer::start_durable();
    let db = pg.database();
    let pg_store = format!("[store]\nbackend = \"postgres\"\nurl = \"{}\"\n", db.url());
    let mut session = String::new();
    for (name, store) in [
        ("redb (embedded file)", String::new()),
        ("PostgreSQL", pg_store.clone()),
    ] {
        let dir = tmp
            .path()
            .join(if store.is_empty() { "redb" } else { "pg" });
        let (app, (mut f, key, s)) = {
            let (dir, key_file) = (dir.clone(), key_file.clone());
            tokio::task::spawn_blocking(move || {
                let app = open_app(&dir, &key_file, upstream, &store);
                let fk = store_figures(&app, name);
                (app, fk)
            })
            .await
            .expect("join")
        };
        session = s;
        let running = serve(app).await;
        let addr = running.local_addrs()[0];
        proxy_figures(&mut f, addr, upstream, &key).await;
        running.shutdown().await.expect("shutdown");
        report(&f);
    }
    // Across replicas: two more apps on the same database; only the
    // second serves (its reload task runs), the first writes.
    let open = |sub: &'static str| {
        let (dir, key_file, s) = (tmp.path().join(sub), key_file.clone(), pg_store.clone());
        tokio::task::spawn_blocking(move || open_app(&dir, &key_file, upstream, &s))
    };
    let a = open("pg-a").await.expect("join");
    let b = open("pg-b").await.expect("join");
    let (b_vault, b_auth) = (Arc::clone(b.vault()), Arc::clone(b.auth()));
    let running_b = serve(b).await;
    propagation(&a, &session, &b_vault, &b_auth).await;
    running_b.shutdown().await.expect("shutdown");
}
