//! Appliance benchmark: drives the real release `latchkey serve` and prints
//! the figures recorded in docs/PERFORMANCE.md ("Appliance").
//!
//! ```sh
//! cargo build --release -p latchkey -p latchkey-e2e --bins
//! target/release/serve-bench
//! ```
//!
//! The `latchkey` binary is taken from the bench's own directory
//! (`target/release/latchkey`) unless `LATCHKEY_BIN` names another one.
//! `SERVE_BENCH_SECS` (default 10), `SERVE_BENCH_WARMUP_SECS` (default 2)
//! and `SERVE_BENCH_STARTS` (default 5) change the load duration, warm-up
//! and the number of start-up runs.
//!
//! Figures:
//! - time from process start to `GET /ready` answering 200, on an empty data
//!   dir (master key, CA and server certificate are generated) and again on
//!   the same data dir (warm start); median of several runs;
//! - resident memory (VmRSS) of the idle server after start and after the
//!   load test, and its peak (VmHWM);
//! - the binary's size;
//! - requests/s and p50/p99/p99.9 latency at 64 keep-alive HTTP/1.1
//!   connections over TLS, from this program's own load generator (tokio +
//!   rustls + hyper client connections, one connection per task, requests
//!   sent one after another on each connection).
//!
//! So that the numbers mean something on a small machine, the same load is
//! also run in the same invocation against a bare hyper + tokio-rustls
//! server (this binary re-executed with `--baseline-server`, same cipher
//! suites, an ECDSA P-256 certificate from rcgen, a static 200 with the same
//! body): the ratio between the two lines is Latchkey's own cost (routing,
//! middleware, metrics, logging) over hyper + rustls, measured with the same
//! generator under the same conditions. Server and load generator share the
//! machine; with two or more CPUs the "pinned" split puts the server on CPU 0
//! and the generator on CPU 1 (`taskset`), the "shared" split leaves both on
//! every CPU.
//!
//! Every server runs on 127.0.0.1 with an ephemeral port, each wait is
//! bounded, and every process started here is killed on drop (also when the
//! bench panics). The baseline server also exits when its stdin closes, so
//! it cannot outlive a killed bench.

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{self, cipher_suite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Concurrent keep-alive connections of the load test.
const CONNECTIONS: usize = 64;
/// A request slower than this counts as an error (and its connection is
/// replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a server to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The body of Latchkey's `/health`, served by the baseline too.
const HEALTH_BODY: &[u8] = br#"{"status":"ok"}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--baseline-server") {
        let dir = args.get(2).expect("--baseline-server needs a directory");
        baseline::serve(Path::new(dir));
        return;
    }
    bench();
}

// ---------------------------------------------------------------------------
// Settings and small helpers

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `LATCHKEY_BIN`, else `latchkey` next to this executable.
fn latchkey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the bench executable");
    let bin = exe
        .parent()
        .expect("the bench executable lives in a directory")
        .join("latchkey");
    assert!(
        bin.exists(),
        "{} not found: `cargo build --release -p latchkey -p latchkey-e2e --bins`, \
         or set LATCHKEY_BIN",
        bin.display()
    );
    bin
}

/// The cipher suites Latchkey's server offers (appliance/src/tls/config.rs),
/// in its preference order; the baseline uses the same provider.
fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// A client configuration trusting only the CA in `ca_pem`, offering
/// HTTP/1.1 only (the server would otherwise pick h2).
fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate is usable as a trust anchor");
    }
    assert!(!roots.is_empty(), "no certificate in the CA PEM");
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of `pid` (all threads) so far.
fn cpu_time(pid: u32, ticks_per_sec: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / ticks_per_sec.max(1) as f64)
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews
/// every figure here.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Sets the CPU affinity of every thread of this process (`taskset`); new
/// threads inherit it from the thread that creates them.
fn pin_self(cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {cpus} failed");
}

/// How the CPUs are split between server and load generator.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Server on CPU 0, generator on CPU 1.
    Pinned,
    /// Both unpinned.
    Shared,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Pinned => "pinned",
            Split::Shared => "shared",
        }
    }

    /// The command that starts `program`, under `taskset` when pinned.
    fn command(self, program: &Path) -> Command {
        match self {
            Split::Pinned => {
                let mut c = Command::new("taskset");
                c.args(["-c", "0"]).arg(program);
                c
            }
            Split::Shared => Command::new(program),
        }
    }

    /// Sets this process's affinity for the split (the generator's threads
    /// and anything spawned without `taskset` inherit it) and returns the
    /// number of generator threads.
    fn prepare(self, ncpu: usize) -> usize {
        match self {
            Split::Pinned => {
                pin_self("1");
                1
            }
            Split::Shared => {
                if ncpu > 1 {
                    pin_self(&format!("0-{}", ncpu - 1));
                }
                ncpu
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Server processes

/// A child process, killed when dropped (also on panic).
struct Proc {
    child: Child,
    /// The baseline's stdin: it exits when this closes.
    _stdin: Option<ChildStdin>,
    log: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running server: its process and how to reach it.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_TIMEOUT`]).
    /// Returns the time to exit and whether it exited successfully.
    fn stop(mut self) -> (Duration, bool) {
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        while t.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return (t.elapsed(), status.success());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        (t.elapsed(), false)
    }

    fn log_bytes(&self) -> u64 {
        self.proc
            .log
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }
}

impl Proc {
    fn log_tail(&self) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Starts `latchkey serve` on `data` and waits until `/ready` answers 200.
/// Returns the server and the time from spawn to that answer.
fn start_latchkey(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    home: &Path,
    data: &Path,
    split: Split,
    env: &[(&str, &str)],
    log_name: &str,
) -> (Server, Duration) {
    let log = home.join(log_name);
    let stderr = std::fs::File::create(&log).expect("create the server log file");
    let stdout = std::fs::File::create(home.join(format!("{log_name}.stdout")))
        .expect("create the server stdout file");
    let mut cmd = split.command(bin);
    cmd.arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let t0 = Instant::now();
    let mut proc = Proc {
        child: cmd.spawn().expect("spawn latchkey serve"),
        _stdin: None,
        log: Some(log),
    };
    let lock = data.join("latchkey.lock");
    let ca = data.join("tls").join("ca.pem");
    let mut target = None;
    loop {
        assert!(
            t0.elapsed() < START_TIMEOUT,
            "latchkey serve did not become ready within {START_TIMEOUT:?}:\n{}",
            proc.log_tail()
        );
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("latchkey serve exited ({status}):\n{}", proc.log_tail());
        }
        if target.is_none() {
            // The lock file is rewritten in place (a torn read just retries)
            // and still names the previous server until this one takes it:
            // only our own pid counts.
            let pid = u64::from(proc.child.id());
            let url = std::fs::read(&lock)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| v.get("pid").and_then(serde_json::Value::as_u64) == Some(pid))
                .and_then(|v| v.get("api_url")?.as_str().map(str::to_owned));
            let addr = url
                .as_deref()
                .and_then(|u| u.strip_prefix("https://"))
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if let (Some(addr), Ok(pem)) = (addr, std::fs::read(&ca)) {
                target = Some((addr, client_config(&pem)));
            }
        }
        if let Some((addr, tls)) = &target {
            let probe = rt.block_on(get_once(
                *addr,
                Arc::clone(tls),
                "/ready",
                Duration::from_secs(2),
            ));
            if probe == Some(StatusCode::OK) {
                let elapsed = t0.elapsed();
                let (addr, tls) = target.expect("checked above");
                return (Server { proc, addr, tls }, elapsed);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts this binary as the bare hyper + rustls server.
fn start_baseline(home: &Path, split: Split) -> Server {
    let exe = std::env::current_exe().expect("path of the bench executable");
    let dir = home.join("baseline");
    std::fs::create_dir_all(&dir).expect("create the baseline directory");
    let mut child = split
        .command(&exe)
        .arg("--baseline-server")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the baseline server");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("baseline stdout");
    let proc = Proc {
        child,
        _stdin: stdin,
        log: None,
    };
    // The first line names the address; the reader thread ends with the
    // process, and the wait for it is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .expect("the baseline server names its address");
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected baseline output: {line:?}"));
    let pem = std::fs::read(dir.join("ca.pem")).expect("baseline ca.pem");
    Server {
        proc,
        addr,
        tls: client_config(&pem),
    }
}

// ---------------------------------------------------------------------------
// Load generator

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A TLS + HTTP/1.1 connection; the connection driver runs in its own task.
async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<(Sender, tokio::task::JoinHandle<()>, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = TlsConnector::from(tls).connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let negotiated = format!(
        "{:?} {:?} ALPN {}",
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
    let handle = tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok((sender, handle, negotiated))
}

fn request(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::new())
        .expect("a valid request")
}

/// Sends one request and reads the whole response body.
async fn send(sender: &mut Sender, req: Request<Empty<Bytes>>) -> Result<StatusCode, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// One request on a fresh connection (the readiness probe).
async fn get_once(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
    limit: Duration,
) -> Option<StatusCode> {
    tokio::time::timeout(limit, async {
        let (mut sender, driver, _) = connect(addr, tls).await.ok()?;
        let status = send(&mut sender, request(addr, path)).await.ok();
        driver.abort();
        status
    })
    .await
    .ok()
    .flatten()
}

#[derive(Default)]
struct TaskResult {
    latencies: Vec<Duration>,
    /// Every successful request, warm-up included.
    total: u64,
    errors: u64,
    connects: u64,
    negotiated: Option<String>,
}

/// One connection's worth of load: requests one after another on a
/// keep-alive connection from `start` to `end`, latencies recorded for
/// requests sent at or after `measure_from` that completed by `end`.
async fn connection_task(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &'static str,
    expect: StatusCode,
    measure_from: Instant,
    end: Instant,
) -> TaskResult {
    let mut out = TaskResult {
        latencies: Vec::with_capacity(32 * 1024),
        ..TaskResult::default()
    };
    'connections: while Instant::now() < end {
        let connected =
            tokio::time::timeout(REQUEST_TIMEOUT, connect(addr, Arc::clone(&tls))).await;
        out.connects += 1;
        let (mut sender, driver, negotiated) = match connected {
            Ok(Ok(c)) => c,
            _ => {
                out.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        out.negotiated.get_or_insert(negotiated);
        loop {
            let sent = Instant::now();
            if sent >= end {
                driver.abort();
                break 'connections;
            }
            let res =
                tokio::time::timeout(REQUEST_TIMEOUT, send(&mut sender, request(addr, path))).await;
            let done = Instant::now();
            match res {
                Ok(Ok(status)) if status == expect => {
                    out.total += 1;
                    if sent >= measure_from && done <= end {
                        out.latencies.push(done - sent);
                    }
                }
                Ok(Ok(_)) => out.errors += 1,
                _ => {
                    // Broken or stuck connection: replace it.
                    out.errors += 1;
                    driver.abort();
                    continue 'connections;
                }
            }
        }
    }
    out
}

struct LoadResult {
    rps: f64,
    /// Successful requests, warm-up included.
    total: u64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    errors: u64,
    reconnects: u64,
    negotiated: String,
    /// Server CPU time per measured request.
    server_cpu_per_req: Duration,
    /// Server CPU use over the measured window, in CPUs.
    server_cpus: f64,
    /// Load generator CPU use over the measured window, in CPUs.
    client_cpus: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Load {
    warmup: Duration,
    measure: Duration,
    ncpu: usize,
    ticks: u64,
}

impl Load {
    /// Runs [`CONNECTIONS`] connection tasks against `server` on a fresh
    /// runtime with the split's thread count and affinity.
    fn run(
        &self,
        server: &Server,
        split: Split,
        path: &'static str,
        expect: StatusCode,
    ) -> LoadResult {
        let threads = split.prepare(self.ncpu);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("load generator runtime");
        let (addr, tls, pid) = (server.addr, Arc::clone(&server.tls), server.pid());
        let (warmup, measure, ticks) = (self.warmup, self.measure, self.ticks);
        let me = std::process::id();
        let (tasks, cpu) = rt.block_on(async move {
            let start = Instant::now();
            let measure_from = start + warmup;
            let end = measure_from + measure;
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..CONNECTIONS {
                set.spawn(connection_task(
                    addr,
                    Arc::clone(&tls),
                    path,
                    expect,
                    measure_from,
                    end,
                ));
            }
            // CPU time of both processes over the measured window.
            let sampler = tokio::spawn(async move {
                tokio::time::sleep_until(measure_from.into()).await;
                let (s0, c0) = (cpu_time(pid, ticks), cpu_time(me, ticks));
                tokio::time::sleep_until(end.into()).await;
                (cpu_time(pid, ticks) - s0, cpu_time(me, ticks) - c0)
            });
            let deadline = end + REQUEST_TIMEOUT + Duration::from_secs(10);
            let mut tasks = Vec::new();
            while let Ok(Some(res)) =
                tokio::time::timeout_at(deadline.into(), set.join_next()).await
            {
                tasks.push(res.expect("connection task"));
            }
            assert_eq!(
                tasks.len(),
                CONNECTIONS,
                "load generator tasks did not finish in time"
            );
            let cpu = sampler.await.expect("CPU sampler");
            (tasks, cpu)
        });
        rt.shutdown_timeout(Duration::from_secs(2));

        let mut latencies = Vec::new();
        let (mut errors, mut connects, mut negotiated, mut total) = (0, 0, None, 0);
        for t in tasks {
            total += t.total;
            latencies.extend(t.latencies);
            errors += t.errors;
            connects += t.connects;
            negotiated = negotiated.or(t.negotiated);
        }
        latencies.sort_unstable();
        let n = latencies.len();
        LoadResult {
            rps: n as f64 / measure.as_secs_f64(),
            total,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            p999: percentile(&latencies, 99.9),
            max: latencies.last().copied().unwrap_or_default(),
            errors,
            reconnects: connects.saturating_sub(CONNECTIONS as u64),
            negotiated: negotiated.unwrap_or_else(|| "no connection".into()),
            server_cpu_per_req: if n == 0 {
                Duration::ZERO
            } else {
                cpu.0 / n as u32
            },
            server_cpus: cpu.0.as_secs_f64() / measure.as_secs_f64(),
            client_cpus: cpu.1.as_secs_f64() / measure.as_secs_f64(),
        }
    }
}

fn print_load_header() {
    println!(
        "  {:<44} {:<7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>7} {:>7} {:>6}",
        "target",
        "split",
        "req/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "srv CPU/req",
        "srv CPU",
        "gen CPU",
        "errors"
    );
}

fn print_load(target: &str, split: Split, r: &LoadResult) {
    let f = |d: Duration| format!("{:.2}ms", ms(d));
    println!(
        "  {:<44} {:<7} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8.1}µs {:>7.2} {:>7.2} {:>6}",
        target,
        split.name(),
        r.rps,
        f(r.p50),
        f(r.p99),
        f(r.p999),
        f(r.max),
        r.server_cpu_per_req.as_secs_f64() * 1e6,
        r.server_cpus,
        r.client_cpus,
        r.errors + r.reconnects,
    );
}

// ---------------------------------------------------------------------------
// The benchmark

fn bench() {
    let bin = latchkey_bin();
    let starts = env_secs("SERVE_BENCH_STARTS", 5).max(1) as usize;
    let load = Load {
        warmup: Duration::from_secs(env_secs("SERVE_BENCH_WARMUP_SECS", 2)),
        measure: Duration::from_secs(env_secs("SERVE_BENCH_SECS", 10).max(1)),
        ncpu: std::thread::available_parallelism().map_or(1, usize::from),
        ticks: clock_ticks(),
    };
    let can_pin = load.ncpu >= 2
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let splits: &[Split] = if can_pin {
        &[Split::Pinned, Split::Shared]
    } else {
        &[Split::Shared]
    };
    let main_split = splits[0];
    let probe_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("probe runtime");
    let tmp = tempfile::tempdir().expect("temporary directory");
    let home = tmp.path();

    let load_before = loadavg();
    let size = std::fs::metadata(&bin).expect("latchkey binary").len();
    println!("Latchkey appliance benchmark (serve-bench)");
    println!(
        "binary:  {} — {size} bytes ({:.2} MiB)",
        bin.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "machine: {} CPUs; every server and the load generator run on this same machine \
         (127.0.0.1){}",
        load.ncpu,
        if can_pin {
            "; split \"pinned\": server on CPU 0, load generator on CPU 1 (taskset); \
             \"shared\": both on all CPUs"
        } else {
            "; no pinning (fewer than 2 CPUs or no taskset): they share the CPUs"
        }
    );
    println!();

    // 1. Start-up.
    let mut first = Vec::new();
    let mut warm = Vec::new();
    let mut stops = Vec::new();
    let warm_data = home.join("warm-data");
    for i in 0..starts {
        let data = if i == 0 {
            warm_data.clone()
        } else {
            home.join(format!("first-{i}"))
        };
        let (server, t) = start_latchkey(
            &probe_rt,
            &bin,
            home,
            &data,
            Split::Shared,
            &[],
            &format!("first-{i}.log"),
        );
        first.push(t);
        let (stop, ok) = server.stop();
        assert!(ok, "latchkey serve did not exit cleanly on SIGTERM");
        stops.push(stop);
    }
    for i in 0..starts {
        let (server, t) = start_latchkey(
            &probe_rt,
            &bin,
            home,
            &warm_data,
            Split::Shared,
            &[],
            &format!("warm-{i}.log"),
        );
        warm.push(t);
        let (stop, ok) = server.stop();
        assert!(ok, "latchkey serve did not exit cleanly on SIGTERM");
        stops.push(stop);
    }
    let range = |v: &[Duration]| {
        let min = v.iter().min().copied().unwrap_or_default();
        let max = v.iter().max().copied().unwrap_or_default();
        format!("{:.1}–{:.1} ms", ms(min), ms(max))
    };
    println!("start-up: process spawn → GET /ready answers 200 (median of {starts}; min–max)");
    println!(
        "  first start (empty data dir: master key, CA, server certificate): {:>7.1} ms  ({})",
        ms(median(&mut first)),
        range(&first)
    );
    println!(
        "  warm start (same data dir again):                                  {:>7.1} ms  ({})",
        ms(median(&mut warm)),
        range(&warm)
    );
    println!(
        "  idle shutdown: SIGTERM → exit 0:                                   {:>7.1} ms  ({})",
        ms(median(&mut stops)),
        range(&stops)
    );
    println!();

    // 2. + 4. Memory and load, each target on its own fresh server.
    println!(
        "load: {CONNECTIONS} keep-alive HTTP/1.1 connections over TLS, one task per connection \
         sending requests back to back; {} s warm-up, {} s measured; latency per request \
         (send → whole body read)",
        load.warmup.as_secs(),
        load.measure.as_secs()
    );
    println!(
        "  srv CPU/req: server CPU time per request; srv CPU / gen CPU: CPUs used by server / \
         load generator over the measured window; errors: failed requests + reconnects"
    );
    print_load_header();
    let mut negotiated = Vec::new();
    let mut headline = Vec::new();
    let mut memory = None;
    for &split in splits {
        split.prepare(load.ncpu);
        let base = start_baseline(home, split);
        let r = load.run(&base, split, "/health", StatusCode::OK);
        print_load("bare hyper + rustls, static 200", split, &r);
        negotiated.push(format!("bare hyper + rustls: {}", r.negotiated));
        let base_rps = r.rps;
        drop(base);

        let (server, _) = start_latchkey(
            &probe_rt,
            &bin,
            home,
            &warm_data,
            split,
            &[],
            &format!("load-{}.log", split.name()),
        );
        std::thread::sleep(Duration::from_secs(1));
        let idle = memory_kib(server.pid());
        let r = load.run(&server, split, "/health", StatusCode::OK);
        print_load("latchkey GET /health", split, &r);
        negotiated.push(format!("latchkey: {}", r.negotiated));
        headline.push((split, r.rps, base_rps));
        if split == main_split {
            let log_bytes = server.log_bytes();
            let log_per_req = log_bytes as f64 / r.total.max(1) as f64;
            let r404 = load.run(&server, split, "/no-such-route", StatusCode::NOT_FOUND);
            print_load("latchkey GET /no-such-route (JSON 404)", split, &r404);
            let rready = load.run(&server, split, "/ready", StatusCode::OK);
            print_load("latchkey GET /ready (redb read + checks)", split, &rready);
            // Back to idle: the generator's runtime (and its connections)
            // is gone; give the server a moment to drop them.
            std::thread::sleep(Duration::from_secs(1));
            let after = memory_kib(server.pid());
            memory = Some((idle, after, log_bytes, log_per_req));
        }
        let (_, ok) = server.stop();
        assert!(
            ok,
            "latchkey serve did not exit cleanly after the load test"
        );

        if split == main_split {
            // Same load with request logging off (warnings only), to show
            // what the per-request log line costs.
            let (quiet, _) = start_latchkey(
                &probe_rt,
                &bin,
                home,
                &warm_data,
                split,
                &[("LATCHKEY_LOG", "warn")],
                "load-quiet.log",
            );
            let r = load.run(&quiet, split, "/health", StatusCode::OK);
            print_load("latchkey GET /health, LATCHKEY_LOG=warn", split, &r);
            let _ = quiet.stop();
        }
    }
    negotiated.sort();
    negotiated.dedup();
    for line in &negotiated {
        println!("  negotiated, {line}");
    }
    for (split, rps, base) in &headline {
        println!(
            "  => latchkey /health at {:.0}% of bare hyper + rustls ({} split)",
            100.0 * rps / base.max(1.0),
            split.name()
        );
    }
    println!();

    if let Some(((idle_rss, _), (after_rss, after_hwm), log_bytes, log_per_req)) = memory {
        println!(
            "resident memory of latchkey serve (VmRSS; {} split run):",
            main_split.name()
        );
        println!("  idle after start:            {:>6.1} MiB", mib(idle_rss));
        println!(
            "  idle after the load tests:   {:>6.1} MiB  (peak VmHWM {:.1} MiB)",
            mib(after_rss),
            mib(after_hwm)
        );
        println!(
            "  request log (stderr to a file, JSON, default level) during the /health run: \
             {:.1} MiB, {log_per_req:.0} bytes per request",
            mib(log_bytes / 1024)
        );
    }
    println!();
    println!("load average: {load_before} at start, {} at end", loadavg());
}

// ---------------------------------------------------------------------------
// The baseline: bare hyper + tokio-rustls

mod baseline {
    use super::*;

    /// Serves a static `200 {"status":"ok"}` on 127.0.0.1 over HTTP/1.1 and
    /// TLS, with a fresh ECDSA P-256 CA (written to `dir/ca.pem`) and server
    /// certificate. Prints `listening ADDR`; exits when stdin closes or
    /// after ten minutes.
    pub fn serve(dir: &Path) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "serve-bench baseline CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");

        let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        let acceptor = TlsAcceptor::from(Arc::new(config));

        // Orphan guard: the bench holds our stdin.
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        });
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(600));
            std::process::exit(2);
        });

        // Same runtime flavour as `latchkey serve`.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            let addr = listener.local_addr().expect("local address");
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {addr}").expect("stdout");
            out.flush().expect("stdout");
            drop(out);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header(CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from_static(HEALTH_BODY)))
                                .expect("response"),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    }
}
