//! The storage seam: transactions over byte tables, the same for every
//! backend.
//!
//! Everything above `store` reads and writes through [`ReadTxn`],
//! [`WriteTxn`] and [`Table`], never through a backend's own types, so the
//! embedded redb file and a shared PostgreSQL database are interchangeable
//! (see `docs/SCALE.md`). The API is redb's subset that `core` uses, with the
//! same meaning on every backend:
//!
//! - a [`ReadTxn`] is a consistent snapshot;
//! - [`WriteTxn`]s are serializable: at most one is open at a time across
//!   every process sharing the store (redb: its single writer; PostgreSQL: a
//!   transaction-scoped advisory lock), so the read-check-write sequences in
//!   `auth`, `connections` and `proxy` hold across replicas too;
//! - a write transaction dropped without [`WriteTxn::commit`] changes
//!   nothing;
//! - keys compare as bytes (`memcmp`), so ranges and `first`/`last` agree.
//!
//! Values come back owned ([`Value`]), with the same `.value()` accessor as
//! redb's guards, so call sites read alike on both backends.

use super::StoreError;
use super::postgres::{Pager, Txn};
use latchkey_migrations::{ByteTable, StepError};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle};
use std::ops::{Bound, RangeBounds};

/// A key or value read from a table.
#[derive(Clone, PartialEq, Eq)]
pub struct Value(Vec<u8>);

impl Value {
    pub fn value(&self) -> &[u8] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl std::fmt::Debug for Value {
    // Values can be sealed envelopes or token hashes: only their size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({} bytes)", self.0.len())
    }
}

/// A consistent read-only snapshot of the store.
pub struct ReadTxn {
    inner: ReadInner,
}

enum ReadInner {
    Redb(redb::ReadTransaction),
    Postgres(Txn),
}

/// The one open write transaction; nothing is visible to others until
/// [`WriteTxn::commit`].
pub struct WriteTxn {
    inner: WriteInner,
}

enum WriteInner {
    // Both boxed: a redb write transaction is large, and so is ours.
    Redb(Box<redb::WriteTransaction>),
    Postgres(Box<Txn>),
}

impl std::fmt::Debug for ReadTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadTxn")
    }
}

impl std::fmt::Debug for WriteTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteTxn")
    }
}

/// One byte table, opened in a read or a write transaction.
pub struct Table<'t> {
    inner: TableInner<'t>,
}

enum TableInner<'t> {
    RedbRead(redb::ReadOnlyTable<&'static [u8], &'static [u8]>),
    RedbWrite(redb::Table<'t, &'static [u8], &'static [u8]>),
    /// A table that does not exist yet, in a read transaction.
    Empty,
    /// `name`'s rows in PostgreSQL's `latchkey_kv`.
    Pg {
        txn: &'t Txn,
        name: String,
    },
}

/// Rows of a table in key order (reversible with `.rev()`).
pub struct Rows<'t> {
    inner: RowsInner<'t>,
}

enum RowsInner<'t> {
    Redb(Box<redb::Range<'t, &'static [u8], &'static [u8]>>),
    /// Rows a backend fetched in one go.
    Buffered(std::vec::IntoIter<(Vec<u8>, Vec<u8>)>),
    /// Rows PostgreSQL sends a page at a time.
    Pg(Pager<'t>),
}

fn pg_row(r: Result<(Vec<u8>, Vec<u8>), super::postgres::PgError>) -> Row {
    let (k, v) = r?;
    Ok((Value(k), Value(v)))
}

type Row = Result<(Value, Value), StoreError>;

impl Iterator for Rows<'_> {
    type Item = Row;
    fn next(&mut self) -> Option<Row> {
        match &mut self.inner {
            RowsInner::Redb(r) => r.next().map(redb_row),
            RowsInner::Buffered(r) => r.next().map(|(k, v)| Ok((Value(k), Value(v)))),
            RowsInner::Pg(p) => p.next_front().map(pg_row),
        }
    }
}

impl DoubleEndedIterator for Rows<'_> {
    fn next_back(&mut self) -> Option<Row> {
        match &mut self.inner {
            RowsInner::Redb(r) => r.next_back().map(redb_row),
            RowsInner::Buffered(r) => r.next_back().map(|(k, v)| Ok((Value(k), Value(v)))),
            RowsInner::Pg(p) => p.next_back().map(pg_row),
        }
    }
}

type RedbGuards<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn redb_row(item: Result<RedbGuards<'_>, redb::StorageError>) -> Row {
    let (k, v) = item?;
    Ok((Value(k.value().to_vec()), Value(v.value().to_vec())))
}

/// A table named at run time (backups and `store migrate` copy every table).
fn named(name: &str) -> redb::TableDefinition<'_, &'static [u8], &'static [u8]> {
    redb::TableDefinition::new(name)
}

/// A table of `core`'s own that needs no schema version (absent reads as
/// empty), declared without naming a backend:
/// `const T: ByteTable = store::byte_table("t");`.
pub const fn byte_table(name: &'static str) -> ByteTable {
    redb::TableDefinition::new(name)
}

/// The name of `table`, as [`ReadTxn::table_names`] lists it and
/// [`ReadTxn::open_named`] takes it.
pub fn table_name(table: &ByteTable) -> &str {
    table.name()
}

impl ReadTxn {
    pub(super) fn redb(db: &redb::Database) -> Result<ReadTxn, StoreError> {
        Ok(ReadTxn {
            inner: ReadInner::Redb(db.begin_read()?),
        })
    }

    pub(super) fn postgres(txn: Txn) -> ReadTxn {
        ReadTxn {
            inner: ReadInner::Postgres(txn),
        }
    }

    /// Opens `table`. A table no write has created yet reads as empty on
    /// every backend.
    pub fn open_table(&self, table: ByteTable) -> Result<Table<'_>, StoreError> {
        self.open_named(table.name())
    }

    /// Opens the table called `name` (a table named at run time: backups, `store migrate`).
    pub fn open_named(&self, name: &str) -> Result<Table<'_>, StoreError> {
        match &self.inner {
            ReadInner::Redb(txn) => match txn.open_table(named(name)) {
                Ok(t) => Ok(Table {
                    inner: TableInner::RedbRead(t),
                }),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(Table::empty()),
                Err(e) => Err(e.into()),
            },
            ReadInner::Postgres(txn) => Ok(Table::pg(txn, name)),
        }
    }

    /// Names of every table that exists, sorted.
    pub fn table_names(&self) -> Result<Vec<String>, StoreError> {
        match &self.inner {
            ReadInner::Redb(txn) => {
                let mut names: Vec<String> =
                    txn.list_tables()?.map(|h| h.name().to_string()).collect();
                names.sort();
                Ok(names)
            }
            ReadInner::Postgres(txn) => Ok(txn.table_names()?),
        }
    }
}

impl WriteTxn {
    pub(super) fn redb(db: &redb::Database) -> Result<WriteTxn, StoreError> {
        Ok(WriteTxn {
            inner: WriteInner::Redb(Box::new(db.begin_write()?)),
        })
    }

    pub(super) fn postgres(txn: Txn) -> WriteTxn {
        WriteTxn {
            inner: WriteInner::Postgres(Box::new(txn)),
        }
    }

    /// Opens `table`, creating it if needed. As with redb, a table may be
    /// open only once at a time within one transaction.
    pub fn open_table(&self, table: ByteTable) -> Result<Table<'_>, StoreError> {
        self.open_named(table.name())
    }

    /// Opens the table called `name` (a table named at run time: backups, `store migrate`), creating it if needed.
    pub fn open_named(&self, name: &str) -> Result<Table<'_>, StoreError> {
        match &self.inner {
            WriteInner::Redb(txn) => Ok(Table {
                inner: TableInner::RedbWrite(txn.open_table(named(name))?),
            }),
            WriteInner::Postgres(txn) => Ok(Table::pg(txn, name)),
        }
    }

    /// Names of every table that exists, sorted (as [`ReadTxn::table_names`]).
    pub fn table_names(&self) -> Result<Vec<String>, StoreError> {
        match &self.inner {
            WriteInner::Redb(txn) => {
                let mut names: Vec<String> =
                    txn.list_tables()?.map(|h| h.name().to_string()).collect();
                names.sort();
                Ok(names)
            }
            WriteInner::Postgres(txn) => Ok(txn.table_names()?),
        }
    }

    /// How many other processes have this store open, seen from inside the
    /// write lock (a restore refuses while any do). PostgreSQL: the other
    /// open stores connected to the same database, told apart by their
    /// connections' application name (`latchkey/<origin>`). The embedded
    /// file: 0, as its data-directory lock admits one process.
    pub fn other_processes(&self) -> Result<u64, StoreError> {
        match &self.inner {
            WriteInner::Redb(_) => Ok(0),
            WriteInner::Postgres(txn) => Ok(txn.other_processes()?),
        }
    }

    /// Makes every change of this transaction durable and visible.
    pub fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            WriteInner::Redb(txn) => Ok(txn.commit()?),
            WriteInner::Postgres(txn) => Ok(txn.commit()?),
        }
    }

    /// Drops every change of this transaction (as dropping it does).
    pub fn abort(self) -> Result<(), StoreError> {
        match self.inner {
            WriteInner::Redb(txn) => Ok(txn.abort()?),
            WriteInner::Postgres(txn) => Ok(txn.rollback()?),
        }
    }
}

/// A logical schema step (`latchkey_migrations::Step::Tables`) sees the
/// write transaction through this, on either backend.
impl latchkey_migrations::Tables for WriteTxn {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StepError> {
        let t = self.open_named(table).map_err(step)?;
        Ok(t.get(key).map_err(step)?.map(Value::into_vec))
    }

    fn insert(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StepError> {
        let mut t = self.open_named(table).map_err(step)?;
        t.insert(key, value).map_err(step)?;
        Ok(())
    }

    fn remove(&self, table: &str, key: &[u8]) -> Result<bool, StepError> {
        let mut t = self.open_named(table).map_err(step)?;
        Ok(t.remove(key).map_err(step)?.is_some())
    }

    fn rows(&self, table: &str) -> Result<latchkey_migrations::tables::Rows, StepError> {
        let t = self.open_named(table).map_err(step)?;
        let rows = t.iter().map_err(step)?;
        rows.map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(step))
            .collect()
    }
}

fn step(e: StoreError) -> StepError {
    StepError(e.to_string())
}

/// Rows PostgreSQL sends per round trip while iterating.
const PG_PAGE: i64 = 256;

fn bounds<'a>(range: &impl RangeBounds<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl<'t> Table<'t> {
    fn empty() -> Table<'t> {
        Table {
            inner: TableInner::Empty,
        }
    }

    fn pg(txn: &'t Txn, name: &str) -> Table<'t> {
        Table {
            inner: TableInner::Pg {
                txn,
                name: name.to_string(),
            },
        }
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StoreError> {
        let found = match &self.inner {
            TableInner::RedbRead(t) => t.get(key)?.map(|v| v.value().to_vec()),
            TableInner::RedbWrite(t) => t.get(key)?.map(|v| v.value().to_vec()),
            TableInner::Empty => None,
            TableInner::Pg { txn, name } => txn.get(name, key)?,
        };
        Ok(found.map(Value))
    }

    /// Stores `value` under `key`; the value it replaced.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Value>, StoreError> {
        match &mut self.inner {
            TableInner::RedbWrite(t) => {
                Ok(t.insert(key, value)?.map(|v| Value(v.value().to_vec())))
            }
            TableInner::Pg { txn, name } => Ok(txn.insert(name, key, value)?.map(Value)),
            _ => Err(StoreError::ReadOnly),
        }
    }

    /// Deletes `key`; the value it had.
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<Value>, StoreError> {
        match &mut self.inner {
            TableInner::RedbWrite(t) => Ok(t.remove(key)?.map(|v| Value(v.value().to_vec()))),
            TableInner::Pg { txn, name } => Ok(txn.remove(name, key)?.map(Value)),
            _ => Err(StoreError::ReadOnly),
        }
    }

    /// Keeps only the rows for which `keep` says true.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        match &mut self.inner {
            TableInner::RedbWrite(t) => Ok(t.retain(|k, v| keep(k, v))?),
            TableInner::Pg { txn, name } => Ok(txn.retain(name, &mut keep)?),
            _ => Err(StoreError::ReadOnly),
        }
    }

    /// Every row, in key order.
    pub fn iter(&self) -> Result<Rows<'_>, StoreError> {
        let all: std::ops::RangeFull = ..;
        self.range(all)
    }

    /// The rows whose keys fall in `range`, in key order.
    pub fn range<'a>(&self, range: impl RangeBounds<&'a [u8]>) -> Result<Rows<'_>, StoreError> {
        let b = bounds(&range);
        self.range_between(b)
    }

    fn range_between(&self, b: (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Rows<'_>, StoreError> {
        let inner = match &self.inner {
            TableInner::RedbRead(t) => RowsInner::Redb(Box::new(t.range::<&[u8]>(b)?)),
            TableInner::RedbWrite(t) => RowsInner::Redb(Box::new(t.range::<&[u8]>(b)?)),
            TableInner::Empty => RowsInner::Buffered(Vec::new().into_iter()),
            TableInner::Pg { txn, name } => RowsInner::Pg(txn.rows(name, b.0, b.1, PG_PAGE)),
        };
        Ok(Rows { inner })
    }

    /// The row with the smallest key.
    pub fn first(&self) -> Result<Option<(Value, Value)>, StoreError> {
        if let TableInner::Pg { txn, name } = &self.inner {
            // One row, not a page.
            let mut rows = txn.rows(name, Bound::Unbounded, Bound::Unbounded, 1);
            return rows.next_front().map(pg_row).transpose();
        }
        self.iter()?.next().transpose()
    }

    /// The row with the largest key.
    pub fn last(&self) -> Result<Option<(Value, Value)>, StoreError> {
        if let TableInner::Pg { txn, name } = &self.inner {
            let mut rows = txn.rows(name, Bound::Unbounded, Bound::Unbounded, 1);
            return rows.next_back().map(pg_row).transpose();
        }
        self.iter()?.next_back().transpose()
    }

    /// How many rows the table holds.
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(match &self.inner {
            TableInner::RedbRead(t) => t.len()?,
            TableInner::RedbWrite(t) => t.len()?,
            TableInner::Empty => 0,
            TableInner::Pg { txn, name } => txn.len(name)?,
        })
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}
