//! Bodies: reading the rest of a request a client is still sending when
//! it is answered early ([`drain`]), and passing an upstream's answer on
//! frame by frame with an idle timeout ([`Streamed`]) — the provider
//! proxy's usage tap and SSE keep-alive, and an agent's revocation cut,
//! are [`Hooks`] of the one wrapper.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// What a body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest unread request body read before an early refusal is sent, and
/// how long that may take.
pub const DRAIN_LIMIT: usize = 64 * 1024;
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads and discards up to `limit` bytes of `body` for at most `within`:
/// what a client is still sending when it is answered early (a refusal,
/// an upstream error), so an HTTP/2 client gets the answer rather than a
/// stream reset after it.
pub async fn drain<B>(body: B, limit: usize, within: Duration)
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, limit);
    let _ = tokio::time::timeout(within, http_body_util::BodyExt::collect(limited)).await;
}

/// What a [`Streamed`] body does besides passing frames on. Every method
/// has a default that does nothing.
pub trait Hooks: Unpin {
    /// Polled before each poll of the upstream: `Ready` ends the stream
    /// with that error (an agent's caller whose credential was revoked).
    fn poll_cut(&mut self, _cx: &mut Context<'_>) -> Poll<BoxError> {
        Poll::Pending
    }

    /// A data frame passes.
    fn data(&mut self, _data: &Bytes) {}

    /// Whether [`Hooks::reset`] wants to hear of every frame.
    fn timed(&self) -> bool {
        false
    }

    /// A frame passed at `now` (only when [`Hooks::timed`]).
    fn reset(&mut self, _now: Instant) {}

    /// The upstream is silent (and not yet idle for too long): a frame to
    /// send meanwhile, if any. Registers its own wake-up otherwise.
    fn poll_quiet(&mut self, _cx: &mut Context<'_>) -> Option<Bytes> {
        None
    }

    /// The stream ended, or the body was dropped before it did (a client
    /// that went away); called once.
    fn end(&mut self) {}
}

/// No hooks: frames and the idle timeout only.
impl Hooks for () {}

/// An upstream's body passed on frame by frame, failed with `idle_error`
/// after `idle` without a frame, with `hooks` told of what passes.
pub struct Streamed<B, H: Hooks> {
    inner: B,
    idle: Duration,
    idle_error: &'static str,
    /// The idle deadline, made the first time the upstream keeps us
    /// waiting: a body that arrives with its head (most non-streamed
    /// answers) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    hooks: H,
    ended: bool,
}

impl<B, H: Hooks> Streamed<B, H> {
    pub fn new(inner: B, idle: Duration, idle_error: &'static str, hooks: H) -> Self {
        Streamed {
            inner,
            idle,
            idle_error,
            timer: None,
            hooks,
            ended: false,
        }
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.hooks.end();
        }
    }
}

impl<B, H> Body for Streamed<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Hooks,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(e) = this.hooks.poll_cut(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hooks.data(data);
                }
                if this.timer.is_some() || this.hooks.timed() {
                    let now = Instant::now();
                    if let Some(timer) = this.timer.as_mut() {
                        timer.as_mut().reset(now + this.idle);
                    }
                    this.hooks.reset(now);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(this.idle_error.into())));
                }
                match this.hooks.poll_quiet(cx) {
                    Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    None => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, H: Hooks> Drop for Streamed<B, H> {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts data bytes and ends.
    #[derive(Default)]
    struct Count {
        bytes: Arc<AtomicUsize>,
        ends: Arc<AtomicUsize>,
    }

    impl Hooks for Count {
        fn data(&mut self, data: &Bytes) {
            self.bytes.fetch_add(data.len(), Ordering::SeqCst);
        }
        fn end(&mut self) {
            self.ends.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Chunks = StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn chunks(parts: &'static [&'static str], then_wait: bool) -> Chunks {
        use futures_util::StreamExt;
        let done = futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))),
        );
        let tail = futures_util::stream::pending();
        StreamBody::new(if then_wait {
            done.chain(tail).boxed()
        } else {
            done.boxed()
        })
    }

    #[tokio::test]
    async fn frames_pass_and_the_end_is_seen_once() {
        let hooks = Count::default();
        let (bytes, ends) = (Arc::clone(&hooks.bytes), Arc::clone(&hooks.ends));
        let body = Streamed::new(
            chunks(&["ab", "cde"], false),
            Duration::from_secs(5),
            "idle",
            hooks,
        );
        let all = body.collect().await.expect("body").to_bytes();
        assert_eq!(all, "abcde");
        assert_eq!(bytes.load(Ordering::SeqCst), 5);
        assert_eq!(ends.load(Ordering::SeqCst), 1, "ended, then dropped: once");
    }

    #[tokio::test]
    async fn a_silent_upstream_fails_after_the_idle_time_and_dropping_ends() {
        let hooks = Count::default();
        let ends = Arc::clone(&hooks.ends);
        let idle = Duration::from_millis(50);
        let mut body = Streamed::new(chunks(&["x"], true), idle, "idle", hooks);
        let started = std::time::Instant::now();
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "x");
        let err = body.frame().await.expect("frame").expect_err("idle");
        assert_eq!(err.to_string(), "idle");
        assert!(started.elapsed() >= idle);
        assert_eq!(ends.load(Ordering::SeqCst), 0);
        drop(body);
        assert_eq!(ends.load(Ordering::SeqCst), 1, "a dropped body ends too");
    }

    /// A cut ends the stream at once, before the upstream is polled.
    struct Cut;

    impl Hooks for Cut {
        fn poll_cut(&mut self, _: &mut Context<'_>) -> Poll<BoxError> {
            Poll::Ready("revoked".into())
        }
    }

    #[tokio::test]
    async fn a_cut_ends_the_stream() {
        let mut body = Streamed::new(chunks(&["x"], false), Duration::from_secs(5), "idle", Cut);
        let err = body.frame().await.expect("frame").expect_err("cut");
        assert_eq!(err.to_string(), "revoked");
    }

    #[tokio::test]
    async fn draining_stops_at_the_limit() {
        // A body that never ends: drained for at most the time given.
        let started = std::time::Instant::now();
        drain(chunks(&["abc"], true), 1024, Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
