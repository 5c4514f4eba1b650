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
//! With several replicas each flushes only its own counts (added to the
//! stored row inside one write transaction, serialized across replicas:
//! nothing is lost or counted twice), and every flush then sets each key's
//! spent tokens to the stored totals plus its own pending counts, so a
//! budget also sees what other replicas counted, at most two flush
//! intervals late (theirs to write it, ours to read it).
//!
//! The model name comes from the upstream (which may echo the client's
//! request), so it is never trusted as a key as is: a name that is not a
//! plausible model name ([`valid_model`]) and every name past the first
//! [`MAX_MODELS_PER_PROVIDER_DAY`] of a provider on one UTC day count under
//! [`OTHER_MODEL`]. Rows per day are thus bounded by keys × providers ×
//! (cap + 2), in memory and in `usage_daily`. The other maps are keyed by
//! API key ids and configured provider names only.
//!
//! The parser of response bodies is `parse.rs`; this module holds the
//! totals.

mod parse;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "fuzzing"))]
pub use parse::reference_usage;
pub(crate) use parse::starts_with_ignore_case;
pub use parse::{Usage, UsageParser};

use crate::store::{Store, StoreError};
use latchkey_migrations::v3::USAGE_DAILY;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

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

/// The totals' key: one row of `usage_daily` per UTC day, API key,
/// provider and model.
///
/// Encoded (schema v3) as the bytes `DAY 0x00 KEY_ID 0x00 PROVIDER 0x00
/// MODEL`: `DAY` is `YYYY-MM-DD` in ASCII, so keys sort by day first and
/// the rows of days `from..=to` are the byte range `from ..
/// to‖0x01`; the other parts are UTF-8 and never hold a NUL (key ids and
/// provider names cannot; a model name's NULs are replaced by `?` when it
/// is read from a response).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
/// order (all varint u64). The last three came with realtime sessions
/// (issue #21) and are appended, so rows written before them decode as
/// [`TotalsV3`] with zeros there ([`Totals::decode`]), and an older
/// binary reading a newer row reads the first four and ignores the rest
/// (postcard does not require the input to be used up).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Requests; a realtime session counts one for each response that
    /// reported usage, or one if none did.
    pub requests: u64,
    /// Input tokens, audio included.
    pub input_tokens: u64,
    /// Output tokens, audio included.
    pub output_tokens: u64,
    /// Requests the upstream answered with a status of 400 or more.
    pub errors: u64,
    /// Of `input_tokens`, audio tokens (OpenAI realtime `response.done`).
    pub audio_input_tokens: u64,
    /// Of `output_tokens`, audio tokens.
    pub audio_output_tokens: u64,
    /// Seconds of realtime sessions (how per-second providers bill).
    pub session_seconds: u64,
}

/// A row as written before realtime sessions (schema v3's first layout).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct TotalsV3 {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    errors: u64,
}

impl Totals {
    /// A stored row, in either layout; `None` when it is neither.
    pub fn decode(bytes: &[u8]) -> Option<Totals> {
        postcard::from_bytes::<Totals>(bytes).ok().or_else(|| {
            let t = postcard::from_bytes::<TotalsV3>(bytes).ok()?;
            Some(Totals {
                requests: t.requests,
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                errors: t.errors,
                ..Totals::default()
            })
        })
    }

    fn add(&mut self, o: &Totals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.errors = self.errors.saturating_add(o.errors);
        self.audio_input_tokens = self.audio_input_tokens.saturating_add(o.audio_input_tokens);
        self.audio_output_tokens = self
            .audio_output_tokens
            .saturating_add(o.audio_output_tokens);
        self.session_seconds = self.session_seconds.saturating_add(o.session_seconds);
    }

    fn sub(&mut self, o: &Totals) {
        self.requests = self.requests.saturating_sub(o.requests);
        self.input_tokens = self.input_tokens.saturating_sub(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(o.output_tokens);
        self.errors = self.errors.saturating_sub(o.errors);
        self.audio_input_tokens = self.audio_input_tokens.saturating_sub(o.audio_input_tokens);
        self.audio_output_tokens = self
            .audio_output_tokens
            .saturating_sub(o.audio_output_tokens);
        self.session_seconds = self.session_seconds.saturating_sub(o.session_seconds);
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

/// Hashed with Fx, not SipHash: every proxied request hashes its key
/// here three times, and SipHash of the four strings was ~1.5 % of its
/// instructions. Flooding needs many entries a client chooses; these are
/// keyed by key ids and provider names (ours) and by at most
/// [`MAX_MODELS_PER_PROVIDER_DAY`] model names per provider and day.
#[derive(Debug, Default)]
struct Inner {
    /// Counts not yet written to `usage_daily` (added to the stored row on
    /// flush).
    pending: FxHashMap<UsageKey, Totals>,
    /// Per key: the UTC day and the tokens (input + output) spent on it,
    /// stored and pending alike — what budgets are checked against.
    spent: FxHashMap<String, (String, u64)>,
    /// Per provider: the UTC day and the model names counted as themselves
    /// on it (at most [`MAX_MODELS_PER_PROVIDER_DAY`]).
    models: FxHashMap<String, (String, FxHashSet<String>)>,
    /// A key assembled from borrowed parts to look a row up
    /// ([`UsageBook::record_request`]); its strings keep their capacity,
    /// so a row counted before costs no allocation.
    probe: UsageKey,
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
                .or_insert_with(|| (day.to_owned(), FxHashSet::default())),
        };
        if seen.0 != day {
            *seen = (day.to_owned(), FxHashSet::default());
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

/// Asked for on every proxied request, while the answer changes once a
/// day: the last day's text is kept (the calendar arithmetic and
/// formatting were ~1 % of a request's instructions).
static LAST: Mutex<Option<(i64, String)>> = Mutex::new(None);

/// Calls `f` with [`day_of`]`(unix)` without allocating it: the cached
/// text is copied to the stack (the cache's lock is not held while `f`
/// runs, so `f` may take other locks).
pub fn with_day<R>(unix: i64, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 32];
    let copied = {
        let day = unix.div_euclid(86_400);
        let last = lock(&LAST);
        last.as_ref()
            .filter(|(d, _)| *d == day)
            .and_then(|(_, text)| {
                let slot = buf.get_mut(..text.len())?;
                slot.copy_from_slice(text.as_bytes());
                Some(text.len())
            })
    };
    match copied.and_then(|n| std::str::from_utf8(buf.get(..n)?).ok()) {
        Some(day) => f(day),
        // Not cached yet (the day's first call): made, and cached, here.
        None => f(&day_of(unix)),
    }
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
        let txn = store.begin_read()?;
        let mut spent: FxHashMap<String, (String, u64)> = FxHashMap::default();
        let mut models: FxHashMap<String, (String, FxHashSet<String>)> = FxHashMap::default();
        each_row(&txn, today, today, |key, t| {
            if key.day != today {
                return;
            }
            // Today's names count against today's cap after a restart too.
            let seen = models
                .entry(key.provider.clone())
                .or_insert_with(|| (today.to_string(), FxHashSet::default()));
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
        })?;
        Ok(UsageBook {
            inner: Mutex::new(Inner {
                pending: FxHashMap::default(),
                spent,
                models,
                probe: UsageKey::default(),
            }),
            gate: Mutex::new(()),
        })
    }

    /// Counts one finished request (under [`OTHER_MODEL`] when its model
    /// name is not one or its provider's cap for the day is reached).
    pub fn record(&self, key: UsageKey, usage: &Usage, error: bool) {
        let UsageKey {
            day,
            key_id,
            provider,
            model,
        } = key;
        self.record_request(&day, &key_id, &provider, model, usage, error);
    }

    /// [`UsageBook::record`] from borrowed parts (the proxy's hot path):
    /// a row counted before is found through a reused probe key, so only
    /// a new row copies the parts.
    pub fn record_request(
        &self,
        day: &str,
        key_id: &str,
        provider: &str,
        model: String,
        usage: &Usage,
        error: bool,
    ) {
        let tokens = usage.input_tokens.saturating_add(usage.output_tokens);
        let mut inner = lock(&self.inner);
        let model = inner.bounded_model(day, provider, model);
        // Looked up before inserting: a key seen before costs no clone.
        match inner.spent.get_mut(key_id) {
            Some(spent) => {
                if spent.0 != day {
                    *spent = (day.to_owned(), 0);
                }
                spent.1 = spent.1.saturating_add(tokens);
            }
            None => {
                inner
                    .spent
                    .insert(key_id.to_owned(), (day.to_owned(), tokens));
            }
        }
        let add = Totals {
            requests: 1,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            errors: u64::from(error),
            ..Totals::default()
        };
        let Inner { pending, probe, .. } = &mut *inner;
        for (slot, part) in [
            (&mut probe.day, day),
            (&mut probe.key_id, key_id),
            (&mut probe.provider, provider),
            (&mut probe.model, model.as_str()),
        ] {
            slot.clear();
            slot.push_str(part);
        }
        match pending.get_mut(probe) {
            Some(totals) => totals.add(&add),
            None => {
                let key = UsageKey {
                    day: day.to_owned(),
                    key_id: key_id.to_owned(),
                    provider: provider.to_owned(),
                    model,
                };
                pending.insert(key, add);
            }
        }
    }

    /// Counts what a realtime session reported (see [`Totals`]): its
    /// tokens go against the key's budget like any request's.
    pub fn record_totals(&self, mut key: UsageKey, totals: &Totals) {
        let tokens = totals.input_tokens.saturating_add(totals.output_tokens);
        let mut inner = lock(&self.inner);
        key.model = inner.bounded_model(&key.day, &key.provider, std::mem::take(&mut key.model));
        let spent = inner
            .spent
            .entry(key.key_id.clone())
            .or_insert_with(|| (key.day.clone(), 0));
        if spent.0 != key.day {
            *spent = (key.day.clone(), 0);
        }
        spent.1 = spent.1.saturating_add(tokens);
        inner.pending.entry(key).or_default().add(totals);
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
        self.flush_on(store, &day_of(crate::auth::service::now()))
    }

    /// [`UsageBook::flush`] when it is `today` (`YYYY-MM-DD`): then what
    /// each key spent on it, through every replica, is read back.
    pub fn flush_on(&self, store: &Store, today: &str) -> Result<usize, StoreError> {
        let _gate = lock(&self.gate);
        let snapshot: Vec<(UsageKey, Totals)> = lock(&self.inner)
            .pending
            .iter()
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        if snapshot.is_empty() {
            if store.is_shared() {
                self.refresh_spent(store, today)?;
            }
            return Ok(0);
        }
        let txn = store.begin_write()?;
        {
            let mut table = txn.open_table(USAGE_DAILY)?;
            for (k, delta) in &snapshot {
                let enc = k.encode();
                // A row that does not decode is replaced, not added to:
                // better a restarted count than no accounting at all.
                let mut row = table
                    .get(enc.as_slice())?
                    .and_then(|v| Totals::decode(v.value()))
                    .unwrap_or_default();
                row.add(delta);
                let bytes = postcard::to_allocvec(&row)
                    .map_err(|e| StoreError::BadRow(format!("usage row: {e}")))?;
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
        drop(inner);
        self.refresh_spent(store, today)?;
        Ok(snapshot.len())
    }

    /// Sets what each key spent on `today` to the stored totals (every
    /// replica's flushed counts) plus this replica's pending ones, so a
    /// budget counts what the key spent through the other replicas too.
    /// Runs inside a flush (the gate held): nothing of this book is
    /// between pending and stored meanwhile.
    fn refresh_spent(&self, store: &Store, today: &str) -> Result<(), StoreError> {
        let mut stored: FxHashMap<String, u64> = FxHashMap::default();
        {
            let txn = store.begin_read()?;
            let table = txn.open_table(USAGE_DAILY)?;
            let end = day_end(today);
            for item in table.range(today.as_bytes()..end.as_slice())? {
                let (k, v) = item?;
                if let (Some(key), Some(t)) =
                    (UsageKey::decode(k.value()), Totals::decode(v.value()))
                    && key.day == today
                {
                    let n = stored.entry(key.key_id).or_default();
                    *n = n.saturating_add(t.input_tokens.saturating_add(t.output_tokens));
                }
            }
        }
        let mut inner = lock(&self.inner);
        for (k, t) in &inner.pending {
            if k.day == today {
                let n = stored.entry(k.key_id.clone()).or_default();
                *n = n.saturating_add(t.input_tokens.saturating_add(t.output_tokens));
            }
        }
        inner.spent = stored
            .into_iter()
            .map(|(key, n)| (key, (today.to_owned(), n)))
            .collect();
        Ok(())
    }

    /// Stored and pending totals matching `q`, sorted by day, key,
    /// provider, model.
    pub fn query(&self, store: &Store, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let (txn, pending) = {
            let _gate = lock(&self.gate);
            let txn = store.begin_read()?;
            let pending: Vec<(UsageKey, Totals)> = lock(&self.inner)
                .pending
                .iter()
                .filter(|(k, _)| q.matches(k))
                .map(|(k, t)| (k.clone(), *t))
                .collect();
            (txn, pending)
        };
        let mut rows: BTreeMap<UsageKey, Totals> = BTreeMap::new();
        each_row(&txn, &q.from, &q.to, |key, t| {
            if q.matches(&key) {
                rows.entry(key).or_default().add(&t);
            }
        })?;
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

/// Each row of `usage_daily` of days `from..=to`, decoded; a row that does
/// not decode is skipped.
fn each_row(
    txn: &crate::store::ReadTxn,
    from: &str,
    to: &str,
    mut each: impl FnMut(UsageKey, Totals),
) -> Result<(), StoreError> {
    let table = txn.open_table(USAGE_DAILY)?;
    let end = day_end(to);
    for item in table.range(from.as_bytes()..end.as_slice())? {
        let (k, v) = item?;
        if let (Some(key), Some(t)) = (UsageKey::decode(k.value()), Totals::decode(v.value())) {
            each(key, t);
        }
    }
    Ok(())
}

/// The first key past day `to`: `to‖0x01` (every key of that day continues
/// with 0x00).
fn day_end(to: &str) -> Vec<u8> {
    let mut end = to.as_bytes().to_vec();
    end.push(1);
    end
}
