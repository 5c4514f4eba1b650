//! WebSocket framing (RFC 6455 §5.2), read as the bytes pass.
//!
//! WebSockets are relayed byte for byte (nothing is re-encoded, whole
//! messages are never held back), but a relay still has to know where it
//! is in the framing: to insert a close frame of its own only between two
//! frames, to refuse a message over a size limit before forwarding it, and
//! to read the few server events that carry usage. This is the one reader
//! of that framing; it parses untrusted bytes, so it has a fuzz target
//! (`core/fuzz/fuzz_targets/ws_frames.rs`) asserting that any split of a
//! stream yields the same frames.
//!
//! - [`parse_header`]: a complete frame header, or "need more";
//! - [`Reader`]: a stream cut anywhere, turned into [`Event`]s (headers
//!   and payload pieces) without copying payload bytes;
//! - [`Messages`]: the message-level rules a relay enforces (continuation
//!   frames only inside a message, control frames short and whole, a
//!   message's size);
//! - [`close_frame`], [`unmask`], [`close_code`]: building and reading
//!   close frames.

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;

/// Opcodes (RFC 6455 §5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close codes a relay sends itself (RFC 6455 §7.4.1).
pub const PROTOCOL_ERROR: u16 = 1002;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const GOING_AWAY: u16 = 1001;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1–3 (bits 6–4 of the first byte); non-zero only with an
    /// extension, and a relay that offers none refuses them.
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

impl FrameHeader {
    /// A control frame (close, ping, pong, or a reserved control opcode).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// What a frame header may not be (each one a protocol error, 1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("reserved bits set without an extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("a control frame longer than 125 bytes or fragmented")]
    BadControl,
    #[error("a 64-bit length with its top bit set")]
    LengthTooLong,
    #[error("a continuation frame outside a message")]
    StrayContinuation,
    #[error("a new message before the previous one ended")]
    UnfinishedMessage,
    #[error("a frame from a client must be masked, one from a server must not")]
    Masking,
}

/// The header at the start of `h`, and its length in bytes; `None` while
/// `h` does not hold all of it yet. Any bytes parse (the checks are
/// [`check`]'s), so a relay can always find the next frame's start.
pub fn parse_header(h: &[u8]) -> Option<(usize, FrameHeader)> {
    let (&b0, &b1) = (h.first()?, h.get(1)?);
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let masked = b1 & 0x80 != 0;
    let n = 2 + ext + if masked { 4 } else { 0 };
    if h.len() < n {
        return None;
    }
    let len = match b1 & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        l => u64::from(l),
    };
    let mask = masked.then(|| [h[n - 4], h[n - 3], h[n - 2], h[n - 1]]);
    Some((
        n,
        FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            mask,
            len,
        },
    ))
}

/// The frame-level rules (no extension negotiated): `from_client` frames
/// must be masked, a server's must not.
pub fn check(h: &FrameHeader, from_client: bool) -> Result<(), Violation> {
    if h.rsv != 0 {
        return Err(Violation::ReservedBits);
    }
    if !matches!(h.opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(Violation::ReservedOpcode(h.opcode));
    }
    if h.is_control() && (!h.fin || h.len > 125) {
        return Err(Violation::BadControl);
    }
    if h.len > i64::MAX as u64 {
        return Err(Violation::LengthTooLong);
    }
    if h.mask.is_some() != from_client {
        return Err(Violation::Masking);
    }
    Ok(())
}

/// A piece of the stream, as [`Reader::next`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete header; with `len == 0` the frame is complete too.
    Header(FrameHeader),
    /// Payload bytes as sent (still masked, if the frame is), starting
    /// at `offset` into the frame's payload; `last`: the frame ends here.
    Payload {
        data: &'a [u8],
        offset: u64,
        last: bool,
    },
}

/// Where a byte stream is in its framing; fed any cut of the stream.
#[derive(Debug, Default, Clone)]
pub struct Reader {
    header: [u8; MAX_HEADER],
    have: usize,
    /// The length of the last complete header, still in `header`.
    last: usize,
    /// The frame whose payload is being read, and how much of it is left.
    current: Option<FrameHeader>,
    left: u64,
}

impl Reader {
    /// The next event at the front of `data`, and how many bytes of it
    /// that event used (`0` only for empty `data`). A header's bytes are
    /// gathered inside the reader across calls; payload is handed out in
    /// place.
    pub fn next<'a>(&mut self, data: &'a [u8]) -> (usize, Option<Event<'a>>) {
        if data.is_empty() {
            return (0, None);
        }
        if let Some(h) = self.current {
            let take = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let offset = h.len - self.left;
            self.left -= take as u64;
            let last = self.left == 0;
            if last {
                self.current = None;
            }
            return (
                take,
                Some(Event::Payload {
                    data: &data[..take],
                    offset,
                    last,
                }),
            );
        }
        // Header bytes, one needed length at a time (2, then the rest).
        let mut used = 0;
        loop {
            // `have` is always short of a whole header here: it is reset
            // as soon as one parses.
            let need = header_need(&self.header[..self.have]);
            let take = (need - self.have).min(data.len() - used);
            self.header[self.have..self.have + take].copy_from_slice(&data[used..used + take]);
            self.have += take;
            used += take;
            if let Some((n, h)) = parse_header(&self.header[..self.have]) {
                self.have = 0;
                self.last = n;
                if h.len > 0 {
                    self.current = Some(h);
                    self.left = h.len;
                }
                return (used, Some(Event::Header(h)));
            }
            if used == data.len() {
                return (used, None);
            }
        }
    }

    /// The bytes of the header [`Reader::next`] last handed out, as they
    /// were sent (a relay forwards them once the header is whole).
    pub fn last_header(&self) -> &[u8] {
        &self.header[..self.last]
    }

    /// Between two frames: nothing of a header or payload pending.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.current.is_none()
    }
}

/// How many header bytes are needed, given the first `h.len()` of them.
fn header_need(h: &[u8]) -> usize {
    match h.get(1) {
        None => 2,
        Some(b1) => {
            2 + match b1 & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            } + if b1 & 0x80 != 0 { 4 } else { 0 }
        }
    }
}

/// Message-level state of one direction: which data message is open and
/// how large it is so far.
#[derive(Debug, Default, Clone)]
pub struct Messages {
    /// The opcode of the open message (text or binary).
    open: Option<u8>,
    size: u64,
}

/// What a frame is, once [`Messages::frame`] accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Control(u8),
    /// A data frame of a message of `opcode` (text or binary); `first`:
    /// it opens the message; `fin`: it ends it.
    Data {
        opcode: u8,
        first: bool,
        fin: bool,
    },
}

/// Why a frame was refused at the message level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Protocol(Violation),
    /// The message would exceed the limit (close 1009).
    TooBig,
}

impl Messages {
    /// Accepts (or refuses) the frame `h` of this direction, under a
    /// message size limit of `max` bytes.
    pub fn frame(
        &mut self,
        h: &FrameHeader,
        from_client: bool,
        max: u64,
    ) -> Result<FrameKind, Refusal> {
        check(h, from_client).map_err(Refusal::Protocol)?;
        if h.is_control() {
            return Ok(FrameKind::Control(h.opcode));
        }
        let (opcode, first) = match (h.opcode, self.open) {
            (CONTINUATION, Some(op)) => (op, false),
            (CONTINUATION, None) => return Err(Refusal::Protocol(Violation::StrayContinuation)),
            (_, Some(_)) => return Err(Refusal::Protocol(Violation::UnfinishedMessage)),
            (op, None) => (op, true),
        };
        let size = if first { 0 } else { self.size };
        let size = size.saturating_add(h.len);
        if size > max {
            return Err(Refusal::TooBig);
        }
        if h.fin {
            self.open = None;
            self.size = 0;
        } else {
            self.open = Some(opcode);
            self.size = size;
        }
        Ok(FrameKind::Data {
            opcode,
            first,
            fin: h.fin,
        })
    }
}

/// XORs `data` with `mask`, `data` starting at `offset` into the payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(start + i) % 4];
    }
}

/// A close frame with `code` and `reason` (cut to the 123 bytes a control
/// frame has room for, at a character boundary); masked with `mask` when
/// sent by a client.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let len = 2 + reason.len();
    let mut out = Vec::with_capacity(2 + 4 + len);
    out.push(0x80 | CLOSE);
    let len_byte = u8::try_from(len).unwrap_or(125);
    out.push(len_byte | if mask.is_some() { 0x80 } else { 0 });
    let mut payload = Vec::with_capacity(len);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    if let Some(m) = mask {
        out.extend_from_slice(&m);
        unmask(&mut payload, m, 0);
    }
    out.extend_from_slice(&payload);
    out
}

/// The code of a close frame's (unmasked) payload; `None` for an empty one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `stream` fed in pieces of `cut` bytes: headers, and
    /// the payload bytes concatenated per frame.
    fn frames(stream: &[u8], cut: usize) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut r = Reader::default();
        let mut out: Vec<(FrameHeader, Vec<u8>)> = Vec::new();
        for piece in stream.chunks(cut.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (used, ev) = r.next(rest);
                assert!(used > 0);
                match ev {
                    Some(Event::Header(h)) => out.push((h, Vec::new())),
                    Some(Event::Payload { data, offset, .. }) => {
                        let f = out.last_mut().expect("a header first");
                        assert_eq!(offset, f.1.len() as u64);
                        f.1.extend_from_slice(data);
                    }
                    None => {}
                }
                rest = &rest[used..];
            }
        }
        out
    }

    #[test]
    fn any_cut_yields_the_same_frames() {
        let mut stream = vec![0x81, 0x03, b'a', b'b', b'c'];
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        stream.extend_from_slice(&[0x89, 0x00]);
        stream.extend_from_slice(&close_frame(1000, "bye", Some([1, 2, 3, 4])));
        stream.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 2, 9, 9]);
        let whole = frames(&stream, stream.len());
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[1].1.len(), 300);
        assert_eq!(whole[2].0.opcode, PING);
        for cut in 1..20 {
            assert_eq!(frames(&stream, cut), whole, "cut {cut}");
        }
        let mut close = whole[3].1.clone();
        unmask(&mut close, whole[3].0.mask.expect("masked"), 0);
        assert_eq!(close_code(&close), Some(1000));
        assert_eq!(&close[2..], b"bye");
    }

    #[test]
    fn boundaries_are_known() {
        let mut r = Reader::default();
        assert!(r.at_boundary());
        assert_eq!(r.next(&[0x81]).0, 1);
        assert!(!r.at_boundary());
        let (_, ev) = r.next(&[0x02]);
        assert!(matches!(ev, Some(Event::Header(h)) if h.len == 2));
        assert_eq!(r.last_header(), &[0x81, 0x02]);
        assert!(!r.at_boundary());
        let (_, ev) = r.next(b"hi");
        assert!(matches!(ev, Some(Event::Payload { last: true, .. })));
        assert!(r.at_boundary());
    }

    #[test]
    fn message_rules_and_size() {
        let h = |b0: u8, len: u64, masked: bool| FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0xf,
            mask: masked.then_some([0; 4]),
            len,
        };
        let mut m = Messages::default();
        // Fragmented text: 60 + 40 under 100, with a ping between.
        assert!(matches!(
            m.frame(&h(0x01, 60, true), true, 100),
            Ok(FrameKind::Data {
                first: true,
                fin: false,
                ..
            })
        ));
        assert_eq!(
            m.frame(&h(0x89, 0, true), true, 100),
            Ok(FrameKind::Control(PING))
        );
        assert_eq!(
            m.frame(&h(0x02, 1, true), true, 100),
            Err(Refusal::Protocol(Violation::UnfinishedMessage))
        );
        let mut m2 = m.clone();
        assert!(matches!(
            m.frame(&h(0x80, 40, true), true, 100),
            Ok(FrameKind::Data {
                opcode: TEXT,
                first: false,
                fin: true
            })
        ));
        assert_eq!(
            m2.frame(&h(0x80, 41, true), true, 100),
            Err(Refusal::TooBig)
        );
        assert_eq!(
            m.frame(&h(0x80, 1, true), true, 100),
            Err(Refusal::Protocol(Violation::StrayContinuation))
        );
        // Frame-level checks.
        for (b0, len, masked, want) in [
            (0xC1, 1, true, Violation::ReservedBits),
            (0x83, 1, true, Violation::ReservedOpcode(3)),
            (0x09, 1, true, Violation::BadControl),
            (0x88, 126, true, Violation::BadControl),
            (0x81, 1, false, Violation::Masking),
        ] {
            assert_eq!(
                Messages::default().frame(&h(b0, len, masked), true, 1000),
                Err(Refusal::Protocol(want))
            );
        }
        assert_eq!(
            check(&h(0x81, 1, true), false),
            Err(Violation::Masking),
            "a server's frames are not masked"
        );
    }

    #[test]
    fn close_frames_are_well_formed() {
        let f = close_frame(4000, &"é".repeat(100), None);
        let (n, h) = parse_header(&f).expect("header");
        assert_eq!((h.opcode, h.fin, n), (CLOSE, true, 2));
        assert!(h.len <= 125);
        assert_eq!(close_code(&f[n..]), Some(4000));
        assert!(std::str::from_utf8(&f[n + 2..]).is_ok());
        assert_eq!(check(&h, false), Ok(()));
    }
}
