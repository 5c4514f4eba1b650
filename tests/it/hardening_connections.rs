//! Connections as an unauthenticated resource (issue #19, review 2): an
//! idle connection, HTTP/2 that answers every ping or HTTP/1.1 keep-alive,
//! is closed after `server.idle_timeout` while a connection with a long
//! streaming response stays open; connections over
//! `server.max_connections_per_ip` / `server.max_connections` are closed at
//! accept while other clients are still served.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use latchkey_e2e::{ServeOpts, Server, create_key, spawn_server, web_setup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::proxy::{Mock, config as proxy_config, seeded};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn tls_config(ca: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca).expect("CA PEM");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA parses")).expect("trust anchor");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// A TCP connection to the server from `local` (any port).
async fn tcp_from(local: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(local, 0))?;
    sock.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

async fn tls_from(
    local: IpAddr,
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(local, port).await?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::clone(cfg)).connect(name, tcp).await
}

type H2Sender<B> = hyper::client::conn::http2::SendRequest<B>;

/// An HTTP/2 connection (hyper's client answers the server's pings on its
/// own, like the attacker in the review); the handle ends when the server
/// closes the connection.
async fn h2_from<B>(
    local: IpAddr,
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
) -> (H2Sender<B>, tokio::task::JoinHandle<()>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_from(local, port, cfg).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, driver)
}

fn localhost(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits for `driver` (a connection) to end; returns how long that took.
async fn closed_within(driver: tokio::task::JoinHandle<()>, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(limit, driver)
        .await
        .ok()
        .map(|_| started.elapsed())
}

/// Idle HTTP/2 connections that answer every ping — the review's 300
/// connections that stayed open — are closed after the idle timeout, with
/// or without a request before; a connection whose streaming response runs
/// longer than the idle timeout, with silences longer than it, is not cut.
#[test]
fn idle_h2_connections_are_closed_but_streams_are_not() {
    let mock = Mock::start();
    let d = seeded();
    let s = spawn_server(
        &d,
        &ServeOpts::new()
            .config(&proxy_config(mock.port, ""))
            .env("LATCHKEY_SERVER__IDLE_TIMEOUT", "2s"),
    );
    let owner = web_setup(&s, "owner");
    let (_, key) = create_key(&owner.browser, "agent", &["proxy:openai"]);
    let rt = runtime();
    rt.block_on(async {
        let cfg = tls_config(s.ca_pem(), b"h2");
        // Preface + SETTINGS only, then nothing but ping answers.
        let mut idle = Vec::new();
        for _ in 0..5 {
            let (sender, driver) = h2_from::<Empty<Bytes>>(localhost(1), s.port, &cfg).await;
            idle.push((sender, driver));
        }
        // One request, then idle.
        let (mut used, used_driver) = h2_from::<Empty<Bytes>>(localhost(1), s.port, &cfg).await;
        let r = used
            .send_request(
                hyper::Request::get(format!("https://localhost:{}/health", s.port))
                    .body(Empty::new())
                    .expect("request"),
            )
            .await
            .expect("health over h2");
        assert_eq!(r.status(), 200);
        let _ = r.into_body().collect().await;

        // A streaming response: one event, 2.5 s of silence, half an
        // event, 2.5 s, the rest (the mock's `/v1/silent`).
        let (mut streaming, stream_driver) =
            h2_from::<Full<Bytes>>(localhost(1), s.port, &cfg).await;
        let started = Instant::now();
        let resp = streaming
            .send_request(
                hyper::Request::post(format!(
                    "https://localhost:{}/proxy/openai/v1/silent",
                    s.port
                ))
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
                .expect("request"),
            )
            .await
            .expect("streamed response head");
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("stream ends in time")
            .expect("stream not cut by the idle timeout")
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("{\"n\":1}") && body.contains("{\"n\":2}") && body.contains("[DONE]"),
            "{body}"
        );
        assert!(
            started.elapsed() > Duration::from_secs(4),
            "the stream outlived the idle timeout"
        );
        assert!(!stream_driver.is_finished(), "busy connection kept open");

        // By now (over 5 s) every idle connection has been asked to close
        // and has (2 s idle + GOAWAY exchange; allow the drain too).
        for (i, (_sender, driver)) in idle.into_iter().enumerate() {
            assert!(
                closed_within(driver, Duration::from_secs(8))
                    .await
                    .is_some(),
                "idle h2 connection {i} still open"
            );
        }
        assert!(
            closed_within(used_driver, Duration::from_secs(8))
                .await
                .is_some(),
            "h2 connection idle after a request still open"
        );
        // The streaming connection is idle now: closed in turn.
        let took = closed_within(stream_driver, Duration::from_secs(10))
            .await
            .expect("streaming connection closed once idle");
        assert!(took > Duration::from_millis(500), "{took:?}");
    });
    let text = s.get("/metrics").body;
    assert!(
        metric(&text, "latchkey_connections_idle_closed_total ") >= 7.0,
        "{text}"
    );
    assert_eq!(s.get("/health").status, 200);
}

/// A kept-alive HTTP/1.1 connection, after a request and with nothing
/// since, is closed after the idle timeout (not only HTTP/2).
#[test]
fn idle_http1_keep_alive_connections_are_closed() {
    let d = latchkey_e2e::TestDir::new();
    d.write_config("[server]\nidle_timeout = \"2s\"\n");
    let s = d.serve();
    runtime().block_on(async {
        let cfg = tls_config(s.ca_pem(), b"http/1.1");
        let tls = tls_from(localhost(1), s.port, &cfg).await.expect("TLS");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1 handshake");
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = sender
            .send_request(
                hyper::Request::get("/health")
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .expect("request"),
            )
            .await
            .expect("health");
        assert_eq!(r.status(), 200);
        let _ = r.into_body().collect().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!driver.is_finished(), "not closed before the idle timeout");
        assert!(
            closed_within(driver, Duration::from_secs(6))
                .await
                .is_some(),
            "idle keep-alive connection still open"
        );

        // Raw: TLS done, one request, then silence: the server closes.
        let mut raw = tls_from(localhost(1), s.port, &cfg).await.expect("TLS");
        raw.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let started = Instant::now();
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "raw keep-alive connection still open");
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() >= Duration::from_millis(1500));
    });
}

/// Reads from `tcp` until the server closes it (`true`) or `limit`.
async fn closed_by_server(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// One address filling its share: further connections from it are closed
/// at accept (counted), another address and the host are still served;
/// with every slot taken, a new address is refused too, and served again
/// once slots free up.
#[test]
fn connection_caps_per_address_and_in_all() {
    let d = latchkey_e2e::TestDir::new();
    d.write_config(
        "[server]\nidle_timeout = \"60s\"\nmax_connections = 12\nmax_connections_per_ip = 5\n",
    );
    let s = d.serve();
    let refused_before = metric(
        &s.get("/metrics").body,
        "latchkey_connections_refused_total ",
    );
    runtime().block_on(async {
        let cfg = tls_config(s.ca_pem(), b"h2");
        // The attacker on 127.0.0.2: five idle h2 connections (its cap).
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(h2_from::<Empty<Bytes>>(localhost(2), s.port, &cfg).await);
        }
        // More from it are closed at once, before any TLS.
        for i in 0..5 {
            let mut tcp = tcp_from(localhost(2), s.port).await.expect("connect");
            assert!(
                closed_by_server(&mut tcp, Duration::from_secs(2)).await,
                "connection {i} over the per-address cap not closed"
            );
        }
        // The held ones still work; the host and others are served.
        for (sender, _) in &mut held {
            let r = sender
                .send_request(
                    hyper::Request::get(format!("https://localhost:{}/health", s.port))
                        .body(Empty::new())
                        .expect("request"),
                )
                .await
                .expect("held connection works");
            assert_eq!(r.status(), 200);
        }
        assert_eq!(health(&s).await, 200);
        let (mut other, _o) = h2_from::<Empty<Bytes>>(localhost(3), s.port, &cfg).await;
        let r = other
            .send_request(
                hyper::Request::get(format!("https://localhost:{}/health", s.port))
                    .body(Empty::new())
                    .expect("request"),
            )
            .await
            .expect("another address is served");
        assert_eq!(r.status(), 200);

        // Fill the global cap (12): 5 + 1 + 5 from 127.0.0.4 + 1 from .5
        // (once the host's closed connection has let go of its slot).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut more = Vec::new();
        for _ in 0..5 {
            more.push(h2_from::<Empty<Bytes>>(localhost(4), s.port, &cfg).await);
        }
        more.push(h2_from::<Empty<Bytes>>(localhost(5), s.port, &cfg).await);
        let mut tcp = tcp_from(localhost(6), s.port).await.expect("connect");
        assert!(
            closed_by_server(&mut tcp, Duration::from_secs(2)).await,
            "connection over the global cap not closed"
        );
        // Slots freed: served again.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if health(&s).await == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "not served after slots freed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(more);
    });
    let refused = metric(
        &s.get("/metrics").body,
        "latchkey_connections_refused_total ",
    );
    assert!(
        refused >= refused_before + 6.0,
        "{refused_before} → {refused}"
    );
}

/// `GET /health` from 127.0.0.1 over its own HTTP/1.1 connection: the
/// status, or 0 when the connection was refused.
async fn health(s: &Server) -> u16 {
    let cfg = tls_config(s.ca_pem(), b"http/1.1");
    let Ok(tls) = tls_from(localhost(1), s.port, &cfg).await else {
        return 0;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
    else {
        return 0;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender
        .send_request(
            hyper::Request::get("/health")
                .header("host", "localhost")
                .header("connection", "close")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// An upgraded connection (a WebSocket to an agent) is not the idle
/// timer's business: silent for longer than the idle timeout plus the
/// drain, it still echoes.
#[test]
fn an_open_websocket_outlives_the_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let backend = crate::agent::Backend::start();
    let d = latchkey_e2e::TestDir::new();
    let s = spawn_server(
        &d,
        &ServeOpts::new()
            .config(&crate::agent::config(backend.port, ""))
            .env("LATCHKEY_SERVER__IDLE_TIMEOUT", "1s"),
    );
    let owner = web_setup(&s, "ada");
    let (_, key) = create_key(&owner.browser, "ws", &["agent:notes"]);
    runtime().block_on(async {
        let limit = Duration::from_secs(20);
        let mut ws = tokio::time::timeout(
            limit,
            crate::agent::ws_connect(&s, "/agent/notes/ws", Some(&key)),
        )
        .await
        .expect("in time")
        .expect("websocket through latchkey");
        let first = tokio::time::timeout(limit, ws.next())
            .await
            .expect("in time");
        assert!(matches!(first, Some(Ok(_))), "{first:?}");
        // Idle timeout 1 s + drain 5 s, and some.
        tokio::time::sleep(Duration::from_secs(7)).await;
        ws.send(Message::text("still here")).await.expect("send");
        let back = tokio::time::timeout(limit, ws.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(back.to_text().expect("text"), "still here");
        let _ = ws.close(None).await;
    });
}
