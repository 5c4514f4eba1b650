//! Keep-alive HTTP/1.1 connections to one plain-HTTP upstream.
//!
//! The local model servers (Ollama, llama.cpp, vLLM) are reached over
//! plain HTTP on the same machine or network, often at high request rates.
//! hyper-util's general client (kept for HTTPS upstreams, where it also
//! speaks HTTP/2) spends about as much per request on its pool machinery
//! as on the exchange itself (a checkout racing a lazy connect, pool keys,
//! `Host` formatting); this pool is a list of hyper connections:
//!
//! - a request takes the newest connection that is ready (its previous
//!   exchange finished); connections still busy stay listed, closed ones
//!   met on the way are dropped; none ready: a new connection (connect
//!   timeout applies) — it joins the list unless it is full;
//! - long-idle connections are dropped by a sweep at most once a second
//!   (not on every checkout: the list is as long as the concurrency, and
//!   a clock comparison per listed connection per request was ~2 % of a
//!   proxied request's instructions at 32 connections);
//! - a connection is listed again as soon as its response head arrives: it
//!   becomes ready by itself when the body has been read;
//! - a request that a pooled connection could not even start (closed by
//!   the upstream meanwhile) is retried on another one, as hyper hands it
//!   back unsent.

use super::forward::SharedBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Connections kept per upstream (busy ones included).
const MAX_CONNECTIONS: usize = 128;
/// A connection unused this long is closed by the next sweep.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// How often a checkout sweeps the list for long-idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Refused, unreachable, or timed out (`ErrorKind::TimedOut`, which
    /// the proxy answers with 504 like hyper-util's connect timeouts).
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error("upstream exchange: {0}")]
    Http(#[source] hyper::Error),
}

struct Pooled {
    tx: SendRequest<SharedBody>,
    since: Instant,
}

/// The listed connections, and when they were last swept.
struct Conns {
    list: Vec<Pooled>,
    swept: Instant,
}

/// The connections to one `host:port`.
pub struct HttpPool {
    authority: String,
    connect_timeout: Duration,
    conns: Mutex<Conns>,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl HttpPool {
    /// A pool for `authority` (`host:port`, the port is required).
    pub fn new(authority: String, connect_timeout: Duration) -> HttpPool {
        HttpPool {
            authority,
            connect_timeout,
            conns: Mutex::new(Conns {
                list: Vec::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on a ready connection.
    pub async fn send(
        &self,
        mut req: Request<SharedBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        while let Some(mut tx) = self.checkout() {
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(tx);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never started: the connection was gone; next one.
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        // Boxed: a new connection is the rare case, and its future (connect
        // and handshake) would otherwise be part of every request's.
        let mut tx = Box::pin(self.connect()).await?;
        let resp = tx.send_request(req).await.map_err(PoolError::Http)?;
        self.checkin(tx);
        Ok(resp)
    }

    /// The newest ready connection; drops the closed ones it passes, and
    /// the long-idle ones when a sweep is due.
    fn checkout(&self) -> Option<SendRequest<SharedBody>> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(conns.swept) >= SWEEP_EVERY {
            conns
                .list
                .retain(|c| !c.tx.is_closed() && now.duration_since(c.since) < IDLE_FOR);
            conns.swept = now;
        }
        let list = &mut conns.list;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            // `swap_remove` moves the last entry, already looked at, to `i`.
            if list[i].tx.is_closed() {
                list.swap_remove(i);
            } else if list[i].tx.is_ready() {
                return Some(list.swap_remove(i).tx);
            }
        }
        None
    }

    fn checkin(&self, tx: SendRequest<SharedBody>) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.list.len() < MAX_CONNECTIONS {
            conns.list.push(Pooled {
                tx,
                since: Instant::now(),
            });
        }
        // Full: dropping the sender closes the connection after this
        // exchange.
    }

    async fn connect(&self) -> Result<SendRequest<SharedBody>, PoolError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })
        .map_err(PoolError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (tx, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream answering `200 ok` to each request; with `one_shot` it
    /// closes every connection after its first answer (without saying so,
    /// as a server timing out an idle connection does). Counts accepts.
    async fn upstream(one_shot: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tcp.write_all(answer).await.is_err() || one_shot {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(addr: &str) -> Request<SharedBody> {
        let body = http_body_util::Limited::new(axum::body::Body::empty(), 1024);
        Request::builder()
            .uri("/v1/x")
            .header("host", addr)
            .body(SharedBody::new(body))
            .expect("request")
    }

    async fn ok(pool: &HttpPool, addr: &str) {
        let resp = pool.send(request(addr)).await.expect("answered");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn keep_alive_connections_are_reused() {
        let (addr, accepted) = upstream(false).await;
        let pool = HttpPool::new(addr.clone(), Duration::from_secs(2));
        for _ in 0..5 {
            ok(&pool, &addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_replaced() {
        let (addr, accepted) = upstream(true).await;
        let pool = HttpPool::new(addr.clone(), Duration::from_secs(2));
        for _ in 0..3 {
            ok(&pool, &addr).await;
            // Let the connection task see the upstream's close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let pool = HttpPool::new(addr.clone(), Duration::from_secs(2));
        let err = pool.send(request(&addr)).await.expect_err("refused");
        assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
    }
}
