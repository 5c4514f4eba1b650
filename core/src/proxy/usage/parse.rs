//! Reading usage out of a response body as it passes: plain JSON (read
//! whole, up to a size limit) and Server-Sent Events (line by line), each
//! object's usage fields found by the one-pass scanner [`json_scan`]
//! without parsing the generated text.

use crate::proxy::json_scan;
use bytes::Bytes;

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
    /// Takes what `f` says; later values replace earlier ones (streamed
    /// counts are cumulative). Anthropic's `message_start` nests the
    /// message (one level; deeper nesting is not a format we read).
    fn apply(&mut self, f: &UsageFields<'_>) {
        if let Some(m) = f.message.and_then(UsageFields::of)
            && m.usage.is_some()
        {
            self.apply_own(&m);
        }
        self.apply_own(f);
    }

    fn apply_own(&mut self, f: &UsageFields<'_>) {
        if self.model.is_none()
            && let Some(m) = f.model.or(f.model_version).and_then(json_scan::string)
        {
            // Usually already what is kept (at most 128 characters, no
            // NUL): taken as it is, not copied again char by char.
            self.model = Some(if m.len() <= 128 && !m.contains('\0') {
                m
            } else {
                m.chars()
                    .take(128)
                    .map(|c| if c == '\0' { '?' } else { c })
                    .collect()
            });
        }
        for c in [f.usage, f.usage_metadata]
            .into_iter()
            .flatten()
            .filter_map(TokenCounts::of)
        {
            if let Some(n) = c.input {
                self.input_tokens = n;
            }
            if let Some(n) = c.output {
                self.output_tokens = n;
            }
        }
    }
}

enum Mode {
    /// A JSON body usually arrives in one chunk: that chunk is kept as it
    /// is (a reference count, not a copy) and read in place; `buf` takes
    /// the bytes only once a second chunk comes.
    Json {
        first: Option<Bytes>,
        buf: Vec<u8>,
        overflow: bool,
    },
    Sse {
        line: Vec<u8>,
    },
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
        let ct = content_type.unwrap_or("");
        let mode = if starts_with_ignore_case(ct, "text/event-stream") {
            Mode::Sse { line: Vec::new() }
        } else if starts_with_ignore_case(ct, "application/json") {
            Mode::Json {
                first: None,
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

    pub fn feed(&mut self, chunk: &Bytes) {
        match &mut self.mode {
            Mode::Off => {}
            Mode::Json {
                first,
                buf,
                overflow,
            } => {
                if first.is_none() && buf.is_empty() && !*overflow && chunk.len() <= MAX_JSON {
                    *first = Some(chunk.clone());
                    return;
                }
                if let Some(f) = first.take() {
                    buf.extend_from_slice(&f);
                }
                if *overflow || buf.len() + chunk.len() > MAX_JSON {
                    *overflow = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            Mode::Sse { line } => {
                let mut rest: &[u8] = chunk;
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
                first,
                buf,
                overflow: false,
            } => {
                let body = first.as_deref().unwrap_or(buf);
                usage_of(body, &mut self.usage);
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

/// Whether `s` starts with `prefix`, ASCII case ignored (compared in
/// place: a lower-cased copy of the media type was an allocation per
/// request).
pub(crate) fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
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
    usage_of(data, usage);
}

/// The top-level fields [`Usage::apply`] reads, each as the exact JSON
/// text of its value (`null` counts as absent); everything else — the
/// generated text in `choices`, `content`, `candidates` — is skipped by
/// [`json_scan`] without being parsed.
#[derive(Default)]
struct UsageFields<'a> {
    model: Option<&'a [u8]>,
    model_version: Option<&'a [u8]>,
    usage: Option<&'a [u8]>,
    usage_metadata: Option<&'a [u8]>,
    message: Option<&'a [u8]>,
}

impl<'a> UsageFields<'a> {
    /// The fields of the object `json`; `None` if it is not one.
    fn of(json: &'a [u8]) -> Option<Self> {
        let mut f = UsageFields::default();
        let object = json_scan::members(json, |key, value| {
            let slot = match key {
                b"model" => &mut f.model,
                b"modelVersion" => &mut f.model_version,
                b"usage" => &mut f.usage,
                b"usageMetadata" => &mut f.usage_metadata,
                b"message" => &mut f.message,
                _ => return,
            };
            *slot = (value != b"null").then_some(value);
        });
        object.then_some(f)
    }
}

/// The counts inside `usage` (OpenAI and compatibles: `prompt_tokens`,
/// `completion_tokens`; Anthropic: `input_tokens`, `output_tokens`) or
/// `usageMetadata` (Gemini: `promptTokenCount`, `candidatesTokenCount`).
/// A value that is not a plain non-negative integer is not a count.
struct TokenCounts {
    input: Option<u64>,
    output: Option<u64>,
}

impl TokenCounts {
    /// The counts in the object `json`; `None` if it is not one.
    fn of(json: &[u8]) -> Option<Self> {
        // [prompt_tokens, input_tokens, promptTokenCount] and the same for
        // output: the first present one counts.
        let mut input = [None; 3];
        let mut output = [None; 3];
        let object = json_scan::members(json, |key, value| {
            let slot = match key {
                b"prompt_tokens" => &mut input[0],
                b"input_tokens" => &mut input[1],
                b"promptTokenCount" => &mut input[2],
                b"completion_tokens" => &mut output[0],
                b"output_tokens" => &mut output[1],
                b"candidatesTokenCount" => &mut output[2],
                _ => return,
            };
            *slot = json_scan::count(value);
        });
        object.then(|| TokenCounts {
            input: input.into_iter().flatten().next(),
            output: output.into_iter().flatten().next(),
        })
    }
}

/// Takes the usage fields of one JSON object into `usage` (nothing if
/// `json` is not an object).
pub(super) fn usage_of(json: &[u8], usage: &mut Usage) {
    if let Some(f) = UsageFields::of(json) {
        usage.apply(&f);
    }
}

/// The reference reading of one JSON body for tests and the fuzz target:
/// a whole `serde_json::Value` tree, fields read as documented above (the
/// implementation before the one-pass scanner). Adds to `u` like the
/// scanner does, so an SSE stream is the reference applied per event.
#[cfg(any(test, feature = "fuzzing"))]
pub fn reference_usage(json: &[u8], u: &mut Usage) {
    use serde_json::{Map, Value};
    fn present<'v>(o: &'v Map<String, Value>, k: &str) -> Option<&'v Value> {
        o.get(k).filter(|v| !v.is_null())
    }
    fn own(u: &mut Usage, o: &Map<String, Value>) {
        if u.model.is_none()
            && let Some(m) = present(o, "model")
                .or_else(|| present(o, "modelVersion"))
                .and_then(Value::as_str)
        {
            u.model = Some(
                m.chars()
                    .take(128)
                    .map(|c| if c == '\0' { '?' } else { c })
                    .collect(),
            );
        }
        for c in ["usage", "usageMetadata"]
            .into_iter()
            .filter_map(|k| present(o, k)?.as_object())
        {
            let first = |ks: [&str; 3]| ks.into_iter().find_map(|k| c.get(k)?.as_u64());
            if let Some(n) = first(["prompt_tokens", "input_tokens", "promptTokenCount"]) {
                u.input_tokens = n;
            }
            if let Some(n) = first(["completion_tokens", "output_tokens", "candidatesTokenCount"]) {
                u.output_tokens = n;
            }
        }
    }
    if let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(json) {
        if let Some(m) = present(&top, "message").and_then(Value::as_object)
            && present(m, "usage").is_some()
        {
            own(u, m);
        }
        own(u, &top);
    }
}
