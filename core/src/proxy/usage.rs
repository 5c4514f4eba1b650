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
//! Totals are counted in memory on the hot path ([`UsageBook::record`],
//! one short lock, no I/O) and written to the schema-v3 table
//! `usage_daily` in batches by [`UsageBook::flush`] (one write transaction
//! every `proxy.usage_flush_secs`, and once more on graceful shutdown).
//! Each key's tokens of the current UTC day are kept in memory too, loaded
//! from the table at start, so token budgets survive a restart. A request
//! counts when its response ends (or the client leaves), so one started
//! under a budget may take the key past it; the next one is refused.
//!
//! The model name comes from the upstream (which may echo the client's
//! request), so it is never trusted as a key as is: a name that is not a
//! plausible model name ([`valid_model`]) and every name past the first
//! [`MAX_MODELS_PER_PROVIDER_DAY`] of a provider on one UTC day count under
//! [`OTHER_MODEL`]. Rows per day are thus bounded by keys × providers ×
//! (cap + 2), in memory and in `usage_daily`. The other maps are keyed by
//! API key ids and configured provider names only.

use super::json_scan;
use crate::store::{Store, StoreError};
use latchkey_migrations::v3::USAGE_DAILY;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// Largest plain JSON response body read for usage; past it the request
/// counts with unknown tokens.
const MAX_JSON: usize = 4 * 1024 * 1024;
/// Longest SSE line kept while waiting for its end.
const MAX_LINE: usize = 1024 * 1024;

/// Most distinct model names counted per provider and UTC day (across all
/// keys); later names count under [`OTHER_MODEL`].
pub const MAX_MODELS_PER_PROVIDER_DAY: usize = 64;
/// Where names past the cap, and names that are not model names, count.
/// Its parentheses cannot occur in a valid model name, so no upstream can
/// claim it.
pub const OTHER_MODEL: &str = "(other)";
/// What a response that named no model counts under.
pub const UNKNOWN_MODEL: &str = "unknown";
/// Longest model name counted as itself.
pub const MAX_MODEL_LEN: usize = 128;

/// Whether `m` looks like a model name: 1 to [`MAX_MODEL_LEN`] bytes of
/// ASCII letters, digits and `-._:/@+` (`gpt-4o-2024-08-06`,
/// `models/gemini-2.0-flash`, `meta-llama/Llama-3-70b`, `llama3:8b`,
/// `anthropic/claude-3.5-sonnet:beta`).
pub fn valid_model(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= MAX_MODEL_LEN
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/@+".contains(&b))
}

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
                usage_of(buf, &mut self.usage);
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
fn usage_of(json: &[u8], usage: &mut Usage) {
    if let Some(f) = UsageFields::of(json) {
        usage.apply(&f);
    }
}

/// The totals' key: one row of `usage_daily` per UTC day, API key,
/// provider and model.
///
/// Encoded (schema v3) as the bytes `DAY 0x00 KEY_ID 0x00 PROVIDER 0x00
/// MODEL`: `DAY` is `YYYY-MM-DD` in ASCII, so keys sort by day first and
/// the rows of days `from..=to` are the byte range `from ..
/// to‖0x01`; the other parts are UTF-8 and never hold a NUL (key ids and
/// provider names cannot; a model name's NULs are replaced by `?` when it
/// is read from a response).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub key_id: String,
    pub provider: String,
    pub model: String,
}

impl UsageKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.day.len() + self.key_id.len() + self.provider.len() + self.model.len() + 3,
        );
        for (i, part) in [&self.day, &self.key_id, &self.provider, &self.model]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                out.push(0);
            }
            out.extend(part.bytes().map(|b| if b == 0 { b'?' } else { b }));
        }
        out
    }

    /// `None` for bytes that are not four NUL-separated UTF-8 parts.
    pub fn decode(bytes: &[u8]) -> Option<UsageKey> {
        let mut parts = bytes.split(|&b| b == 0);
        let mut next = || {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .map(str::to_owned)
        };
        let key = UsageKey {
            day: next()?,
            key_id: next()?,
            provider: next()?,
            model: next()?,
        };
        next().is_none().then_some(key)
    }
}

/// A row's counts. Stored in `usage_daily` as postcard, fields in this
/// order (all varint u64).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Requests the upstream answered with a status of 400 or more.
    pub errors: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.errors = self.errors.saturating_add(o.errors);
    }

    fn sub(&mut self, o: &Totals) {
        self.requests = self.requests.saturating_sub(o.requests);
        self.input_tokens = self.input_tokens.saturating_sub(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(o.output_tokens);
        self.errors = self.errors.saturating_sub(o.errors);
    }

    fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// One row of `GET /api/usage`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageRow {
    pub day: String,
    pub key_id: String,
    pub provider: String,
    pub model: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// What `GET /api/usage` asks for: days `from..=to` (`YYYY-MM-DD`) and
/// optional exact matches.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub from: String,
    pub to: String,
    /// Only these keys (a non-administrator's own), if set.
    pub keys: Option<HashSet<String>>,
    pub key: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
}

impl UsageQuery {
    fn matches(&self, k: &UsageKey) -> bool {
        k.day.as_str() >= self.from.as_str()
            && k.day.as_str() <= self.to.as_str()
            && self.keys.as_ref().is_none_or(|ks| ks.contains(&k.key_id))
            && self.key.as_ref().is_none_or(|v| *v == k.key_id)
            && self.provider.as_ref().is_none_or(|v| *v == k.provider)
            && self.model.as_ref().is_none_or(|v| *v == k.model)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Counts not yet written to `usage_daily` (added to the stored row on
    /// flush).
    pending: HashMap<UsageKey, Totals>,
    /// Per key: the UTC day and the tokens (input + output) spent on it,
    /// stored and pending alike — what budgets are checked against.
    spent: HashMap<String, (String, u64)>,
    /// Per provider: the UTC day and the model names counted as themselves
    /// on it (at most [`MAX_MODELS_PER_PROVIDER_DAY`]).
    models: HashMap<String, (String, HashSet<String>)>,
}

impl Inner {
    /// The model name `key` counts under: itself while its provider has
    /// room for it today, else [`OTHER_MODEL`].
    fn bounded_model(&mut self, day: &str, provider: &str, model: String) -> String {
        if model == UNKNOWN_MODEL || model == OTHER_MODEL {
            return model;
        }
        if !valid_model(&model) {
            return OTHER_MODEL.to_owned();
        }
        // Looked up before inserting: a provider seen before costs no clone.
        let seen = match self.models.get_mut(provider) {
            Some(e) => e,
            None => self
                .models
                .entry(provider.to_owned())
                .or_insert_with(|| (day.to_owned(), HashSet::new())),
        };
        if seen.0 != day {
            *seen = (day.to_owned(), HashSet::new());
        }
        if seen.1.contains(&model) {
            return model;
        }
        if seen.1.len() >= MAX_MODELS_PER_PROVIDER_DAY {
            return OTHER_MODEL.to_owned();
        }
        seen.1.insert(model.clone());
        model
    }
}

/// Usage totals: counted in memory on the hot path, written to
/// `usage_daily` in batches by [`UsageBook::flush`].
#[derive(Debug, Default)]
pub struct UsageBook {
    inner: Mutex<Inner>,
    /// Held by a flush from taking its snapshot until the pending counts it
    /// wrote are subtracted, and by a query while it opens its read
    /// transaction and copies the pending counts: a query sees every count
    /// exactly once.
    gate: Mutex<()>,
}

/// The UTC day of `unix` seconds, `YYYY-MM-DD`.
pub fn day_of(unix: i64) -> String {
    // Asked for on every proxied request, while the answer changes once a
    // day: the last day's text is kept (the calendar arithmetic and
    // formatting were ~1 % of a request's instructions).
    static LAST: Mutex<Option<(i64, String)>> = Mutex::new(None);
    let day = unix.div_euclid(86_400);
    let mut last = lock(&LAST);
    if let Some((d, text)) = last.as_ref()
        && *d == day
    {
        return text.clone();
    }
    let text = time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "unknown".into());
    *last = Some((day, text.clone()));
    text
}

/// Seconds from `unix` to the next UTC midnight (at least 1).
pub fn secs_to_midnight(unix: i64) -> u64 {
    let into_day = unix.rem_euclid(86_400);
    u64::try_from(86_400 - into_day).unwrap_or(1).max(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a panic
    // elsewhere must not stop accounting.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl UsageBook {
    /// A book that knows what each key spent on `today` (from the store),
    /// so budgets survive a restart.
    pub fn load(store: &Store, today: &str) -> Result<UsageBook, StoreError> {
        let txn = store.db().begin_read()?;
        let table = txn.open_table(USAGE_DAILY)?;
        let mut spent: HashMap<String, (String, u64)> = HashMap::new();
        let mut models: HashMap<String, (String, HashSet<String>)> = HashMap::new();
        let end = day_end(today);
        for item in table.range(today.as_bytes()..end.as_slice())? {
            let (k, v) = item?;
            let (Some(key), Ok(t)) = (
                UsageKey::decode(k.value()),
                postcard::from_bytes::<Totals>(v.value()),
            ) else {
                continue;
            };
            if key.day != today {
                continue;
            }
            // Today's names count against today's cap after a restart too.
            let seen = models
                .entry(key.provider.clone())
                .or_insert_with(|| (today.to_string(), HashSet::new()));
            if valid_model(&key.model)
                && key.model != UNKNOWN_MODEL
                && seen.1.len() < MAX_MODELS_PER_PROVIDER_DAY
            {
                seen.1.insert(key.model.clone());
            }
            let e = spent
                .entry(key.key_id)
                .or_insert_with(|| (today.to_string(), 0));
            e.1 =
                e.1.saturating_add(t.input_tokens.saturating_add(t.output_tokens));
        }
        Ok(UsageBook {
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                spent,
                models,
            }),
            gate: Mutex::new(()),
        })
    }

    /// Counts one finished request (under [`OTHER_MODEL`] when its model
    /// name is not one or its provider's cap for the day is reached).
    pub fn record(&self, mut key: UsageKey, usage: &Usage, error: bool) {
        let tokens = usage.input_tokens.saturating_add(usage.output_tokens);
        let mut inner = lock(&self.inner);
        key.model = inner.bounded_model(&key.day, &key.provider, std::mem::take(&mut key.model));
        // Looked up before inserting: a key seen before costs no clone.
        match inner.spent.get_mut(&key.key_id) {
            Some(spent) => {
                if spent.0 != key.day {
                    *spent = (key.day.clone(), 0);
                }
                spent.1 = spent.1.saturating_add(tokens);
            }
            None => {
                inner
                    .spent
                    .insert(key.key_id.clone(), (key.day.clone(), tokens));
            }
        }
        inner.pending.entry(key).or_default().add(&Totals {
            requests: 1,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            errors: u64::from(error),
        });
    }

    /// Tokens `key_id` has spent on `day` (`YYYY-MM-DD`).
    pub fn spent(&self, key_id: &str, day: &str) -> u64 {
        lock(&self.inner)
            .spent
            .get(key_id)
            .filter(|(d, _)| d == day)
            .map_or(0, |(_, n)| *n)
    }

    /// Adds the pending counts to `usage_daily` in one write transaction;
    /// how many rows were written. On failure nothing is lost: the counts
    /// stay pending for the next flush.
    pub fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let _gate = lock(&self.gate);
        let snapshot: Vec<(UsageKey, Totals)> = lock(&self.inner)
            .pending
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        if snapshot.is_empty() {
            return Ok(0);
        }
        let txn = store.db().begin_write()?;
        {
            let mut table = txn.open_table(USAGE_DAILY)?;
            for (k, delta) in &snapshot {
                let enc = k.encode();
                // A row that does not decode is replaced, not added to:
                // better a restarted count than no accounting at all.
                let mut row = table
                    .get(enc.as_slice())?
                    .and_then(|v| postcard::from_bytes::<Totals>(v.value()).ok())
                    .unwrap_or_default();
                row.add(delta);
                let bytes = postcard::to_allocvec(&row).map_err(|e| {
                    StoreError::Db(redb::Error::Corrupted(format!("usage row: {e}")))
                })?;
                table.insert(enc.as_slice(), bytes.as_slice())?;
            }
        }
        txn.commit()?;
        let mut inner = lock(&self.inner);
        for (k, delta) in &snapshot {
            if let Some(t) = inner.pending.get_mut(k) {
                t.sub(delta);
                if t.is_zero() {
                    inner.pending.remove(k);
                }
            }
        }
        Ok(snapshot.len())
    }

    /// Stored and pending totals matching `q`, sorted by day, key,
    /// provider, model.
    pub fn query(&self, store: &Store, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let (txn, pending) = {
            let _gate = lock(&self.gate);
            let txn = store.db().begin_read()?;
            let pending: Vec<(UsageKey, Totals)> = lock(&self.inner)
                .pending
                .iter()
                .filter(|(k, _)| q.matches(k))
                .map(|(k, t)| (k.clone(), *t))
                .collect();
            (txn, pending)
        };
        let mut rows: BTreeMap<UsageKey, Totals> = BTreeMap::new();
        let table = txn.open_table(USAGE_DAILY)?;
        let start = q.from.as_bytes().to_vec();
        let end = day_end(&q.to);
        for item in table.range(start.as_slice()..end.as_slice())? {
            let (k, v) = item?;
            let (Some(key), Ok(t)) = (
                UsageKey::decode(k.value()),
                postcard::from_bytes::<Totals>(v.value()),
            ) else {
                continue;
            };
            if q.matches(&key) {
                rows.entry(key).or_default().add(&t);
            }
        }
        for (k, t) in pending {
            rows.entry(k).or_default().add(&t);
        }
        Ok(rows
            .into_iter()
            .map(|(k, totals)| UsageRow {
                day: k.day,
                key_id: k.key_id,
                provider: k.provider,
                model: k.model,
                totals,
            })
            .collect())
    }
}

/// The first key past day `to`: `to‖0x01` (every key of that day continues
/// with 0x00).
fn day_end(to: &str) -> Vec<u8> {
    let mut end = to.as_bytes().to_vec();
    end.push(1);
    end
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
            let body = format!(
                r#"{{"model":"m","usage":{{"prompt_tokens":{bad},"completion_tokens":2}}}}"#
            );
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
        };
        assert_eq!(
            postcard::to_allocvec(&totals).expect("encode"),
            [1, 0xac, 0x02, 2, 0]
        );
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
                errors: 1
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
}
