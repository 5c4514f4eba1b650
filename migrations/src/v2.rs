//! Schema version 2: accounts, sessions, tokens, API keys, invites, audit.
//!
//! New tables (all byte tables, values postcard-encoded structs defined in
//! `latchkey-core`'s `auth::store`, field order as listed):
//! - `users`: user id (16 bytes) → `User { username, role (0 admin, 1 user,
//!   2 guest), password_hash (PHC string), totp: Option<Vec<u8>> (vault
//!   envelope of the base32 secret), totp_pending: Option<Vec<u8>>,
//!   totp_last_step: Option<u64>, recovery_hashes: Vec<String>, disabled,
//!   created_at, updated_at }`.
//! - `usernames`: lower-cased username → user id.
//! - `sessions`: SHA-256 of the session token → `Session { user_id,
//!   created_at, last_seen_at, expires_at, idle_secs, last_auth_at, ip,
//!   user_agent }`.
//! - `access_tokens`: SHA-256 of the token → `AccessToken { user_id,
//!   family_id, expires_at }`.
//! - `refresh_tokens`: SHA-256 of the token → `RefreshToken { family_id,
//!   user_id, expires_at, used }`.
//! - `refresh_families`: family id (16 bytes) → `Family { user_id,
//!   session_hash, created_at, revoked }`.
//! - `api_keys`: public key id (UTF-8) → `ApiKeyRow { user_id, name,
//!   hash ([u8; 32]), scopes: Vec<String>, created_at, expires_at,
//!   last_used_at, revoked_at }`.
//! - `invites`: SHA-256 of the invite token → `Invite { role, created_by,
//!   created_at, expires_at, used_at }`.
//! - `audit`: sequence number (u64 BE) → `AuditEvent { at, actor, action,
//!   target, outcome, ip, detail }` — append-only.
//!
//! `meta` gains `setup_token_hash` (SHA-256 of the one-time first-run setup
//! token, with its expiry) while no owner exists.

use crate::ByteTable;
use redb::{TableDefinition, WriteTransaction};

pub const USERS: ByteTable = TableDefinition::new("users");
pub const USERNAMES: ByteTable = TableDefinition::new("usernames");
pub const SESSIONS: ByteTable = TableDefinition::new("sessions");
pub const ACCESS_TOKENS: ByteTable = TableDefinition::new("access_tokens");
pub const REFRESH_TOKENS: ByteTable = TableDefinition::new("refresh_tokens");
pub const REFRESH_FAMILIES: ByteTable = TableDefinition::new("refresh_families");
pub const API_KEYS: ByteTable = TableDefinition::new("api_keys");
pub const INVITES: ByteTable = TableDefinition::new("invites");
pub const AUDIT: ByteTable = TableDefinition::new("audit");

/// Migrates version 1 to 2: creates the account tables (vault tables are
/// unchanged).
pub fn migrate(txn: &WriteTransaction) -> Result<(), redb::Error> {
    for t in [
        USERS,
        USERNAMES,
        SESSIONS,
        ACCESS_TOKENS,
        REFRESH_TOKENS,
        REFRESH_FAMILIES,
        API_KEYS,
        INVITES,
        AUDIT,
    ] {
        txn.open_table(t)?;
    }
    Ok(())
}
