//! Account records (schema v2): typed rows over the byte tables,
//! read and written with postcard. Secrets never appear here in plaintext:
//! tokens and keys are stored as SHA-256 hashes, passwords as argon2id PHC
//! strings, TOTP secrets as vault envelopes.

use super::scope::Role;
use crate::store::{StoreError, Table, WriteTxn};
use latchkey_migrations::ByteTable;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use latchkey_migrations::v2::{
    ACCESS_TOKENS, API_KEYS, AUDIT, INVITES, REFRESH_FAMILIES, REFRESH_TOKENS, SESSIONS, USERNAMES,
    USERS,
};

/// A user's id: 128 random bits, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub u128);

impl UserId {
    pub fn random() -> Self {
        UserId(rand::random())
    }
    pub fn key(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
    pub fn from_key(b: &[u8]) -> Option<Self> {
        Some(UserId(u128::from_be_bytes(b.try_into().ok()?)))
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    /// Vault envelope of the confirmed TOTP secret.
    pub totp: Option<Vec<u8>>,
    /// Vault envelope of a secret being enrolled, not yet confirmed.
    pub totp_pending: Option<Vec<u8>>,
    pub totp_last_step: Option<u64>,
    pub recovery_hashes: Vec<String>,
    pub disabled: bool,
    /// The owner created by first-run setup is inactive until TOTP is confirmed.
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("mfa", &self.totp.is_some())
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub user_id: UserId,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub idle_secs: i64,
    /// When the user last proved a password or second factor (re-auth).
    pub last_auth_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessToken {
    pub user_id: UserId,
    pub family_id: u128,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshToken {
    pub family_id: u128,
    pub user_id: UserId,
    pub expires_at: i64,
    pub used: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Family {
    pub user_id: UserId,
    /// The session the family was issued from (hash), so revoking the
    /// session ends its tokens too.
    pub session_hash: [u8; 32],
    pub created_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRow {
    pub user_id: UserId,
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invite {
    pub role: Role,
    pub created_by: UserId,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// SHA-256 of a high-entropy token: how tokens are looked up and stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::BadRow(format!("{what}: {e}"))
}

/// Reads one row.
pub fn get<T: DeserializeOwned>(table: &Table<'_>, key: &[u8]) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(v) => postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|e| corrupt("row", e)),
        None => Ok(None),
    }
}

/// Writes one row in `txn`.
pub fn put<T: Serialize>(
    txn: &WriteTxn,
    table: ByteTable,
    key: &[u8],
    value: &T,
) -> Result<(), StoreError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| corrupt("encode", e))?;
    txn.open_table(table)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Deletes one row in `txn`; whether it existed.
pub fn delete(txn: &WriteTxn, table: ByteTable, key: &[u8]) -> Result<bool, StoreError> {
    Ok(txn.open_table(table)?.remove(key)?.is_some())
}

/// Every row of a table.
pub fn scan<T: DeserializeOwned>(table: &Table<'_>) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let row = postcard::from_bytes(v.value()).map_err(|e| corrupt("row", e))?;
        out.push((k.value().to_vec(), row));
    }
    Ok(out)
}

/// Normalized username used for uniqueness: lower case.
pub fn username_key(name: &str) -> String {
    name.to_lowercase()
}
