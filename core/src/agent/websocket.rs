//! A WebSocket through an agent route: once the backend has answered 101
//! and the client has been told so, both upgraded connections are spliced
//! byte for byte until either side closes or nothing has moved for the
//! agent's `idle_timeout`.
//!
//! A WebSocket lives as long as its credential, not longer
//! ([`crate::auth::lifetime`]): once the credential no longer opens this agent,
//! the client gets a close frame (1008, "credential revoked") when the
//! stream is between frames, and both connections are dropped.
//!
//! Only HTTP/1.1 upgrades are supported; WebSocket over HTTP/2 (RFC 8441
//! extended CONNECT) is refused by the route with a clear error.

use crate::auth::lifetime::Revoked;
use crate::net::wsframe;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// The close frame sent when the credential ends: 1008 (policy
/// violation), RFC 6455 §7.4.1, unmasked (server to client).
const REVOKED_CLOSE: &[u8] = b"\x88\x14\x03\xf0credential revoked";

/// Why the splice ended.
enum End {
    Closed,
    Idle,
    Revoked,
}

/// Splices the client's and the backend's upgraded connections.
pub async fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    agent: &str,
    mut revoked: Revoked,
) {
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
        frames: FrameCursor::default(),
    };
    let mut upstream = TokioIo::new(upstream);
    let end = {
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
                    break End::Closed;
                }
                () = tokio::time::sleep_until(deadline) => {
                    let quiet = start.elapsed().saturating_sub(
                        Duration::from_millis(last.load(Ordering::Relaxed)),
                    );
                    if quiet >= idle {
                        break End::Idle;
                    }
                }
                () = &mut revoked => break End::Revoked,
            }
        }
    };
    match end {
        End::Closed => {}
        End::Idle => tracing::debug!(agent, "websocket idle timeout"),
        End::Revoked => {
            tracing::info!(agent, "websocket closed: its credential was revoked");
            // A close frame only between frames (else it would corrupt the
            // one being relayed); either way both connections are dropped.
            if client.frames.at_boundary() {
                let close = async {
                    client.inner.write_all(REVOKED_CLOSE).await?;
                    client.inner.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
            }
        }
    }
    // Dropping both ends closes both connections.
}

/// Where the backend-to-client byte stream is in its WebSocket framing
/// (RFC 6455 §5.2, read by [`wsframe::Reader`]), so a frame of our own is
/// inserted only between two.
#[derive(Debug, Default)]
struct FrameCursor(wsframe::Reader);

impl FrameCursor {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (used, _) = self.0.next(data);
            data = &data[used..];
        }
    }

    fn at_boundary(&self) -> bool {
        self.0.at_boundary()
    }
}

/// An I/O wrapper that notes when bytes last moved either way.
struct Activity<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
    /// Framing of what was written to `inner` (backend to client).
    frames: FrameCursor,
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
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.frames.feed(&buf[..n.min(buf.len())]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_tracked_across_writes() {
        assert!(FrameCursor::default().at_boundary());
        // A short text frame, then a 300-byte one (16-bit length), split
        // at awkward places.
        let mut stream = vec![0x81, 0x03, b'a', b'b', b'c'];
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        for cut in [1, 2, 5, 6, 8, 9, 100] {
            let mut c = FrameCursor::default();
            c.feed(&stream[..cut]);
            assert!(!c.at_boundary() || cut == 5, "cut {cut}");
            c.feed(&stream[cut..]);
            assert!(c.at_boundary(), "cut {cut}");
        }
        // 64-bit length and a masked header.
        let mut c = FrameCursor::default();
        c.feed(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 2, 1]);
        assert!(!c.at_boundary());
        c.feed(&[2, 0x81, 0x81, 1, 2, 3, 4]);
        assert!(!c.at_boundary());
        c.feed(&[9]);
        assert!(c.at_boundary());
        // Our close frame is a well-formed frame with code 1008.
        let mut c = FrameCursor::default();
        c.feed(REVOKED_CLOSE);
        assert!(c.at_boundary());
        assert_eq!(usize::from(REVOKED_CLOSE[1]), REVOKED_CLOSE.len() - 2);
        assert_eq!(
            u16::from_be_bytes([REVOKED_CLOSE[2], REVOKED_CLOSE[3]]),
            1008
        );
    }
}
