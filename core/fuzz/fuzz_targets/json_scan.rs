//! `proxy::json_scan`, the one-pass scanner usage accounting reads every
//! upstream response with, differentially against `serde_json`.
//!
//! Properties:
//! - whenever `serde_json` reads the bytes as one object, the scanner
//!   accepts them and hands out exactly its members: keys (decoded) and
//!   values (each parsed on its own) equal serde's, the last of a repeated
//!   key winning as in serde;
//! - every value handed out is non-empty and has no surrounding whitespace;
//! - `count` agrees with serde's `u64` on what it accepts, and accepts every
//!   plainly written integer serde reads as a `u64`; `string` agrees with
//!   serde's `String` on every string token serde reads.
#![no_main]

use latchkey_core::fuzzing::{json_count, json_members, json_string};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn check_value(v: &[u8]) {
    assert!(!v.is_empty(), "empty value");
    assert!(
        !v[0].is_ascii_whitespace() && !v[v.len() - 1].is_ascii_whitespace(),
        "value with surrounding whitespace: {:?}",
        String::from_utf8_lossy(v)
    );
    if let Some(n) = json_count(v) {
        assert_eq!(
            serde_json::from_slice::<u64>(v).ok(),
            Some(n),
            "count {v:?}"
        );
    }
    if v.iter().all(u8::is_ascii_digit)
        && let Ok(n) = serde_json::from_slice::<u64>(v)
    {
        assert_eq!(json_count(v), Some(n), "count {v:?}");
    }
    if v[0] == b'"'
        && let Ok(s) = serde_json::from_slice::<String>(v)
    {
        assert_eq!(json_string(v), Some(s), "string {v:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut seen: Vec<(&[u8], &[u8])> = Vec::new();
    let ok = json_members(data, |k, v| seen.push((k, v)));
    for (_, v) in &seen {
        check_value(v);
    }
    // Values handed out alone are what `count`/`string` are used on.
    check_value_if_nonempty(data);
    let Ok(Value::Object(reference)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    assert!(ok, "serde reads an object, the scanner refused it");
    let mut mine = Map::new();
    for (k, v) in seen {
        let mut quoted = Vec::with_capacity(k.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(k);
        quoted.push(b'"');
        let key: String = serde_json::from_slice(&quoted).expect("serde read this key");
        let value: Value = serde_json::from_slice(v).expect("serde read this value");
        mine.insert(key, value);
    }
    assert_eq!(mine, reference);
});

fn check_value_if_nonempty(data: &[u8]) {
    if let (Some(f), Some(l)) = (data.first(), data.last())
        && !f.is_ascii_whitespace()
        && !l.is_ascii_whitespace()
    {
        check_value(data);
    }
}
