//! Usage accounting's readers of upstream responses (`proxy::usage`):
//! plain JSON and Server-Sent Events, fed as the network delivers them.
//!
//! Properties:
//! - the result does not depend on how the body was cut into chunks;
//! - a JSON body that `serde_json` reads as an object gives exactly what a
//!   full parse gives (the reference below, the implementation before the
//!   scanner); an SSE body gives what the reference gives applied to each
//!   `data:` line in turn;
//! - a model name is at most 128 characters and never holds a NUL;
//! - a usage row's key (`UsageKey`) round-trips through its encoding.
#![no_main]

use latchkey_core::proxy::usage::{Usage, UsageKey, UsageParser, reference_usage as reference};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn parse(ct: &str, body: &[u8], cuts: &[usize]) -> Usage {
    let mut p = UsageParser::for_content_type(Some(ct));
    let mut at = 0;
    for &c in cuts {
        let c = c.min(body.len()).max(at);
        p.feed(&Bytes::copy_from_slice(&body[at..c]));
        at = c;
    }
    p.feed(&Bytes::copy_from_slice(&body[at..]));
    p.finish()
}

/// Whether serde reads `json` as an object (else the scanner may see more
/// than the reference, by design: it does not check scalars' spelling).
fn is_object(json: &[u8]) -> bool {
    matches!(serde_json::from_slice::<Value>(json), Ok(Value::Object(_)))
}

fn data_lines(body: &[u8]) -> Vec<&[u8]> {
    body.split(|&b| b == b'\n')
        .filter_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let d = l.strip_prefix(b"data:")?.trim_ascii_start();
            (d.first() == Some(&b'{')).then_some(d)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, body)) = data.split_first() else {
        return;
    };
    let sse = head & 1 == 1;
    let ct = if sse {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    // Chunk boundaries from the header byte: one-byte chunks, a few cuts,
    // or the whole body at once.
    let whole = parse(ct, body, &[]);
    let step = usize::from(head >> 1).max(1);
    let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
    assert_eq!(parse(ct, body, &cuts), whole, "chunking changed the result");
    if body.len() <= 4096 {
        let ones: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            parse(ct, body, &ones),
            whole,
            "byte-by-byte changed the result"
        );
    }
    if let Some(m) = &whole.model {
        assert!(m.chars().count() <= 128, "model name too long");
        assert!(!m.contains('\0'), "NUL in a model name");
    }
    let mut expected = Usage::default();
    if sse {
        let lines = data_lines(body);
        if lines.iter().all(|l| is_object(l)) {
            for l in lines {
                reference(l, &mut expected);
            }
            assert_eq!(whole, expected, "SSE differs from the reference");
        }
    } else if is_object(body) {
        reference(body, &mut expected);
        assert_eq!(whole, expected, "JSON differs from the reference");
    }
    // A row key made of what a response named round-trips.
    if let Some(model) = whole.model {
        let key = UsageKey {
            day: "2026-12-07".into(),
            key_id: "Ab3dEf9h".into(),
            provider: "openai".into(),
            model,
        };
        assert_eq!(UsageKey::decode(&key.encode()), Some(key));
    }
});
