//! JSON log lines, written straight into one buffer.
//!
//! Same shape as `tracing-subscriber`'s JSON format (`timestamp`, `level`,
//! `fields`, `target`, and `spans` from the root down, each with its fields
//! and `name`), which is what journald users and our tests read. That
//! formatter goes through `serde`'s map serializer one token at a time and
//! re-parses every span's stored fields for every event: a third of the
//! proxy's instructions per request went to its one log line
//! (docs/PERFORMANCE.md). Here every value is escaped by `serde_json`
//! (so no field can break out of its string or forge a line) into one
//! `Vec`, and span fields, already JSON, are copied as they are.

use std::fmt::{self, Write as _};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter (use with `JsonFields` for span fields).
#[derive(Default)]
pub struct JsonLines {
    /// The Unix second of the last line and its `YYYY-MM-DDTHH:MM:SS`:
    /// the calendar arithmetic and a dozen formatted numbers were a
    /// quarter of a line's cost, and at any rate worth logging the second
    /// changes far less often than the line.
    second: Mutex<Option<(u64, [u8; 19])>>,
}

impl JsonLines {
    /// `now` as RFC 3339 UTC with microseconds, quoted (the shape of
    /// `tracing-subscriber`'s timestamps): `"2026-12-04T21:48:09.311864Z"`.
    fn timestamp(&self, buf: &mut Vec<u8>, now: SystemTime) {
        // A clock before 1970 is shown as 1970 (as tracing-subscriber
        // cannot show it either).
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let prefix = {
            let mut cached = self.second.lock().unwrap_or_else(PoisonError::into_inner);
            match *cached {
                Some((s, p)) if s == secs => p,
                _ => {
                    let p = calendar_second(secs);
                    *cached = Some((secs, p));
                    p
                }
            }
        };
        buf.push(b'"');
        buf.extend_from_slice(&prefix);
        buf.push(b'.');
        let micros = since.subsec_micros();
        for div in [100_000, 10_000, 1_000, 100, 10, 1] {
            // A digit: below 10, so the cast cannot truncate.
            buf.push(b'0' + (micros / div % 10) as u8);
        }
        buf.extend_from_slice(b"Z\"");
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix second.
fn calendar_second(secs: u64) -> [u8; 19] {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut text = String::with_capacity(19);
    // Into a String: cannot fail.
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year().clamp(0, 9999),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let mut out = [b'0'; 19];
    if text.len() == out.len() {
        out.copy_from_slice(text.as_bytes());
    }
    out
}

/// `s` as a JSON string, quotes included.
fn string(buf: &mut Vec<u8>, s: &str) {
    // Almost every value (method, route, request id, message, target)
    // has nothing to escape: copied as it is, one pass over the bytes
    // instead of serde_json's escaping writer (~300 instructions a value
    // on the proxy's per-request line). Exactly what serde_json escapes
    // (`"`, `\`, U+0000..U+001F) sends a value the slow way.
    if plain(s.as_bytes()) {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing to a Vec cannot fail, and a str always serializes.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// Whether `b` holds nothing JSON escapes (`"`, `\`, U+0000..U+001F),
/// tested eight bytes at a time: a byte-by-byte test was ~5 instructions
/// a byte, ~700 on the proxy's per-request line.
fn plain(b: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // `(x - LO) & !x & HI` is non-zero iff a byte of `x` is zero, and
    // `(w - LO * n) & !w & HI` iff a byte of `w` is below `n` (n <= 128).
    let escapes = |w: u64| {
        let q = w ^ (LO * u64::from(b'"'));
        let s = w ^ (LO * u64::from(b'\\'));
        ((w.wrapping_sub(LO * 0x20) & !w) | (q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s))
            & HI
            != 0
    };
    let mut words = b.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if escapes(u64::from_le_bytes(w)) {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&c| c >= 0x20 && c != b'"' && c != b'\\')
}

/// Writes what is formatted into it as the inside of a JSON string: the
/// characters RFC 8259 requires escaped (`"`, `\`, U+0000..U+001F) are,
/// everything else is copied. Lets `Debug`/`Display` values go straight
/// into the line without a `String` each.
struct Escaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            self.0.extend_from_slice(&s.as_bytes()[start..i]);
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.extend_from_slice(b"\\u00");
                self.0.push(HEX[usize::from(b >> 4)]);
                self.0.push(HEX[usize::from(b & 0xf)]);
            } else {
                self.0.extend_from_slice(esc);
            }
            start = i + 1;
        }
        self.0.extend_from_slice(&s.as_bytes()[start..]);
        Ok(())
    }
}

/// `value`'s `Debug` text as a JSON string.
fn debug_string(buf: &mut Vec<u8>, value: &dyn fmt::Debug) {
    buf.push(b'"');
    // Escaped never fails; a failing Debug impl leaves what it wrote.
    let _ = write!(Escaped(buf), "{value:?}");
    buf.push(b'"');
}

/// Writes `"name":value` pairs, comma separated.
struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        // Field names are almost always identifiers: nothing to escape,
        // copied by `string`'s fast path.
        string(self.buf, field.name());
        self.buf.push(b':');
    }

    /// A number or boolean, written by serde_json (itoa for integers, the
    /// shortest round-trip text for floats): what `tracing-subscriber`'s
    /// JSON format writes, and far cheaper than `Display` for a float
    /// (~1,000 instructions for `latency_ms` through `core::fmt`).
    fn number(&mut self, field: &Field, value: impl serde::Serialize) {
        self.key(field);
        // Into a Vec: cannot fail; finite floats, integers and booleans
        // always serialize.
        let _ = serde_json::to_writer(&mut *self.buf, &value);
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            // What serde_json makes of NaN and infinities.
            self.key(field);
            self.buf.extend_from_slice(b"null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.buf, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.buf.push(b'"');
        let _ = write!(Escaped(self.buf), "{value}");
        self.buf.push(b'"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        debug_string(self.buf, value);
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Room for a whole `request finished` line (~300 bytes): growing
        // the buffer midway cost a reallocation and a copy per line.
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(b"{\"timestamp\":");
        self.timestamp(&mut buf, SystemTime::now());
        buf.extend_from_slice(b",\"level\":\"");
        buf.extend_from_slice(meta.level().as_str().as_bytes());
        buf.extend_from_slice(b"\",\"fields\":{");
        event.record(&mut Fields {
            buf: &mut buf,
            first: true,
        });
        buf.extend_from_slice(b"},\"target\":");
        string(&mut buf, meta.target());
        if let Some(scope) = ctx.event_scope() {
            buf.extend_from_slice(b",\"spans\":[");
            for (i, span) in scope.from_root().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.push(b'{');
                let ext = span.extensions();
                // `JsonFields` stores a span's fields as one JSON object.
                let inner = ext
                    .get::<FormattedFields<JsonFields>>()
                    .map(|f| f.fields.trim())
                    .and_then(|f| f.strip_prefix('{')?.strip_suffix('}'))
                    .map(str::trim)
                    .unwrap_or_default();
                if !inner.is_empty() {
                    buf.extend_from_slice(inner.as_bytes());
                    buf.push(b',');
                }
                buf.extend_from_slice(b"\"name\":");
                string(&mut buf, span.metadata().name());
                buf.push(b'}');
            }
            buf.push(b']');
        }
        buf.extend_from_slice(b"}\n");
        // serde_json writes UTF-8 only, and so does everything above.
        writer.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// The lines `f` logs, parsed.
    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(JsonLines::default())
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().expect("capture").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    #[test]
    fn plain_matches_a_byte_by_byte_test() {
        let naive = |b: &[u8]| b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
        for len in 0..24 {
            for byte in 0..=255u8 {
                for at in 0..len {
                    // Neighbours with the high bit set or next to the
                    // escaped values must not hide or fake a hit.
                    let mut b: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0x80, 0xff, 0x21, 0x23, 0x5d, 0xa2][i % 7])
                        .collect();
                    b[at] = byte;
                    assert_eq!(plain(&b), naive(&b), "{byte:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn timestamps_follow_the_clock_across_seconds() {
        use std::time::Duration;
        let f = JsonLines::default();
        let at = |secs: u64, micros: u32| {
            let mut buf = Vec::new();
            f.timestamp(
                &mut buf,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into()),
            );
            String::from_utf8(buf).expect("utf-8")
        };
        assert_eq!(at(0, 0), "\"1970-01-01T00:00:00.000000Z\"");
        assert_eq!(
            at(1_767_225_600, 123_456),
            "\"2026-01-01T00:00:00.123456Z\""
        );
        // The same second again (from the cache), then the next one, then
        // a clock stepped back: each right.
        assert_eq!(at(1_767_225_600, 7), "\"2026-01-01T00:00:00.000007Z\"");
        assert_eq!(
            at(1_767_225_601, 999_999),
            "\"2026-01-01T00:00:01.999999Z\""
        );
        assert_eq!(
            at(1_709_164_799, 500_000),
            "\"2024-02-28T23:59:59.500000Z\""
        );
        assert_eq!(at(1_709_164_800, 0), "\"2024-02-29T00:00:00.000000Z\"");
        // Before 1970: shown as the epoch, not a panic.
        let mut buf = Vec::new();
        f.timestamp(&mut buf, UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(buf, b"\"1970-01-01T00:00:00.000000Z\"");
    }

    #[test]
    fn timestamps_match_tracing_subscribers_format() {
        use tracing_subscriber::fmt::time::FormatTime;
        let theirs = || {
            let mut t = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut t))
                .expect("format");
            t
        };
        let before = theirs();
        let mut ours = Vec::new();
        JsonLines::default().timestamp(&mut ours, SystemTime::now());
        let after = theirs();
        let ours = String::from_utf8(ours).expect("utf-8");
        assert_eq!(ours.len(), before.len() + 2, "{ours} vs {before}");
        // The same second as one of the two taken around it.
        let second = &ours[1..20];
        assert!(
            second == &before[..19] || second == &after[..19],
            "{ours} vs {before} / {after}"
        );
    }

    #[test]
    fn events_have_the_usual_shape() {
        let got = lines(|| {
            tracing::info!(
                status = 200u16,
                latency_ms = 0.25,
                ok = true,
                n = -3i64,
                "request finished"
            );
        });
        assert_eq!(got.len(), 1);
        let v = &got[0];
        assert_eq!(v["level"], "INFO");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(v["fields"]["message"], "request finished");
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["fields"]["latency_ms"], 0.25);
        assert_eq!(v["fields"]["ok"], true);
        assert_eq!(v["fields"]["n"], -3);
        assert!(v["target"].as_str().is_some_and(|t| t.contains("json")));
        assert!(v.get("spans").is_none(), "no span, no list");
    }

    #[test]
    fn span_fields_come_with_every_event_inside() {
        let got = lines(|| {
            let outer = tracing::info_span!(
                "request",
                request_id = "abc",
                status = tracing::field::Empty
            );
            let _o = outer.enter();
            outer.record("status", 404u16);
            let inner = tracing::info_span!("inner");
            let _i = inner.enter();
            tracing::warn!(reason = %"gone", "request finished");
        });
        let v = &got[0];
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["fields"]["reason"], "gone");
        let spans = v["spans"].as_array().expect("spans");
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0]["name"], "request");
        assert_eq!(spans[0]["request_id"], "abc");
        assert_eq!(spans[0]["status"], 404);
        assert_eq!(spans[1], serde_json::json!({"name": "inner"}));
    }

    #[test]
    fn hostile_values_stay_inside_their_string() {
        let evil = "x\"}\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"forged\"}}\u{0007}\\";
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let got = lines(|| {
            tracing::info!(user = evil, shown = %evil, controls = %every_control, "{}", evil);
        });
        assert_eq!(got.len(), 1, "one event, one line");
        assert_eq!(got[0]["fields"]["user"], evil);
        assert_eq!(got[0]["fields"]["shown"], evil);
        assert_eq!(got[0]["fields"]["controls"], every_control.as_str());
        assert_eq!(got[0]["fields"]["message"], evil);
        assert_eq!(got[0]["level"], "INFO");
        // Field names that are not identifiers are escaped too.
        let got = lines(|| tracing::info!("a\"b\nc" = 1, "guid:x-id" = 2, "m"));
        assert_eq!(got.len(), 1, "one event, one line");
        assert_eq!(got[0]["fields"]["a\"b\nc"], 1);
        assert_eq!(got[0]["fields"]["guid:x-id"], 2);
    }

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        let mut samples: Vec<String> = [
            "",
            "GET",
            "/proxy/{provider}/{*path}",
            "request finished",
            "héllo wörld ✓ \u{7f}",
            "quote \" inside",
            "back\\slash",
            "tab\tnew\nline",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        samples.extend((0u8..0x20).map(|b| format!("a{}b", char::from(b))));
        for s in &samples {
            let mut ours = Vec::new();
            string(&mut ours, s);
            assert_eq!(
                String::from_utf8(ours).expect("utf-8"),
                serde_json::to_string(s).expect("serializes"),
                "{s:?}"
            );
        }
        // Numbers: the text serde_json (so tracing-subscriber) writes.
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(JsonLines::default())
            .with_writer(out.clone())
            .finish();
        let (a, b, c, d, e) = (0.0f64, 1.0f64, 0.25f64, 1.5e-7f64, 12_345.678_9f64);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(a, b, c, d, e, n = 42u64, m = -7i64, t = true, "m");
        });
        let text = String::from_utf8(out.0.lock().expect("capture").clone()).expect("utf-8");
        let json = |x: f64| serde_json::to_string(&x).expect("finite floats serialize");
        let expected = format!(
            "\"a\":{},\"b\":{},\"c\":{},\"d\":{},\"e\":{},\"n\":42,\"m\":-7,\"t\":true",
            json(a),
            json(b),
            json(c),
            json(d),
            json(e)
        );
        assert!(text.contains(&expected), "{text} lacks {expected}");
        assert!(
            text.contains("\"b\":1.0,"),
            "a whole float keeps its .0: {text}"
        );
    }

    #[test]
    fn non_finite_floats_are_null() {
        let got = lines(|| tracing::info!(x = f64::NAN, y = f64::INFINITY, "m"));
        assert!(got[0]["fields"]["x"].is_null());
        assert!(got[0]["fields"]["y"].is_null());
    }
}
