//! Schema version 3: proxy usage and per-key limits; OAuth connections.
//!
//! New tables (byte tables; values postcard-encoded structs defined in
//! `latchkey-core`, field order as listed):
//! - `usage_daily`: see `core/src/proxy/usage/mod.rs` (key and value encoding
//!   are documented there and pinned by this version): key = `DAY 0x00
//!   KEY_ID 0x00 PROVIDER 0x00 MODEL` (`DAY` = ASCII `YYYY-MM-DD`, UTC, so
//!   a day range is a byte range) → `Totals { requests, input_tokens,
//!   output_tokens, errors }` (u64 each).
//! - `key_limits`: API key id (UTF-8) → per-key limits of the agent proxy
//!   (see `core/src/proxy/limits.rs`): `KeyLimits { requests_per_minute:
//!   Option<u32>, tokens_per_day: Option<u64> }`; kept when the key is
//!   revoked.
//! - `connections`: see `core/src/connections/store.rs`: key = user id
//!   (16 bytes BE) ‖ provider (UTF-8) → `StoredConnection` (status, scopes,
//!   times, failures, and the tokens sealed with `Vault::seal_value`, context
//!   `connection:<user id hex>:<provider>`).
//! - `oauth_states`: see `core/src/connections/store.rs`: key = SHA-256 of
//!   the `state` → `PendingState` (user, provider, binding-cookie hash,
//!   starting session's hash, redirect URI, nonce, sealed PKCE verifier,
//!   expiry).
//!
//! - `meta` gains `b"agent_signing_key"`: the Ed25519 key that signs agent
//!   identity assertions, as an envelope made by `Vault::seal_value` with
//!   context `latchkey/agent-assertion-signing-key/v1` whose plaintext is
//!   the standard base64 of the key's PKCS#8 (v2) document (see
//!   `core/src/agent/assertion.rs`); written on first use, no migration.
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
