//! Agent proxy benchmark: direct vs nginx vs Latchkey, side by side in one
//! run, with the same mock upstream and the same load generator. Prints the
//! figures recorded in docs/PERFORMANCE.md ("Agent proxy").
//!
//! ```sh
//! cargo build --release -p latchkey -p latchkey-e2e --bin latchkey --bin proxy-bench
//! target/release/proxy-bench            # full run, 3 interleaved rounds (~9 min)
//! target/release/proxy-bench --quick    # ~30 s smoke run
//! target/release/proxy-bench --soak 600 # 10 min at 1,000 req/s through Latchkey, RSS sampled
//! ```
//! (`scripts/bench-proxy.sh` does the build and passes its arguments on.)
//!
//! Three targets, each answering `POST /v1/chat/completions` from the same
//! in-process mock upstream (hyper, plain HTTP/1.1 keep-alive, OpenAI's wire
//! format: JSON with `usage`, or SSE chunks, a final usage chunk and
//! `data: [DONE]` when the request says `"stream":true`):
//! 1. **direct**: the mock itself, plain HTTP;
//! 2. **nginx**: terminating TLS with Latchkey's own server certificate and
//!    key (`DATA_DIR/tls/server.{pem,key}`), replacing `Authorization` with
//!    the provider key (`proxy_set_header`), keep-alive upstream pool,
//!    `proxy_buffering off` (what a streaming LLM proxy needs), one worker,
//!    access log off unless `--nginx-access-log` (as the peer bench's
//!    nginx-TLS) — a proxy doing no auth work;
//! 3. **latchkey**: the real release `latchkey serve` with an API key
//!    (`proxy:openai`) checked on every request, the provider key injected
//!    from the vault (`[providers.openai] upstream=…, secret=…`) and usage
//!    accounting on, default log level.
//!
//! Both proxies are reached over HTTPS with one client configuration
//! (rustls + ring, HTTP/1.1 by ALPN, keep-alive, trusting `DATA_DIR/tls/ca.pem`,
//! TLS 1.3 suites in Latchkey's server order). The proxy under test runs on
//! CPU 1 (`taskset -c 1`); this process — load generator and mock upstream,
//! each a single-threaded tokio runtime — on CPU 0. Run as root, the bench
//! and everything it starts get nice −10 and so does its session's
//! autogroup, so other work on a shared machine disturbs the figures less.
//!
//! Rounds (`--rounds N`, default 3; `--quick`: 1): the whole comparison is
//! repeated, the targets interleaved (direct, nginx, latchkey, direct, …),
//! each line 5 s warm-up + 10 s measured. Every round is printed; the
//! verdicts use medians over the rounds — added latency: Latchkey's median
//! (and, for the 2 × rule, nginx's median beside it); saturation and
//! streaming: the median latchkey/nginx ratio and the median Latchkey
//! figure — because this virtual machine's own speed drifts by 20–30 %
//! over minutes and a single pass can land on either side of a target by
//! luck.
//!
//! Load: open loop at fixed rates (default 1,000 and 5,000 req/s over 32
//! connections, each sending on its own fixed schedule). Latency runs from
//! the *scheduled* send time when a connection was still busy with its
//! previous request at that time (so a slow answer is charged for the
//! requests it held up: no coordinated omission) and from the actual send
//! time otherwise (so the timer's 1 ms granularity is not charged to the
//! proxy). Then a closed-loop saturation run (64 connections back to back),
//! and the streaming time to first byte: sequential streamed requests on one
//! connection, the mock sending its first SSE chunk at once and the rest
//! with a delay between chunks; TTFB = send → first body bytes. Warm-up is
//! excluded everywhere; latencies go to an HDR histogram.
//!
//! Everything is on 127.0.0.1. Every process started here is stopped when
//! the bench ends, panics, or gets Ctrl-C/SIGTERM (a signal thread kills the
//! registered children and removes the temporary directory).

#[path = "common/procs.rs"]
mod procs;

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use procs::*;
use rustls::crypto::ring::{self, cipher_suite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// The provider key the proxies inject and the mock expects.
const PROVIDER_SECRET: &str = "sk-bench-REAL-0123456789abcdef0123456789";
/// Vault entry holding it.
const VAULT_ENTRY: &str = "bench-openai";
const USERNAME: &str = "bench";
const PASSWORD: &str = "Tangerine-Lighthouse-Quartz-417";
/// A request slower than this is an error (and its connection replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a server to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard ceiling on the whole run, whatever the options say.
const MAX_RUN: Duration = Duration::from_secs(3 * 3600);

/// The request and answer of the independent peer bench
/// (`../shared/bench/peers`: its `run.sh` body and its mock's answer, with
/// this bench's model name), so both harnesses load the proxies with the
/// same bytes: a system and a user message, and an answer with
/// `system_fingerprint`, `refusal` and `logprobs` as OpenAI sends them.
const CHAT_REQUEST: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"temperature":0}"#;
const STREAM_REQUEST: &[u8] = br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hi in one word."}]}"#;
const CHAT_RESPONSE: &[u8] = br#"{"id":"chatcmpl-mock-0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_mock","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock upstream. This is a fixed answer.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":11,"total_tokens":23}}"#;

// ---------------------------------------------------------------------------
// Options

struct Opts {
    quick: bool,
    soak: Option<u64>,
    warmup: Duration,
    measure: Duration,
    rates: Vec<u64>,
    connections: usize,
    sat_connections: usize,
    stream_requests: usize,
    chunks: usize,
    chunk_delay: Duration,
    latchkey_log: Option<String>,
    /// nginx writes its access log (off by default, as in the peer
    /// bench's nginx-TLS: the baseline is the least work a TLS proxy can
    /// do, and nginx's unbuffered log costs it ~1 µs a request).
    nginx_access_log: bool,
    /// Extra TOML appended to the server's latchkey.toml (experiments,
    /// e.g. `[proxy] usage_flush_secs = 3600`).
    latchkey_toml: String,
    /// Rounds of the whole comparison, interleaved (direct, nginx,
    /// latchkey, then again): the verdicts use the median round, so a
    /// moment of machine noise cannot decide them.
    rounds: usize,
}

const USAGE: &str = "usage: proxy-bench [--quick] [--soak SECS] [--rounds N] [--secs N] [--warmup N] \
[--rates 1000,5000] [--connections N] [--sat-connections N] [--stream-requests N] \
[--chunks N] [--chunk-delay-ms N] [--latchkey-log LEVEL] [--latchkey-toml TOML] [--nginx-access-log]";

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        quick: false,
        soak: None,
        warmup: Duration::from_secs(5),
        measure: Duration::from_secs(10),
        rates: vec![1000, 5000],
        connections: 32,
        sat_connections: 64,
        stream_requests: 300,
        chunks: 5,
        chunk_delay: Duration::from_millis(5),
        latchkey_log: None,
        nginx_access_log: false,
        latchkey_toml: String::new(),
        rounds: 3,
    };
    if args.iter().any(|a| a == "--quick") {
        o.quick = true;
        o.warmup = Duration::from_secs(1);
        o.measure = Duration::from_secs(2);
        o.stream_requests = 50;
        o.rounds = 1;
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
            "--soak" => o.soak = Some(num(value("seconds")).max(10)),
            "--rounds" => o.rounds = num(value("a count")).clamp(1, 20) as usize,
            "--secs" => o.measure = Duration::from_secs(num(value("seconds")).max(1)),
            "--warmup" => o.warmup = Duration::from_secs(num(value("seconds"))),
            "--rates" => {
                o.rates = value("rates")
                    .split(',')
                    .map(|r| num(r.trim().to_string()).max(1))
                    .collect()
            }
            "--connections" => o.connections = num(value("a count")).max(1) as usize,
            "--sat-connections" => o.sat_connections = num(value("a count")).max(1) as usize,
            "--stream-requests" => o.stream_requests = num(value("a count")).max(1) as usize,
            "--chunks" => o.chunks = num(value("a count")).max(1) as usize,
            "--chunk-delay-ms" => o.chunk_delay = Duration::from_millis(num(value("ms"))),
            "--latchkey-log" => o.latchkey_log = Some(value("a level")),
            "--nginx-access-log" => o.nginx_access_log = true,
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
// Small helpers

fn ms_ns(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1_000, 120_000_000_000));
}

fn cpu_of(pids: &[u32], ticks: u64) -> Duration {
    pids.iter().map(|&p| cpu_time(p, ticks)).sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// The mock upstream

#[derive(Default)]
struct MockStats {
    /// TCP connections accepted (the proxies' upstream pools).
    connections: AtomicU64,
    requests: AtomicU64,
    /// Requests that carried the real provider key.
    with_real_key: AtomicU64,
    /// Requests that carried a Latchkey key (must stay 0 through Latchkey).
    with_latchkey_key: AtomicU64,
}

/// The mock's response body: one JSON buffer, or SSE chunks with a delay
/// between them.
struct MockBody {
    chunks: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    len: Option<u64>,
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(s) = this.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        match this.chunks.pop_front() {
            None => Poll::Ready(None),
            Some(c) => {
                if !this.chunks.is_empty() && !this.delay.is_zero() {
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
                }
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn sse_chunks(n: usize) -> VecDeque<Bytes> {
    let words = ["Hi", "!", " How", " can", " I", " help", "?"];
    let mut v: VecDeque<Bytes> = (0..n)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
                words[i % words.len()]
            ))
        })
        .collect();
    v.push_back(Bytes::from_static(b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":5,\"total_tokens\":19}}\n\ndata: [DONE]\n\n"));
    v
}

async fn mock_handle(
    req: Request<Incoming>,
    stats: Arc<MockStats>,
    chunks: usize,
    delay: Duration,
) -> Result<Response<MockBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let auth = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if auth == Some(format!("Bearer {PROVIDER_SECRET}").as_bytes()) {
        stats.with_real_key.fetch_add(1, Ordering::Relaxed);
    }
    if auth.is_some_and(|a| a.windows(3).any(|w| w == b"lk_")) {
        stats.with_latchkey_key.fetch_add(1, Ordering::Relaxed);
    }
    let path_ok = req.uri().path() == "/v1/chat/completions";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    let resp = Response::builder();
    let resp = if !path_ok {
        resp.status(StatusCode::NOT_FOUND).body(MockBody {
            chunks: VecDeque::new(),
            delay,
            sleep: None,
            len: Some(0),
        })
    } else if stream {
        resp.header(CONTENT_TYPE, "text/event-stream")
            .header("cache-control", "no-cache")
            .body(MockBody {
                chunks: sse_chunks(chunks),
                delay,
                sleep: None,
                len: None,
            })
    } else {
        resp.header(CONTENT_TYPE, "application/json")
            .body(MockBody {
                chunks: VecDeque::from([Bytes::from_static(CHAT_RESPONSE)]),
                delay,
                sleep: None,
                len: Some(CHAT_RESPONSE.len() as u64),
            })
    };
    Ok(resp.expect("a valid mock response"))
}

/// Starts the mock on its own thread and single-threaded runtime; it lives
/// as long as this process.
fn start_mock(stats: Arc<MockStats>, chunks: usize, delay: Duration) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("mock runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the mock upstream");
            let _ = tx.send(listener.local_addr().expect("mock address"));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        mock_handle(req, Arc::clone(&stats), chunks, delay)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    rx.recv_timeout(START_TIMEOUT)
        .expect("the mock upstream starts")
}

// ---------------------------------------------------------------------------
// Client side: one configuration for both proxies

/// Trusts only the CA in `ca_pem`; HTTP/1.1 by ALPN; TLS 1.3 suites in
/// Latchkey's server order so both proxies negotiate the same one.
fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate is usable as a trust anchor");
    }
    assert!(!roots.is_empty(), "no certificate in the CA PEM");
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

/// Where a load test sends its requests.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// `None`: plain HTTP.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Request path of the chat completions endpoint.
    path: String,
    /// `Authorization` the client sends (the Latchkey key; nginx and the
    /// mock ignore it, nginx replaces it).
    auth: String,
    /// Processes whose CPU time is the proxy's (empty for direct).
    pids: Vec<u32>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive HTTP/1.1 connection (over TLS when the target has it); the
/// connection driver runs in its own task.
async fn connect(t: &Target) -> std::io::Result<(Sender, tokio::task::JoinHandle<()>, String)> {
    let tcp = tokio::net::TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    match &t.tls {
        None => {
            let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(std::io::Error::other)?;
            let h = tokio::spawn(async move {
                let _ = driver.await;
            });
            Ok((sender, h, "plain HTTP/1.1".into()))
        }
        Some(tls) => {
            let name = ServerName::IpAddress(t.addr.ip().into());
            let stream = TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await?;
            let (_, conn) = stream.get_ref();
            let negotiated = format!(
                "{} {} ALPN {}",
                conn.protocol_version()
                    .map_or_else(|| "?".into(), |v| format!("{v:?}")),
                conn.negotiated_cipher_suite()
                    .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
                conn.alpn_protocol().map_or_else(
                    || "none".into(),
                    |p| String::from_utf8_lossy(p).into_owned()
                ),
            );
            let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            let h = tokio::spawn(async move {
                let _ = driver.await;
            });
            Ok((sender, h, negotiated))
        }
    }
}

fn chat_request(t: &Target, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(t.path.as_str())
        .header(HOST, t.addr.to_string())
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, t.auth.as_str())
        .body(Full::new(Bytes::from_static(body)))
        .expect("a valid request")
}

/// Sends one request and reads the whole body.
async fn send(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// Load generator

struct ConnStats {
    hist: Histogram<u64>,
    /// Successful responses that completed inside the measured window.
    done_in_window: u64,
    errors: u64,
    connects: u64,
    negotiated: Option<String>,
}

/// One connection's load from `first` until `end`. `pacing` = the interval
/// between this connection's scheduled sends (open loop), or `None` to send
/// back to back (closed loop). Latency is recorded for requests scheduled
/// at or after `measure_from`.
async fn conn_task(
    t: Arc<Target>,
    pacing: Option<Duration>,
    first: Instant,
    measure_from: Instant,
    end: Instant,
) -> ConnStats {
    let mut out = ConnStats {
        hist: new_hist(),
        done_in_window: 0,
        errors: 0,
        connects: 0,
        negotiated: None,
    };
    let mut conn: Option<(Sender, tokio::task::JoinHandle<()>)> = None;
    let mut next = first;
    loop {
        if conn.is_none() {
            if Instant::now() >= end {
                break;
            }
            out.connects += 1;
            match tokio::time::timeout(REQUEST_TIMEOUT, connect(&t)).await {
                Ok(Ok((s, d, n))) => {
                    out.negotiated.get_or_insert(n);
                    conn = Some((s, d));
                }
                _ => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        // `sched`: when this request was due; `origin`: where its latency
        // starts (see the module docs).
        let (sched, origin) = match pacing {
            Some(interval) => {
                let sched = next;
                if sched >= end {
                    break;
                }
                next += interval;
                if Instant::now() > sched {
                    (sched, sched)
                } else {
                    tokio::time::sleep_until(sched.into()).await;
                    (sched, Instant::now())
                }
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                (now, now)
            }
        };
        let Some((sender, driver)) = conn.as_mut() else {
            continue;
        };
        let res = tokio::time::timeout(
            REQUEST_TIMEOUT,
            send(sender, chat_request(&t, CHAT_REQUEST)),
        )
        .await;
        let done = Instant::now();
        match res {
            Ok(Ok((StatusCode::OK, _))) => {
                if sched >= measure_from {
                    record(&mut out.hist, done - origin);
                }
                if done >= measure_from && done <= end {
                    out.done_in_window += 1;
                }
            }
            Ok(Ok(_)) => out.errors += 1,
            _ => {
                out.errors += 1;
                driver.abort();
                conn = None;
            }
        }
    }
    if let Some((_, d)) = conn {
        d.abort();
    }
    out
}

struct LoadResult {
    rps: f64,
    hist: Histogram<u64>,
    errors: u64,
    reconnects: u64,
    negotiated: String,
    /// Proxy CPU time per request and CPUs used, over the measured window.
    cpu_per_req: Option<Duration>,
    cpus: Option<f64>,
    /// CPUs used by this process (generator + mock, CPU 0) over the window.
    gen_cpus: f64,
}

impl LoadResult {
    fn p(&self, q: f64) -> f64 {
        ms_ns(self.hist.value_at_quantile(q))
    }
}

struct Load<'a> {
    rt: &'a tokio::runtime::Runtime,
    warmup: Duration,
    measure: Duration,
    ticks: u64,
}

impl Load<'_> {
    /// `rate`: total requests/s over `conns` connections (open loop), or
    /// `None` for the closed loop.
    fn run(&self, t: &Arc<Target>, rate: Option<u64>, conns: usize) -> LoadResult {
        let (warmup, measure, ticks) = (self.warmup, self.measure, self.ticks);
        let t2 = Arc::clone(t);
        let (stats, (cpu, gen_cpu)) = self.rt.block_on(async move {
            let start = Instant::now() + Duration::from_millis(50);
            let measure_from = start + warmup;
            let end = measure_from + measure;
            let pacing = rate.map(|r| Duration::from_secs_f64(conns as f64 / r as f64));
            let mut set = tokio::task::JoinSet::new();
            for i in 0..conns {
                // Spread the connections' schedules evenly over one interval.
                let offset = pacing.map_or(Duration::ZERO, |p| p * i as u32 / conns as u32);
                set.spawn(conn_task(
                    Arc::clone(&t2),
                    pacing,
                    start + offset,
                    measure_from,
                    end,
                ));
            }
            let pids = t2.pids.clone();
            let me = [std::process::id()];
            let sampler = tokio::spawn(async move {
                tokio::time::sleep_until(measure_from.into()).await;
                let (c0, g0) = (cpu_of(&pids, ticks), cpu_of(&me, ticks));
                tokio::time::sleep_until(end.into()).await;
                (cpu_of(&pids, ticks) - c0, cpu_of(&me, ticks) - g0)
            });
            let deadline = end + REQUEST_TIMEOUT + Duration::from_secs(10);
            let mut stats = Vec::new();
            while let Ok(Some(res)) =
                tokio::time::timeout_at(deadline.into(), set.join_next()).await
            {
                stats.push(res.expect("connection task"));
            }
            assert_eq!(stats.len(), conns, "load tasks did not finish in time");
            (stats, sampler.await.expect("CPU sampler"))
        });
        let mut hist = new_hist();
        let (mut done, mut errors, mut connects, mut negotiated) = (0, 0, 0, None);
        for s in stats {
            hist.add(&s.hist).expect("histograms with the same bounds");
            done += s.done_in_window;
            errors += s.errors;
            connects += s.connects;
            negotiated = negotiated.or(s.negotiated);
        }
        let has_pids = !t.pids.is_empty();
        LoadResult {
            rps: done as f64 / measure.as_secs_f64(),
            errors,
            reconnects: connects.saturating_sub(conns as u64),
            negotiated: negotiated.unwrap_or_else(|| "no connection".into()),
            cpu_per_req: (has_pids && done > 0).then(|| cpu / done as u32),
            cpus: has_pids.then(|| cpu.as_secs_f64() / measure.as_secs_f64()),
            gen_cpus: gen_cpu.as_secs_f64() / measure.as_secs_f64(),
            hist,
        }
    }
}

/// Streaming: `n` sequential streamed requests (after `n / 10 + 5` of
/// warm-up) on one connection; returns (TTFB, whole stream) histograms and
/// the error count.
fn ttfb_run(
    rt: &tokio::runtime::Runtime,
    t: &Arc<Target>,
    n: usize,
) -> (Histogram<u64>, Histogram<u64>, u64) {
    let t = Arc::clone(t);
    rt.block_on(async move {
        let (mut first, mut whole, mut errors) = (new_hist(), new_hist(), 0u64);
        let warm = n / 10 + 5;
        let mut conn: Option<(Sender, tokio::task::JoinHandle<()>)> = None;
        for i in 0..warm + n {
            if conn.is_none() {
                match tokio::time::timeout(REQUEST_TIMEOUT, connect(&t)).await {
                    Ok(Ok((s, d, _))) => conn = Some((s, d)),
                    _ => {
                        errors += 1;
                        continue;
                    }
                }
            }
            let Some((sender, driver)) = conn.as_mut() else {
                continue;
            };
            let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
                sender.ready().await.map_err(|e| e.to_string())?;
                let sent = Instant::now();
                let resp = sender
                    .send_request(chat_request(&t, STREAM_REQUEST))
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("status {}", resp.status()));
                }
                let mut body = resp.into_body();
                let mut ttfb = None;
                let mut all = Vec::new();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| e.to_string())?;
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        ttfb.get_or_insert_with(|| sent.elapsed());
                        all.extend_from_slice(&data);
                    }
                }
                let total = sent.elapsed();
                if !all.ends_with(b"data: [DONE]\n\n") {
                    return Err("stream did not end with [DONE]".into());
                }
                Ok((ttfb.unwrap_or(total), total))
            })
            .await;
            match res {
                Ok(Ok((a, b))) => {
                    if i >= warm {
                        record(&mut first, a);
                        record(&mut whole, b);
                    }
                }
                _ => {
                    errors += 1;
                    driver.abort();
                    conn = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if let Some((_, d)) = conn {
            d.abort();
        }
        (first, whole, errors)
    })
}

// ---------------------------------------------------------------------------
// Latchkey: data directory, owner, API key, server

/// Runs `latchkey ARGS` on `data` with `stdin`; panics on failure.
fn latchkey_cmd(bin: &Path, home: &Path, data: &Path, args: &[&str], stdin: &[u8]) -> String {
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

/// A running `latchkey serve`.
struct Latchkey {
    proc: Proc,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

fn start_latchkey(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    home: &Path,
    data: &Path,
    log_level: Option<&str>,
) -> Latchkey {
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
    if let Some(level) = log_level {
        cmd.env("LATCHKEY_LOG", level);
    }
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
        // Only our own pid's lock file counts (`taskset` execs, same pid).
        let pid = u64::from(proc.pid());
        let addr = std::fs::read(&lock)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|v| v.get("pid").and_then(serde_json::Value::as_u64) == Some(pid))
            .and_then(|v| v.get("api_url")?.as_str().map(str::to_owned))
            .and_then(|u| u.strip_prefix("https://")?.parse::<SocketAddr>().ok());
        if let (Some(addr), Ok(pem)) = (addr, std::fs::read(&ca)) {
            let tls = client_config(&pem);
            let probe = Target {
                name: "probe",
                addr,
                tls: Some(Arc::clone(&tls)),
                path: String::new(),
                auth: String::new(),
                pids: Vec::new(),
            };
            let ready = rt.block_on(call(&probe, "GET", "/ready", &[], None));
            if ready.is_some_and(|(s, _, _)| s == StatusCode::OK) {
                return Latchkey { proc, addr, tls };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One request on a fresh connection: (status, Set-Cookie values, body).
async fn call(
    t: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    json: Option<serde_json::Value>,
) -> Option<(StatusCode, Vec<String>, serde_json::Value)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let (mut sender, driver, _) = connect(t).await.ok()?;
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, t.addr.to_string())
            // The server's CSRF check: a same-origin page.
            .header("sec-fetch-site", "same-origin");
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let body = match json {
            Some(j) => {
                b = b.header(CONTENT_TYPE, "application/json");
                Bytes::from(j.to_string())
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(body)).ok()?;
        sender.ready().await.ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status();
        let cookies = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        driver.abort();
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Some((status, cookies, v))
    })
    .await
    .ok()
    .flatten()
}

/// Signs in with the password and a recovery code, creates an API key with
/// scope `proxy:openai` and returns it.
fn create_api_key(rt: &tokio::runtime::Runtime, lk: &Latchkey, recovery_code: &str) -> String {
    let t = Target {
        name: "setup",
        addr: lk.addr,
        tls: Some(Arc::clone(&lk.tls)),
        path: String::new(),
        auth: String::new(),
        pids: Vec::new(),
    };
    rt.block_on(async {
        let (s, _, v) = call(
            &t,
            "POST",
            "/api/auth/login",
            &[],
            Some(serde_json::json!({"username": USERNAME, "password": PASSWORD})),
        )
        .await
        .expect("login answers");
        assert_eq!(s, StatusCode::OK, "login: {v}");
        let ticket = v["ticket"].as_str().expect("login ticket").to_string();
        let (s, cookies, v) = call(
            &t,
            "POST",
            "/api/auth/mfa",
            &[],
            Some(serde_json::json!({"ticket": ticket, "recovery_code": recovery_code})),
        )
        .await
        .expect("mfa answers");
        assert_eq!(s, StatusCode::OK, "mfa: {v}");
        let session = cookies
            .iter()
            .filter_map(|c| c.split(';').next())
            .find(|c| c.starts_with("__Host-latchkey_session="))
            .expect("a session cookie")
            .to_string();
        let (s, _, v) = call(
            &t,
            "POST",
            "/api/keys",
            &[(COOKIE.as_str(), session)],
            Some(serde_json::json!({"name": "proxy-bench", "scopes": ["proxy:openai"]})),
        )
        .await
        .expect("key creation answers");
        assert_eq!(s, StatusCode::CREATED, "create key: {v}");
        v["key"].as_str().expect("the new key").to_string()
    })
}

// ---------------------------------------------------------------------------
// nginx

fn start_nginx(
    home: &Path,
    data: &Path,
    mock: SocketAddr,
    ca_pem: &[u8],
    access_log: bool,
) -> (Proc, SocketAddr) {
    let dir = home.join("nginx");
    std::fs::create_dir_all(&dir).expect("nginx directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let tls = data.join("tls");
    let d = dir.display();
    // As root nginx would switch its worker to `nobody`, which cannot
    // write the temp dirs made here; keep the worker as this user.
    let user = if is_root() { "user root root;\n" } else { "" };
    let conf = format!(
        "# Generated by proxy-bench: TLS with Latchkey's certificate, header injection.\n\
{user}worker_processes 1;\n\
daemon off;\n\
pid {d}/nginx.pid;\n\
error_log {d}/error.log warn;\n\
events {{ worker_connections 4096; }}\n\
http {{\n\
  access_log {access};\n\
  client_body_temp_path {d}/client_body;\n\
  proxy_temp_path {d}/proxy_temp;\n\
  fastcgi_temp_path {d}/fastcgi_temp;\n\
  uwsgi_temp_path {d}/uwsgi_temp;\n\
  scgi_temp_path {d}/scgi_temp;\n\
  upstream mock {{\n\
    server {mock};\n\
    keepalive 64;\n\
    keepalive_requests 10000000;\n\
  }}\n\
  server {{\n\
    listen 127.0.0.1:{port} ssl;\n\
    ssl_certificate {cert};\n\
    ssl_certificate_key {key};\n\
    ssl_protocols TLSv1.2 TLSv1.3;\n\
    keepalive_requests 10000000;\n\
    keepalive_timeout 300s;\n\
    location / {{\n\
      proxy_pass http://mock;\n\
      proxy_http_version 1.1;\n\
      proxy_set_header Connection \"\";\n\
      proxy_set_header Authorization \"Bearer {PROVIDER_SECRET}\";\n\
      proxy_buffering off;\n\
    }}\n\
  }}\n\
}}\n",
        access = if access_log {
            format!("{d}/access.log")
        } else {
            "off".to_owned()
        },
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
    let target = Target {
        name: "probe",
        addr,
        tls: Some(client_config(ca_pem)),
        path: String::new(),
        auth: String::new(),
        pids: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("probe runtime");
    loop {
        if let Some(status) = proc.exited() {
            panic!(
                "nginx exited ({status}):\n{}\n{}",
                proc.log_tail(),
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < START_TIMEOUT,
            "nginx did not come up:\n{}",
            proc.log_tail()
        );
        // Any HTTP answer over TLS means it is serving.
        if rt.block_on(call(&target, "GET", "/", &[], None)).is_some() {
            return (proc, addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The benchmark

fn main() {
    let opts = parse_opts();
    install_signal_handler("proxy-bench", MAX_RUN);
    let ncpu = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        ncpu >= 2 && have("taskset", "-V"),
        "needs 2 CPUs and taskset: the proxy runs on CPU 1, generator and mock on CPU 0"
    );
    let soak = opts.soak.is_some();
    assert!(
        soak || have("nginx", "-v"),
        "nginx not found: run scripts/install-deps.sh"
    );
    // Before any thread or runtime exists: they inherit both.
    pin_self("0");
    if is_root() {
        let _ = Command::new("renice")
            .args(["-n", NICE, "-p", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        // With autogroup scheduling a thread's niceness only counts inside
        // its session; the session's own niceness sets its share against
        // other sessions (other people's builds).
        let _ = std::fs::write("/proc/self/autogroup", NICE);
    }
    let bin = latchkey_bin();
    let tmp = tempfile::Builder::new()
        .prefix("proxy-bench-")
        .tempdir()
        .expect("temporary directory");
    registry().dirs.push(tmp.path().to_path_buf());
    let home = tmp.path();
    let data = home.join("data");
    let ticks = clock_ticks();

    let mock_stats = Arc::new(MockStats::default());
    let mock = start_mock(Arc::clone(&mock_stats), opts.chunks, opts.chunk_delay);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("load generator runtime");

    // Latchkey: the provider key in the vault, the owner, the provider.
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
    std::fs::write(
        data.join("latchkey.toml"),
        format!(
            "[auth]\nrate_limit_burst = 100000\nrate_limit_per_minute = 100000\n\n\
             [providers.openai]\nupstream = \"http://{mock}\"\nsecret = \"{VAULT_ENTRY}\"\n{}",
            opts.latchkey_toml
        ),
    )
    .expect("write latchkey.toml");
    let mut lk = start_latchkey(&rt, &bin, home, &data, opts.latchkey_log.as_deref());
    let key = create_api_key(&rt, &lk, &recovery);
    let lk_pid = lk.proc.pid();
    let ca_pem = std::fs::read(data.join("tls").join("ca.pem")).expect("ca.pem");

    let direct = Arc::new(Target {
        name: "direct",
        addr: mock,
        tls: None,
        path: "/v1/chat/completions".into(),
        // What an agent talking to the provider itself would send.
        auth: format!("Bearer {PROVIDER_SECRET}"),
        pids: Vec::new(),
    });
    let latchkey = Arc::new(Target {
        name: "latchkey",
        addr: lk.addr,
        tls: Some(Arc::clone(&lk.tls)),
        path: "/proxy/openai/v1/chat/completions".into(),
        auth: format!("Bearer {key}"),
        pids: vec![lk_pid],
    });
    check_injection(&rt, &latchkey, &mock_stats);

    let load = Load {
        rt: &rt,
        warmup: opts.warmup,
        measure: opts.measure,
        ticks,
    };
    println!("Agent proxy benchmark (proxy-bench)");
    println!("latchkey: {} (pid {lk_pid}, CPU 1)", bin.display());
    println!(
        "machine: {ncpu} CPUs; proxy under test on CPU 1, load generator + mock upstream on CPU 0{}; \
         load average {}",
        if is_root() {
            format!(
                ", all at nice {NICE} (autogroup: {})",
                std::fs::read_to_string("/proc/self/autogroup")
                    .unwrap_or_default()
                    .trim()
            )
        } else {
            String::new()
        },
        loadavg()
    );

    if let Some(secs) = opts.soak {
        soak_run(&load, &latchkey, secs, lk_pid);
        let ok = lk.proc.stop();
        println!("latchkey serve stopped (clean exit: {ok})");
        return;
    }

    let (mut nginx_proc, nginx_addr) =
        start_nginx(home, &data, mock, &ca_pem, opts.nginx_access_log);
    let nginx_pids = {
        let mut p = vec![nginx_proc.pid()];
        p.extend(children_of(nginx_proc.pid()));
        p
    };
    let nginx = Arc::new(Target {
        name: "nginx",
        addr: nginx_addr,
        tls: Some(client_config(&ca_pem)),
        path: "/v1/chat/completions".into(),
        auth: format!("Bearer {key}"),
        pids: nginx_pids,
    });
    check_injection(&rt, &nginx, &mock_stats);
    println!(
        "nginx: {} (pids {:?}, CPU 1, 1 worker)",
        nginx_version(),
        nginx.pids
    );
    let rss_start = rss_kib(lk_pid);
    println!(
        "load: open loop over {} keep-alive connections at fixed rates; closed loop over {} for \
         saturation; {} s warm-up + {} s measured per line; POST /v1/chat/completions ({} B JSON \
         in, {} B JSON out)",
        opts.connections,
        opts.sat_connections,
        opts.warmup.as_secs(),
        opts.measure.as_secs(),
        CHAT_REQUEST.len(),
        CHAT_RESPONSE.len()
    );
    println!();

    let targets = [&direct, &nginx, &latchkey];
    let mut negotiated = Vec::new();
    let rounds = opts.rounds;
    print_header();
    // fixed[round][rate index][target index], sat[round][target index]
    let mut fixed: Vec<Vec<Vec<LoadResult>>> = Vec::new();
    let mut sat: Vec<Vec<LoadResult>> = Vec::new();
    let mut ttfb: Vec<Vec<Histogram<u64>>> = Vec::new();
    let mut streams: Vec<String> = Vec::new();
    for round in 0..rounds {
        let tag = |what: &str| {
            if rounds > 1 {
                format!("{what}#{}", round + 1)
            } else {
                what.to_string()
            }
        };
        let mut by_rate = Vec::new();
        for &rate in &opts.rates {
            let mut row = Vec::new();
            for t in targets {
                let r = load.run(t, Some(rate), opts.connections);
                print_line(t.name, &tag(&rate.to_string()), &r);
                negotiated.push(format!("{}: {}", t.name, r.negotiated));
                row.push(r);
            }
            by_rate.push(row);
        }
        fixed.push(by_rate);
        let mut row = Vec::new();
        for t in targets {
            let r = load.run(t, None, opts.sat_connections);
            print_line(t.name, &tag("max"), &r);
            row.push(r);
        }
        sat.push(row);
        let mut firsts = Vec::new();
        for t in targets {
            let (first, whole, errors) = ttfb_run(&rt, t, opts.stream_requests);
            streams.push(format!(
                "  {:<10} {:>6} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>12.3}ms {:>7}",
                t.name,
                tag(""),
                ms_ns(first.value_at_quantile(0.5)),
                ms_ns(first.value_at_quantile(0.99)),
                ms_ns(first.max()),
                ms_ns(whole.value_at_quantile(0.5)),
                errors
            ));
            firsts.push(first);
        }
        ttfb.push(firsts);
    }
    negotiated.sort();
    negotiated.dedup();
    for n in &negotiated {
        println!("  negotiated, {n}");
    }
    println!();

    println!(
        "added latency over direct (ms){}:",
        if rounds > 1 {
            ", each round against its own direct line"
        } else {
            ""
        }
    );
    println!(
        "  {:<8} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "rate", "nginx p50", "nginx p99", "latchkey p50", "latchkey p99", "lk/nginx p99"
    );
    // (rate, nginx added p99, latchkey added p99), each the median over
    // the rounds.
    let mut added = Vec::new();
    for (i, &rate) in opts.rates.iter().enumerate() {
        let mut per_round = Vec::new();
        for (round, by_rate) in fixed.iter().enumerate() {
            let [d, n, l] = [&by_rate[i][0], &by_rate[i][1], &by_rate[i][2]];
            let np50 = n.p(0.5) - d.p(0.5);
            let np99 = n.p(0.99) - d.p(0.99);
            let lp50 = l.p(0.5) - d.p(0.5);
            let lp99 = l.p(0.99) - d.p(0.99);
            let label = if rounds > 1 {
                format!("{rate}#{}", round + 1)
            } else {
                rate.to_string()
            };
            println!(
                "  {:<8} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>13.2}×",
                label,
                np50,
                np99,
                lp50,
                lp99,
                lp99 / np99.max(0.001)
            );
            per_round.push((np99, lp99));
        }
        // Each proxy's median over the rounds. (Not the nginx figure of
        // the round whose Latchkey figure is the median: nginx's added p99
        // is ~0.1–0.2 ms, and in a round where direct's own p99 is high it
        // drops to ~0, which made the 2 × comparison hinge on one noisy
        // direct line.)
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let np99 = median(per_round.iter().map(|r| r.0).collect());
        let lp99 = median(per_round.iter().map(|r| r.1).collect());
        added.push((rate, np99, lp99));
    }
    let mut ratios: Vec<f64> = Vec::new();
    for row in &sat {
        let ratio = row[2].rps / row[1].rps.max(1.0);
        println!(
            "saturation: direct {:.0} req/s, nginx {:.0} req/s ({:.0}% of direct), latchkey {:.0} \
             req/s ({:.0}% of direct); latchkey/nginx = {:.0}%; CPU per request nginx {}, \
             latchkey {}",
            row[0].rps,
            row[1].rps,
            100.0 * row[1].rps / row[0].rps.max(1.0),
            row[2].rps,
            100.0 * row[2].rps / row[0].rps.max(1.0),
            100.0 * ratio,
            row[1]
                .cpu_per_req
                .map_or("—".into(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6)),
            row[2]
                .cpu_per_req
                .map_or("—".into(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6)),
        );
        // The generator and the mock share CPU 0: when it is the one
        // that is full, the line measures the generator, not the proxy,
        // and the ratio is squeezed toward 1.
        for (name, r) in [("nginx", &row[1]), ("latchkey", &row[2])] {
            if r.gen_cpus >= 0.95 && r.cpus.is_some_and(|c| c < 0.95) {
                println!(
                    "  note: {name}'s saturation line was limited by the load generator \
                     (CPU 0 at {:.2}, the proxy at {:.2}); compare CPU per request instead",
                    r.gen_cpus,
                    r.cpus.unwrap_or_default()
                );
            }
        }
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let sat_ratio = ratios[ratios.len() / 2];
    // The same comparison from CPU time: nginx's CPU per request over
    // Latchkey's. Both proxies saturated, it equals the throughput ratio;
    // on a machine shared with other work it moves far less than req/s.
    let mut cpu_ratios: Vec<f64> = sat
        .iter()
        .filter_map(|row| {
            Some(row[1].cpu_per_req?.as_secs_f64() / row[2].cpu_per_req?.as_secs_f64())
        })
        .collect();
    cpu_ratios.sort_by(f64::total_cmp);
    if let Some(r) = cpu_ratios.get(cpu_ratios.len() / 2) {
        println!(
            "saturation, from CPU per request: nginx/latchkey = {:.0}% (median of {} rounds)",
            100.0 * r,
            cpu_ratios.len()
        );
    }
    println!();

    println!(
        "streaming: {} sequential streamed requests on one connection per target; the mock sends \
         the first SSE chunk at once, then {} more with {} ms between them; TTFB = send → first \
         body bytes",
        opts.stream_requests,
        opts.chunks,
        opts.chunk_delay.as_millis()
    );
    println!(
        "  {:<10} {:>6} {:>10} {:>10} {:>10} {:>14} {:>7}",
        "target", "round", "TTFB p50", "TTFB p99", "TTFB max", "stream p50", "errors"
    );
    for line in &streams {
        println!("{line}");
    }
    // (nginx p50, nginx p99, latchkey p50, latchkey p99) added, per round.
    let mut ttfb_rounds: Vec<[f64; 4]> = ttfb
        .iter()
        .map(|h| {
            let added = |i: usize, q: f64| {
                ms_ns(h[i].value_at_quantile(q)) - ms_ns(h[0].value_at_quantile(q))
            };
            [added(1, 0.5), added(1, 0.99), added(2, 0.5), added(2, 0.99)]
        })
        .collect();
    for a in &ttfb_rounds {
        println!(
            "  added TTFB over direct: nginx p50 {:+.3} ms, p99 {:+.3} ms; latchkey p50 {:+.3} ms, \
             p99 {:+.3} ms",
            a[0], a[1], a[2], a[3]
        );
    }
    ttfb_rounds.sort_by(|a, b| a[2].total_cmp(&b[2]));
    let t50 = ttfb_rounds[ttfb_rounds.len() / 2][2];
    println!();

    let seen = mock_stats.requests.load(Ordering::Relaxed);
    let leaked = mock_stats.with_latchkey_key.load(Ordering::Relaxed);
    println!(
        "mock upstream: {seen} requests on {} connections, {} with the provider key",
        mock_stats.connections.load(Ordering::Relaxed),
        mock_stats.with_real_key.load(Ordering::Relaxed)
    );
    println!(
        "latchkey RSS: {:.1} MiB before the load, {:.1} MiB after",
        rss_start as f64 / 1024.0,
        rss_kib(lk_pid) as f64 / 1024.0
    );
    println!();

    println!(
        "targets (issue 5){}:",
        if rounds > 1 {
            format!(", the median of {rounds} rounds")
        } else {
            String::new()
        }
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for &(rate, np99, lp99) in &added {
        if rate == 1000 {
            println!(
                "  added p99 at 1,000 req/s ≤ 0.5 ms: {lp99:.3} ms — {}",
                verdict(lp99 <= 0.5)
            );
        }
        if rate == 5000 {
            println!(
                "  added p99 at 5,000 req/s ≤ 2 × nginx's ({np99:.3} ms): {lp99:.3} ms — {}",
                verdict(lp99 <= 2.0 * np99.max(0.0))
            );
        }
    }
    println!(
        "  saturation ≥ 80% of nginx: {:.0}% — {}",
        100.0 * sat_ratio,
        verdict(sat_ratio >= 0.8)
    );
    println!(
        "  streaming TTFB within 0.5 ms of direct (p50): {t50:+.3} ms — {}",
        verdict(t50 <= 0.5)
    );
    println!("  memory flat over a 10-minute soak: see `--soak 600`");

    let nginx_ok = nginx_proc.stop();
    let lk_ok = lk.proc.stop();
    println!();
    println!(
        "stopped: nginx clean {nginx_ok}, latchkey clean {lk_ok}; load average {}",
        loadavg()
    );
    assert_eq!(
        leaked, 0,
        "a Latchkey key reached the upstream through a proxy"
    );
}

/// One request through a proxy: 200, and the mock saw the provider key.
fn check_injection(rt: &tokio::runtime::Runtime, t: &Arc<Target>, stats: &MockStats) {
    let before = stats.with_real_key.load(Ordering::Relaxed);
    let leaked = stats.with_latchkey_key.load(Ordering::Relaxed);
    let res = rt.block_on(async {
        let (mut s, d, _) = connect(t).await.expect("connect");
        let r = send(&mut s, chat_request(t, CHAT_REQUEST)).await;
        d.abort();
        r
    });
    let (status, body) = res.unwrap_or_else(|e| panic!("{}: request failed: {e}", t.name));
    assert_eq!(
        status,
        StatusCode::OK,
        "{}: {}",
        t.name,
        String::from_utf8_lossy(&body)
    );
    assert!(
        stats.with_real_key.load(Ordering::Relaxed) > before,
        "{}: the upstream did not see the provider key",
        t.name
    );
    assert_eq!(
        stats.with_latchkey_key.load(Ordering::Relaxed),
        leaked,
        "{}: the Latchkey key reached the upstream",
        t.name
    );
}

fn nginx_version() -> String {
    Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: ", "")
        })
        .unwrap_or_default()
}

fn print_header() {
    println!(
        "  {:<10} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>13} {:>9} {:>7}",
        "target",
        "rate",
        "req/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "errors",
        "proxy CPU/req",
        "proxy CPU",
        "gen CPU"
    );
}

fn print_line(name: &str, rate: &str, r: &LoadResult) {
    println!(
        "  {:<10} {:>6} {:>9.0} {:>6.3}ms {:>6.3}ms {:>6.3}ms {:>6.2}ms {:>7} {:>13} {:>9} {:>7.2}",
        name,
        rate,
        r.rps,
        r.p(0.5),
        r.p(0.99),
        r.p(0.999),
        ms_ns(r.hist.max()),
        r.errors + r.reconnects,
        r.cpu_per_req
            .map_or_else(|| "—".into(), |c| format!("{:.1}µs", c.as_secs_f64() * 1e6)),
        r.cpus.map_or_else(|| "—".into(), |c| format!("{c:.2}")),
        r.gen_cpus,
    );
}

/// `--soak SECS`: 1,000 req/s through Latchkey, VmRSS every 10 s.
fn soak_run(load: &Load<'_>, t: &Arc<Target>, secs: u64, pid: u32) {
    println!(
        "soak: 1,000 req/s through latchkey for {secs} s (after {} s warm-up), VmRSS sampled \
         every 10 s",
        load.warmup.as_secs()
    );
    let samples = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let s2 = Arc::clone(&samples);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let warmup = load.warmup;
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(warmup + Duration::from_millis(50));
        let t0 = Instant::now();
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            let due = Duration::from_secs(10 * n);
            if t0.elapsed() >= due {
                let rss = rss_kib(pid);
                s2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((10 * n, rss));
                println!("  t={:>4} s  VmRSS {:.2} MiB", 10 * n, rss as f64 / 1024.0);
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let soak_load = Load {
        rt: load.rt,
        warmup: load.warmup,
        measure: Duration::from_secs(secs),
        ticks: load.ticks,
    };
    let r = soak_load.run(t, Some(1000), 32);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let final_rss = rss_kib(pid);
    print_header();
    print_line(t.name, "1000", &r);
    let v = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let kib: Vec<u64> = v.iter().map(|&(_, k)| k).chain([final_rss]).collect();
    let (first, last) = (kib[0], *kib.last().unwrap_or(&kib[0]));
    let (min, max) = (
        kib.iter().copied().min().unwrap_or(0),
        kib.iter().copied().max().unwrap_or(0),
    );
    let drift = 100.0 * (last as f64 - first as f64) / first.max(1) as f64;
    let spread = 100.0 * (max as f64 - min as f64) / first.max(1) as f64;
    let f = |k: u64| k as f64 / 1024.0;
    println!(
        "  VmRSS over {} samples: first {:.2} MiB, last {:.2} MiB, min {:.2}, max {:.2}; drift \
         (last − first) {drift:+.1}%, spread (max − min) {spread:.1}% of first",
        kib.len(),
        f(first),
        f(last),
        f(min),
        f(max)
    );
    println!(
        "  target: resident memory flat (±10%) — {}",
        if drift.abs() <= 10.0 && spread <= 10.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
