//! Writing and reading sessions and tokens together with their index
//! (`auth_index`, schema v4): every insert or delete of a session, refresh
//! family, access or refresh token goes through here, so the index always
//! has an entry for every row, and revoking what a user, a session or a
//! family holds reads one key range instead of scanning tables inside a
//! write transaction.
//!
//! An index entry whose row is gone is harmless (readers skip it, pruning
//! removes it); a row without its entry would escape revocation, which is
//! why rows are never written around these functions.

use super::store::{
    self as db, ACCESS_TOKENS, AccessToken, Family, REFRESH_FAMILIES, REFRESH_TOKENS, RefreshToken,
    SESSIONS, Session, UserId,
};
use crate::store::{ReadTxn, StoreError, Table, WriteTxn};
use latchkey_migrations::v4::{
    ACCESS_OF_FAMILY, AUTH_INDEX, FAMILIES_OF_SESSION, FAMILIES_OF_USER, REFRESH_OF_FAMILY,
    SESSIONS_OF_USER, key,
};

fn add(txn: &WriteTxn, k: &[u8]) -> Result<(), StoreError> {
    txn.open_table(AUTH_INDEX)?.insert(k, [].as_slice())?;
    Ok(())
}

fn remove(txn: &WriteTxn, k: &[u8]) -> Result<(), StoreError> {
    txn.open_table(AUTH_INDEX)?.remove(k)?;
    Ok(())
}

/// The last `N` bytes of every key of `table` (the index) starting with
/// `prefix`.
fn suffixes_in<const N: usize>(
    table: &Table<'_>,
    prefix: &[u8],
) -> Result<Vec<[u8; N]>, StoreError> {
    let mut out = Vec::new();
    for item in table.range(prefix..)? {
        let (k, _) = item?;
        let k = k.value();
        if !k.starts_with(prefix) {
            break;
        }
        if let Some(tail) = k.len().checked_sub(N).and_then(|at| k.get(at..))
            && let Ok(arr) = <[u8; N]>::try_from(tail)
        {
            out.push(arr);
        }
    }
    Ok(out)
}

fn suffixes<const N: usize>(txn: &WriteTxn, prefix: &[u8]) -> Result<Vec<[u8; N]>, StoreError> {
    suffixes_in(&txn.open_table(AUTH_INDEX)?, prefix)
}

/// The hashes of `user`'s sessions, in a read transaction.
pub fn sessions_of_read(txn: &ReadTxn, user: UserId) -> Result<Vec<[u8; 32]>, StoreError> {
    suffixes_in(
        &txn.open_table(AUTH_INDEX)?,
        &key(SESSIONS_OF_USER, &[&user.key()]),
    )
}

/// Writes a new session (or rewrites one: its index key does not change).
pub fn put_session(txn: &WriteTxn, hash: &[u8; 32], s: &Session) -> Result<(), StoreError> {
    db::put(txn, SESSIONS, hash, s)?;
    add(txn, &key(SESSIONS_OF_USER, &[&s.user_id.key(), hash]))
}

/// Deletes a session and its index entry; the row it had.
pub fn delete_session(txn: &WriteTxn, hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
    let row: Option<Session> = db::get(&txn.open_table(SESSIONS)?, hash)?;
    if let Some(s) = &row {
        db::delete(txn, SESSIONS, hash)?;
        remove(txn, &key(SESSIONS_OF_USER, &[&s.user_id.key(), hash]))?;
    }
    Ok(row)
}

/// The hashes of `user`'s sessions.
pub fn sessions_of(txn: &WriteTxn, user: UserId) -> Result<Vec<[u8; 32]>, StoreError> {
    suffixes(txn, &key(SESSIONS_OF_USER, &[&user.key()]))
}

/// Writes a new refresh family with its index entries.
pub fn put_family(txn: &WriteTxn, id: u128, f: &Family) -> Result<(), StoreError> {
    let fam = id.to_be_bytes();
    db::put(txn, REFRESH_FAMILIES, &fam, f)?;
    add(txn, &key(FAMILIES_OF_USER, &[&f.user_id.key(), &fam]))?;
    add(txn, &key(FAMILIES_OF_SESSION, &[&f.session_hash, &fam]))
}

/// Deletes a family row and its index entries (its tokens are the
/// caller's: see [`tokens_of_family`]).
pub fn delete_family(txn: &WriteTxn, id: u128) -> Result<(), StoreError> {
    let fam = id.to_be_bytes();
    let row: Option<Family> = db::get(&txn.open_table(REFRESH_FAMILIES)?, &fam)?;
    if let Some(f) = row {
        db::delete(txn, REFRESH_FAMILIES, &fam)?;
        remove(txn, &key(FAMILIES_OF_USER, &[&f.user_id.key(), &fam]))?;
        remove(txn, &key(FAMILIES_OF_SESSION, &[&f.session_hash, &fam]))?;
    }
    Ok(())
}

/// The families issued from a session.
pub fn families_of_session(txn: &WriteTxn, session: &[u8; 32]) -> Result<Vec<u128>, StoreError> {
    Ok(suffixes::<16>(txn, &key(FAMILIES_OF_SESSION, &[session]))?
        .into_iter()
        .map(u128::from_be_bytes)
        .collect())
}

/// `user`'s families.
pub fn families_of_user(txn: &WriteTxn, user: UserId) -> Result<Vec<u128>, StoreError> {
    Ok(suffixes::<16>(txn, &key(FAMILIES_OF_USER, &[&user.key()]))?
        .into_iter()
        .map(u128::from_be_bytes)
        .collect())
}

/// Writes a new access token with its index entry.
pub fn put_access(txn: &WriteTxn, hash: &[u8; 32], a: &AccessToken) -> Result<(), StoreError> {
    db::put(txn, ACCESS_TOKENS, hash, a)?;
    add(
        txn,
        &key(ACCESS_OF_FAMILY, &[&a.family_id.to_be_bytes(), hash]),
    )
}

/// Writes a refresh token (new, or marked used: same index key).
pub fn put_refresh(txn: &WriteTxn, hash: &[u8; 32], r: &RefreshToken) -> Result<(), StoreError> {
    db::put(txn, REFRESH_TOKENS, hash, r)?;
    add(
        txn,
        &key(REFRESH_OF_FAMILY, &[&r.family_id.to_be_bytes(), hash]),
    )
}

/// The hashes of a family's tokens.
#[derive(Debug, Default)]
pub struct FamilyTokens {
    pub access: Vec<[u8; 32]>,
    pub refresh: Vec<[u8; 32]>,
}

/// A family's tokens, from the index.
pub fn tokens_of_family(txn: &WriteTxn, family: u128) -> Result<FamilyTokens, StoreError> {
    let fam = family.to_be_bytes();
    Ok(FamilyTokens {
        access: suffixes(txn, &key(ACCESS_OF_FAMILY, &[&fam]))?,
        refresh: suffixes(txn, &key(REFRESH_OF_FAMILY, &[&fam]))?,
    })
}

/// Deletes an access token and its index entry.
pub fn delete_access(txn: &WriteTxn, family: u128, hash: &[u8; 32]) -> Result<(), StoreError> {
    db::delete(txn, ACCESS_TOKENS, hash)?;
    remove(txn, &key(ACCESS_OF_FAMILY, &[&family.to_be_bytes(), hash]))
}

/// Deletes a refresh token and its index entry.
pub fn delete_refresh(txn: &WriteTxn, family: u128, hash: &[u8; 32]) -> Result<(), StoreError> {
    db::delete(txn, REFRESH_TOKENS, hash)?;
    remove(txn, &key(REFRESH_OF_FAMILY, &[&family.to_be_bytes(), hash]))
}
