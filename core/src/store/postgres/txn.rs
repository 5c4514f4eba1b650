//! One PostgreSQL transaction behind a `ReadTxn` or `WriteTxn`, and the
//! statements a `Table` runs in it.
//!
//! Every store table is the rows of `latchkey_kv` with its name in `tbl`.
//! A read transaction is `REPEATABLE READ READ ONLY` (one snapshot for all
//! its statements). A write transaction first takes the cluster-wide
//! writer lock (`pg_advisory_xact_lock`), so it runs alone across every
//! replica and each of its statements sees everything committed before it
//! (`READ COMMITTED` after the lock: nothing else can commit meanwhile).
//! The lock goes with the transaction: commit, rollback, a dropped
//! transaction, or a dead connection all release it.

use super::pool::{Pooled, wait};
use super::{PgError, WriterTicket};
use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};

/// The advisory lock (two-int key space: no `hashtextextended` name used
/// by `lock_shared` can collide with it) every write transaction takes.
pub(super) const WRITER_LOCK: (i32, i32) = (0x4c4b_0001, 1);

/// Rows fetched per round trip while iterating.
const PAGE: i64 = 256;

/// The NOTIFY channel of the change feed.
pub(super) const CHANNEL: &str = "latchkey_changes";

pub(crate) struct Txn {
    // Dropped in this order: the rollback (in `Drop`), the connection back
    // to the pool, then the in-process writer slot.
    conn: Pooled,
    write: Option<Writes>,
    done: bool,
    _ticket: Option<WriterTicket>,
}

struct Writes {
    /// Tables this transaction changed, announced at commit.
    tables: Mutex<BTreeSet<String>>,
    origin: std::sync::Arc<str>,
}

type Param<'a> = (&'a (dyn ToSql + Sync), Type);
type KeyValue = (Vec<u8>, Vec<u8>);

fn bytes_bound(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Txn {
    pub(super) fn begin_read(conn: Pooled) -> Result<Txn, PgError> {
        let txn = Txn {
            conn,
            write: None,
            done: false,
            _ticket: None,
        };
        txn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        Ok(txn)
    }

    pub(super) fn begin_write(
        conn: Pooled,
        ticket: WriterTicket,
        origin: std::sync::Arc<str>,
    ) -> Result<Txn, PgError> {
        let txn = Txn {
            conn,
            write: Some(Writes {
                tables: Mutex::new(BTreeSet::new()),
                origin,
            }),
            done: false,
            _ticket: Some(ticket),
        };
        // One round trip: both statements in one simple query.
        txn.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}, {})",
            WRITER_LOCK.0, WRITER_LOCK.1
        ))?;
        Ok(txn)
    }

    /// The write transaction already begun on `conn` by whoever holds the
    /// writer lock in it (the schema migration at open, which took the
    /// lock itself): ended by [`Txn::commit`] or a rollback as any other.
    pub(super) fn adopt_write(conn: Pooled, origin: std::sync::Arc<str>) -> Txn {
        Txn {
            conn,
            write: Some(Writes {
                tables: Mutex::new(BTreeSet::new()),
                origin,
            }),
            done: false,
            _ticket: None,
        }
    }

    fn batch(&self, sql: &str) -> Result<(), PgError> {
        wait(self.conn.client()?.batch_execute(sql)).map_err(PgError::from)
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<tokio_postgres::Row>, PgError> {
        wait(self.conn.client()?.query_typed(sql, params)).map_err(PgError::from)
    }

    fn touched(&self, table: &str) {
        if let Some(w) = &self.write {
            let mut t = w.tables.lock().unwrap_or_else(|p| p.into_inner());
            if !t.contains(table) {
                t.insert(table.to_string());
            }
        }
    }

    fn writable(&self) -> Result<(), PgError> {
        if self.write.is_some() {
            Ok(())
        } else {
            Err(PgError::ReadOnly)
        }
    }

    pub(crate) fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, PgError> {
        let rows = self.query(
            "SELECT v FROM latchkey_kv WHERE tbl = $1 AND k = $2",
            &[(&table, Type::TEXT), (&key, Type::BYTEA)],
        )?;
        rows.first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(PgError::from)
    }

    /// Stores `value` under `key`; the value it replaced.
    pub(crate) fn insert(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, PgError> {
        self.writable()?;
        // The CTE reads the row as it was before this statement (one
        // snapshot for the whole statement), so the old value comes back
        // in the same round trip as the upsert.
        let rows = self.query(
            "WITH old AS (SELECT v FROM latchkey_kv WHERE tbl = $1 AND k = $2) \
             INSERT INTO latchkey_kv (tbl, k, v) VALUES ($1, $2, $3) \
             ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v \
             RETURNING (SELECT v FROM old)",
            &[
                (&table, Type::TEXT),
                (&key, Type::BYTEA),
                (&value, Type::BYTEA),
            ],
        )?;
        self.touched(table);
        match rows.first() {
            Some(r) => r.try_get::<_, Option<Vec<u8>>>(0).map_err(PgError::from),
            None => Ok(None),
        }
    }

    pub(crate) fn remove(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, PgError> {
        self.writable()?;
        let rows = self.query(
            "DELETE FROM latchkey_kv WHERE tbl = $1 AND k = $2 RETURNING v",
            &[(&table, Type::TEXT), (&key, Type::BYTEA)],
        )?;
        let old = rows.first().map(|r| r.try_get(0)).transpose()?;
        if old.is_some() {
            self.touched(table);
        }
        Ok(old)
    }

    /// Keeps the rows `keep` says true of; the others are deleted a page
    /// at a time.
    pub(crate) fn retain(
        &self,
        table: &str,
        keep: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), PgError> {
        self.writable()?;
        let mut from: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let page = self.page(table, &from, &Bound::Unbounded, false, PAGE)?;
            let full = page.len() as i64 == PAGE;
            let doomed: Vec<&[u8]> = page
                .iter()
                .filter(|(k, v)| !keep(k, v))
                .map(|(k, _)| k.as_slice())
                .collect();
            if !doomed.is_empty() {
                self.query(
                    "DELETE FROM latchkey_kv WHERE tbl = $1 AND k = ANY($2)",
                    &[(&table, Type::TEXT), (&doomed, Type::BYTEA_ARRAY)],
                )?;
                self.touched(table);
            }
            match page.last() {
                Some((k, _)) if full => from = Bound::Excluded(k.clone()),
                _ => return Ok(()),
            }
        }
    }

    pub(crate) fn len(&self, table: &str) -> Result<u64, PgError> {
        let rows = self.query(
            "SELECT count(*) FROM latchkey_kv WHERE tbl = $1",
            &[(&table, Type::TEXT)],
        )?;
        let n: i64 = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Names of the tables that hold at least one row, sorted as bytes.
    pub(crate) fn table_names(&self) -> Result<Vec<String>, PgError> {
        let rows = self.query("SELECT DISTINCT tbl FROM latchkey_kv", &[])?;
        let mut names = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }

    /// Other processes with a store open on this database: the distinct
    /// application names of other sessions that are Latchkey's
    /// (`latchkey/<origin>`, one per open store; a bare `latchkey` is a
    /// build that did not name its origin and counts once). Every open
    /// store keeps at least its feed connection, so a running replica is
    /// always seen. Only in a write transaction: under the writer lock a
    /// store that opens afterwards waits (its schema check takes the
    /// same lock) and sees what this transaction commits.
    pub(crate) fn other_processes(&self) -> Result<u64, PgError> {
        let Some(w) = &self.write else {
            return Err(PgError::ReadOnly);
        };
        let own = super::config::application_name(&w.origin);
        // The activity view is a snapshot taken at its first use in a
        // transaction: take it now, under the lock.
        self.batch("SELECT pg_stat_clear_snapshot()")?;
        let rows = self.query(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND (application_name = 'latchkey' OR application_name LIKE 'latchkey/%') \
             AND application_name <> $1",
            &[(&own, Type::TEXT)],
        )?;
        let n: i64 = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Up to `limit` rows of `table` within (`lo`, `hi`), ascending or
    /// descending by key.
    fn page(
        &self,
        table: &str,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        descending: bool,
        limit: i64,
    ) -> Result<Vec<KeyValue>, PgError> {
        let mut sql = String::from("SELECT k, v FROM latchkey_kv WHERE tbl = $1");
        let mut params: Vec<Param<'_>> = vec![(&table, Type::TEXT)];
        for (bound, incl, excl) in [(lo, ">=", ">"), (hi, "<=", "<")] {
            let (op, key) = match bound {
                Bound::Included(k) => (incl, k),
                Bound::Excluded(k) => (excl, k),
                Bound::Unbounded => continue,
            };
            params.push((key, Type::BYTEA));
            sql.push_str(&format!(" AND k {op} ${}", params.len()));
        }
        params.push((&limit, Type::INT8));
        sql.push_str(&format!(
            " ORDER BY k {} LIMIT ${}",
            if descending { "DESC" } else { "ASC" },
            params.len()
        ));
        let rows = self.query(&sql, &params)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The rows of `table` within the bounds, fetched a page at a time
    /// from either end.
    pub(crate) fn rows<'t>(
        &'t self,
        table: &str,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        page: i64,
    ) -> Pager<'t> {
        Pager {
            txn: self,
            table: table.to_string(),
            lo: bytes_bound(lo),
            hi: bytes_bound(hi),
            front: VecDeque::new(),
            back: VecDeque::new(),
            drained: false,
            page: page.max(1),
        }
    }

    /// Makes this transaction's changes durable and visible, and tells the
    /// other processes which tables changed.
    pub(crate) fn commit(mut self) -> Result<(), PgError> {
        self.done = true;
        let notice = self.write.as_ref().and_then(|w| {
            let tables = w.tables.lock().unwrap_or_else(|p| p.into_inner());
            (!tables.is_empty()).then(|| super::feed::payload(&w.origin, &tables))
        });
        let client = self.conn.client()?;
        let result = match notice {
            // The notification is part of the transaction: delivered only
            // if the commit succeeds. Both go in one round trip; if NOTIFY
            // fails, COMMIT turns into a rollback and the error is ours.
            Some(payload) => {
                let params: [Param<'_>; 2] = [(&CHANNEL, Type::TEXT), (&payload, Type::TEXT)];
                let notify = client.query_typed("SELECT pg_notify($1, $2)", &params);
                let commit = client.batch_execute("COMMIT");
                let (n, c) = wait(futures_util::future::join(notify, commit));
                n.map(|_| ()).and(c)
            }
            None => wait(client.batch_execute("COMMIT")),
        };
        if result.is_err() {
            self.conn.discard();
        }
        result.map_err(PgError::from)
    }

    /// Drops every change (as dropping the transaction does).
    pub(crate) fn rollback(mut self) -> Result<(), PgError> {
        self.done = true;
        let r = self.batch("ROLLBACK");
        if r.is_err() {
            self.conn.discard();
        }
        r
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Ends the transaction now: a write transaction holds the
        // cluster-wide writer lock until it ends. A connection that cannot
        // say ROLLBACK is closed, which ends it on the server.
        if self.batch("ROLLBACK").is_err() {
            self.conn.discard();
        }
    }
}

/// Rows of one table, fetched lazily from both ends. Everything in
/// `front` sorts before the unfetched range (`lo`, `hi`), which sorts
/// before everything in `back`.
pub(crate) struct Pager<'t> {
    txn: &'t Txn,
    table: String,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Ascending; taken from its end.
    back: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Nothing is left between `lo` and `hi`.
    drained: bool,
    page: i64,
}

type Fetched = Result<(Vec<u8>, Vec<u8>), PgError>;

impl Pager<'_> {
    fn fill(&mut self, descending: bool) -> Result<(), PgError> {
        let rows = self
            .txn
            .page(&self.table, &self.lo, &self.hi, descending, self.page)?;
        if (rows.len() as i64) < self.page {
            self.drained = true;
        }
        if let Some((k, _)) = rows.last() {
            if descending {
                self.hi = Bound::Excluded(k.clone());
            } else {
                self.lo = Bound::Excluded(k.clone());
            }
        }
        if descending {
            for row in rows {
                self.back.push_front(row);
            }
        } else {
            self.front.extend(rows);
        }
        Ok(())
    }

    pub(crate) fn next_front(&mut self) -> Option<Fetched> {
        if self.front.is_empty()
            && !self.drained
            && let Err(e) = self.fill(false)
        {
            self.drained = true;
            self.back.clear();
            return Some(Err(e));
        }
        self.front
            .pop_front()
            .or_else(|| self.back.pop_front())
            .map(Ok)
    }

    pub(crate) fn next_back(&mut self) -> Option<Fetched> {
        if self.back.is_empty()
            && !self.drained
            && let Err(e) = self.fill(true)
        {
            self.drained = true;
            self.front.clear();
            return Some(Err(e));
        }
        self.back
            .pop_back()
            .or_else(|| self.front.pop_back())
            .map(Ok)
    }
}
