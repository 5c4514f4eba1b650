//! The HTTPS accept loop, and a plain-HTTP listener that only redirects.
//!
//! [`serve_https`] accepts TCP connections and gives each its own task:
//! a TLS handshake (tokio-rustls) bounded by a timeout, then HTTP/1.1 or
//! HTTP/2 (hyper-util's auto builder, with upgrades) serving an axum
//! `Router`. Handlers can extract `ConnectInfo<SocketAddr>`. A client that
//! sends garbage or nothing at all only ties up its own task: the handshake
//! timeout, a deadline for the first request bytes and hyper's HTTP/1
//! header-read timeout close it. Failed handshakes are counted in
//! [`ServeOptions::handshake_failures`].
//!
//! Every listener (HTTPS and the plain-HTTP redirect) shares one
//! [`ConnTracker`]: a connection over `server.max_connections` in all or
//! `server.max_connections_per_ip` from its address is closed right after
//! accept, so one client cannot take every file descriptor. A connection,
//! HTTP/1.1 or HTTP/2, with no request in flight for `server.idle_timeout`
//! is shut down gracefully (HTTP/2: GOAWAY) and dropped if it has not
//! finished within [`IDLE_DRAIN`]; answering HTTP/2 pings does not count
//! as activity, a streaming response does (see [`super::limits`]).
//!
//! When the `shutdown` future resolves the loop stops accepting, asks every
//! open connection to finish (HTTP/1 closes after the in-flight response,
//! HTTP/2 sends GOAWAY), waits up to [`ServeOptions::graceful_deadline`],
//! aborts what is left and returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::header::{HOST, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use latchkey_core::http::Front;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use super::limits::{Activity, ConnPermit, ConnTracker, TrackedBody};

/// How long an idle connection that was asked to close may take to do so
/// (an HTTP/2 peer must answer the GOAWAY's ping) before it is dropped.
pub const IDLE_DRAIN: Duration = Duration::from_secs(5);

/// Tuning and counters for [`serve_https`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Incremented for every failed or timed-out TLS handshake.
    pub handshake_failures: Arc<AtomicU64>,
    /// Time allowed for the TLS handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Time in-flight requests get after shutdown starts (default 30 s).
    pub graceful_deadline: Duration,
    /// Time allowed for the first request bytes after the handshake, and
    /// for HTTP/1 request headers (default 10 s).
    pub header_read_timeout: Duration,
    /// Connection caps and the idle timeout, shared by every listener.
    pub connections: Arc<ConnTracker>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_failures: Arc::new(AtomicU64::new(0)),
            handshake_timeout: Duration::from_secs(10),
            graceful_deadline: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            connections: Arc::new(ConnTracker::new(Default::default())),
        }
    }
}

/// Serves `app` over HTTPS on `listener` until `shutdown` resolves, then
/// shuts down gracefully (see the module docs). Returns an error only if
/// the listener itself fails.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Front,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let builder = Arc::new(http_builder(opts.header_read_timeout));
    let conn_opts = opts.clone();
    accept_loop(
        listener,
        shutdown,
        opts.graceful_deadline,
        Arc::clone(&opts.connections),
        move |tcp, peer, permit, watcher| {
            serve_tls_connection(
                acceptor.clone(),
                (tcp, peer, permit),
                Arc::clone(&builder),
                app.clone(),
                watcher,
                conn_opts.clone(),
            )
        },
    )
    .await
}

/// Answers every plain-HTTP request on `listener` with
/// `308 Permanent Redirect` to `https://<host>:<https_port><path>`, where
/// `<host>` is the request's Host without its port. Requests without a
/// usable Host get `400`. Runs until `shutdown` resolves. Connections
/// count against `connections` like HTTPS ones.
pub async fn serve_http_redirect(
    listener: TcpListener,
    https_port: u16,
    shutdown: impl Future<Output = ()>,
    connections: Arc<ConnTracker>,
) -> io::Result<()> {
    let header_timeout = Duration::from_secs(10);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(false);
    let http1 = Arc::new(http1);
    let tracker = Arc::clone(&connections);
    accept_loop(
        listener,
        shutdown,
        Duration::from_secs(5),
        connections,
        move |tcp, peer, permit, watcher| {
            let http1 = Arc::clone(&http1);
            let tracker = Arc::clone(&tracker);
            async move {
                let io = TokioIo::new(FirstReadDeadline::new(tcp, header_timeout, permit));
                let activity = Activity::new();
                let act = Arc::clone(&activity);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let guard = act.begin();
                    let resp = redirect_response(&req, https_port);
                    async move { Ok::<_, Infallible>(resp.map(|b| TrackedBody::new(b, guard))) }
                });
                let conn = http1.serve_connection(io, svc);
                let res = drive(conn, watcher, &activity, &tracker, |c: Pin<&mut _>| {
                    c.graceful_shutdown()
                })
                .await;
                if let Some(Err(e)) = res {
                    tracing::debug!(%peer, error = %e, "HTTP redirect connection ended with error");
                }
            }
        },
    )
    .await
}

/// Accepts connections until `shutdown`, running `on_conn` for each in its
/// own task, then shuts the connections down gracefully. A connection over
/// a cap of `tracker` is closed at once (and counted there).
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    graceful_deadline: Duration,
    tracker: Arc<ConnTracker>,
    mut on_conn: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, ConnPermit, ShutdownSignal) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (signal, _) = watch::channel(());
    let mut conns = JoinSet::new();
    let mut result = Ok(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match tracker.try_acquire(peer.ip()) {
                    Some(permit) => {
                        conns.spawn(on_conn(tcp, peer, permit, signal.subscribe()));
                    }
                    None => {
                        tracing::debug!(%peer, open = tracker.open(), "connection cap reached; closing");
                        drop(tcp);
                    }
                },
                Err(e) => match classify_accept_error(&e) {
                    AcceptError::Transient => {}
                    AcceptError::Resource => {
                        tracing::warn!(error = %e, "accept failed; pausing briefly");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    AcceptError::Fatal => {
                        tracing::error!(error = %e, "listener failed");
                        result = Err(e);
                        break;
                    }
                },
            },
        }
    }
    drop(listener);
    if !conns.is_empty() {
        tracing::info!(connections = conns.len(), "shutting down open connections");
    }
    let _ = signal.send(());
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(graceful_deadline, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = conns.len(),
            "graceful shutdown deadline passed; closing remaining connections"
        );
    }
    conns.shutdown().await;
    result
}

/// Receiving side of the shutdown signal, one per connection task.
type ShutdownSignal = watch::Receiver<()>;

/// Drives `conn` to completion. Once the shutdown signal fires, asks it to
/// finish gracefully (`graceful`) and keeps driving it until it does. Once
/// `activity` has had no request in flight for the idle timeout, does the
/// same but drops it (`None`) if it is still open after [`IDLE_DRAIN`] with
/// nothing in flight.
async fn drive<C: Future>(
    conn: C,
    mut signal: ShutdownSignal,
    activity: &Activity,
    tracker: &ConnTracker,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Option<C::Output> {
    let idle_timeout = tracker.limits().idle_timeout;
    tokio::pin!(conn);
    let check = tokio::time::sleep(idle_timeout);
    tokio::pin!(check);
    let idle = loop {
        tokio::select! {
            res = conn.as_mut() => return Some(res),
            _ = signal.changed() => break false,
            () = check.as_mut() => {
                // Re-armed for when the connection could next be idle long
                // enough: no timer work per request.
                let wait = match activity.idle_for() {
                    Some(d) if d >= idle_timeout => break true,
                    Some(d) => idle_timeout.saturating_sub(d),
                    None => idle_timeout,
                };
                check.as_mut().reset(tokio::time::Instant::now() + wait);
            }
        }
    };
    graceful(conn.as_mut());
    if !idle {
        return Some(conn.await);
    }
    tracker.idle_closed.fetch_add(1, Ordering::Relaxed);
    loop {
        match tokio::time::timeout(IDLE_DRAIN, conn.as_mut()).await {
            Ok(res) => return Some(res),
            // A request that raced the close is let finish.
            Err(_) if activity.idle_for().is_none() => {}
            Err(_) => return None,
        }
    }
}

enum AcceptError {
    Transient,
    Resource,
    Fatal,
}

fn classify_accept_error(e: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        | TimedOut => AcceptError::Transient,
        OutOfMemory => AcceptError::Resource,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or buffers.
        _ if matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) => AcceptError::Resource,
        _ => AcceptError::Fatal,
    }
}

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn serve_tls_connection(
    acceptor: TlsAcceptor,
    (tcp, peer, permit): (TcpStream, SocketAddr, ConnPermit),
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Front,
    watcher: ShutdownSignal,
    opts: ServeOptions,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            opts.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            opts.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // The permit goes with the socket, also into an upgraded connection.
    let io = TokioIo::new(FirstReadDeadline::new(
        tls,
        opts.header_read_timeout,
        permit,
    ));
    let activity = Activity::new();
    let act = Arc::clone(&activity);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = act.begin();
        req.extensions_mut().insert(ConnectInfo(peer));
        let answer = app.call(req);
        async move {
            let resp = answer.await;
            Ok::<_, Infallible>(resp.map(|b| TrackedBody::new(b, guard)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    let res = drive(
        conn,
        watcher,
        &activity,
        &opts.connections,
        |c: Pin<&mut _>| c.graceful_shutdown(),
    )
    .await;
    if let Some(Err(e)) = res {
        tracing::debug!(%peer, error = %e, "HTTPS connection ended with error");
    }
}

fn redirect_response(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .and_then(|h| host_without_port(&h).map(str::to_owned));
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let mut resp = Response::new(Body::empty());
    match host {
        Some(host) => {
            let location = format!("https://{host}:{https_port}{path}");
            match hyper::header::HeaderValue::try_from(location) {
                Ok(v) => {
                    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                    resp.headers_mut().insert(LOCATION, v);
                }
                Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
            }
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

/// The host part of a Host header value (`name`, `name:port`, `[v6]` or
/// `[v6]:port`), if it contains only characters valid in a host.
fn host_without_port(value: &str) -> Option<&str> {
    let value = value.trim();
    let host = if value.starts_with('[') {
        let end = value.find(']')?;
        let (host, rest) = value.split_at(end + 1);
        if !(rest.is_empty() || rest.starts_with(':')) {
            return None;
        }
        if !host[1..host.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        host
    } else {
        let host = value.split(':').next()?;
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        host
    };
    (!host.is_empty() && host != "[]").then_some(host)
}

/// Fails the first read with `TimedOut` if no byte arrives within the
/// deadline. Covers the gap between the TLS handshake and hyper's own
/// timeouts (hyper-util waits for the first bytes to pick HTTP/1 or 2).
/// Also holds the connection's [`ConnPermit`], released with the socket.
struct FirstReadDeadline<I> {
    inner: I,
    deadline: Option<Pin<Box<Sleep>>>,
    _permit: ConnPermit,
}

impl<I> FirstReadDeadline<I> {
    fn new(inner: I, timeout: Duration, permit: ConnPermit) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            _permit: permit,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstReadDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(res) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(res)
            }
            Poll::Pending => {
                let expired = match this.deadline.as_mut() {
                    Some(deadline) => deadline.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request received in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstReadDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use axum::routing::get;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsConnector;

    use super::*;
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
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
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
        let limits = crate::tls::limits::ConnLimits {
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

    async fn redirect_server() -> (SocketAddr, oneshot::Sender<()>, JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_http_redirect(
            listener,
            8443,
            async move {
                let _ = rx.await;
            },
            Arc::new(ConnTracker::new(Default::default())),
        ));
        (addr, tx, task)
    }

    async fn raw_request(addr: SocketAddr, request: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write");
        read_all(&mut tcp).await
    }

    #[tokio::test]
    async fn redirects_to_https() {
        let (addr, stop, task) = redirect_server().await;
        let resp = raw_request(
            addr,
            "GET /vault/x?y=1 HTTP/1.1\r\nHost: nas.local:8080\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("location: https://nas.local:8443/vault/x?y=1\r\n"),
            "{resp}"
        );
        let resp = raw_request(addr, "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").await;
        assert!(
            resp.to_ascii_lowercase()
                .contains("location: https://[::1]:8443/\r\n"),
            "{resp}"
        );
        let resp = raw_request(addr, "GET / HTTP/1.1\r\nHost: 192.168.1.5\r\n\r\n").await;
        assert!(
            resp.to_ascii_lowercase()
                .contains("location: https://192.168.1.5:8443/\r\n"),
            "{resp}"
        );
        let resp = raw_request(addr, "GET / HTTP/1.0\r\n\r\n").await;
        assert!(
            resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"),
            "{resp}"
        );
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("join")
            .expect("ok");
    }

    #[test]
    fn host_parsing() {
        assert_eq!(host_without_port("a.b:80"), Some("a.b"));
        assert_eq!(host_without_port("a.b"), Some("a.b"));
        assert_eq!(host_without_port("[fe80::1]:80"), Some("[fe80::1]"));
        assert_eq!(host_without_port("[::1]"), Some("[::1]"));
        assert_eq!(host_without_port("evil/x"), None);
        assert_eq!(host_without_port("a@b"), None);
        assert_eq!(host_without_port("[::1]x"), None);
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port(":80"), None);
    }
}
