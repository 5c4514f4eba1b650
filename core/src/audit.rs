//! The append-only audit log: who did what, when, from where, and how it
//! ended. Stored in the `audit` table under an increasing sequence
//! number; entries are never updated, only pruned past the retention period.
//! Never holds a secret: callers pass names and ids, not values.

use crate::store::{Store, StoreError, WriteTxn};
use latchkey_migrations::v2::AUDIT;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Sequence number (set when written).
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// Who acted: a username, `key:<id>`, `host` (the CLI on the machine),
    /// or `anonymous`.
    pub actor: String,
    /// What happened, e.g. `login`, `login.mfa`, `lockout`, `token.reuse`.
    pub action: String,
    /// What it happened to (a username, key id, vault entry name), if any.
    pub target: Option<String>,
    pub outcome: Outcome,
    pub ip: Option<String>,
    /// A short reason, e.g. `wrong_password`. Never a secret.
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn new(actor: impl Into<String>, action: impl Into<String>, outcome: Outcome) -> Self {
        AuditEvent {
            seq: 0,
            at: time::OffsetDateTime::now_utc().unix_timestamp(),
            actor: actor.into(),
            action: action.into(),
            target: None,
            outcome,
            ip: None,
            detail: None,
        }
    }

    pub fn target(mut self, t: impl Into<String>) -> Self {
        self.target = Some(t.into());
        self
    }

    pub fn ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.ip = ip.map(|i| i.to_string());
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

/// Filters for reading the log (all optional, combined with AND).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    /// Only entries with a sequence number below this (paging backwards).
    pub before: Option<u64>,
    /// Only entries with a sequence number above this (tailing).
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

pub const MAX_PAGE: usize = 500;

fn decode(bytes: &[u8]) -> Result<AuditEvent, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::BadRow(format!("audit entry: {e}")))
}

/// Longest actor, target or IP stored, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest action stored, in characters.
pub const MAX_ACTION_CHARS: usize = 64;
/// Longest detail stored, in characters.
pub const MAX_DETAIL_CHARS: usize = 256;

/// Characters that act on whoever displays the text (a terminal, a log
/// viewer): control characters, line and paragraph separators,
/// bidirectional overrides and zero-width marks.
fn acts_on_display(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// `s` as it may be stored in the log: at most `max_chars` characters
/// (the cut marked with `…`), every character that acts on a display
/// replaced by U+FFFD. Audit fields come from the network (a failed
/// sign-in's username, a user agent): unbounded or raw they would let a
/// client grow the log at will or forge lines in whatever shows it.
pub fn clean(s: &str, max_chars: usize) -> String {
    let too_long = s.chars().nth(max_chars).is_some();
    let keep = if too_long {
        max_chars.saturating_sub(1)
    } else {
        max_chars
    };
    let mut out: String = s
        .chars()
        .take(keep)
        .map(|c| if acts_on_display(c) { '\u{FFFD}' } else { c })
        .collect();
    if too_long {
        out.push('…');
    }
    out
}

impl AuditEvent {
    /// Every field capped and cleaned (see [`clean`]); done to each event
    /// as it is written, whoever built it.
    fn cleaned(mut self) -> Self {
        self.actor = clean(&self.actor, MAX_NAME_CHARS);
        self.action = clean(&self.action, MAX_ACTION_CHARS);
        self.target = self.target.map(|t| clean(&t, MAX_NAME_CHARS));
        self.ip = self.ip.map(|t| clean(&t, MAX_NAME_CHARS));
        self.detail = self.detail.map(|t| clean(&t, MAX_DETAIL_CHARS));
        self
    }
}

/// Appends `event` inside an existing write transaction (so an audited
/// change and its audit entry commit together). Its fields are capped and
/// cleaned first (see [`clean`]).
pub fn append_in(txn: &WriteTxn, event: AuditEvent) -> Result<u64, StoreError> {
    let mut event = event.cleaned();
    let mut t = txn.open_table(AUDIT)?;
    let next = match t.last()? {
        Some((k, _)) => k
            .value()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(0)
            .saturating_add(1),
        None => 1,
    };
    event.seq = next;
    let bytes = postcard::to_allocvec(&event)
        .map_err(|e| StoreError::BadRow(format!("audit encode: {e}")))?;
    t.insert(next.to_be_bytes().as_slice(), bytes.as_slice())?;
    Ok(next)
}

/// Appends `event` in its own transaction.
pub fn append(store: &Store, event: AuditEvent) -> Result<u64, StoreError> {
    let txn = store.begin_write()?;
    let seq = append_in(&txn, event)?;
    txn.commit()?;
    Ok(seq)
}

/// Newest first (or oldest first when tailing with `after`), filtered.
pub fn query(store: &Store, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let txn = store.begin_read()?;
    let t = txn.open_table(AUDIT)?;
    let matches = |e: &AuditEvent| {
        q.actor.as_deref().is_none_or(|a| e.actor == a)
            && q.action
                .as_deref()
                .is_none_or(|a| e.action == a || e.action.starts_with(&format!("{a}.")))
            && q.outcome.is_none_or(|o| e.outcome == o)
    };
    let mut out = Vec::new();
    if let Some(after) = q.after {
        let start = after.saturating_add(1).to_be_bytes();
        for item in t.range(start.as_slice()..)? {
            let (_, v) = item?;
            let e = decode(v.value())?;
            if matches(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        return Ok(out);
    }
    let end = q.before.unwrap_or(u64::MAX).to_be_bytes();
    for item in t.range(..end.as_slice())?.rev() {
        let (_, v) = item?;
        let e = decode(v.value())?;
        if matches(&e) {
            out.push(e);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Deletes entries older than `keep_secs`; returns how many.
pub fn prune(store: &Store, keep_secs: i64, now: i64) -> Result<usize, StoreError> {
    let cutoff = now.saturating_sub(keep_secs);
    let txn = store.begin_write()?;
    let mut removed = 0;
    {
        let mut t = txn.open_table(AUDIT)?;
        let mut old = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if decode(v.value())?.at >= cutoff {
                break; // sequence order is time order
            }
            old.push(k.value().to_vec());
        }
        for k in &old {
            t.remove(k.as_slice())?;
            removed += 1;
        }
    }
    txn.commit()?;
    Ok(removed)
}

/// The entries the vault's operations leave, built in one place so that
/// every entry point records the same thing: the API's handlers
/// (`http::vault`) and the host's offline commands (`crate::app`, actor
/// `host`). Values never appear, only names and counts.
pub mod vault_events {
    use super::{AuditEvent, Outcome};
    use std::net::IpAddr;

    /// `vault.put`, detail `created` or `replaced`.
    pub fn put(actor: &str, name: &str, replaced: bool, ip: Option<IpAddr>) -> AuditEvent {
        AuditEvent::new(actor, "vault.put", Outcome::Success)
            .target(name)
            .ip(ip)
            .detail(if replaced { "replaced" } else { "created" })
    }

    /// `vault.delete`, detail `deleted`.
    pub fn delete(actor: &str, name: &str, ip: Option<IpAddr>) -> AuditEvent {
        AuditEvent::new(actor, "vault.delete", Outcome::Success)
            .target(name)
            .ip(ip)
            .detail("deleted")
    }

    /// `vault.reveal`: a value was read.
    pub fn reveal(actor: &str, name: &str, ip: Option<IpAddr>) -> AuditEvent {
        AuditEvent::new(actor, "vault.reveal", Outcome::Success)
            .target(name)
            .ip(ip)
    }

    /// How `backup.create` names where a backup was encrypted to: `to a
    /// passphrase`, `to recipient age1…`.
    pub fn backup_to(to: &crate::backup::BackupRecipient) -> String {
        match to {
            crate::backup::BackupRecipient::Passphrase(_) => "to a passphrase".to_string(),
            crate::backup::BackupRecipient::Recipient(r) => format!("to recipient {r}"),
        }
    }

    /// `backup.create`: `to` says to what ([`backup_to`]).
    pub fn backup(actor: &str, to: &str, records: usize, ip: Option<IpAddr>) -> AuditEvent {
        AuditEvent::new(actor, "backup.create", Outcome::Success)
            .ip(ip)
            .detail(format!("{to}, {records} vault record(s)"))
    }
}

/// The entry `latchkey store migrate` records in the destination and in
/// the source once a copy is verified: where from, where to (a PostgreSQL
/// URL without its password), how much.
pub mod store_events {
    use super::{AuditEvent, Outcome};
    use crate::store::migrate::Migrated;

    /// `store.migrate`, target the destination.
    pub fn migrated(actor: &str, from: &str, m: &Migrated) -> AuditEvent {
        AuditEvent::new(actor, "store.migrate", Outcome::Success)
            .target(m.destination.clone())
            .detail(format!(
                "from {from}: {} tables, {} rows, verified",
                m.report.tables.len(),
                m.report.rows()
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_fields_are_capped_and_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "cli").expect("store");
        let forged = "x\n    99  2026-01-01T00:00:00Z  success  login  owner\x1b[2K\u{202E}";
        let huge = "a".repeat(1_000_000);
        append(
            &store,
            AuditEvent::new(format!("{forged}{huge}"), "login", Outcome::Failure)
                .target(forged)
                .detail(huge.clone()),
        )
        .expect("append");
        let e = &query(&store, &AuditQuery::default()).expect("q")[0];
        for field in [
            &e.actor,
            e.target.as_ref().expect("t"),
            e.detail.as_ref().expect("d"),
        ] {
            assert!(!field.chars().any(acts_on_display), "{field:?}");
            assert!(field.chars().count() <= MAX_DETAIL_CHARS, "{}", field.len());
        }
        assert_eq!(e.actor.chars().count(), MAX_NAME_CHARS);
        assert!(e.actor.ends_with('…') && e.actor.starts_with("x\u{FFFD}    99"));
        assert_eq!(clean("owner", 128), "owner");
        assert_eq!(clean("abc", 3), "abc");
        assert_eq!(clean("abcd", 3), "ab…");
    }

    #[test]
    fn append_query_filter_page_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "cli").expect("store");
        for i in 0..10 {
            let mut e = AuditEvent::new(
                if i % 2 == 0 { "alice" } else { "bob" },
                if i < 5 { "login" } else { "login.mfa" },
                if i == 3 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
            );
            e.at = 1000 + i;
            append(&store, e).expect("append");
        }
        let all = query(&store, &AuditQuery::default()).expect("q");
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].seq, 10, "newest first");
        let alice = query(
            &store,
            &AuditQuery {
                actor: Some("alice".into()),
                ..Default::default()
            },
        )
        .expect("q");
        assert!(alice.iter().all(|e| e.actor == "alice") && alice.len() == 5);
        let fails = query(
            &store,
            &AuditQuery {
                outcome: Some(Outcome::Failure),
                ..Default::default()
            },
        )
        .expect("q");
        assert_eq!(fails.len(), 1);
        let logins = query(
            &store,
            &AuditQuery {
                action: Some("login".into()),
                ..Default::default()
            },
        )
        .expect("q");
        assert_eq!(logins.len(), 10, "prefix match includes login.mfa");
        let page = query(
            &store,
            &AuditQuery {
                before: Some(4),
                limit: Some(2),
                ..Default::default()
            },
        )
        .expect("q");
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2]);
        let tail = query(
            &store,
            &AuditQuery {
                after: Some(8),
                ..Default::default()
            },
        )
        .expect("q");
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![9, 10]);
        assert_eq!(prune(&store, 5, 1010).expect("prune"), 5);
        assert_eq!(query(&store, &AuditQuery::default()).expect("q").len(), 5);
    }

    #[test]
    fn an_entry_that_does_not_decode_is_a_bad_row_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "cli").expect("store");
        append(&store, AuditEvent::new("alice", "login", Outcome::Success)).expect("append");
        let txn = store.begin_write().expect("write");
        txn.open_table(AUDIT)
            .expect("audit")
            .insert(
                2u64.to_be_bytes().as_slice(),
                b"\xff\xff not postcard canary",
            )
            .expect("insert");
        txn.commit().expect("commit");
        let err = query(&store, &AuditQuery::default()).expect_err("damaged");
        assert!(matches!(err, StoreError::BadRow(_)), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("audit entry"), "{shown}");
        assert!(!shown.contains("canary"), "the row is not echoed: {shown}");
        // The next append still numbers after the damaged row.
        let seq =
            append(&store, AuditEvent::new("bob", "login", Outcome::Success)).expect("append");
        assert_eq!(seq, 3);
    }
}
