//! The accept loop both shells serve with: plain TCP or TLS, HTTP/1.1 and
//! HTTP/2, connection caps, deadlines and a graceful drain.
//!
//! [`serve`] accepts TCP connections and gives each its own task: for
//! [`Transport::Tls`] a TLS handshake (tokio-rustls, with the
//! `rustls::ServerConfig` the shell made — certificates, renewal and hot
//! reload are the shell's business) bounded by a timeout, then HTTP/1.1 or
//! HTTP/2 (hyper-util's auto builder, with upgrades) answered by a
//! [`Front`], which is handed the peer and the connection's [`Scheme`]
//! with every request (the router's handlers find them in the request's
//! extensions as `ConnectInfo<SocketAddr>` and `Scheme`). A client that sends
//! garbage or nothing at all only ties up its own task: the handshake
//! timeout, a deadline for the first request bytes and hyper's HTTP/1
//! header-read timeout close it. Failed handshakes are counted in
//! [`ServeOptions::handshake_failures`].
//!
//! Every listener (including the plain-HTTP redirect, [`redirect`]) shares
//! one [`ConnTracker`]: a connection over `server.max_connections` in all
//! or `server.max_connections_per_ip` from its address is closed right
//! after accept, so one client cannot take every file descriptor. A
//! connection, HTTP/1.1 or HTTP/2, with no request in flight for
//! `server.idle_timeout` is shut down gracefully (HTTP/2: GOAWAY) and
//! dropped if it has not finished within [`IDLE_DRAIN`]; answering HTTP/2
//! pings does not count as activity, a streaming response does (see
//! [`limits`]).
//!
//! When the `shutdown` future resolves the loop stops accepting, asks every
//! open connection to finish (HTTP/1 closes after the in-flight response,
//! HTTP/2 sends GOAWAY), waits up to [`ServeOptions::graceful_deadline`],
//! aborts what is left and returns.

pub mod heartbeat;
pub mod limits;
pub mod redirect;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::http::Front;
pub use crate::http::origin::Scheme;
pub use heartbeat::Heartbeat;
use limits::{Activity, ConnPermit, TrackedBody};
pub use limits::{ConnLimits, ConnTracker, fd_soft_limit};
pub use redirect::serve_http_redirect;

/// How long an idle connection that was asked to close may take to do so
/// (an HTTP/2 peer must answer the GOAWAY's ping) before it is dropped.
pub const IDLE_DRAIN: Duration = Duration::from_secs(5);

/// What a listener speaks: plain HTTP, or HTTPS with the shell's TLS
/// configuration (whose certificate resolver may swap certificates while
/// serving).
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP: loopback, or behind a TLS-terminating reverse proxy
    /// (`server.tls = false`; `config::Settings::check_listeners` decides
    /// where that is allowed).
    Plain,
    /// HTTPS.
    Tls(Arc<rustls::ServerConfig>),
}

impl Transport {
    /// The scheme requests on this transport arrive with.
    pub fn scheme(&self) -> Scheme {
        match self {
            Transport::Plain => Scheme::Http,
            Transport::Tls(_) => Scheme::Https,
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "Transport::Plain",
            Transport::Tls(_) => "Transport::Tls",
        })
    }
}

/// Tuning and counters for [`serve`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Incremented for every failed or timed-out TLS handshake.
    pub handshake_failures: Arc<AtomicU64>,
    /// Time allowed for the TLS handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Time in-flight requests get after shutdown starts (default 30 s).
    pub graceful_deadline: Duration,
    /// Time allowed for the first request bytes after the handshake (or
    /// the accept, in plain HTTP), and for HTTP/1 request headers (default
    /// 10 s).
    pub header_read_timeout: Duration,
    /// Connection caps and the idle timeout, shared by every listener.
    pub connections: Arc<ConnTracker>,
    /// Beaten by the accept loop while it runs (give each listener its
    /// own: a supervisor checks them all; see [`heartbeat`]).
    pub heartbeat: Arc<Heartbeat>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_failures: Arc::new(AtomicU64::new(0)),
            handshake_timeout: Duration::from_secs(10),
            graceful_deadline: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            connections: Arc::new(ConnTracker::new(Default::default())),
            heartbeat: Arc::new(Heartbeat::new()),
        }
    }
}

/// Serves `app` on `listener` over `transport` until `shutdown` resolves,
/// then shuts down gracefully (see the module docs). Returns an error only
/// if the listener itself fails.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    app: Front,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) -> io::Result<()> {
    let acceptor = match transport {
        Transport::Plain => None,
        Transport::Tls(cfg) => Some(TlsAcceptor::from(cfg)),
    };
    let builder = Arc::new(http_builder(opts.header_read_timeout));
    let conn_opts = opts.clone();
    accept_loop(
        listener,
        shutdown,
        opts.graceful_deadline,
        Arc::clone(&opts.connections),
        Arc::clone(&opts.heartbeat),
        move |tcp, peer, permit, watcher| {
            serve_connection(
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

/// Binds one address for [`serve`]. IPv6 sockets are IPv6-only, so
/// `0.0.0.0:P` and `[::]:P` can both be listed (Linux would otherwise make
/// `[::]` take the IPv4 port too and the second bind fail). The error
/// names the address.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// [`serve`] over TLS with `tls`.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Front,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) -> io::Result<()> {
    serve(listener, Transport::Tls(tls), app, shutdown, opts).await
}

/// Accepts connections until `shutdown`, running `on_conn` for each in its
/// own task, then shuts the connections down gracefully. A connection over
/// a cap of `tracker` is closed at once (and counted there). `heartbeat`
/// is beaten from inside the loop while it accepts, and marked ended when
/// it stops accepting.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    graceful_deadline: Duration,
    tracker: Arc<ConnTracker>,
    heartbeat: Arc<Heartbeat>,
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
    let mut beat = tokio::time::interval(crate::serve::heartbeat::BEAT_INTERVAL);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        heartbeat.beat();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = beat.tick() => {}
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
    heartbeat.stop();
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
pub(crate) type ShutdownSignal = watch::Receiver<()>;

/// Drives `conn` to completion. Once the shutdown signal fires, asks it to
/// finish gracefully (`graceful`) and keeps driving it until it does. Once
/// `activity` has had no request in flight for the idle timeout, does the
/// same but drops it (`None`) if it is still open after [`IDLE_DRAIN`] with
/// nothing in flight.
pub(crate) async fn drive<C: Future>(
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

async fn serve_connection(
    acceptor: Option<TlsAcceptor>,
    (tcp, peer, permit): (TcpStream, SocketAddr, ConnPermit),
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Front,
    watcher: ShutdownSignal,
    opts: ServeOptions,
) {
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        let io = FirstReadDeadline::new(tcp, opts.header_read_timeout, permit);
        let conn = ConnParts {
            peer,
            scheme: Scheme::Http,
            builder,
            app,
            watcher,
            tracker: opts.connections,
        };
        return serve_http(io, conn).await;
    };
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
    let io = FirstReadDeadline::new(tls, opts.header_read_timeout, permit);
    let conn = ConnParts {
        peer,
        scheme: Scheme::Https,
        builder,
        app,
        watcher,
        tracker: opts.connections,
    };
    serve_http(io, conn).await;
}

/// What serving one connection's HTTP needs besides its I/O.
struct ConnParts {
    peer: SocketAddr,
    scheme: Scheme,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Front,
    watcher: ShutdownSignal,
    tracker: Arc<ConnTracker>,
}

/// HTTP/1.1 or HTTP/2 on an accepted (and, for TLS, handshaken) stream.
async fn serve_http<I>(io: FirstReadDeadline<I>, c: ConnParts)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnParts {
        peer,
        scheme,
        builder,
        app,
        watcher,
        tracker,
    } = c;
    let activity = Activity::new();
    let act = Arc::clone(&activity);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = act.begin();
        let answer = app.call(req, peer, scheme);
        async move {
            let resp = answer.await;
            Ok::<_, Infallible>(resp.map(|b| TrackedBody::new(b, guard)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let res = drive(conn, watcher, &activity, &tracker, |c: Pin<&mut _>| {
        c.graceful_shutdown()
    })
    .await;
    if let Some(Err(e)) = res {
        tracing::debug!(%peer, %scheme, error = %e, "connection ended with error");
    }
}

/// Fails the first read with `TimedOut` if no byte arrives within the
/// deadline. Covers the gap between the TLS handshake and hyper's own
/// timeouts (hyper-util waits for the first bytes to pick HTTP/1 or 2).
/// Also holds the connection's [`ConnPermit`], released with the socket.
pub(crate) struct FirstReadDeadline<I> {
    inner: I,
    deadline: Option<Pin<Box<Sleep>>>,
    _permit: ConnPermit,
}

impl<I> FirstReadDeadline<I> {
    pub(crate) fn new(inner: I, timeout: Duration, permit: ConnPermit) -> Self {
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
