//! The core's accept loop ([`latchkey_core::serve`]) over the appliance's
//! own TLS configuration: protocol versions, ALPN, refused cipher suites,
//! handshake failures counted, certificates swapped while serving, and the
//! deadlines that keep bad clients from holding connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use latchkey_core::http::Front;
use latchkey_core::serve::{ConnLimits, ConnTracker, IDLE_DRAIN, ServeOptions, serve_https};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::tls::TlsManager;
use crate::tls::test_util::settings;
struct Server {
    addr: SocketAddr,
    mgr: Arc<TlsManager>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
    failures: Arc<AtomicU64>,
    /// Notified when a slow handler starts.
    entered: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn stop(mut self) -> io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops in time")
            .expect("join")
    }
}

fn app(entered: Arc<tokio::sync::Notify>) -> axum::Router {
    let entered2 = Arc::clone(&entered);
    axum::Router::new()
        .route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                format!("hello {}", peer.ip())
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(400)).await;
                "slow done"
            }),
        )
        .route(
            "/forever",
            get(move || async move {
                entered2.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        )
}

async fn start(opts: ServeOptions) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let mgr = tokio::task::spawn_blocking(move || TlsManager::new(s))
        .await
        .expect("join")
        .expect("manager");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let failures = Arc::clone(&opts.handshake_failures);
    let config = mgr.server_config().expect("config");
    let entered = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(serve_https(
        listener,
        config,
        Front::router_only(app(Arc::clone(&entered))),
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    Server {
        addr,
        mgr,
        stop: Some(tx),
        task,
        failures,
        entered,
        _dir: dir,
    }
}

fn client_config(
    mgr: &TlsManager,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(mgr.ca().cert_der().clone()).expect("add CA");
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    TlsConnector::from(cfg).connect(name, tcp).await
}

async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut out = Vec::new();
    // A missing close_notify after the response is not a test failure.
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn https_get(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    path: &str,
) -> io::Result<(String, Option<ProtocolVersion>)> {
    let mut tls = connect(addr, cfg).await?;
    let version = tls.get_ref().1.protocol_version();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    Ok((read_all(&mut tls).await, version))
}

fn fast_opts() -> ServeOptions {
    ServeOptions {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        graceful_deadline: Duration::from_secs(5),
        ..ServeOptions::default()
    }
}

#[tokio::test]
async fn https_tls13_and_tls12_with_connect_info() {
    let server = start(ServeOptions::default()).await;
    let cfg13 = client_config(&server.mgr, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let (resp, version) = https_get(server.addr, cfg13, "/").await.expect("tls1.3");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello 127.0.0.1"), "{resp}");
    assert_eq!(version, Some(ProtocolVersion::TLSv1_3));

    let cfg12 = client_config(&server.mgr, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let (resp, version) = https_get(server.addr, cfg12, "/").await.expect("tls1.2");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(server.failures.load(Ordering::Relaxed), 0);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn h2_negotiated_via_alpn() {
    let server = start(ServeOptions::default()).await;
    let cfg = client_config(
        &server.mgr,
        &[&rustls::version::TLS13],
        &[b"h2", b"http/1.1"],
    );
    let mut tls = connect(server.addr, cfg).await.expect("connect");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut frame))
        .await
        .expect("in time")
        .expect("frame");
    assert_eq!(frame[3], 0x04, "server answers with a SETTINGS frame");
    drop(tls);
    server.stop().await.expect("clean stop");
}

/// An idle h2 peer that acknowledges nothing (not even the GOAWAY's
/// ping) gets a GOAWAY after the idle timeout and is dropped after the
/// drain; the slot is given back.
#[tokio::test]
async fn idle_h2_peer_gets_goaway_and_is_dropped() {
    let limits = ConnLimits {
        idle_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let opts = ServeOptions {
        connections: Arc::new(ConnTracker::new(limits)),
        ..ServeOptions::default()
    };
    let tracker = Arc::clone(&opts.connections);
    let server = start(opts).await;
    let cfg = client_config(&server.mgr, &[&rustls::version::TLS13], &[b"h2"]);
    let mut tls = connect(server.addr, cfg).await.expect("connect");
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    assert_eq!(tracker.open(), 1);
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(IDLE_DRAIN + Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle h2 connection still open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Frame types seen: SETTINGS (4) first, a GOAWAY (7) later.
    let mut types = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(types.contains(&7), "no GOAWAY: {types:?}");
    assert_eq!(tracker.idle_closed.load(Ordering::Relaxed), 1);
    for _ in 0..50 {
        if tracker.open() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tracker.open(), 0, "slot given back");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn untrusting_client_fails_and_is_counted() {
    let server = start(ServeOptions::default()).await;
    let other = start(ServeOptions::default()).await;
    // Trusts another appliance's CA.
    let cfg = client_config(&other.mgr, &[&rustls::version::TLS13], &[]);
    assert!(connect(server.addr, cfg).await.is_err());
    for _ in 0..100 {
        if server.failures.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(server.failures.load(Ordering::Relaxed), 1);
    server.stop().await.expect("stop");
    other.stop().await.expect("stop");
}

#[tokio::test]
async fn garbage_and_slowloris_clients_do_not_block_others() {
    let server = start(fast_opts()).await;
    // Plain HTTP to the TLS port.
    let mut garbage = TcpStream::connect(server.addr).await.expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Completes the handshake, then sends nothing.
    let cfg = client_config(&server.mgr, &[&rustls::version::TLS13], &[]);
    let mut idle_tls = connect(server.addr, cfg.clone()).await.expect("tls");

    let (resp, _) = https_get(server.addr, cfg, "/")
        .await
        .expect("normal client");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("silent client closed by handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest))
        .await
        .expect("garbage client closed");
    let r = tokio::time::timeout(Duration::from_secs(5), idle_tls.read(&mut buf))
        .await
        .expect("idle TLS client closed by first-read deadline");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(server.failures.load(Ordering::Relaxed), 2);
    server.stop().await.expect("stop");
}

/// A TLS 1.2 ClientHello offering only CBC suites must be refused.
#[tokio::test]
async fn cbc_only_client_hello_refused() {
    let server = start(ServeOptions::default()).await;
    let mut ext = Vec::new();
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x11; 32]);
    body.push(0); // session id
    // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
    // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x13, 0xc0, 0x09, 0x00, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&u16::try_from(ext.len()).expect("len").to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&u32::try_from(body.len()).expect("len").to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(hs.len()).expect("len").to_be_bytes());
    record.extend_from_slice(&hs);

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(&record).await.expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut reply)).await;
    assert_eq!(
        reply.first(),
        Some(&0x15),
        "expected an alert, got {reply:02x?}"
    );
    assert_eq!(server.failures.load(Ordering::Relaxed), 1);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_request() {
    let server = start(fast_opts()).await;
    let cfg = client_config(&server.mgr, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let addr = server.addr;
    let req = tokio::spawn(https_get(addr, cfg.clone(), "/slow"));
    tokio::time::timeout(Duration::from_secs(5), server.entered.notified())
        .await
        .expect("request reached the handler");
    let started = std::time::Instant::now();
    server.stop().await.expect("stop");
    assert!(started.elapsed() < Duration::from_secs(3));
    let (resp, _) = req.await.expect("join").expect("request");
    assert!(resp.contains("slow done"), "{resp}");
    // No longer accepting.
    assert!(https_get(addr, cfg, "/").await.is_err());
}

#[tokio::test]
async fn graceful_deadline_bounds_shutdown() {
    let opts = ServeOptions {
        graceful_deadline: Duration::from_millis(300),
        ..fast_opts()
    };
    let server = start(opts).await;
    let cfg = client_config(&server.mgr, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let req = tokio::spawn(https_get(server.addr, cfg, "/forever"));
    tokio::time::timeout(Duration::from_secs(5), server.entered.notified())
        .await
        .expect("request reached the handler");
    let started = std::time::Instant::now();
    server.stop().await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let resp = req.await.expect("join");
    assert!(
        !resp.map(|(r, _)| r).unwrap_or_default().contains("never"),
        "request must have been cut off"
    );
}

#[tokio::test]
async fn renewed_certificate_used_for_new_handshakes() {
    let server = start(ServeOptions::default()).await;
    let cfg = client_config(&server.mgr, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let tls = connect(server.addr, cfg.clone()).await.expect("connect");
    let first = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    drop(tls);
    let dir = server._dir.path().to_path_buf();
    std::fs::remove_file(dir.join(crate::tls::files::SERVER_CERT_FILE)).expect("rm");
    let mgr = Arc::clone(&server.mgr);
    tokio::task::spawn_blocking(move || mgr.refresh())
        .await
        .expect("join")
        .expect("refresh");
    let tls = connect(server.addr, cfg).await.expect("connect");
    let certs = tls.get_ref().1.peer_certificates().expect("certs");
    assert_ne!(certs[0], first);
    assert_eq!(certs.len(), 2, "server cert + CA");
    drop(tls);
    server.stop().await.expect("stop");
}
