//! A plain-HTTP listener that only redirects to HTTPS
//! (`server.http_redirect_listen`, used only with `server.tls = true`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::header::{HOST, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::limits::{Activity, ConnTracker, TrackedBody};
use super::{FirstReadDeadline, accept_loop, drive};

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
        // Nobody watches it: the redirect serves no API, and readiness and
        // the watchdog follow the HTTPS listeners.
        Arc::new(super::Heartbeat::new()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    async fn read_all(tcp: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
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
