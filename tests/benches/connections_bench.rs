//! Connections broker benchmark: prints the figures recorded in
//! docs/PERFORMANCE.md ("Connections").
//!
//! ```sh
//! cargo build --release -p latchkey -p latchkey-e2e --bin latchkey --bin connections-bench
//! target/release/connections-bench
//! ```
//!
//! Against the real release `latchkey serve` over TLS and a real OpenID
//! Connect provider on loopback (`tests/oidc`, the npm `oidc-provider`;
//! `scripts/install-deps.sh` installs it). Both are set up the way the
//! end-to-end tests do it: owner via web setup, the connect flow driven
//! through the provider's sign-in pages, an API key with
//! `connections:testidp`.
//!
//! 1. **Cached token throughput**: access tokens live an hour, so every
//!    broker answer (`GET /api/connections/testidp/token`) is served from
//!    the cache. Closed loop over 1, 8 and 32 keep-alive HTTP/1.1
//!    connections (tokio + rustls + hyper, trusting the data directory's
//!    CA), each sending its next request when the previous answer is read;
//!    `CONN_BENCH_WARMUP_SECS` (default 2) of warm-up, then
//!    `CONN_BENCH_SECS` (default 10) measured. `GET /health` under the same
//!    load is printed beside it as the cost of the server alone. The
//!    provider's refresh counter must not move during these runs.
//! 2. **Refresh cost**: a second pair with 4 s access tokens and
//!    `refresh_margin_secs = 2`. `CONN_BENCH_REFRESHES` (default 15) times:
//!    wait until the token is inside the margin, time one broker call on a
//!    warm connection (the provider's counter confirms it refreshed — a
//!    sample where a background refresh got there first is discarded), then
//!    time 20 cached calls on the same connection. The added latency is the
//!    median refresh answer minus the median cached answer.
//!
//! `LATCHKEY_BIN` overrides the `latchkey` binary (default: next to this
//! executable). Everything runs on 127.0.0.1; every process started here is
//! killed when the bench ends or panics (the helpers' drop guards).

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use latchkey_e2e::oidc::{
    Idp, OAuthBrowser, PROVIDER, SECRET_ENTRY, callback_urls, connection_config, free_port,
};
use latchkey_e2e::{ServeOpts, Server, TestDir, auth_config, create_key, spawn_server, web_setup};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Per-request time limit of the load generator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    // The helpers find `latchkey` through LATCHKEY_BIN (their default is a
    // test binary's location); set it for them by re-running this program
    // with it in the environment rather than mutating our own.
    if std::env::var_os("LATCHKEY_BIN").is_none() {
        let exe = std::env::current_exe().expect("path of the bench executable");
        let bin = exe
            .parent()
            .expect("the bench executable lives in a directory")
            .join("latchkey");
        assert!(
            bin.exists(),
            "{} not found: `cargo build --release -p latchkey`, or set LATCHKEY_BIN",
            bin.display()
        );
        let status = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("LATCHKEY_BIN", &bin)
            .status()
            .expect("re-run the bench");
        std::process::exit(status.code().unwrap_or(1));
    }
    bench();
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A provider, a Latchkey connected to it, and a broker key.
struct Pair {
    idp: Idp,
    s: Server,
    key: String,
    _d: TestDir,
}

fn pair(access_ttl: u64, extra: &str) -> Pair {
    let d = TestDir::new();
    let port = free_port();
    let idp = Idp::start(&callback_urls(port, PROVIDER), access_ttl, d.path());
    d.ok(
        &["vault", "put", SECRET_ENTRY],
        idp.client_secret.as_bytes(),
    );
    let config = format!("{}\n{}", auth_config(""), connection_config(&idp, extra));
    let opts = ServeOpts {
        listen: format!("127.0.0.1:{port}"),
        ..ServeOpts::new().config(&config)
    };
    let s = spawn_server(&d, &opts);
    let key = {
        let owner = web_setup(&s, "owner");
        let mut ob = OAuthBrowser::new(&owner.browser, "alice");
        let r = ob.connect(&s, &idp, PROVIDER);
        assert_eq!(r.status, 303, "connect: {} {:?}", r.body, r.headers);
        create_key(
            &owner.browser,
            "bench",
            &[&format!("connections:{PROVIDER}")],
        )
        .1
    };
    Pair { idp, s, key, _d: d }
}

fn client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca).expect("read the CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate is a usable trust anchor");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One keep-alive HTTPS connection to Latchkey.
struct Conn {
    sender: Sender,
    driver: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Conn {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to latchkey");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Conn {
        sender,
        driver,
        addr,
    }
}

impl Conn {
    /// `GET path` (with a bearer token if given); status, body and time.
    async fn get(&mut self, path: &str, bearer: Option<&str>) -> (StatusCode, Bytes, Duration) {
        let mut req = Request::get(path).header(HOST, format!("localhost:{}", self.addr.port()));
        if let Some(t) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).expect("request");
        let started = Instant::now();
        let fut = async {
            self.sender.ready().await.expect("connection ready");
            let resp = self.sender.send_request(req).await.expect("response");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, body)
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .expect("answer within the request timeout");
        (status, body, started.elapsed())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Closed loop over `conns` connections; returns (answers/s, sorted
/// latencies). Every answer must be 200.
fn load(
    rt: &tokio::runtime::Runtime,
    s: &Server,
    tls: &Arc<rustls::ClientConfig>,
    (path, bearer): (&str, Option<&str>),
    conns: usize,
    warmup: Duration,
    measure: Duration,
) -> (f64, Vec<Duration>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], s.port));
    rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + warmup;
        let end = measure_from + measure;
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let tls = Arc::clone(tls);
            let path = path.to_string();
            let bearer = bearer.map(str::to_string);
            tasks.push(tokio::spawn(async move {
                let mut c = connect(addr, tls).await;
                let mut lat = Vec::new();
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let (status, body, took) = c.get(&path, bearer.as_deref()).await;
                    assert_eq!(
                        status,
                        StatusCode::OK,
                        "{path}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    if now >= measure_from && Instant::now() <= end {
                        lat.push(took);
                    }
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("load task"));
        }
        all.sort_unstable();
        (all.len() as f64 / measure.as_secs_f64(), all)
    })
}

/// `/proc/loadavg`'s first three fields (other work on the machine skews
/// every figure).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    percentile(v, 0.5)
}

fn bench() {
    let secs = env_u64("CONN_BENCH_SECS", 10);
    let warmup = Duration::from_secs(env_u64("CONN_BENCH_WARMUP_SECS", 2));
    let measure = Duration::from_secs(secs);
    let refreshes = env_u64("CONN_BENCH_REFRESHES", 15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!("Connections broker benchmark (connections-bench)");
    println!(
        "latchkey: {}; provider: oidc-provider on 127.0.0.1; {ncpu} CPUs shared by server, \
         provider and load generator",
        std::env::var("LATCHKEY_BIN").unwrap_or_default()
    );

    println!("load average at start: {}", loadavg());

    // 1. Cached tokens.
    let p = pair(3600, "");
    let tls = client_config(p.s.ca_pem());
    let token_path = format!("/api/connections/{PROVIDER}/token");
    let refreshes_before = p.idp.refreshes();
    println!();
    println!(
        "cached token: GET {token_path} with an API key, closed loop, {} s warm-up + {secs} s",
        warmup.as_secs()
    );
    println!(
        "{:<10} {:>6} {:>12} {:>9} {:>9} {:>9}",
        "route", "conns", "answers/s", "p50 ms", "p99 ms", "max ms"
    );
    for conns in [1usize, 8, 32] {
        for (name, path, bearer) in [
            ("broker", token_path.as_str(), Some(p.key.as_str())),
            ("/health", "/health", None),
        ] {
            let (rate, lat) = load(&rt, &p.s, &tls, (path, bearer), conns, warmup, measure);
            println!(
                "{:<10} {:>6} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
                name,
                conns,
                rate,
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or_default()),
            );
        }
    }
    let during = p.idp.refreshes() - refreshes_before;
    println!("refreshes at the provider during the cached runs: {during}");
    assert_eq!(during, 0, "cached runs refreshed tokens");
    drop(p);

    // 2. The cost of a refresh.
    let margin = 2u64;
    let p = pair(4, &format!("refresh_margin_secs = {margin}"));
    let tls = client_config(p.s.ca_pem());
    let addr = SocketAddr::from(([127, 0, 0, 1], p.s.port));
    let (mut refresh_lat, mut cached_lat, skipped) = rt.block_on(async {
        let mut c = connect(addr, tls).await;
        let mut refresh_lat = Vec::new();
        let mut cached_lat = Vec::new();
        let mut skipped = 0u32;
        let mut attempts = 0;
        while refresh_lat.len() < refreshes as usize && attempts < refreshes * 4 {
            attempts += 1;
            // A fresh token lives 4 s and is stale after 2 s.
            let (st, _, _) = c.get(&token_path, Some(&p.key)).await;
            assert_eq!(st, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(margin * 1000 + 300)).await;
            let before = p.idp.refreshes();
            let (st, body, took) = c.get(&token_path, Some(&p.key)).await;
            assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            if p.idp.refreshes() == before + 1 {
                refresh_lat.push(took);
            } else {
                skipped += 1;
            }
            for _ in 0..20 {
                let (st, _, took) = c.get(&token_path, Some(&p.key)).await;
                assert_eq!(st, StatusCode::OK);
                cached_lat.push(took);
            }
        }
        (refresh_lat, cached_lat, skipped)
    });
    let n = refresh_lat.len();
    let refresh_med = median(&mut refresh_lat);
    let cached_med = median(&mut cached_lat);
    println!();
    println!(
        "refresh needed: one connection, {n} broker answers that refreshed first \
         ({skipped} skipped: a background refresh was first), 20 cached answers after each"
    );
    println!(
        "refresh answer: median {:.2} ms, max {:.2} ms; cached answer: median {:.2} ms; \
         added by a refresh: {:.2} ms",
        ms(refresh_med),
        ms(refresh_lat.last().copied().unwrap_or_default()),
        ms(cached_med),
        ms(refresh_med.saturating_sub(cached_med)),
    );
    println!("load average at the end: {}", loadavg());
    let stats = p.idp.stats();
    println!(
        "provider: {} refresh requests, {} failed",
        stats["refresh_requests"], stats["refresh_errors"]
    );
}
