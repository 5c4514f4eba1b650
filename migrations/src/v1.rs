//! Schema version 1: the vault.
//!
//! - `meta`: `b"schema_version"` → u32 LE; `b"vault_id"` → 16 random bytes;
//!   `b"created_at"` → i64 LE unix seconds; `b"master_source"` → UTF-8 name of
//!   the master-key source that wrapped the data key; `b"wrapped_data_key"` →
//!   an age file (binary) whose plaintext is the data key, an age X25519
//!   identity string, encrypted to the master key.
//! - `vault_records`: record id (u128 BE) → postcard `StoredRecord { name,
//!   kind (0 api_key, 1 oauth_token, 2 generic), provider: Option<String>,
//!   labels: BTreeMap<String,String>, created_at, updated_at, last_used_at:
//!   Option<i64> (unix seconds), envelope: Vec<u8> }`, where `envelope` is an
//!   age file encrypted to the data key whose plaintext is postcard
//!   `{ version: 1u8, record_id: u128, kind: u8, secret: String }`.
//! - `vault_names`: UTF-8 name → record id (u128 BE): the unique-name index.

use crate::{ByteTable, META};
use redb::{TableDefinition, WriteTransaction};

pub const VAULT_RECORDS: ByteTable = TableDefinition::new("vault_records");
pub const VAULT_NAMES: ByteTable = TableDefinition::new("vault_names");

/// Creates the version-1 tables.
pub fn create(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(META)?;
    txn.open_table(VAULT_RECORDS)?;
    txn.open_table(VAULT_NAMES)?;
    Ok(())
}
