//! Copying a whole store from one transaction into another, on any pair of
//! backends, with proof of what was copied.
//!
//! [`copy_tables`] is the one place rows move between stores wholesale (a
//! restore into a live store, `latchkey store migrate` from redb to
//! PostgreSQL); [`digest_tables`] reads a store the same way without
//! writing, so a copy is checked by digesting the target after its commit
//! and comparing the two [`CopyReport`]s. Rows are copied byte for byte:
//! the encodings do not depend on the backend (`docs/SCALE.md`).

use super::{ReadTxn, StoreError, WriteTxn};
use sha2::{Digest, Sha256};

/// What one table held: its row count and a digest of its rows.
#[derive(Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub name: String,
    pub rows: u64,
    /// SHA-256 over the rows in key order, each as
    /// `len(key) ‖ key ‖ len(value) ‖ value` (lengths as 8 bytes, big
    /// endian), so rows cannot run into each other.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for TableCopy {
    // The digest is of sealed envelopes and token hashes, not of
    // plaintext; printed short, it tells two copies apart.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} rows, sha256 {}…",
            self.name,
            self.rows,
            hex::encode(&self.digest[..8])
        )
    }
}

/// Every table of a copy (or a digest), sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyReport {
    pub tables: Vec<TableCopy>,
}

impl CopyReport {
    /// Rows over every table.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&TableCopy> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// How `copied` (a digest of the target after the commit) differs from
    /// this report of the copy, one line per table; empty when they agree.
    /// A table that holds no rows counts as absent: PostgreSQL lists only
    /// tables with rows, redb also lists empty ones.
    pub fn differences(&self, copied: &CopyReport) -> Vec<String> {
        let mut problems = Vec::new();
        for t in &self.tables {
            match copied.table(&t.name) {
                Some(c) if c == t => {}
                None if t.rows == 0 => {}
                Some(c) => problems.push(format!(
                    "{}: {} rows copied, {} read back, digests {}",
                    t.name,
                    t.rows,
                    c.rows,
                    if c.digest == t.digest {
                        "equal"
                    } else {
                        "differ"
                    }
                )),
                None => problems.push(format!("{}: missing", t.name)),
            }
        }
        for c in &copied.tables {
            if self.table(&c.name).is_none() && c.rows > 0 {
                problems.push(format!(
                    "{}: {} rows the source does not have",
                    c.name, c.rows
                ));
            }
        }
        problems
    }
}

/// Running digest and count of one table's rows.
struct Tally {
    hash: Sha256,
    rows: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hash: Sha256::new(),
            rows: 0,
        }
    }

    fn add(&mut self, key: &[u8], value: &[u8]) {
        for part in [key, value] {
            self.hash.update((part.len() as u64).to_be_bytes());
            self.hash.update(part);
        }
        self.rows += 1;
    }

    fn finish(self, name: String) -> TableCopy {
        TableCopy {
            name,
            rows: self.rows,
            digest: self.hash.finalize().into(),
        }
    }
}

/// Copies every table of `from` into `to`: afterwards each of those tables
/// holds in `to` exactly the rows it holds in `from` (rows `to` had in it
/// before are removed; tables only `to` has are left alone). Nothing is
/// visible until the caller commits `to`; the report says what was read
/// from `from`, and after the commit [`digest_tables`] of the target must
/// give the same report.
pub fn copy_tables(from: &ReadTxn, to: &WriteTxn) -> Result<CopyReport, StoreError> {
    let mut report = CopyReport::default();
    for name in from.table_names()? {
        let source = from.open_named(&name)?;
        let mut target = to.open_named(&name)?;
        target.retain(|_, _| false)?;
        let mut tally = Tally::new();
        for row in source.iter()? {
            let (k, v) = row?;
            target.insert(k.value(), v.value())?;
            tally.add(k.value(), v.value());
        }
        report.tables.push(tally.finish(name));
    }
    Ok(report)
}

/// The report [`copy_tables`] would give for `txn`, without writing.
pub fn digest_tables(txn: &ReadTxn) -> Result<CopyReport, StoreError> {
    let mut report = CopyReport::default();
    for name in txn.table_names()? {
        let mut tally = Tally::new();
        for row in txn.open_named(&name)?.iter()? {
            let (k, v) = row?;
            tally.add(k.value(), v.value());
        }
        report.tables.push(tally.finish(name));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::sync::Arc;

    fn open() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("open store");
        (dir, store)
    }

    fn put(store: &Store, table: &str, rows: &[(&[u8], &[u8])]) {
        let txn = store.begin_write().expect("write");
        {
            let mut t = txn.open_named(table).expect("table");
            for (k, v) in rows {
                t.insert(k, v).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn rows(store: &Store, table: &str) -> Rows {
        let txn = store.begin_read().expect("read");
        let t = txn.open_named(table).expect("table");
        t.iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                (k.into_vec(), v.into_vec())
            })
            .collect()
    }

    #[test]
    fn a_copy_makes_every_source_table_equal_and_its_report_matches_the_target() {
        let (_a, from) = open();
        let (_b, to) = open();
        let big = vec![0xA5u8; 70_000];
        put(
            &from,
            "copy_one",
            &[(b"", b"empty key"), (b"k1", b""), (b"\xff\x00", &big)],
        );
        put(&from, "copy_two", &[(b"x", b"1"), (b"y", b"2")]);
        // The target has stale rows in a copied table (one key shared, one
        // not) and a table the source lacks.
        put(&to, "copy_two", &[(b"x", b"old"), (b"z", b"stale")]);
        put(&to, "only_in_target", &[(b"keep", b"me")]);

        let report = {
            let r = from.begin_read().expect("read");
            let w = to.begin_write().expect("write");
            let report = copy_tables(&r, &w).expect("copy");
            w.commit().expect("commit");
            report
        };

        let source_names = from
            .begin_read()
            .expect("read")
            .table_names()
            .expect("names");
        for name in &source_names {
            assert_eq!(rows(&from, name), rows(&to, name), "table {name}");
        }
        assert_eq!(rows(&to, "copy_two").len(), 2, "the stale row is gone");
        assert_eq!(
            rows(&to, "only_in_target"),
            vec![(b"keep".to_vec(), b"me".to_vec())]
        );
        assert_eq!(report.table("copy_one").map(|t| t.rows), Some(3));
        assert_eq!(report.table("copy_two").map(|t| t.rows), Some(2));
        assert_eq!(
            report
                .tables
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>(),
            source_names
        );
        // The migrated schema's own rows (meta) came along too.
        assert!(report.table("meta").is_some_and(|t| t.rows > 0));

        let mut target = digest_tables(&to.begin_read().expect("read")).expect("digest");
        assert!(target.table("only_in_target").is_some());
        target.tables.retain(|t| t.name != "only_in_target");
        assert_eq!(target, report);
        assert_eq!(target.rows(), report.rows());
    }

    #[test]
    fn a_copy_is_of_one_snapshot_while_the_source_goes_on_changing() {
        let (_a, from) = open();
        let (_b, to) = open();
        put(&from, "copy_one", &[(b"a", b"1")]);
        let snapshot = from.begin_read().expect("read");
        let expected = digest_tables(&snapshot).expect("digest");
        // A writer commits while the copy runs (a server keeps serving
        // during a backup or a migration).
        let writer = {
            let from = from.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    put(&from, "copy_one", &[(&i.to_be_bytes(), b"later")]);
                }
                put(&from, "copy_new", &[(b"n", b"later")]);
            })
        };
        let report = {
            let w = to.begin_write().expect("write");
            let report = copy_tables(&snapshot, &w).expect("copy");
            w.commit().expect("commit");
            report
        };
        writer.join().expect("writer");
        drop(snapshot);
        assert_eq!(report, expected);
        assert_eq!(rows(&to, "copy_one"), vec![(b"a".to_vec(), b"1".to_vec())]);
        assert!(rows(&to, "copy_new").is_empty());
        assert_eq!(rows(&from, "copy_one").len(), 51, "the writer did commit");
    }

    #[test]
    fn an_uncommitted_copy_changes_nothing() {
        let (_a, from) = open();
        let (_b, to) = open();
        put(&from, "copy_one", &[(b"k", b"new")]);
        put(&to, "copy_one", &[(b"k", b"old"), (b"j", b"old")]);
        let before = digest_tables(&to.begin_read().expect("read")).expect("digest");
        {
            let r = from.begin_read().expect("read");
            let w = to.begin_write().expect("write");
            copy_tables(&r, &w).expect("copy");
            // dropped without commit
        }
        let after = digest_tables(&to.begin_read().expect("read")).expect("digest");
        assert_eq!(before, after);
        assert_eq!(rows(&to, "copy_one").len(), 2);
    }

    #[test]
    fn the_digest_tells_apart_rows_that_concatenate_alike_and_changed_values() {
        let (_a, one) = open();
        let (_b, two) = open();
        let (_c, three) = open();
        put(&one, "t", &[(b"ab", b"c")]);
        put(&two, "t", &[(b"a", b"bc")]);
        put(&three, "t", &[(b"ab", b"d")]);
        let digest = |s: &Store| {
            digest_tables(&s.begin_read().expect("read"))
                .expect("digest")
                .table("t")
                .map(|t| t.digest)
                .expect("table t")
        };
        assert_ne!(digest(&one), digest(&two));
        assert_ne!(digest(&one), digest(&three));
        // Same rows, same digest (the stores' other tables are alike too).
        let (_d, again) = open();
        put(&again, "t", &[(b"ab", b"c")]);
        assert_eq!(digest(&one), digest(&again));
    }

    #[test]
    fn a_table_declared_with_byte_table_is_the_one_its_name_opens() {
        const T: crate::store::ByteTable = crate::store::byte_table("declared_here");
        assert_eq!(crate::store::table_name(&T), "declared_here");
        let (_a, store) = open();
        let txn = store.begin_write().expect("write");
        txn.open_table(T)
            .expect("t")
            .insert(b"k", b"v")
            .expect("insert");
        txn.commit().expect("commit");
        assert_eq!(
            rows(&store, "declared_here"),
            vec![(b"k".to_vec(), b"v".to_vec())]
        );
    }

    #[test]
    fn the_report_does_not_print_rows() {
        let (_a, from) = open();
        put(
            &from,
            "t",
            &[(b"secret-key-canary", b"secret-value-canary")],
        );
        let report = digest_tables(&from.begin_read().expect("read")).expect("digest");
        let shown = format!("{report:?}");
        assert!(shown.contains("t: 1 rows"), "{shown}");
        assert!(!shown.contains("canary"), "{shown}");
    }
}
