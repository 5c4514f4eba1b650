//! Usage of a realtime session, read from the upstream's text messages as
//! they pass (each kept, up to [`MAX_EVENT`] bytes, only until it ends;
//! nothing is held back from the client).
//!
//! Understood: OpenAI's Realtime API — `session.created`/`session.updated`
//! name the model (`session.model`), and every `response.done` carries
//! `response.usage` with `input_tokens`, `output_tokens` and, inside
//! `input_token_details`/`output_token_details`, `audio_tokens` (the rest
//! is text). Each response is counted when its `response.done` passes, so
//! budgets see it at once. Every session also counts its length in
//! seconds ([`Totals::session_seconds`]), how the per-second providers
//! (Deepgram, ElevenLabs, Cartesia) bill, and one request when it ends.

use super::super::json_scan;
use super::super::usage::{Totals, UNKNOWN_MODEL, UsageKey, day_of};
use super::super::{Proxy, Route};
use crate::net::wsframe;
use std::sync::Arc;
use std::time::Duration;

/// Largest server event read for usage; larger ones pass unread.
pub const MAX_EVENT: usize = 1024 * 1024;

/// The counts of one `response.done`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub audio_input_tokens: u64,
    pub audio_output_tokens: u64,
}

/// What one server event says about cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealtimeEvent {
    /// The session's model (`session.created`, `session.updated`).
    Model(String),
    /// A finished response's usage (`response.done`).
    Usage(ResponseUsage),
}

/// Reads one server event (a JSON object); `None` for anything that
/// carries no usage.
pub fn read_event(json: &[u8]) -> Option<RealtimeEvent> {
    let (mut kind, mut session, mut response) = (None, None, None);
    let whole = json_scan::members(json, |k, v| match k {
        b"type" => kind = json_scan::string(v),
        b"session" => session = Some(v),
        b"response" => response = Some(v),
        _ => {}
    });
    if !whole {
        return None;
    }
    match kind.as_deref()? {
        "session.created" | "session.updated" => {
            let mut model = None;
            json_scan::members(session?, |k, v| {
                if k == b"model" {
                    model = json_scan::string(v);
                }
            })
            .then_some(())?;
            model.map(RealtimeEvent::Model)
        }
        "response.done" => {
            let mut usage = None;
            json_scan::members(response?, |k, v| {
                if k == b"usage" {
                    usage = Some(v);
                }
            })
            .then_some(())?;
            let mut u = ResponseUsage::default();
            let (mut input_details, mut output_details) = (None, None);
            json_scan::members(usage?, |k, v| match k {
                b"input_tokens" => u.input_tokens = json_scan::count(v).unwrap_or(0),
                b"output_tokens" => u.output_tokens = json_scan::count(v).unwrap_or(0),
                b"input_token_details" => input_details = Some(v),
                b"output_token_details" => output_details = Some(v),
                _ => {}
            })
            .then_some(())?;
            let audio = |details: Option<&[u8]>| {
                let mut n = 0;
                if let Some(d) = details {
                    json_scan::members(d, |k, v| {
                        if k == b"audio_tokens" {
                            n = json_scan::count(v).unwrap_or(0);
                        }
                    });
                }
                n
            };
            // Audio is part of the totals; a detail larger than its total
            // is not believed past it.
            u.audio_input_tokens = audio(input_details).min(u.input_tokens);
            u.audio_output_tokens = audio(output_details).min(u.output_tokens);
            Some(RealtimeEvent::Usage(u))
        }
        _ => None,
    }
}

/// The usage tap of one session.
pub(super) struct Meter {
    proxy: Arc<Proxy>,
    route: Arc<Route>,
    key_id: String,
    model: Option<String>,
    /// The text message being read, while it fits.
    msg: Vec<u8>,
    text: bool,
    overflow: bool,
}

impl Meter {
    /// `model`: the client's `?model=` if it named one (a later
    /// `session.created` replaces it).
    pub fn new(
        proxy: Arc<Proxy>,
        route: Arc<Route>,
        key_id: String,
        model: Option<String>,
    ) -> Self {
        Meter {
            proxy,
            route,
            key_id,
            model,
            msg: Vec::new(),
            text: false,
            overflow: false,
        }
    }

    pub fn start_message(&mut self, opcode: u8) {
        self.msg.clear();
        self.text = opcode == wsframe::TEXT;
        self.overflow = false;
    }

    /// Payload of the current message (a server's frames are unmasked).
    pub fn payload(&mut self, data: &[u8]) {
        if !self.text || self.overflow {
            return;
        }
        if self.msg.len() + data.len() > MAX_EVENT {
            self.overflow = true;
            self.msg = Vec::new();
            return;
        }
        self.msg.extend_from_slice(data);
    }

    pub fn end_message(&mut self) {
        if self.text && !self.overflow {
            match read_event(&self.msg) {
                Some(RealtimeEvent::Model(m)) => self.model = Some(m),
                Some(RealtimeEvent::Usage(u)) => self.record(&Totals {
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                    audio_input_tokens: u.audio_input_tokens,
                    audio_output_tokens: u.audio_output_tokens,
                    ..Totals::default()
                }),
                None => {}
            }
        }
        self.msg.clear();
        // An idle session keeps no large buffer.
        if self.msg.capacity() > 64 * 1024 {
            self.msg = Vec::new();
        }
    }

    fn record(&self, t: &Totals) {
        let key = UsageKey {
            day: day_of(crate::auth::service::now()),
            key_id: self.key_id.clone(),
            provider: self.route.provider.name.clone(),
            model: self
                .model
                .clone()
                .unwrap_or_else(|| UNKNOWN_MODEL.to_owned()),
        };
        self.route.stats.tokens(t.input_tokens, t.output_tokens);
        self.proxy.usage.record_totals(key, t);
    }

    /// The session ended after `length`: one request and its seconds
    /// (rounded up).
    pub fn finish(self, length: Duration) {
        let secs = length.as_secs() + u64::from(length.subsec_nanos() > 0);
        self.record(&Totals {
            requests: 1,
            session_seconds: secs,
            ..Totals::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_usage_and_model_are_read() {
        let done = br#"{"type":"response.done","event_id":"event_1","response":{"id":"resp_1","status":"completed","output":[{"type":"message","content":[{"type":"audio","transcript":"Hi \"there\""}]}],"usage":{"total_tokens":345,"input_tokens":120,"output_tokens":225,"input_token_details":{"cached_tokens":0,"text_tokens":20,"audio_tokens":100},"output_token_details":{"text_tokens":25,"audio_tokens":200}}}}"#;
        assert_eq!(
            read_event(done),
            Some(RealtimeEvent::Usage(ResponseUsage {
                input_tokens: 120,
                output_tokens: 225,
                audio_input_tokens: 100,
                audio_output_tokens: 200,
            }))
        );
        let created = br#"{"event_id":"e","type":"session.created","session":{"id":"sess_1","model":"gpt-4o-realtime-preview","voice":"alloy"}}"#;
        assert_eq!(
            read_event(created),
            Some(RealtimeEvent::Model("gpt-4o-realtime-preview".into()))
        );
    }

    #[test]
    fn other_and_broken_events_count_nothing() {
        for e in [
            &br#"{"type":"response.audio.delta","delta":"AAAA"}"#[..],
            br#"{"type":"response.done","response":{"usage":{"input_tokens":1"#,
            br#"{"type":"response.done"}"#,
            br#"[1,2]"#,
            b"",
            br#"{"type":7}"#,
        ] {
            assert_eq!(read_event(e), None, "{}", String::from_utf8_lossy(e));
        }
        // Audio larger than its total is capped at the total; odd counts
        // count as zero.
        let odd = br#"{"type":"response.done","response":{"usage":{"input_tokens":5,"output_tokens":-1,"input_token_details":{"audio_tokens":9}}}}"#;
        assert_eq!(
            read_event(odd),
            Some(RealtimeEvent::Usage(ResponseUsage {
                input_tokens: 5,
                output_tokens: 0,
                audio_input_tokens: 5,
                audio_output_tokens: 0,
            }))
        );
    }
}
