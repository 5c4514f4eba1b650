//! Connection limits: how many connections may be open (in all, and from
//! one client address), and when an open connection counts as idle.
//!
//! Every accepted connection takes a [`ConnPermit`] from the shared
//! [`ConnTracker`] before anything else happens; one over a cap is closed at
//! once (counted in `refused`). The permit lives inside the connection's I/O
//! object, so it is released when the socket is, also after an upgrade
//! hands the socket to a WebSocket task. Caps are per address, with IPv6
//! folded to its /64 (one host usually owns a whole /64).
//!
//! [`Activity`] counts a connection's requests in flight: a request is in
//! flight from the moment the service sees it until its response body has
//! ended or been dropped, so a streaming response (SSE, a proxied stream,
//! a 101 upgrade's hand-over) keeps the connection busy. The serve loop
//! closes a connection once that count has been zero for the idle timeout.
//! Per request this costs two atomic adds and a clock read; the per-address
//! map is locked only on accept and on close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// The caps and the idle timeout (`server.max_connections`,
/// `server.max_connections_per_ip`, `server.idle_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_per_ip: 256,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ConnLimits {
    /// Lowers the caps so that connections cannot use up the process's
    /// file descriptors (`fd_limit`, the soft `RLIMIT_NOFILE`): a quarter
    /// (at least 32) stays for the database, logs and upstream sockets.
    /// The per-address cap shrinks in the same ratio, so one client still
    /// cannot take every slot.
    pub fn fit_to_fd_limit(self, fd_limit: Option<u64>) -> Self {
        let Some(fds) = fd_limit else { return self };
        let fds = usize::try_from(fds).unwrap_or(usize::MAX);
        let usable = fds.saturating_sub((fds / 4).max(32)).max(1);
        if usable >= self.max_connections {
            return self;
        }
        let per_ip = (self.max_per_ip as u128 * usable as u128 / self.max_connections as u128)
            .clamp(1, usable as u128);
        Self {
            max_connections: usable,
            max_per_ip: usize::try_from(per_ip).unwrap_or(usable),
            ..self
        }
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits`
/// (Linux); `None` where that cannot be read or is unlimited.
pub fn fd_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Shared by every listener of a server: the open-connection counts.
#[derive(Debug)]
pub struct ConnTracker {
    limits: ConnLimits,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections closed at once because a cap was reached.
    pub refused: Arc<AtomicU64>,
    /// Connections closed because they were idle.
    pub idle_closed: Arc<AtomicU64>,
}

impl ConnTracker {
    pub fn new(limits: ConnLimits) -> Self {
        Self {
            limits,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refused: Arc::new(AtomicU64::new(0)),
            idle_closed: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A permit for a new connection from `ip`, or `None` (counted) when
    /// the global or the per-address cap is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let key = address_key(ip);
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = map.get(&key).copied().unwrap_or(0);
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections
            || from_ip >= self.limits.max_per_ip
        {
            drop(map);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        map.insert(key, from_ip + 1);
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(ConnPermit {
            tracker: Arc::clone(self),
            key,
        })
    }
}

/// The address a per-address cap counts against: IPv4 (also IPv4-mapped
/// IPv6) as is, IPv6 by its /64 prefix.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// One open connection's slot; released on drop.
#[derive(Debug)]
pub struct ConnPermit {
    tracker: Arc<ConnTracker>,
    key: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut map = self
            .tracker
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
        self.tracker.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's requests in flight, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the last request ended.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// Marks a request as in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// How long the connection has had no request in flight; `None` while
    /// one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(since))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The time first: a checker that sees zero in flight must also see
        // when that began.
        self.0
            .idle_since_ms
            .fetch_max(self.0.elapsed_ms(), Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it has ended
/// (or is dropped, e.g. when the client resets the stream).
pub struct TrackedBody {
    inner: Body,
    guard: Option<InFlight>,
}

impl TrackedBody {
    pub fn new(inner: Body, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(res, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn limits(max: usize, per_ip: usize) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            max_per_ip: per_ip,
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn per_address_and_global_caps() {
        let t = Arc::new(ConnTracker::new(limits(3, 2)));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = t.try_acquire(a).expect("a1");
        let a2 = t.try_acquire(a).expect("a2");
        assert!(t.try_acquire(a).is_none(), "third from a");
        let b1 = t.try_acquire(b).expect("b1");
        assert!(t.try_acquire(b).is_none(), "global cap");
        assert_eq!(t.refused.load(Ordering::Relaxed), 2);
        assert_eq!(t.open(), 3);
        drop(a1);
        let _a3 = t.try_acquire(a).expect("slot freed");
        drop((a2, b1));
        assert_eq!(t.open(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = Arc::new(ConnTracker::new(limits(10, 1)));
        let _x = t
            .try_acquire("2001:db8:1:2::1".parse().expect("ip"))
            .expect("first");
        assert!(
            t.try_acquire("2001:db8:1:2:ffff::9".parse().expect("ip"))
                .is_none(),
            "same /64"
        );
        let _y = t
            .try_acquire("2001:db8:1:3::1".parse().expect("ip"))
            .expect("other /64");
        let _v4 = t.try_acquire("192.0.2.1".parse().expect("ip")).expect("v4");
        assert!(
            t.try_acquire("::ffff:192.0.2.1".parse().expect("ip"))
                .is_none(),
            "mapped v4 is the same client"
        );
    }

    #[test]
    fn caps_shrink_to_the_fd_limit() {
        let l = ConnLimits::default();
        assert_eq!(l.fit_to_fd_limit(None), l);
        assert_eq!(l.fit_to_fd_limit(Some(1 << 20)), l);
        let small = l.fit_to_fd_limit(Some(256));
        assert_eq!(small.max_connections, 192);
        assert_eq!(small.max_per_ip, 12);
        let tiny = l.fit_to_fd_limit(Some(10));
        assert_eq!((tiny.max_connections, tiny.max_per_ip), (1, 1));
        if cfg!(target_os = "linux") {
            assert!(fd_soft_limit().is_some_and(|n| n > 0), "read from /proc");
        }
    }

    /// A body fed through a channel: a stream that ends when the sender does.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    async fn next_frame(body: &mut TrackedBody) -> Option<Result<Frame<Bytes>, axum::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn in_flight_until_the_body_ends() {
        let act = Activity::new();
        assert!(act.idle_for().is_some());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = TrackedBody::new(Body::new(ChannelBody(rx)), act.begin());
        assert!(act.idle_for().is_none(), "busy while streaming");
        tx.send(Bytes::from_static(b"x")).await.expect("send");
        assert!(next_frame(&mut body).await.is_some());
        assert!(act.idle_for().is_none(), "still streaming");
        drop(tx);
        assert!(next_frame(&mut body).await.is_none());
        let idle = act.idle_for().expect("idle after the end");
        assert!(idle < Duration::from_secs(1), "{idle:?}");
        // Dropped without being read to the end (a reset stream).
        let body = TrackedBody::new(Body::empty(), act.begin());
        assert!(act.idle_for().is_none());
        drop(body);
        assert!(act.idle_for().is_some());
    }
}
