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
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter (use with `JsonFields` for span fields).
pub struct JsonLines;

/// `s` as a JSON string, quotes included.
fn string(buf: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(&mut *buf, s);
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
        string(self.buf, field.name());
        self.buf.push(b':');
    }

    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        self.key(field);
        // Into a Vec: cannot fail.
        let _ = std::io::Write::write_fmt(self.buf, format_args!("{value}"));
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
        let mut buf = Vec::with_capacity(256);
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        buf.extend_from_slice(b"{\"timestamp\":");
        string(&mut buf, &timestamp);
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
            .event_format(JsonLines)
            .with_writer(out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().expect("capture").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
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
    }

    #[test]
    fn non_finite_floats_are_null() {
        let got = lines(|| tracing::info!(x = f64::NAN, y = f64::INFINITY, "m"));
        assert!(got[0]["fields"]["x"].is_null());
        assert!(got[0]["fields"]["y"].is_null());
    }
}
