//! `net::wsframe`, the WebSocket framing every realtime session and agent
//! WebSocket is read with, and `proxy::realtime::read_event`, the reader
//! of the upstream's usage events.
//!
//! Input: one byte choosing how the stream is cut, then the stream.
//! Properties:
//! - any cut of the stream yields the same frames (headers, and payload
//!   bytes per frame) as the stream read whole, with payload offsets that
//!   follow on, and never more payload than a header announced;
//! - each header handed out is what `parse_header` reads from the raw
//!   header bytes the reader keeps (`last_header`), which are exactly
//!   as long as it says;
//! - `Messages` accepts a data frame only while the message stays within
//!   the limit, and never panics on any order of frames;
//! - `read_event` never panics, and audio counts never exceed their totals.
#![no_main]

use latchkey_core::net::wsframe::{self, Event, FrameHeader, Messages, Reader};
use latchkey_core::proxy::realtime::{RealtimeEvent, read_event};
use libfuzzer_sys::fuzz_target;

type Frames = Vec<(FrameHeader, Vec<u8>)>;

fn read(stream: &[u8], cut: impl Fn(usize) -> usize) -> Frames {
    let mut r = Reader::default();
    let mut out: Frames = Vec::new();
    let mut at = 0;
    let mut piece_no = 0;
    while at < stream.len() {
        let n = cut(piece_no).clamp(1, stream.len() - at);
        piece_no += 1;
        let mut rest = &stream[at..at + n];
        at += n;
        while !rest.is_empty() {
            let (used, ev) = r.next(rest);
            assert!(used > 0 && used <= rest.len(), "used {used} of {}", rest.len());
            match ev {
                Some(Event::Header(h)) => {
                    let raw = r.last_header();
                    let (len, again) = wsframe::parse_header(raw).expect("kept header parses");
                    assert_eq!(len, raw.len());
                    assert_eq!(again, h);
                    out.push((h, Vec::new()));
                }
                Some(Event::Payload { data, offset, last }) => {
                    let f = out.last_mut().expect("payload after a header");
                    assert_eq!(offset, f.1.len() as u64, "offsets follow on");
                    f.1.extend_from_slice(data);
                    assert!(f.1.len() as u64 <= f.0.len, "more payload than announced");
                    assert_eq!(last, f.1.len() as u64 == f.0.len);
                }
                None => assert_eq!(used, rest.len(), "no event only at the end"),
            }
            rest = &rest[used..];
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = read(stream, |_| usize::MAX);
    let cut = read(stream, |i| usize::from(seed.rotate_left(i as u32) % 17) + 1);
    assert_eq!(whole, cut, "the cut changed the frames");

    let max = u64::from(seed) * 64;
    for from_client in [true, false] {
        let mut m = Messages::default();
        let mut open = 0u64;
        for (h, payload) in &whole {
            if let Ok(wsframe::FrameKind::Data { first, fin, .. }) = m.frame(h, from_client, max) {
                open = if first { h.len } else { open + h.len };
                assert!(open <= max, "a message over the limit was accepted");
                if fin {
                    open = 0;
                }
                if h.mask.is_none() && first && fin {
                    if let Some(RealtimeEvent::Usage(u)) = read_event(payload) {
                        assert!(u.audio_input_tokens <= u.input_tokens);
                        assert!(u.audio_output_tokens <= u.output_tokens);
                    }
                }
            }
        }
    }
    let _ = read_event(stream);
});
