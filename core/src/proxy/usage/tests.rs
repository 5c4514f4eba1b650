//! Tests of usage parsing and totals.

use super::parse::usage_of;
use super::*;

/// Feeds `body` in pieces of `n` bytes, as a network would.
fn parse(ct: &str, body: &str, n: usize) -> Usage {
    let mut p = UsageParser::for_content_type(Some(ct));
    for c in body.as_bytes().chunks(n) {
        p.feed(&bytes::Bytes::copy_from_slice(c));
    }
    p.finish()
}

fn usage(model: &str, i: u64, o: u64) -> Usage {
    Usage {
        model: Some(model.into()),
        input_tokens: i,
        output_tokens: o,
    }
}

#[test]
fn openai_plain() {
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
    for n in [1, 7, 4096] {
        assert_eq!(
            parse("application/json", body, n),
            usage("gpt-4o-mini", 12, 3)
        );
    }
}

#[test]
fn openai_streamed() {
    let body = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n\
                data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n\
                data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
                data: [DONE]\n\n";
    for n in [1, 5, 64, 10_000] {
        assert_eq!(
            parse("text/event-stream; charset=utf-8", body, n),
            usage("gpt-4o", 9, 2)
        );
    }
}

#[test]
fn anthropic_plain() {
    let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":21,"output_tokens":5}}"#;
    assert_eq!(
        parse("application/json", body, 3),
        usage("claude-sonnet-4-5", 21, 5)
    );
}

#[test]
fn anthropic_streamed() {
    let body = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-haiku-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n\
                event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n\
                event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n\
                event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
    for n in [1, 11, 100_000] {
        assert_eq!(
            parse("text/event-stream", body, n),
            usage("claude-haiku-4-5", 25, 15)
        );
    }
}

#[test]
fn odd_values_are_skipped_and_the_rest_still_counts() {
    let json = |body: &str| parse("application/json", body, 5);
    // A model that is not a string: no model, the counts still count.
    assert_eq!(
        json(r#"{"model":7,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#),
        Usage {
            model: None,
            input_tokens: 3,
            output_tokens: 4
        }
    );
    // Escapes in the model name are decoded, NULs replaced.
    assert_eq!(
        json(r#"{"model":"a\u0000b\"c","usage":{"input_tokens":1,"output_tokens":2}}"#),
        usage("a?b\"c", 1, 2)
    );
    // Counts that are not non-negative integers are not counts.
    for bad in ["1.5", "-1", "\"12\"", "1e3", "null", "18446744073709551616"] {
        let body =
            format!(r#"{{"model":"m","usage":{{"prompt_tokens":{bad},"completion_tokens":2}}}}"#);
        assert_eq!(json(&body), usage("m", 0, 2), "{bad}");
    }
    // `usage` as an array or a number is not read by position.
    assert_eq!(json(r#"{"model":"m","usage":[5,6]}"#), usage("m", 0, 0));
    assert_eq!(json(r#"{"model":"m","usage":5}"#), usage("m", 0, 0));
    // Not JSON, or not an object: nothing, and no panic.
    assert_eq!(json(r#"[{"usage":{"prompt_tokens":1}}]"#), Usage::default());
    assert_eq!(json(r#"{"usage":{"prompt_tokens":1}"#), Usage::default());
    // The message of Anthropic's `message_start` is read one level
    // deep; a message nested in it is not.
    assert_eq!(
        json(
            r#"{"message":{"model":"c","usage":{"input_tokens":9},"message":{"usage":{"input_tokens":99}}}}"#
        ),
        usage("c", 9, 0)
    );
}

/// What [`usage_of`] must find, read the slow way (see
/// [`reference_usage`]).
fn reference(json: &str) -> Usage {
    let mut u = Usage::default();
    reference_usage(json.as_bytes(), &mut u);
    u
}

/// Names the generator uses for keys: those usage is read from
/// (`[5..11]` are the counts), others, and look-alikes.
const KEYS: [&str; 16] = [
    "model",
    "modelVersion",
    "usage",
    "usageMetadata",
    "message",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "promptTokenCount",
    "candidatesTokenCount",
    "choices",
    "content",
    "x\"}y",
    "\\",
    "{\"usage\":1}",
];

/// Random JSON made of the names usage is read from, look-alikes in
/// strings, and every kind of value.
fn random_value(rng: &mut u64, depth: u32) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    fn next(rng: &mut u64, n: u64) -> u64 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng % n
    }
    const TEXTS: [&str; 8] = [
        "gpt-4o",
        "\",\"usage\":{\"prompt_tokens\":999}}",
        "}]",
        "\\",
        "é\u{0}\n\t",
        "\u{1}\u{1f}",
        "[{",
        "\"",
    ];
    let kind = if depth >= 4 {
        next(rng, 6)
    } else {
        next(rng, 9)
    };
    match kind {
        0 => Value::Null,
        1 => json!(next(rng, 2) == 0),
        2 => json!(next(rng, 1_000_000)),
        3 => json!(u64::MAX - next(rng, 2)),
        4 => json!(next(rng, 1000) as f64 / 7.0),
        5 => json!(TEXTS[next(rng, 8) as usize]),
        6 => json!(-(next(rng, 100) as i64) - 1),
        7 => Value::Array(
            (0..next(rng, 4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..next(rng, 7) {
                let k = KEYS[next(rng, 16) as usize].to_string();
                m.insert(k, random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

#[test]
fn the_scanner_agrees_with_a_full_parse() {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut with_usage = 0;
    for i in 0..20_000 {
        let mut v = random_value(&mut rng, 0);
        if !v.is_object() {
            v = serde_json::json!({ "usage": v, "model": "m" });
        }
        // Mostly well-formed counts where usage is read from, so the
        // comparison is about reading them, not only about skipping.
        if let Some(top) = v.as_object_mut() {
            let counts = |rng: &mut u64| {
                let mut m = serde_json::Map::new();
                for k in KEYS[5..11].iter().copied().chain(["total_tokens"]) {
                    match random_value(rng, 3) {
                        serde_json::Value::Null => {}
                        serde_json::Value::Bool(true) => {
                            m.insert(k.into(), serde_json::json!(*rng % 5000));
                        }
                        other if (*rng).is_multiple_of(3) => {
                            m.insert(k.into(), other);
                        }
                        _ => {
                            m.insert(k.into(), serde_json::json!(*rng % 100_000));
                        }
                    }
                }
                serde_json::Value::Object(m)
            };
            for (k, every) in [("usage", 2), ("usageMetadata", 4)] {
                if rng.is_multiple_of(every) {
                    top.insert(k.into(), counts(&mut rng));
                }
            }
            if rng % 4 == 1 {
                let mut message = serde_json::Map::new();
                message.insert("usage".into(), counts(&mut rng));
                message.insert("model".into(), random_value(&mut rng, 3));
                top.insert("message".into(), serde_json::Value::Object(message));
            }
        }
        let text = if i % 2 == 0 {
            serde_json::to_string(&v)
        } else {
            serde_json::to_string_pretty(&v)
        }
        .expect("serialize");
        let mut got = Usage::default();
        usage_of(text.as_bytes(), &mut got);
        assert_eq!(got, reference(&text), "{text}");
        if got.input_tokens > 0 || got.output_tokens > 0 {
            with_usage += 1;
        }
        // Every proper prefix of an object is broken: nothing counts.
        let cut = text.len() * (i % 7 + 1) / 8;
        if let Some(prefix) = text.get(..cut) {
            let mut none = Usage::default();
            usage_of(prefix.as_bytes(), &mut none);
            assert_eq!(none, Usage::default(), "{prefix}");
        }
    }
    assert!(
        with_usage > 500,
        "the generator exercises counts ({with_usage})"
    );
}

#[test]
fn gemini_and_unknown_bodies() {
    let body = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":6},"modelVersion":"gemini-2.0-flash"}"#;
    assert_eq!(
        parse("application/json", body, 10),
        usage("gemini-2.0-flash", 4, 6)
    );
    assert_eq!(parse("text/plain", body, 10), Usage::default());
    assert_eq!(parse("application/json", "{not json", 3), Usage::default());
}

fn key(day: &str, k: &str, model: &str) -> UsageKey {
    UsageKey {
        day: day.into(),
        key_id: k.into(),
        provider: "openai".into(),
        model: model.into(),
    }
}

#[test]
fn key_encoding_round_trips_and_sorts_by_day() {
    let k = key("2026-11-22", "lk1", "gpt-4o");
    let enc = k.encode();
    assert_eq!(enc, b"2026-11-22\0lk1\0openai\0gpt-4o");
    assert_eq!(UsageKey::decode(&enc), Some(k));
    // A NUL in a model name cannot split the key.
    let odd = key("2026-11-22", "lk1", "a\0b");
    assert_eq!(
        UsageKey::decode(&odd.encode()).map(|k| k.model),
        Some("a?b".into())
    );
    assert_eq!(UsageKey::decode(b"2026-11-22\0lk1\0openai"), None);
    assert_eq!(UsageKey::decode(b"a\0b\0c\0d\0e"), None);
    assert_eq!(UsageKey::decode(b"a\0b\0c\0\xff"), None);
    // Every key of a day lies in [day, day_end(day)), before the next.
    let day = key("2026-11-22", "zzzz", "\u{10ffff}").encode();
    assert!(day.as_slice() >= b"2026-11-22".as_slice());
    assert!(day < day_end("2026-11-22"));
    assert!(day_end("2026-11-22") < key("2026-11-23", "", "").encode());
    let totals = Totals {
        requests: 1,
        input_tokens: 300,
        output_tokens: 2,
        errors: 0,
        ..Totals::default()
    };
    assert_eq!(
        postcard::to_allocvec(&totals).expect("encode"),
        [1, 0xac, 0x02, 2, 0, 0, 0, 0]
    );
    // Rows written before the realtime fields still decode (zeros there),
    // and the first four fields are where they always were.
    assert_eq!(Totals::decode(&[1, 0xac, 0x02, 2, 0]), Some(totals));
    let rt = Totals {
        audio_input_tokens: 7,
        audio_output_tokens: 8,
        session_seconds: 9,
        ..totals
    };
    let bytes = postcard::to_allocvec(&rt).expect("encode");
    assert_eq!(Totals::decode(&bytes), Some(rt));
    assert_eq!(&bytes[..5], &[1, 0xac, 0x02, 2, 0]);
    assert_eq!(Totals::decode(&[1, 2]), None);
}

#[test]
fn day_of_follows_the_date_back_and_forth() {
    // The kept day must never answer for another one.
    assert_eq!(day_of(0), "1970-01-01");
    assert_eq!(day_of(86_399), "1970-01-01");
    assert_eq!(day_of(86_400), "1970-01-02");
    assert_eq!(day_of(1_709_164_799), "2024-02-28");
    assert_eq!(day_of(1_709_164_800), "2024-02-29");
    assert_eq!(day_of(1_709_164_800 + 86_399), "2024-02-29");
    assert_eq!(day_of(1_709_164_799), "2024-02-28");
    assert_eq!(day_of(-1), "1969-12-31");
    assert_eq!(day_of(i64::MAX), "unknown");
    assert_eq!(day_of(i64::MAX - 1), "unknown");
    assert_eq!(day_of(1_767_225_600), "2026-01-01");
}

#[test]
fn long_or_nul_model_names_are_cut_and_cleaned() {
    let long = "m".repeat(300);
    let body =
        format!(r#"{{"model":"{long}","usage":{{"prompt_tokens":1,"completion_tokens":2}}}}"#);
    let u = parse("application/json", &body, 7);
    assert_eq!(u.model.as_deref(), Some("m".repeat(128).as_str()));
    let u = parse(
        "application/json",
        r#"{"model":"a\u0000b","usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        5,
    );
    assert_eq!(u.model.as_deref(), Some("a?b"));
    let u = parse("application/json", r#"{"model":"gpt-4o-mini"}"#, 3);
    assert_eq!(u.model.as_deref(), Some("gpt-4o-mini"));
}

#[test]
fn midnight() {
    assert_eq!(secs_to_midnight(0), 86_400);
    assert_eq!(secs_to_midnight(86_399), 1);
    assert_eq!(secs_to_midnight(86_400 + 3600), 82_800);
}

#[test]
fn with_day_reads_what_day_of_says() {
    for unix in [0, 86_399, 86_400, 1_765_000_000, 1_765_000_000 + 86_400] {
        // Twice: the first call may fill the cache, the second reads it.
        assert_eq!(with_day(unix, str::to_owned), day_of(unix));
        assert_eq!(with_day(unix, str::to_owned), day_of(unix));
    }
}

#[test]
fn a_row_counted_again_is_found_by_its_parts() {
    let book = UsageBook::default();
    let u = usage("m", 1, 2);
    book.record_request("2026-11-22", "a", "openai", "m".into(), &u, false);
    book.record_request("2026-11-22", "a", "openai", "m".into(), &u, true);
    // Parts that differ in any one place are another row.
    book.record_request("2026-11-22", "a", "openai", "n".into(), &u, false);
    book.record_request("2026-11-22", "a", "anthropic", "m".into(), &u, false);
    book.record_request("2026-11-23", "a", "openai", "m".into(), &u, false);
    book.record_request("2026-11-22", "b", "openai", "m".into(), &u, false);
    // Checked with the book's lock held, released before `spent` below.
    let inner = lock(&book.inner);
    let pending = &inner.pending;
    assert_eq!(pending.len(), 5);
    let row = |day: &str, k: &str, p: &str, m: &str| {
        pending[&UsageKey {
            day: day.into(),
            key_id: k.into(),
            provider: p.into(),
            model: m.into(),
        }]
    };
    assert_eq!(
        (
            row("2026-11-22", "a", "openai", "m").requests,
            row("2026-11-22", "a", "openai", "m").errors
        ),
        (2, 1)
    );
    assert_eq!(row("2026-11-22", "b", "openai", "m").requests, 1);
    drop(inner);
    assert_eq!(book.spent("a", "2026-11-23"), 3);
}

#[test]
fn book_flushes_queries_and_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let book = UsageBook::load(&store, "2026-11-22").expect("load");
    book.record(key("2026-11-21", "a", "m"), &usage("m", 100, 1), false);
    book.record(key("2026-11-22", "a", "m"), &usage("m", 1, 2), false);
    book.record(key("2026-11-22", "a", "m"), &usage("m", 3, 4), true);
    book.record(key("2026-11-22", "b", "m"), &usage("m", 5, 6), false);
    assert_eq!(book.spent("a", "2026-11-22"), 10);
    assert_eq!(book.spent("a", "2026-11-23"), 0);
    let all = UsageQuery {
        from: "2026-11-01".into(),
        to: "2026-11-30".into(),
        ..UsageQuery::default()
    };
    let before = book.query(&store, &all).expect("query");
    assert_eq!(before.len(), 3);
    assert_eq!(book.flush(&store).expect("flush"), 3);
    assert_eq!(book.flush(&store).expect("nothing left"), 0);
    // Stored and pending counts add up; nothing is counted twice.
    book.record(key("2026-11-22", "a", "m"), &usage("m", 10, 10), false);
    let rows = book.query(&store, &all).expect("query");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].day, "2026-11-21");
    assert_eq!(
        rows[1].totals,
        Totals {
            requests: 3,
            input_tokens: 14,
            output_tokens: 16,
            errors: 1,
            ..Totals::default()
        }
    );
    // Filters: days, own keys, exact matches.
    let q = |f: &dyn Fn(&mut UsageQuery)| {
        let mut q = all.clone();
        f(&mut q);
        book.query(&store, &q).expect("query")
    };
    assert_eq!(q(&|q| q.from = "2026-11-22".into()).len(), 2);
    assert_eq!(q(&|q| q.to = "2026-11-21".into()).len(), 1);
    assert_eq!(
        q(&|q| q.keys = Some(HashSet::from(["b".to_string()]))).len(),
        1
    );
    assert_eq!(q(&|q| q.key = Some("a".into())).len(), 2);
    assert!(q(&|q| q.provider = Some("anthropic".into())).is_empty());
    assert!(q(&|q| q.model = Some("x".into())).is_empty());
    // A new process sees today's spending (budgets survive restarts).
    book.flush(&store).expect("flush");
    let again = UsageBook::load(&store, "2026-11-22").expect("reload");
    assert_eq!(again.spent("a", "2026-11-22"), 30);
    assert_eq!(again.spent("b", "2026-11-22"), 11);
    assert_eq!(
        again.query(&store, &all).expect("query"),
        rows_with(&book, &store, &all)
    );
}

/// Issue #19 item 11: an upstream that echoes whatever model the client
/// asked for must not make a row per request.
#[test]
fn model_names_from_upstreams_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let day = "2026-11-22";
    let book = UsageBook::load(&store, day).expect("load");
    for i in 0..500 {
        let m = format!("echo-{i}");
        book.record(key(day, "a", &m), &usage(&m, 1, 1), false);
    }
    // Names that are not model names never become rows of their own.
    for odd in [
        "a b",
        "x\n\u{1b}[31m",
        "(other)x",
        "é",
        &"m".repeat(129),
        "",
    ] {
        let mut k = key(day, "a", odd);
        k.provider = "anthropic".into();
        book.record(k, &usage(odd, 1, 1), false);
    }
    let all = UsageQuery {
        from: day.into(),
        to: day.into(),
        ..UsageQuery::default()
    };
    let rows = book.query(&store, &all).expect("query");
    let openai: Vec<_> = rows.iter().filter(|r| r.provider == "openai").collect();
    assert_eq!(openai.len(), MAX_MODELS_PER_PROVIDER_DAY + 1);
    let other = openai
        .iter()
        .find(|r| r.model == OTHER_MODEL)
        .expect("other row");
    assert_eq!(
        other.totals.requests,
        500 - MAX_MODELS_PER_PROVIDER_DAY as u64
    );
    // Nothing is lost: every request and token is still counted.
    assert_eq!(openai.iter().map(|r| r.totals.requests).sum::<u64>(), 500);
    assert_eq!(book.spent("a", day), 1000 + 12);
    let anthropic: Vec<_> = rows.iter().filter(|r| r.provider == "anthropic").collect();
    assert_eq!(anthropic.len(), 1, "{anthropic:?}");
    assert_eq!(anthropic[0].model, OTHER_MODEL);

    // Known names keep counting as themselves; the cap holds after a
    // restart (today's names are reloaded) and resets the next day.
    book.flush(&store).expect("flush");
    let again = UsageBook::load(&store, day).expect("reload");
    again.record(key(day, "a", "echo-3"), &usage("echo-3", 1, 1), false);
    again.record(key(day, "a", "new-one"), &usage("new-one", 1, 1), false);
    let rows = again.query(&store, &all).expect("query");
    assert_eq!(rows.iter().filter(|r| r.provider == "openai").count(), 65);
    assert!(!rows.iter().any(|r| r.model == "new-one"));
    again.record(
        key("2026-11-23", "a", "new-one"),
        &usage("new-one", 1, 1),
        false,
    );
    let next = UsageQuery {
        from: "2026-11-23".into(),
        to: "2026-11-23".into(),
        ..UsageQuery::default()
    };
    assert_eq!(
        again.query(&store, &next).expect("query")[0].model,
        "new-one"
    );
    for ok in [
        "gpt-4o-2024-08-06",
        "models/gemini-2.0-flash",
        "llama3:8b",
        "a@b+c",
    ] {
        assert!(valid_model(ok), "{ok}");
    }
}

fn rows_with(book: &UsageBook, store: &Store, q: &UsageQuery) -> Vec<UsageRow> {
    book.query(store, q).expect("query")
}

#[test]
fn media_types_are_matched_whatever_their_case() {
    assert!(super::starts_with_ignore_case(
        "Text/Event-Stream; charset=utf-8",
        "text/event-stream"
    ));
    assert!(super::starts_with_ignore_case(
        "application/json",
        "application/json"
    ));
    assert!(!super::starts_with_ignore_case(
        "application/js",
        "application/json"
    ));
    assert!(!super::starts_with_ignore_case("", "text/event-stream"));
    // Not a char boundary inside the prefix's length: no panic, no match.
    assert!(!super::starts_with_ignore_case(
        "applicatioé/json",
        "application/json"
    ));
    assert_eq!(
        parse(
            "Application/JSON",
            r#"{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            4096
        ),
        usage("m", 1, 2)
    );
}

/// Several books over one store, as several replicas have.
mod replicas;
