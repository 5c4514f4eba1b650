//! Usage accounting: a [`UsageParser`] watches the response bytes as they
//! pass (it never holds a chunk back) and the [`UsageBook`] adds each
//! finished request to per key/provider/model/day totals in memory.
//!
//! Understood formats, plain JSON and Server-Sent Events alike:
//! - OpenAI (and compatible: Mistral, Groq, OpenRouter, Ollama, vLLM):
//!   `model`, `usage.prompt_tokens`, `usage.completion_tokens`; streamed,
//!   the final chunk carries `usage` when the client asked for
//!   `stream_options.include_usage`.
//! - Anthropic: `model`, `usage.input_tokens`, `usage.output_tokens`;
//!   streamed, `message_start` carries `message.model` and the input count,
//!   `message_delta` the cumulative output count.
//! - Gemini: `modelVersion`, `usageMetadata.promptTokenCount`,
//!   `usageMetadata.candidatesTokenCount`.
//!
//! Totals live in memory only (see docs/PROXY.md: persisting them needs a
//! schema-v3 `usage_daily` table, not built yet); they are lost on restart.

use crate::auth::store::UserId;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// Largest plain JSON response body read for usage; past it the request
/// counts with unknown tokens.
const MAX_JSON: usize = 4 * 1024 * 1024;
/// Longest SSE line kept while waiting for its end.
const MAX_LINE: usize = 1024 * 1024;

/// What one response said about its cost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Takes what `v` says; later values replace earlier ones (streamed
    /// counts are cumulative).
    fn apply(&mut self, v: &Value) {
        if self.model.is_none()
            && let Some(m) = v
                .get("model")
                .or_else(|| v.get("modelVersion"))
                .and_then(Value::as_str)
        {
            self.model = Some(m.chars().take(128).collect());
        }
        // Anthropic's `message_start` nests the message.
        if let Some(m) = v.get("message").filter(|m| m.get("usage").is_some()) {
            self.apply(m);
        }
        let num = |o: &Value, k: &str| o.get(k).and_then(Value::as_u64);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Some(n) = num(u, "prompt_tokens").or_else(|| num(u, "input_tokens")) {
                self.input_tokens = n;
            }
            if let Some(n) = num(u, "completion_tokens").or_else(|| num(u, "output_tokens")) {
                self.output_tokens = n;
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            if let Some(n) = num(u, "promptTokenCount") {
                self.input_tokens = n;
            }
            if let Some(n) = num(u, "candidatesTokenCount") {
                self.output_tokens = n;
            }
        }
    }
}

enum Mode {
    Json { buf: Vec<u8>, overflow: bool },
    Sse { line: Vec<u8> },
    Off,
}

/// Reads usage out of a response body fed to it chunk by chunk.
pub struct UsageParser {
    mode: Mode,
    usage: Usage,
}

impl UsageParser {
    /// A parser for a response with this `Content-Type`.
    pub fn for_content_type(content_type: Option<&str>) -> Self {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let mode = if ct.starts_with("text/event-stream") {
            Mode::Sse { line: Vec::new() }
        } else if ct.starts_with("application/json") {
            Mode::Json {
                buf: Vec::new(),
                overflow: false,
            }
        } else {
            Mode::Off
        };
        UsageParser {
            mode,
            usage: Usage::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Off => {}
            Mode::Json { buf, overflow } => {
                if *overflow || buf.len() + chunk.len() > MAX_JSON {
                    *overflow = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            Mode::Sse { line } => {
                let mut rest = chunk;
                while let Some(i) = rest.iter().position(|&b| b == b'\n') {
                    let (head, tail) = rest.split_at(i);
                    if line.is_empty() {
                        sse_line(head, &mut self.usage);
                    } else {
                        line.extend_from_slice(head);
                        sse_line(line, &mut self.usage);
                        line.clear();
                    }
                    rest = &tail[1..];
                }
                if line.len() + rest.len() <= MAX_LINE {
                    line.extend_from_slice(rest);
                } else {
                    line.clear();
                }
            }
        }
    }

    /// What the whole body said.
    pub fn finish(mut self) -> Usage {
        match &mut self.mode {
            Mode::Json {
                buf,
                overflow: false,
            } => {
                if let Ok(v) = serde_json::from_slice::<Value>(buf) {
                    self.usage.apply(&v);
                }
            }
            Mode::Sse { line } if !line.is_empty() => {
                let line = std::mem::take(line);
                sse_line(&line, &mut self.usage);
            }
            _ => {}
        }
        self.usage
    }
}

/// One SSE line: only `data:` lines that look like JSON are parsed.
fn sse_line(line: &[u8], usage: &mut Usage) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let data = data.trim_ascii_start();
    if data.first() != Some(&b'{') {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        usage.apply(&v);
    }
}

/// The totals' key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub key_id: String,
    pub user_id: UserId,
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One row of `GET /api/usage`.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub day: String,
    pub key_id: String,
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Per key/provider/model/day totals, in memory.
#[derive(Debug, Default)]
pub struct UsageBook {
    totals: Mutex<HashMap<UsageKey, Totals>>,
}

/// The UTC day of `unix` seconds, `YYYY-MM-DD`.
pub fn day_of(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl UsageBook {
    pub fn record(&self, key: UsageKey, usage: &Usage) {
        if let Ok(mut t) = self.totals.lock() {
            let e = t.entry(key).or_default();
            e.requests += 1;
            e.input_tokens += usage.input_tokens;
            e.output_tokens += usage.output_tokens;
        }
    }

    /// Rows (optionally only `user`'s keys), sorted by day, key, provider,
    /// model.
    pub fn rows(&self, user: Option<UserId>) -> Vec<UsageRow> {
        let Ok(t) = self.totals.lock() else {
            return Vec::new();
        };
        let mut keys: Vec<&UsageKey> = t
            .keys()
            .filter(|k| user.is_none_or(|u| k.user_id == u))
            .collect();
        keys.sort();
        keys.into_iter()
            .map(|k| UsageRow {
                day: k.day.clone(),
                key_id: k.key_id.clone(),
                provider: k.provider.clone(),
                model: k.model.clone(),
                totals: t.get(k).copied().unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `n` bytes, as a network would.
    fn parse(ct: &str, body: &str, n: usize) -> Usage {
        let mut p = UsageParser::for_content_type(Some(ct));
        for c in body.as_bytes().chunks(n) {
            p.feed(c);
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
    fn gemini_and_unknown_bodies() {
        let body = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":6},"modelVersion":"gemini-2.0-flash"}"#;
        assert_eq!(
            parse("application/json", body, 10),
            usage("gemini-2.0-flash", 4, 6)
        );
        assert_eq!(parse("text/plain", body, 10), Usage::default());
        assert_eq!(parse("application/json", "{not json", 3), Usage::default());
    }

    #[test]
    fn book_totals_and_filters() {
        let book = UsageBook::default();
        let key = |user: u128, model: &str| UsageKey {
            day: day_of(0),
            key_id: format!("k{user}"),
            user_id: UserId(user),
            provider: "openai".into(),
            model: model.into(),
        };
        book.record(key(1, "m"), &usage("m", 1, 2));
        book.record(key(1, "m"), &usage("m", 3, 4));
        book.record(key(2, "m"), &usage("m", 5, 6));
        assert_eq!(day_of(0), "1970-01-01");
        let all = book.rows(None);
        assert_eq!(all.len(), 2);
        let mine = book.rows(Some(UserId(1)));
        assert_eq!(mine.len(), 1);
        assert_eq!(
            mine[0].totals,
            Totals {
                requests: 2,
                input_tokens: 4,
                output_tokens: 6
            }
        );
    }
}
