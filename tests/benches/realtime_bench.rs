//! Realtime (WebSocket) benchmark: direct vs nginx vs Latchkey, side by
//! side in one run, with the same echo upstream and the same client.
//! Prints the figures recorded in docs/PERFORMANCE.md ("Realtime").
//!
//! ```sh
//! scripts/bench-realtime.sh              # release build + full run (~3 min)
//! scripts/bench-realtime.sh --quick      # ~40 s smoke run
//! target/release/realtime-bench --route agent   # through /agent/<name>/… instead
//! ```
//!
//! Three targets, each ending at the same in-process WebSocket echo server
//! (tokio-tungstenite, plain `ws://`, every text or binary message sent
//! straight back):
//! 1. **direct**: the echo server itself, plain `ws://`;
//! 2. **nginx**: terminating TLS with Latchkey's own server certificate,
//!    passing the upgrade on (`proxy_set_header Upgrade/Connection`),
//!    replacing `Authorization` with the provider key, one worker — a
//!    proxy doing no auth work;
//! 3. **latchkey**: the real release `latchkey serve` over its own HTTPS:
//!    `--route proxy` (default) a WebSocket on `/proxy/echo/ws` with an API
//!    key (`proxy:echo`), the provider key injected from the vault
//!    (`[providers.echo] websocket = true`); `--route agent` a WebSocket on
//!    `/agent/echo/ws` (`agent:echo`, identity headers and assertion added).
//!
//! What is measured, per target:
//! - **per-message latency**: one session, one message at a time (send,
//!   wait for the echo): a 160-byte JSON text event and a 3,200-byte binary
//!   audio frame (100 ms of 16 kHz PCM16), `--messages` each after a
//!   warm-up; round-trip time into an HDR histogram. "Added" is the
//!   target's median minus direct's median: what the proxy costs one
//!   message there and back.
//! - **frames per second**: `--connections` sessions, each keeping
//!   `--window` frames in flight (a sender and a receiver per session),
//!   `--secs` measured after a 1 s warm-up: echoed frames per second (each
//!   crosses the proxy twice), and the proxy's CPU time per 1,000 frames.
//! - **memory per open session**: `--sessions` (default 1,000) idle
//!   sessions opened (each proves itself with one echo), then the RSS of
//!   the proxy's processes compared with before: the delta per session.
//!   Then all are closed and the RSS read again.
//!
//! The proxy under test runs on CPU 1 (`taskset -c 1`), this process — the
//! client and the echo server, each a single-threaded tokio runtime — on
//! CPU 0; as root everything runs at nice −10 (as proxy-bench). Rounds
//! (`--rounds`, default 3; `--quick` 1) interleave the targets; the
//! summary takes medians over rounds. Everything is on 127.0.0.1 and
//! bounded in time; every process started here is stopped when the bench
//! ends, panics or gets SIGINT/SIGTERM.

#[path = "common/procs.rs"]
mod procs;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use procs::*;
use rustls::crypto::ring::{self, cipher_suite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HsRequest, Response as HsResponse,
};

/// The provider key the proxies put on the upstream upgrade.
const PROVIDER_SECRET: &str = "sk-rt-bench-REAL-0123456789abcdef0123456789";
const VAULT_ENTRY: &str = "bench-echo";
const USERNAME: &str = "bench";
const PASSWORD: &str = "Tangerine-Lighthouse-Quartz-417";
/// A message, connection or upgrade slower than this is an error.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard ceiling on the whole run.
const MAX_RUN: Duration = Duration::from_secs(3600);
/// Sessions opened at once while filling the idle-session test.
const OPEN_CONCURRENCY: usize = 16;

// ---------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Proxy,
    Agent,
}

struct Opts {
    route: Route,
    rounds: usize,
    messages: usize,
    warmup_messages: usize,
    secs: Duration,
    connections: usize,
    window: usize,
    sessions: usize,
    /// Extra TOML for latchkey.toml (experiments).
    latchkey_toml: String,
}

const USAGE: &str = "usage: realtime-bench [--quick] [--route proxy|agent] [--rounds N] \
[--messages N] [--secs N] [--connections N] [--window N] [--sessions N] [--latchkey-toml TOML]";

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        route: Route::Proxy,
        rounds: 3,
        messages: 3000,
        warmup_messages: 300,
        secs: Duration::from_secs(5),
        connections: 4,
        window: 32,
        sessions: 1000,
        latchkey_toml: String::new(),
    };
    if args.iter().any(|a| a == "--quick") {
        o.rounds = 1;
        o.messages = 500;
        o.warmup_messages = 100;
        o.secs = Duration::from_secs(2);
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs {what}\n{USAGE}"))
        };
        let num = |v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{a}: not a number: {v:?}\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => {}
            "--route" => {
                o.route = match value("proxy or agent").as_str() {
                    "proxy" => Route::Proxy,
                    "agent" => Route::Agent,
                    other => panic!("--route: {other:?} is neither proxy nor agent\n{USAGE}"),
                }
            }
            "--rounds" => o.rounds = num(value("a count")).clamp(1, 20) as usize,
            "--messages" => o.messages = num(value("a count")).clamp(10, 1_000_000) as usize,
            "--secs" => o.secs = Duration::from_secs(num(value("seconds")).clamp(1, 600)),
            "--connections" => o.connections = num(value("a count")).clamp(1, 256) as usize,
            "--window" => o.window = num(value("a count")).clamp(1, 4096) as usize,
            "--sessions" => o.sessions = num(value("a count")).clamp(1, 5000) as usize,
            "--latchkey-toml" => {
                o.latchkey_toml.push('\n');
                o.latchkey_toml.push_str(&value("TOML"));
                o.latchkey_toml.push('\n');
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    o
}

// ---------------------------------------------------------------------------
// Small helpers (as in proxy-bench)

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1_000, 60_000_000_000));
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------
// The echo upstream

#[derive(Default)]
struct EchoStats {
    upgrades: AtomicU64,
    /// Upgrades that carried the real provider key.
    with_real_key: AtomicU64,
    /// Upgrades that carried a Latchkey key (must stay 0 through Latchkey).
    with_latchkey_key: AtomicU64,
    open: AtomicU64,
}

// The callback's signature is tungstenite's (its error is an HTTP response).
#[allow(clippy::result_large_err)]
async fn echo_session(tcp: tokio::net::TcpStream, stats: Arc<EchoStats>) {
    let _ = tcp.set_nodelay(true);
    let st = Arc::clone(&stats);
    let inspect = move |req: &HsRequest, resp: HsResponse| -> Result<HsResponse, ErrorResponse> {
        st.upgrades.fetch_add(1, Ordering::Relaxed);
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        if auth == format!("Bearer {PROVIDER_SECRET}").as_bytes() {
            st.with_real_key.fetch_add(1, Ordering::Relaxed);
        }
        if auth.windows(3).any(|w| w == b"lk_") {
            st.with_latchkey_key.fetch_add(1, Ordering::Relaxed);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, inspect).await else {
        return;
    };
    stats.open.fetch_add(1, Ordering::Relaxed);
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// The echo server on its own thread and single-threaded runtime.
fn start_echo(stats: Arc<EchoStats>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("echo runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the echo server");
            let _ = tx.send(listener.local_addr().expect("echo address"));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(echo_session(tcp, Arc::clone(&stats)));
            }
        });
    });
    rx.recv_timeout(START_TIMEOUT)
        .expect("the echo server starts")
}

// ---------------------------------------------------------------------------
// The client

/// Trusts only the CA in `ca_pem`; HTTP/1.1 by ALPN (WebSockets need it);
/// TLS 1.3 suites in Latchkey's server order so both proxies negotiate the
/// same one.
fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate is usable as a trust anchor");
    }
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// Where a session goes.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// `None`: plain `ws://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    path: String,
    /// `Authorization` the client sends.
    auth: String,
    /// The proxy's processes (CPU time, RSS); empty for direct.
    pids: Vec<u32>,
}

async fn open(t: &Target) -> Result<Ws, String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(t.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (io, scheme): (Box<dyn Io>, &str) = match &t.tls {
            None => (Box::new(tcp), "ws"),
            Some(cfg) => {
                let name = ServerName::IpAddress(t.addr.ip().into());
                let tls = TlsConnector::from(Arc::clone(cfg))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                (Box::new(tls), "wss")
            }
        };
        let mut req = format!("{scheme}://{}{}", t.addr, t.path)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "authorization",
            t.auth.parse().map_err(|_| "bad auth header".to_string())?,
        );
        let (ws, _) = tokio_tungstenite::client_async(req, io)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok::<Ws, String>(ws)
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out opening a session".to_string())?
}

/// The next text or binary message's length.
async fn next_data<S>(ws: &mut S) -> Result<usize, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(IO_TIMEOUT, ws.next()).await {
            Err(_) => return Err("no echo in time".into()),
            Ok(None) => return Err("the session ended".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.len()),
            Ok(Some(Ok(Message::Binary(b)))) => return Ok(b.len()),
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed: {c:?}")),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn text_event() -> Message {
    // A realtime API's client event, 160 bytes.
    let mut s =
        String::from(r#"{"type":"input_audio_buffer.append","event_id":"evt_0001","audio":""#);
    while s.len() < 158 {
        s.push('A');
    }
    s.push_str(r#""}"#);
    Message::text(s)
}

fn audio_frame() -> Message {
    // 100 ms of 16 kHz mono PCM16.
    Message::binary((0..3200u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// One session, one message at a time: round-trip times after `warmup`.
async fn latency(
    t: &Target,
    msg: &Message,
    warmup: usize,
    n: usize,
) -> Result<Histogram<u64>, String> {
    let mut ws = open(t).await?;
    let mut h = new_hist();
    let want = message_len(msg);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        ws.send(msg.clone()).await.map_err(|e| e.to_string())?;
        let got = next_data(&mut ws).await?;
        if got != want {
            return Err(format!("echo of {got} bytes, sent {want}"));
        }
        if i >= warmup {
            record(&mut h, t0.elapsed());
        }
    }
    let _ = ws.close(None).await;
    Ok(h)
}

struct Throughput {
    fps: f64,
    /// Proxy CPU per 1,000 echoed frames (None for direct).
    cpu_ms_per_1000: Option<f64>,
}

/// `connections` sessions, each with `window` frames in flight.
async fn throughput(
    t: &Target,
    msg: &Message,
    connections: usize,
    window: usize,
    secs: Duration,
    ticks: u64,
) -> Result<Throughput, String> {
    let echoed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let ws = open(t).await?;
        let (mut sink, mut stream) = ws.split();
        let credit = Arc::new(tokio::sync::Semaphore::new(window));
        let (c, m) = (Arc::clone(&credit), msg.clone());
        let f = Arc::clone(&failed);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(permit) = c.acquire().await else {
                    return;
                };
                permit.forget();
                if sink.send(m.clone()).await.is_err() {
                    f.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }));
        let (e, f) = (Arc::clone(&echoed), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            loop {
                if next_data(&mut stream).await.is_err() {
                    f.store(true, Ordering::Relaxed);
                    return;
                }
                e.fetch_add(1, Ordering::Relaxed);
                credit.add_permits(1);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = |pids: &[u32]| -> Duration { pids.iter().map(|&p| cpu_time(p, ticks)).sum() };
    let (c0, cpu0, t0) = (echoed.load(Ordering::Relaxed), cpu(&t.pids), Instant::now());
    tokio::time::sleep(secs).await;
    let (c1, cpu1, elapsed) = (echoed.load(Ordering::Relaxed), cpu(&t.pids), t0.elapsed());
    for task in &tasks {
        task.abort();
    }
    if failed.load(Ordering::Relaxed) {
        return Err("a session failed during the run".into());
    }
    let frames = c1 - c0;
    Ok(Throughput {
        fps: frames as f64 / elapsed.as_secs_f64(),
        cpu_ms_per_1000: (!t.pids.is_empty() && frames > 0)
            .then(|| cpu1.saturating_sub(cpu0).as_secs_f64() * 1e3 / (frames as f64 / 1000.0)),
    })
}

/// Opens `n` sessions (each proves itself with one echo) and keeps them.
async fn open_idle(t: &Target, n: usize) -> Result<Vec<Ws>, String> {
    let msg = Message::text("hello");
    let results: Vec<Result<Ws, String>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let msg = msg.clone();
            async move {
                let mut ws = open(t).await?;
                ws.send(msg).await.map_err(|e| e.to_string())?;
                next_data(&mut ws).await?;
                Ok::<Ws, String>(ws)
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

fn rss_of(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

struct Memory {
    before: u64,
    open: u64,
    after_close: u64,
    sessions: usize,
}

fn idle_sessions(rt: &tokio::runtime::Runtime, t: &Target, n: usize, stats: &EchoStats) -> Memory {
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_of(&t.pids);
    let upgrades0 = stats.upgrades.load(Ordering::Relaxed);
    let sessions = rt
        .block_on(open_idle(t, n))
        .unwrap_or_else(|e| panic!("{}: opening {n} sessions: {e}", t.name));
    // Let buffers settle and the echo side see them all (the timer is
    // made inside the runtime).
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    let open = rss_of(&t.pids);
    let reached = stats.upgrades.load(Ordering::Relaxed) - upgrades0;
    let open_upstream = stats.open.load(Ordering::Relaxed);
    assert!(
        reached >= n as u64 && open_upstream >= n as u64,
        "{}: {reached} of {n} sessions reached the echo server, {open_upstream} open there",
        t.name
    );
    let count = sessions.len();
    rt.block_on(async {
        for mut ws in sessions {
            let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    Memory {
        before,
        open,
        after_close: rss_of(&t.pids),
        sessions: count,
    }
}

// ---------------------------------------------------------------------------
// Latchkey and nginx

fn latchkey_cmd(bin: &Path, home: &Path, data: &Path, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn latchkey");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).expect("write latchkey's stdin");
    }
    let out = child.wait_with_output().expect("latchkey output");
    assert!(
        out.status.success(),
        "latchkey {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain HTTPS request with `curl` (setup only; not measured).
fn curl(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&serde_json::Value>,
) -> (u16, String, serde_json::Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-X", method, "-D", "-", "-o", "-"])
        .arg(format!("https://{addr}{path}"))
        .args(["-H", "Sec-Fetch-Site: same-origin"]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    let out = c.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        head.to_string(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

struct Latchkey {
    proc: Proc,
    addr: SocketAddr,
    ca: PathBuf,
}

fn start_latchkey(bin: &Path, home: &Path, data: &Path) -> Latchkey {
    let log = home.join("latchkey.log");
    let mut cmd = on_cpu1(bin);
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(home.join("latchkey.stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(&log).expect("log file"));
    let t0 = Instant::now();
    let mut proc = Proc::spawn(cmd, false, log);
    let lock = data.join("latchkey.lock");
    let ca = data.join("tls").join("ca.pem");
    loop {
        assert!(
            t0.elapsed() < START_TIMEOUT,
            "latchkey serve did not become ready:\n{}",
            proc.log_tail()
        );
        if let Some(status) = proc.exited() {
            panic!("latchkey serve exited ({status}):\n{}", proc.log_tail());
        }
        let pid = u64::from(proc.pid());
        let addr = std::fs::read(&lock)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|v| v.get("pid").and_then(serde_json::Value::as_u64) == Some(pid))
            .and_then(|v| v.get("api_url")?.as_str().map(str::to_owned))
            .and_then(|u| u.strip_prefix("https://")?.parse::<SocketAddr>().ok());
        if let Some(addr) = addr
            && ca.exists()
            && curl(addr, &ca, "GET", "/ready", &[], None).0 == 200
        {
            return Latchkey { proc, addr, ca };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signs in with the password and a recovery code and creates a key with
/// `scope`.
fn create_api_key(lk: &Latchkey, recovery_code: &str, scope: &str) -> String {
    let (s, _, v) = curl(
        lk.addr,
        &lk.ca,
        "POST",
        "/api/auth/login",
        &[],
        Some(&serde_json::json!({"username": USERNAME, "password": PASSWORD})),
    );
    assert_eq!(s, 200, "login: {v}");
    let ticket = v["ticket"].as_str().expect("login ticket").to_string();
    let (s, head, v) = curl(
        lk.addr,
        &lk.ca,
        "POST",
        "/api/auth/mfa",
        &[],
        Some(&serde_json::json!({"ticket": ticket, "recovery_code": recovery_code})),
    );
    assert_eq!(s, 200, "mfa: {v}");
    let session = head
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().to_string())
        })
        .filter_map(|c| c.split(';').next().map(str::to_owned))
        .find(|c| c.starts_with("__Host-latchkey_session="))
        .expect("a session cookie");
    let (s, _, v) = curl(
        lk.addr,
        &lk.ca,
        "POST",
        "/api/keys",
        &[format!("Cookie: {session}")],
        Some(&serde_json::json!({"name": "realtime-bench", "scopes": [scope]})),
    );
    assert_eq!(s, 201, "create key: {v}");
    v["key"].as_str().expect("the new key").to_string()
}

fn start_nginx(home: &Path, data: &Path, echo: SocketAddr, ca: &Path) -> (Proc, SocketAddr) {
    let dir = home.join("nginx");
    std::fs::create_dir_all(&dir).expect("nginx directory");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let tls = data.join("tls");
    let d = dir.display();
    let user = if is_root() { "user root root;\n" } else { "" };
    let conf = format!(
        "# Generated by realtime-bench: TLS with Latchkey's certificate, WebSocket upgrade, header injection.\n\
{user}worker_processes 1;\n\
worker_rlimit_nofile 20000;\n\
daemon off;\n\
pid {d}/nginx.pid;\n\
error_log {d}/error.log warn;\n\
events {{ worker_connections 8192; }}\n\
http {{\n\
  access_log off;\n\
  client_body_temp_path {d}/client_body;\n\
  proxy_temp_path {d}/proxy_temp;\n\
  fastcgi_temp_path {d}/fastcgi_temp;\n\
  uwsgi_temp_path {d}/uwsgi_temp;\n\
  scgi_temp_path {d}/scgi_temp;\n\
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
  server {{\n\
    listen 127.0.0.1:{port} ssl;\n\
    ssl_certificate {cert};\n\
    ssl_certificate_key {key};\n\
    ssl_protocols TLSv1.2 TLSv1.3;\n\
    location / {{\n\
      proxy_pass http://{echo};\n\
      proxy_http_version 1.1;\n\
      proxy_set_header Upgrade $http_upgrade;\n\
      proxy_set_header Connection $connection_upgrade;\n\
      proxy_set_header Authorization \"Bearer {PROVIDER_SECRET}\";\n\
      proxy_read_timeout 600s;\n\
      proxy_send_timeout 600s;\n\
      proxy_buffering off;\n\
    }}\n\
  }}\n\
}}\n",
        cert = tls.join("server.pem").display(),
        key = tls.join("server.key").display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let log = dir.join("error.log");
    let mut cmd = on_cpu1(Path::new("nginx"));
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("nginx stderr file"));
    let mut proc = Proc::spawn(cmd, true, log);
    let t0 = Instant::now();
    loop {
        if let Some(status) = proc.exited() {
            panic!("nginx exited ({status}):\n{}", proc.log_tail());
        }
        assert!(
            t0.elapsed() < START_TIMEOUT,
            "nginx did not come up:\n{}",
            proc.log_tail()
        );
        if curl(addr, ca, "GET", "/", &[], None).0 != 0 {
            return (proc, addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The run

/// One target's figures in one round.
#[derive(Clone, Copy, Default)]
struct Line {
    text_p50: u64,
    text_p99: u64,
    audio_p50: u64,
    audio_p99: u64,
    text_fps: f64,
    audio_fps: f64,
    text_cpu: Option<f64>,
    audio_cpu: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn run_line(rt: &tokio::runtime::Runtime, t: &Target, o: &Opts, ticks: u64) -> Line {
    let (text, audio) = (text_event(), audio_frame());
    let lt = rt
        .block_on(latency(t, &text, o.warmup_messages, o.messages))
        .unwrap_or_else(|e| panic!("{}: text latency: {e}", t.name));
    let la = rt
        .block_on(latency(t, &audio, o.warmup_messages, o.messages))
        .unwrap_or_else(|e| panic!("{}: audio latency: {e}", t.name));
    let tt = rt
        .block_on(throughput(t, &text, o.connections, o.window, o.secs, ticks))
        .unwrap_or_else(|e| panic!("{}: text throughput: {e}", t.name));
    let ta = rt
        .block_on(throughput(
            t,
            &audio,
            o.connections,
            o.window,
            o.secs,
            ticks,
        ))
        .unwrap_or_else(|e| panic!("{}: audio throughput: {e}", t.name));
    Line {
        text_p50: lt.value_at_quantile(0.5),
        text_p99: lt.value_at_quantile(0.99),
        audio_p50: la.value_at_quantile(0.5),
        audio_p99: la.value_at_quantile(0.99),
        text_fps: tt.fps,
        audio_fps: ta.fps,
        text_cpu: tt.cpu_ms_per_1000,
        audio_cpu: ta.cpu_ms_per_1000,
    }
}

fn cpu_cell(c: Option<f64>) -> String {
    c.map_or_else(|| "—".into(), |v| format!("{v:.1}"))
}

fn print_line(name: &str, l: &Line) {
    println!(
        "{name:<9} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.0} {:>6} {:>10.0} {:>6}",
        us(l.text_p50),
        us(l.text_p99),
        us(l.audio_p50),
        us(l.audio_p99),
        l.text_fps,
        cpu_cell(l.text_cpu),
        l.audio_fps,
        cpu_cell(l.audio_cpu),
    );
}

fn print_header() {
    println!(
        "{:<9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>10} {:>6}",
        "target", "text p50", "p99", "audio50", "p99", "text fps", "cpu", "audio fps", "cpu"
    );
    println!(
        "{:<9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>10} {:>6}",
        "", "µs RTT", "µs", "µs RTT", "µs", "frames/s", "ms/1k", "frames/s", "ms/1k"
    );
}

fn main() {
    let o = parse_opts();
    install_signal_handler("realtime-bench", MAX_RUN);
    let ncpu = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        ncpu >= 2 && have("taskset", "-V"),
        "needs 2 CPUs and taskset: the proxy runs on CPU 1, client and echo server on CPU 0"
    );
    assert!(
        have("nginx", "-v"),
        "nginx not found: run scripts/install-deps.sh"
    );
    assert!(
        have("curl", "--version"),
        "curl not found: run scripts/install-deps.sh"
    );
    pin_self("0");
    if is_root() {
        let _ = Command::new("renice")
            .args(["-n", NICE, "-p", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::write("/proc/self/autogroup", NICE);
    }
    let bin = latchkey_bin();
    let tmp = tempfile::Builder::new()
        .prefix("realtime-bench-")
        .tempdir()
        .expect("temporary directory");
    registry().dirs.push(tmp.path().to_path_buf());
    let home = tmp.path();
    let data = home.join("data");
    let ticks = clock_ticks();

    let stats = Arc::new(EchoStats::default());
    let echo = start_echo(Arc::clone(&stats));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    latchkey_cmd(
        &bin,
        home,
        &data,
        &["vault", "put", VAULT_ENTRY],
        PROVIDER_SECRET.as_bytes(),
    );
    let setup = latchkey_cmd(
        &bin,
        home,
        &data,
        &[
            "setup",
            "--username",
            USERNAME,
            "--password-stdin",
            "--json",
        ],
        format!("{PASSWORD}\n").as_bytes(),
    );
    let setup: serde_json::Value = serde_json::from_str(&setup).expect("setup --json output");
    let recovery = setup["recovery_codes"][0]
        .as_str()
        .expect("a recovery code")
        .to_string();
    // Room for the idle sessions from one address; the routes under test.
    let route_toml = match o.route {
        Route::Agent => {
            format!("[agents.echo]\nupstream = \"http://{echo}\"\nidle_timeout = \"600s\"\n")
        }
        // No per-key cap on sessions: the idle-session test opens 1,000
        // with one key.
        Route::Proxy => format!(
            "[proxy]\nrealtime_sessions_per_key = 0\n\n[providers.echo]\nupstream = \"http://{echo}\"\nsecret = \"{VAULT_ENTRY}\"\n\
             auth_header = \"authorization\"\nauth_format = \"Bearer {{secret}}\"\nwebsocket = true\n"
        ),
    };
    std::fs::write(
        data.join("latchkey.toml"),
        format!(
            "[auth]\nrate_limit_burst = 100000\nrate_limit_per_minute = 100000\n\n\
             [server]\nmax_connections = 16384\nmax_connections_per_ip = 16384\n\n{route_toml}{}",
            o.latchkey_toml
        ),
    )
    .expect("write latchkey.toml");
    let mut lk = start_latchkey(&bin, home, &data);
    let (scope, path) = match o.route {
        Route::Agent => ("agent:echo", "/agent/echo/ws"),
        Route::Proxy => ("proxy:echo", "/proxy/echo/ws"),
    };
    let key = create_api_key(&lk, &recovery, scope);
    let ca_pem = std::fs::read(&lk.ca).expect("ca.pem");
    let tls = client_config(&ca_pem);
    let (mut nginx, nginx_addr) = start_nginx(home, &data, echo, &lk.ca);
    let nginx_pids: Vec<u32> = std::iter::once(nginx.pid())
        .chain(children_of(nginx.pid()))
        .collect();

    let direct = Target {
        name: "direct",
        addr: echo,
        tls: None,
        path: "/ws".into(),
        auth: format!("Bearer {PROVIDER_SECRET}"),
        pids: Vec::new(),
    };
    let via_nginx = Target {
        name: "nginx",
        addr: nginx_addr,
        tls: Some(Arc::clone(&tls)),
        path: "/ws".into(),
        auth: "Bearer client-key-ignored-by-nginx".into(),
        pids: nginx_pids,
    };
    let latchkey = Target {
        name: "latchkey",
        addr: lk.addr,
        tls: Some(Arc::clone(&tls)),
        path: path.into(),
        auth: format!("Bearer {key}"),
        pids: vec![lk.proc.pid()],
    };

    // Each proxy reaches the echo server with what it should carry.
    for t in [&via_nginx, &latchkey] {
        let (real0, lk0) = (
            stats.with_real_key.load(Ordering::Relaxed),
            stats.with_latchkey_key.load(Ordering::Relaxed),
        );
        rt.block_on(latency(t, &text_event(), 0, 3))
            .unwrap_or_else(|e| panic!("{}: a session does not work: {e}", t.name));
        assert_eq!(
            stats.with_latchkey_key.load(Ordering::Relaxed),
            lk0,
            "{}: the upstream saw the lk_ key",
            t.name
        );
        if t.name == "nginx" || o.route == Route::Proxy {
            assert_eq!(
                stats.with_real_key.load(Ordering::Relaxed),
                real0 + 1,
                "{}: the upstream did not get the provider key",
                t.name
            );
        }
    }

    println!("Realtime (WebSocket) benchmark (realtime-bench)");
    println!(
        "latchkey: {} (pid {}, CPU 1), route {}",
        bin.display(),
        lk.proc.pid(),
        if o.route == Route::Agent {
            "/agent/echo/ws"
        } else {
            "/proxy/echo/ws"
        }
    );
    println!(
        "machine: {ncpu} CPUs; proxy under test on CPU 1, client + echo server on CPU 0{}",
        if is_root() {
            format!(", nice {NICE}")
        } else {
            String::new()
        }
    );
    println!(
        "latency: {} messages after {} warm-up, one at a time on one session; \
         throughput: {} sessions × {} in flight, {} s after 1 s warm-up",
        o.messages,
        o.warmup_messages,
        o.connections,
        o.window,
        o.secs.as_secs()
    );
    println!("text = 160-byte JSON event, audio = 3,200-byte binary frame; fps = echoed frames/s");

    let mut rounds: Vec<[Line; 3]> = Vec::new();
    for r in 0..o.rounds {
        println!("\nround {}/{}", r + 1, o.rounds);
        print_header();
        let mut lines = [Line::default(); 3];
        for (i, t) in [&direct, &via_nginx, &latchkey].into_iter().enumerate() {
            lines[i] = run_line(&rt, t, &o, ticks);
            print_line(t.name, &lines[i]);
        }
        rounds.push(lines);
    }

    println!("\nmedians over {} round(s)", rounds.len());
    print_header();
    let mut med = [Line::default(); 3];
    for (i, name) in ["direct", "nginx", "latchkey"].into_iter().enumerate() {
        let col = |f: fn(&Line) -> f64| median(rounds.iter().map(|r| f(&r[i])).collect());
        let opt = |f: fn(&Line) -> Option<f64>| {
            let v: Vec<f64> = rounds.iter().filter_map(|r| f(&r[i])).collect();
            (!v.is_empty()).then(|| median(v))
        };
        med[i] = Line {
            text_p50: col(|l| l.text_p50 as f64) as u64,
            text_p99: col(|l| l.text_p99 as f64) as u64,
            audio_p50: col(|l| l.audio_p50 as f64) as u64,
            audio_p99: col(|l| l.audio_p99 as f64) as u64,
            text_fps: col(|l| l.text_fps),
            audio_fps: col(|l| l.audio_fps),
            text_cpu: opt(|l| l.text_cpu),
            audio_cpu: opt(|l| l.audio_cpu),
        };
        print_line(name, &med[i]);
    }
    let added = |l: &Line, p: fn(&Line) -> u64| us(p(l)) - us(p(&med[0]));
    for (i, name) in [(1, "nginx"), (2, "latchkey")] {
        println!(
            "added per message (median RTT − direct): {name}: text {:.1} µs, audio {:.1} µs; \
             fps vs direct: text {:.2}×, audio {:.2}×",
            added(&med[i], |l| l.text_p50),
            added(&med[i], |l| l.audio_p50),
            med[i].text_fps / med[0].text_fps,
            med[i].audio_fps / med[0].audio_fps,
        );
    }
    println!(
        "latchkey / nginx: added latency text {:.2}×, audio {:.2}×; fps text {:.2}×, audio {:.2}×",
        added(&med[2], |l| l.text_p50) / added(&med[1], |l| l.text_p50),
        added(&med[2], |l| l.audio_p50) / added(&med[1], |l| l.audio_p50),
        med[2].text_fps / med[1].text_fps,
        med[2].audio_fps / med[1].audio_fps,
    );

    println!(
        "\nmemory per open session ({} idle sessions, RSS of the proxy's processes)",
        o.sessions
    );
    for t in [&via_nginx, &latchkey] {
        let m = idle_sessions(&rt, t, o.sessions, &stats);
        println!(
            "{:<9} before {:>7} KiB, {} open {:>7} KiB (+{:.1} KiB/session), all closed {:>7} KiB",
            t.name,
            m.before,
            m.sessions,
            m.open,
            m.open.saturating_sub(m.before) as f64 / m.sessions as f64,
            m.after_close,
        );
    }

    nginx.stop();
    lk.proc.stop();
    drop(tmp);
    registry().dirs.clear();
}
