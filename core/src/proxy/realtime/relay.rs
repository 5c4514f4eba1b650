//! The relay of one realtime session: frames spliced both ways as they
//! arrive, read by [`wsframe`] on the way so that
//!
//! - a message over `proxy.realtime_max_message_bytes` is never forwarded
//!   (its header is held back until it is whole, then refused: 1009);
//! - a frame that breaks RFC 6455 is never forwarded (1002);
//! - a close frame passes through unchanged (its code with it), and after
//!   it nothing more is read from that side;
//! - a close of our own (revoked, ended, limits) goes out only between two
//!   frames, never inside one;
//! - the usage events in the upstream's text messages are read
//!   ([`super::meter`]).
//!
//! Bytes are copied once, in place, inside one buffer per direction
//! ([`BUF`] + [`wsframe::MAX_HEADER`] bytes): a header is forwarded when it
//! is complete, payload as it comes. Nothing waits for a whole message.

use super::meter::Meter;
use super::{End, Limits};
use crate::auth::lifetime::Revoked;
use crate::net::wsframe::{self, Event, FrameKind, Refusal};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Bytes read at once from either side.
const BUF: usize = 8 * 1024;
/// Room kept before the read bytes for a header begun in an earlier read.
const HOLD: usize = wsframe::MAX_HEADER;
/// How long the other side has to answer a close that passed through.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long our own closes may take to go out before both connections
/// are dropped anyway (a frame in flight is finished first).
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The close the upstream gets whenever Latchkey ends a session.
const UPSTREAM_CLOSE: (u16, &str) = (wsframe::GOING_AWAY, "closed by the proxy");

/// Which way a pump moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToUpstream,
    ToClient,
}

/// Why a pump stopped.
#[derive(Debug)]
enum PumpEnd {
    /// It forwarded its side's close frame.
    Closed(Option<u16>),
    /// Its side's connection ended (or failed) without a close frame.
    Lost,
    /// Its side sent what may not pass: `End` for the client.
    Refused(End),
    /// It sent our close after a stop.
    Stopped,
    /// Writing to the other side failed.
    WriteFailed,
}

/// When bytes last moved, in milliseconds since the session started.
struct Activity {
    start: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Duration {
        Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// What a relay needs besides the two connections.
pub(super) struct Relay {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
    pub limits: Limits,
    /// An administrator ended the session.
    pub ended: watch::Receiver<Option<End>>,
    /// The key no longer passes (revoked, expired, owner disabled, vault
    /// sealed).
    pub revoked: Revoked,
    pub meter: Meter,
    /// For the log.
    pub provider: String,
    pub session: String,
}

/// Runs the session to its end; usage is recorded by the meter as it
/// goes and on the way out.
pub(super) async fn run(r: Relay) {
    let Relay {
        client,
        upstream,
        limits,
        mut ended,
        mut revoked,
        mut meter,
        provider,
        session,
    } = r;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(provider = %provider, error = %e, "realtime upgrade failed");
            return;
        }
    };
    let (client_rd, client_wr) = tokio::io::split(TokioIo::new(client));
    let (up_rd, up_wr) = tokio::io::split(TokioIo::new(upstream));
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last: AtomicU64::new(0),
    });
    // The pumps borrow the meter; they are dropped (closing both
    // connections) before it is finished.
    let why = {
        let (stop_tx, stop_rx) = watch::channel(None::<End>);
        let max = limits.max_message;
        let up = pump(
            client_rd,
            up_wr,
            Dir::ToUpstream,
            stop_rx.clone(),
            max,
            &activity,
            None,
        );
        let down = pump(
            up_rd,
            client_wr,
            Dir::ToClient,
            stop_rx,
            max,
            &activity,
            Some(&mut meter),
        );
        tokio::pin!(up, down);
        let session_end = activity.start + limits.max_session;
        let far = activity.start + Duration::from_secs(86400 * 365);
        let mut grace: Option<Instant> = None;
        let (mut up_done, mut down_done) = (false, false);
        let mut admin_open = true;
        let mut why: Option<End> = None;
        let stop = |end: End, grace: &mut Option<Instant>, why: &mut Option<End>| {
            if why.is_none() {
                *why = Some(end.clone());
                let _ = stop_tx.send(Some(end));
            }
            let by = Instant::now() + STOP_GRACE;
            *grace = Some(grace.map_or(by, |g| g.min(by)));
        };
        loop {
            let idle_at = activity.start + activity.last() + limits.idle;
            tokio::select! {
                e = &mut up, if !up_done => {
                    up_done = true;
                    match e {
                        PumpEnd::Closed(code) => {
                            tracing::debug!(provider = %provider, session = %session, code, "client closed the session");
                            grace.get_or_insert(Instant::now() + CLOSE_GRACE);
                        }
                        PumpEnd::Refused(end) => stop(end, &mut grace, &mut why),
                        PumpEnd::Lost | PumpEnd::WriteFailed => {
                            stop(End::PEER_GONE, &mut grace, &mut why);
                        }
                        PumpEnd::Stopped => {}
                    }
                }
                e = &mut down, if !down_done => {
                    down_done = true;
                    match e {
                        PumpEnd::Closed(code) => {
                            tracing::debug!(provider = %provider, session = %session, code, "upstream closed the session");
                            grace.get_or_insert(Instant::now() + CLOSE_GRACE);
                        }
                        PumpEnd::Refused(end) => stop(end, &mut grace, &mut why),
                        PumpEnd::Lost => stop(End::UPSTREAM_LOST, &mut grace, &mut why),
                        PumpEnd::WriteFailed => stop(End::PEER_GONE, &mut grace, &mut why),
                        PumpEnd::Stopped => {}
                    }
                }
                () = &mut revoked, if why.is_none() => stop(End::REVOKED, &mut grace, &mut why),
                changed = ended.changed(), if admin_open && why.is_none() => {
                    match changed {
                        Ok(()) => {
                            let end = ended.borrow_and_update().clone();
                            if let Some(end) = end {
                                stop(end, &mut grace, &mut why);
                            }
                        }
                        Err(_) => admin_open = false,
                    }
                }
                // Once stopping, only the pumps and the grace matter.
                () = tokio::time::sleep_until(session_end), if why.is_none() => {
                    stop(End::SESSION_LIMIT, &mut grace, &mut why);
                }
                () = tokio::time::sleep_until(idle_at), if why.is_none() => {
                    if activity.start.elapsed().saturating_sub(activity.last()) >= limits.idle {
                        stop(End::IDLE, &mut grace, &mut why);
                    }
                }
                () = tokio::time::sleep_until(grace.unwrap_or(far)), if grace.is_some() => break,
            }
            if up_done && down_done {
                break;
            }
        }
        why
    };
    let seconds = activity.start.elapsed();
    match &why {
        Some(end) => tracing::info!(
            provider = %provider,
            session = %session,
            code = end.code,
            reason = end.reason,
            secs = seconds.as_secs(),
            "realtime session ended by the proxy"
        ),
        None => tracing::info!(
            provider = %provider,
            session = %session,
            secs = seconds.as_secs(),
            "realtime session closed"
        ),
    }
    meter.finish(seconds);
}

/// Moves frames from `from` to `to` until a close passed, a side ended,
/// something was refused, or a stop was asked for (then our close goes
/// out between two frames).
#[allow(clippy::too_many_arguments)]
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    dir: Dir,
    mut stop: watch::Receiver<Option<End>>,
    max_message: u64,
    activity: &Activity,
    mut meter: Option<&mut Meter>,
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let from_client = dir == Dir::ToUpstream;
    let mut reader = wsframe::Reader::default();
    let mut messages = wsframe::Messages::default();
    let mut buf = vec![0u8; HOLD + BUF];
    // The frame being relayed: its header and kind.
    let mut frame: Option<(wsframe::FrameHeader, FrameKind)> = None;
    let mut close_payload: Vec<u8> = Vec::new();
    let mut stopping: Option<End> = None;
    let mut stop_open = true;
    loop {
        if let Some(end) = &stopping
            && reader.at_boundary()
        {
            return send_close(&mut to, dir, end).await;
        }
        // Biased, the stop first: once the session is ending, bytes that
        // arrived meanwhile must not win the race. Otherwise, under load,
        // the upstream's answer to our own 1001 ("closed by the proxy")
        // could be relayed to the client in place of the session's end
        // (4002, 1008, …).
        let n = tokio::select! {
            biased;
            changed = stop.changed(), if stop_open && stopping.is_none() => {
                match changed {
                    Ok(()) => stopping = stop.borrow_and_update().clone(),
                    Err(_) => stop_open = false,
                }
                continue;
            }
            r = from.read(&mut buf[HOLD..]) => match r {
                Ok(0) | Err(_) => return PumpEnd::Lost,
                Ok(n) => n,
            },
        };
        activity.touch();
        // `w`: the end of what is forwarded so far, at or before `i`.
        let (mut i, mut w) = (HOLD, 0usize);
        let end = HOLD + n;
        let mut outcome: Option<PumpEnd> = None;
        while i < end {
            let (used, ev) = reader.next(&buf[i..end]);
            let ev = match ev {
                None => {
                    i += used;
                    continue;
                }
                Some(Event::Header(h)) => Ok(h),
                Some(Event::Payload { offset, last, .. }) => Err((offset, last)),
            };
            match ev {
                Ok(h) => {
                    let kind = match messages.frame(&h, from_client, max_message) {
                        Ok(k) => k,
                        Err(refusal) => {
                            outcome = Some(PumpEnd::Refused(match refusal {
                                Refusal::TooBig => End::TOO_BIG,
                                Refusal::Protocol(_) => End::PROTOCOL,
                            }));
                            break;
                        }
                    };
                    // The whole header, part of which may have come in an
                    // earlier read (the reader kept it): it fits before
                    // `i + used` thanks to the HOLD room, so the copy never
                    // overtakes the reading.
                    let mut raw = [0u8; wsframe::MAX_HEADER];
                    let hb = reader.last_header().len();
                    raw[..hb].copy_from_slice(reader.last_header());
                    i += used;
                    debug_assert!(w + hb <= i);
                    buf[w..w + hb].copy_from_slice(&raw[..hb]);
                    w += hb;
                    if let (Some(m), FrameKind::Data { opcode, first, .. }) = (meter.as_mut(), kind)
                        && first
                    {
                        m.start_message(opcode);
                    }
                    if h.len == 0 {
                        if let Some(done) = frame_done(kind, &mut close_payload, &mut meter) {
                            outcome = Some(done);
                            break;
                        }
                        if stopping.is_some() {
                            break;
                        }
                    } else {
                        frame = Some((h, kind));
                    }
                }
                Err((offset, last)) => {
                    let Some((h, kind)) = frame else {
                        i += used;
                        continue;
                    };
                    let piece = &buf[i..i + used];
                    match kind {
                        FrameKind::Control(wsframe::CLOSE) => {
                            let mut p = piece.to_vec();
                            if let Some(mask) = h.mask {
                                wsframe::unmask(&mut p, mask, offset);
                            }
                            close_payload.extend_from_slice(&p);
                        }
                        FrameKind::Data { .. } => {
                            if let Some(m) = meter.as_mut() {
                                m.payload(piece);
                            }
                        }
                        FrameKind::Control(_) => {}
                    }
                    buf.copy_within(i..i + used, w);
                    w += used;
                    i += used;
                    if last {
                        frame = None;
                        if let Some(done) = frame_done(kind, &mut close_payload, &mut meter) {
                            outcome = Some(done);
                            break;
                        }
                        if stopping.is_some() {
                            break;
                        }
                    }
                }
            }
        }
        if w > 0 && to.write_all(&buf[..w]).await.is_err() {
            return PumpEnd::WriteFailed;
        }
        if let Some(outcome) = outcome {
            if let PumpEnd::Refused(end) = &outcome {
                // The refused frame was not forwarded: the other side is
                // between frames and gets the proxy's close.
                let _ = send_close(&mut to, dir, end).await;
            }
            return outcome;
        }
    }
}

/// What a finished frame means for the pump: a close ends it (the close
/// code is kept for the log); a message's last frame goes to the meter.
fn frame_done(
    kind: FrameKind,
    close_payload: &mut Vec<u8>,
    meter: &mut Option<&mut Meter>,
) -> Option<PumpEnd> {
    match kind {
        FrameKind::Control(wsframe::CLOSE) => {
            let code = wsframe::close_code(close_payload);
            close_payload.clear();
            Some(PumpEnd::Closed(code))
        }
        FrameKind::Data { fin: true, .. } => {
            if let Some(m) = meter.as_mut() {
                m.end_message();
            }
            None
        }
        _ => None,
    }
}

/// Our close frame to the side `dir` writes to: the client gets the
/// session's end, the upstream "going away" (masked, as a client's frames
/// must be).
async fn send_close<W: AsyncWrite + Unpin>(to: &mut W, dir: Dir, end: &End) -> PumpEnd {
    let frame = match dir {
        Dir::ToClient => wsframe::close_frame(end.code, end.reason, None),
        Dir::ToUpstream => {
            wsframe::close_frame(UPSTREAM_CLOSE.0, UPSTREAM_CLOSE.1, Some(rand::random()))
        }
    };
    let _ = tokio::time::timeout(STOP_GRACE, async {
        to.write_all(&frame).await?;
        to.flush().await
    })
    .await;
    PumpEnd::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn masked(opcode_fin: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![opcode_fin];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        wsframe::unmask(&mut p, mask, 0);
        f.extend_from_slice(&p);
        f
    }

    fn activity() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Runs a client-to-upstream pump over `input` (written in pieces of
    /// `cut` bytes); what the upstream received and how the pump ended.
    async fn pump_client(input: Vec<u8>, cut: usize, max: u64) -> (Vec<u8>, PumpEnd) {
        let (mut client, from) = duplex(1 << 16);
        let (to, mut upstream) = duplex(1 << 16);
        let (_stop_tx, stop_rx) = watch::channel(None::<End>);
        let act = activity();
        let writer = async move {
            for piece in input.chunks(cut) {
                // The pump stops reading after a close or a refusal.
                if client.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            client
        };
        let (end, _client) = tokio::join!(
            pump(from, to, Dir::ToUpstream, stop_rx, max, &act, None),
            writer
        );
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.expect("read");
        (got, end)
    }

    #[tokio::test]
    async fn frames_pass_unchanged_in_any_cut_and_a_close_ends_the_direction() {
        let mut input = masked(0x81, b"hello", [1, 2, 3, 4]);
        input.extend(masked(0x82, &[7u8; 300], [9, 8, 7, 6]));
        input.extend(masked(0x89, b"", [0, 0, 0, 1]));
        let close = masked(0x88, &[0x03, 0xe8, b'o', b'k'], [5, 5, 5, 5]);
        input.extend(&close);
        for cut in [1, 2, 3, 7, 64, 10_000] {
            let mut with_tail = input.clone();
            // Nothing after a close is forwarded.
            with_tail.extend(masked(0x81, b"late", [1, 1, 1, 1]));
            let (got, end) = pump_client(with_tail, cut, 1024).await;
            assert_eq!(got, input, "cut {cut}");
            assert!(
                matches!(end, PumpEnd::Closed(Some(1000))),
                "cut {cut}: {end:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_never_forwarded() {
        let mut input = masked(0x81, b"fits", [1, 2, 3, 4]);
        let ok_len = input.len();
        // Fragmented: 60 + 60 over a limit of 100; the second fragment's
        // header is refused, the first already went.
        input.extend(masked(0x01, &[b'a'; 60], [1, 2, 3, 4]));
        let first_fragment = input.len();
        input.extend(masked(0x80, &[b'b'; 60], [1, 2, 3, 4]));
        for cut in [1, 5, 1000] {
            let (got, end) = pump_client(input.clone(), cut, 100).await;
            assert_eq!(
                &got[..first_fragment],
                &input[..first_fragment],
                "cut {cut}"
            );
            assert!(ok_len < first_fragment);
            // Then only our masked close (1001) to the upstream.
            let rest = &got[first_fragment..];
            let (n, h) = wsframe::parse_header(rest).expect("a close frame");
            assert_eq!((h.opcode, h.len as usize + n), (wsframe::CLOSE, rest.len()));
            let mut p = rest[n..].to_vec();
            wsframe::unmask(&mut p, h.mask.expect("masked"), 0);
            assert_eq!(wsframe::close_code(&p), Some(wsframe::GOING_AWAY));
            assert!(
                matches!(end, PumpEnd::Refused(ref e) if *e == End::TOO_BIG),
                "{end:?}"
            );
        }
        // An unmasked client frame is a protocol error.
        let (got, end) = pump_client(vec![0x81, 0x01, b'x'], 1, 100).await;
        assert_eq!(got[0], 0x88);
        assert!(
            matches!(end, PumpEnd::Refused(ref e) if *e == End::PROTOCOL),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_stop_closes_between_frames_only() {
        let (mut upstream, from) = duplex(1 << 16);
        let (to, mut client) = duplex(1 << 16);
        let (stop_tx, stop_rx) = watch::channel(None::<End>);
        let act = activity();
        let pumping = pump(from, to, Dir::ToClient, stop_rx, 1 << 20, &act, None);
        let driver = async {
            // Half a frame, then the stop: the frame is finished first.
            upstream
                .write_all(&[0x81, 0x05, b'h', b'e'])
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop_tx.send(Some(End::REVOKED)).expect("stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
            upstream.write_all(b"llo").await.expect("write");
            upstream
        };
        let (end, _upstream) = tokio::join!(pumping, driver);
        assert!(matches!(end, PumpEnd::Stopped), "{end:?}");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(&got[..7], &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(
            got[7..],
            wsframe::close_frame(1008, "credential revoked", None)[..]
        );
    }

    #[tokio::test]
    async fn a_stop_wins_over_bytes_already_waiting() {
        // The upstream's answer to our own close is already readable when
        // the pump first looks, and so is the stop (as on a loaded host,
        // where the relay task ran late): the client gets the session's
        // end, never the upstream's "going away". Run many times: with
        // an unbiased choice this would fail about every other run.
        for _ in 0..64 {
            let (mut upstream, from) = duplex(1 << 16);
            let (to, mut client) = duplex(1 << 16);
            let (stop_tx, stop_rx) = watch::channel(None::<End>);
            upstream
                .write_all(&wsframe::close_frame(1001, "closed by the proxy", None))
                .await
                .expect("write");
            stop_tx.send(Some(End::ADMIN)).expect("stop");
            let act = activity();
            let end = pump(from, to, Dir::ToClient, stop_rx, 1 << 20, &act, None).await;
            assert!(matches!(end, PumpEnd::Stopped), "{end:?}");
            drop(upstream);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            assert_eq!(
                got,
                wsframe::close_frame(End::ADMIN.code, End::ADMIN.reason, None)
            );
        }
    }
}
