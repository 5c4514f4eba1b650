//! The SQL that creates and changes Latchkey's PostgreSQL tables.
//!
//! PostgreSQL holds the same byte tables as the redb file (one row per key,
//! in `latchkey_kv`), so the *logical* schema version in `meta` means the
//! same on both backends; these files only shape the SQL tables around it.
//! `core`'s PostgreSQL backend applies the missing ones at open, in order,
//! in one transaction under an advisory lock, and records each in
//! `latchkey_schema` (see `docs/SCALE.md`). Never edit a released file:
//! append a new one.

/// One SQL file, applied once.
#[derive(Debug, Clone, Copy)]
pub struct SqlMigration {
    /// Its number, from 1, without gaps.
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every SQL file, in order (`migrations/postgres/NNNN_name.sql`).
pub const SQL_MIGRATIONS: &[SqlMigration] = &[SqlMigration {
    version: 1,
    name: "kv",
    sql: include_str!("../postgres/0001_kv.sql"),
}];

/// The newest SQL version this build knows.
pub const SQL_VERSION: u32 = SQL_MIGRATIONS.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_from_one_without_gaps() {
        for (i, m) in SQL_MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty(), "{} is empty", m.name);
        }
    }
}
