//! What a backend-neutral migration sees: the database's named byte tables
//! inside the one write transaction that migrates it ([`Tables`]).
//!
//! The released steps (v1–v4) are functions over redb's
//! `WriteTransaction`: they shaped redb files only, and every PostgreSQL
//! database was created at v4. Every step from v5 on is written against
//! [`Tables`] instead, so the same function migrates an embedded redb file
//! (through [`RedbTables`], here) and a shared PostgreSQL database (through
//! core's store seam, which implements [`Tables`] for its write
//! transaction).

use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// A step's failure, as text: the backend's error or the step's own (a row
/// it cannot read). Carries no row contents (rows may be sealed secrets,
/// but keys and sizes are what a message should name).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl From<redb::Error> for StepError {
    fn from(e: redb::Error) -> Self {
        StepError(e.to_string())
    }
}

/// A whole table: its rows (key, value) in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The tables of a database inside its migrating write transaction. A
/// table that was never written reads as empty; writing creates it.
pub trait Tables {
    /// The value under `key` in `table`.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StepError>;
    /// Sets `key` to `value` in `table`.
    fn insert(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StepError>;
    /// Removes `key` from `table`; whether it was there.
    fn remove(&self, table: &str, key: &[u8]) -> Result<bool, StepError>;
    /// Every row of `table`, in key order (bytewise, on every backend).
    /// Loaded whole: a step that rewrites a table reads it first, then
    /// writes, which neither backend allows interleaved on one table.
    fn rows(&self, table: &str) -> Result<Rows, StepError>;
}

/// [`Tables`] over a redb write transaction.
pub struct RedbTables<'t>(pub &'t WriteTransaction);

fn def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

impl Tables for RedbTables<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StepError> {
        let t = self.0.open_table(def(table)).map_err(redb::Error::from)?;
        let v = t.get(key).map_err(redb::Error::from)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn insert(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StepError> {
        let mut t = self.0.open_table(def(table)).map_err(redb::Error::from)?;
        t.insert(key, value).map_err(redb::Error::from)?;
        Ok(())
    }

    fn remove(&self, table: &str, key: &[u8]) -> Result<bool, StepError> {
        let mut t = self.0.open_table(def(table)).map_err(redb::Error::from)?;
        let was = t.remove(key).map_err(redb::Error::from)?;
        Ok(was.is_some())
    }

    fn rows(&self, table: &str) -> Result<Rows, StepError> {
        // In a write transaction opening creates: an absent table reads
        // as empty.
        let t = self.0.open_table(def(table)).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(redb::Error::from)? {
            let (k, v) = item.map_err(redb::Error::from)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}
