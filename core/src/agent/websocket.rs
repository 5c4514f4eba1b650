//! A WebSocket through an agent route: once the backend has answered 101
//! and the client has been told so, both upgraded connections are spliced
//! byte for byte until either side closes or nothing has moved for the
//! agent's `idle_timeout`.
//!
//! Only HTTP/1.1 upgrades are supported; WebSocket over HTTP/2 (RFC 8441
//! extended CONNECT) is refused by the route with a clear error.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Splices the client's and the backend's upgraded connections.
pub async fn splice(client: OnUpgrade, upstream: OnUpgrade, idle: Duration, agent: &str) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(agent, error = %e, "websocket upgrade failed");
            return;
        }
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Activity {
        inner: TokioIo::new(client),
        start,
        last: Arc::clone(&last),
    };
    let mut upstream = TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + since + idle;
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(agent, error = %e, "websocket closed");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                let quiet = start.elapsed().saturating_sub(
                    Duration::from_millis(last.load(Ordering::Relaxed)),
                );
                if quiet >= idle {
                    tracing::debug!(agent, "websocket idle timeout");
                    // Dropping both ends closes both connections.
                    return;
                }
            }
        }
    }
}

/// An I/O wrapper that notes when bytes last moved either way.
struct Activity<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
