//! The accept loop over plain TCP (the TLS side is tested in the appliance,
//! with its certificates): what every request is told about its
//! connection, HTTP/2 with prior knowledge, caps, deadlines and the drain.

use super::*;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
    entered: Arc<tokio::sync::Notify>,
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
    axum::Router::new()
        .route(
            "/",
            get(
                |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 axum::Extension(scheme): axum::Extension<Scheme>| async move {
                    format!("hello {} over {scheme}", peer.ip())
                },
            ),
        )
        .route(
            "/slow",
            get(move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(400)).await;
                "slow done"
            }),
        )
}

async fn start(opts: ServeOptions) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let entered = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(serve(
        listener,
        Transport::Plain,
        Front::router_only(app(Arc::clone(&entered))),
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    Server {
        addr,
        stop: Some(tx),
        task,
        entered,
    }
}

fn fast_opts() -> ServeOptions {
    ServeOptions {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        graceful_deadline: Duration::from_secs(5),
        ..ServeOptions::default()
    }
}

async fn get_path(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn plain_http_tells_the_peer_and_the_scheme() {
    let server = start(ServeOptions::default()).await;
    let resp = get_path(server.addr, "/").await.expect("get");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello 127.0.0.1 over http"), "{resp}");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn plain_h2_with_prior_knowledge() {
    let server = start(ServeOptions::default()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut frame))
        .await
        .expect("in time")
        .expect("frame");
    assert_eq!(frame[3], 0x04, "server answers with a SETTINGS frame");
    drop(tcp);
    server.stop().await.expect("clean stop");
}

/// A client that connects and sends nothing is closed by the first-read
/// deadline, and others are served meanwhile.
#[tokio::test]
async fn silent_client_is_closed_and_does_not_block_others() {
    let server = start(fast_opts()).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let resp = get_path(server.addr, "/").await.expect("normal client");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("silent client closed by the first-read deadline");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept() {
    let limits = ConnLimits {
        max_connections: 1,
        max_per_ip: 1,
        idle_timeout: Duration::from_secs(60),
    };
    let opts = ServeOptions {
        connections: Arc::new(ConnTracker::new(limits)),
        ..ServeOptions::default()
    };
    let tracker = Arc::clone(&opts.connections);
    let server = start(opts).await;
    let _held = TcpStream::connect(server.addr).await.expect("first");
    for _ in 0..100 {
        if tracker.open() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = get_path(server.addr, "/").await.unwrap_or_default();
    assert!(resp.is_empty(), "second connection served: {resp}");
    assert_eq!(tracker.refused.load(Ordering::Relaxed), 1);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_request() {
    let server = start(fast_opts()).await;
    let addr = server.addr;
    let req = tokio::spawn(get_path(addr, "/slow"));
    tokio::time::timeout(Duration::from_secs(5), server.entered.notified())
        .await
        .expect("request reached the handler");
    let started = std::time::Instant::now();
    server.stop().await.expect("stop");
    assert!(started.elapsed() < Duration::from_secs(3));
    let resp = req.await.expect("join").expect("request");
    assert!(resp.contains("slow done"), "{resp}");
    assert!(get_path(addr, "/").await.is_err(), "no longer accepting");
}
