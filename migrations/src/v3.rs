//! Schema version 3: proxy usage and per-key limits; OAuth connections.
//!
//! New tables (byte tables; values postcard-encoded structs defined in
//! `latchkey-core`, field order as listed):
//! - `usage_daily`: see `core/src/proxy/usage.rs` (key and value encoding
//!   are documented there and pinned by this version).
//! - `key_limits`: API key id (UTF-8) → per-key limits of the agent proxy
//!   (see `core/src/proxy/limits.rs`).
//! - `connections`: see `core/src/connections/store.rs`.
//! - `oauth_states`: see `core/src/connections/store.rs`.
//!
//! No existing table changes.

use crate::ByteTable;
use redb::{TableDefinition, WriteTransaction};

pub const USAGE_DAILY: ByteTable = TableDefinition::new("usage_daily");
pub const KEY_LIMITS: ByteTable = TableDefinition::new("key_limits");
pub const CONNECTIONS: ByteTable = TableDefinition::new("connections");
pub const OAUTH_STATES: ByteTable = TableDefinition::new("oauth_states");

/// Migrates version 2 to 3: creates the new tables.
pub fn migrate(txn: &WriteTransaction) -> Result<(), redb::Error> {
    for t in [USAGE_DAILY, KEY_LIMITS, CONNECTIONS, OAUTH_STATES] {
        txn.open_table(t)?;
    }
    Ok(())
}
