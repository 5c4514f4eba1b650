//! Schema version 4: an index of sessions and tokens, so revoking what a
//! user, a session or a token family holds reads a key range instead of
//! scanning whole tables inside a write transaction.
//!
//! New table `auth_index` (byte table, every value empty; the key is the
//! whole entry):
//! - `b's'` ‖ user id (16 bytes BE) ‖ session hash (32): the user's sessions.
//! - `b'u'` ‖ user id (16) ‖ family id (16 bytes BE): the user's refresh
//!   token families.
//! - `b'f'` ‖ session hash (32) ‖ family id (16): the families issued from a
//!   session.
//! - `b'a'` ‖ family id (16) ‖ access token hash (32): a family's access
//!   tokens.
//! - `b'r'` ‖ family id (16) ‖ refresh token hash (32): a family's refresh
//!   tokens.
//!
//! An entry may outlive its row (readers skip it); every row has its
//! entries, written in the transaction that writes the row. No existing
//! table changes; the migration builds the index from the rows there.

use crate::ByteTable;
use crate::v2::{ACCESS_TOKENS, REFRESH_FAMILIES, REFRESH_TOKENS, SESSIONS};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

pub const AUTH_INDEX: ByteTable = TableDefinition::new("auth_index");

/// Index key prefixes (see the module docs).
pub const SESSIONS_OF_USER: u8 = b's';
pub const FAMILIES_OF_USER: u8 = b'u';
pub const FAMILIES_OF_SESSION: u8 = b'f';
pub const ACCESS_OF_FAMILY: u8 = b'a';
pub const REFRESH_OF_FAMILY: u8 = b'r';

/// An index key: `kind` ‖ `parts`.
pub fn key(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(kind);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Reads a postcard varint `u128` (LEB128) from the front of `bytes`;
/// the value and the rest.
fn varint_u128(bytes: &[u8]) -> Option<(u128, &[u8])> {
    let mut v: u128 = 0;
    for (i, b) in bytes.iter().enumerate().take(19) {
        v |= u128::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

fn corrupt(what: &str) -> redb::Error {
    redb::Error::Corrupted(format!("v4 index backfill: unreadable {what} row"))
}

/// Migrates version 3 to 4: creates `auth_index` and fills it from the
/// session and token rows (whose leading fields are postcard varints:
/// `Session { user_id, … }`, `Family { user_id, session_hash: [u8; 32],
/// … }`, `AccessToken { user_id, family_id, … }`, `RefreshToken {
/// family_id, … }`).
pub fn migrate(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    {
        let sessions = txn.open_table(SESSIONS)?;
        for item in sessions.iter()? {
            let (k, v) = item?;
            let (user, _) = varint_u128(v.value()).ok_or_else(|| corrupt("session"))?;
            entries.push(key(SESSIONS_OF_USER, &[&user.to_be_bytes(), k.value()]));
        }
        let families = txn.open_table(REFRESH_FAMILIES)?;
        for item in families.iter()? {
            let (k, v) = item?;
            let (user, rest) = varint_u128(v.value()).ok_or_else(|| corrupt("family"))?;
            let session = rest.get(..32).ok_or_else(|| corrupt("family"))?;
            entries.push(key(FAMILIES_OF_USER, &[&user.to_be_bytes(), k.value()]));
            entries.push(key(FAMILIES_OF_SESSION, &[session, k.value()]));
        }
        let access = txn.open_table(ACCESS_TOKENS)?;
        for item in access.iter()? {
            let (k, v) = item?;
            let (_, rest) = varint_u128(v.value()).ok_or_else(|| corrupt("access token"))?;
            let (family, _) = varint_u128(rest).ok_or_else(|| corrupt("access token"))?;
            entries.push(key(ACCESS_OF_FAMILY, &[&family.to_be_bytes(), k.value()]));
        }
        let refresh = txn.open_table(REFRESH_TOKENS)?;
        for item in refresh.iter()? {
            let (k, v) = item?;
            let (family, _) = varint_u128(v.value()).ok_or_else(|| corrupt("refresh token"))?;
            entries.push(key(REFRESH_OF_FAMILY, &[&family.to_be_bytes(), k.value()]));
        }
    }
    let mut index = txn.open_table(AUTH_INDEX)?;
    for k in entries {
        index.insert(k.as_slice(), [].as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    fn varint(mut v: u128) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u128::from(u64::MAX), u128::MAX] {
            let mut bytes = varint(v);
            bytes.push(0xAA);
            assert_eq!(varint_u128(&bytes), Some((v, &[0xAA][..])));
        }
        assert_eq!(varint_u128(&[0x80; 20]), None);
    }

    #[test]
    fn backfill_indexes_existing_sessions_and_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        crate::migrate_with(&txn, &crate::MIGRATIONS[..3]).expect("older migrations");
        let user: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        let family: u128 = u128::MAX - 5;
        let session = [7u8; 32];
        {
            // Leading fields as core's postcard encoding writes them; the
            // rest of each row is arbitrary here.
            let mut t = txn.open_table(SESSIONS).expect("t");
            let mut v = varint(user);
            v.extend([1, 2, 3]);
            t.insert(session.as_slice(), v.as_slice()).expect("i");
            let mut t = txn.open_table(REFRESH_FAMILIES).expect("t");
            let mut v = varint(user);
            v.extend(session);
            v.extend([9, 0]);
            t.insert(family.to_be_bytes().as_slice(), v.as_slice())
                .expect("i");
            let mut t = txn.open_table(ACCESS_TOKENS).expect("t");
            let mut v = varint(user);
            v.extend(varint(family));
            v.extend([5]);
            t.insert([1u8; 32].as_slice(), v.as_slice()).expect("i");
            let mut t = txn.open_table(REFRESH_TOKENS).expect("t");
            let mut v = varint(family);
            v.extend(varint(user));
            t.insert([2u8; 32].as_slice(), v.as_slice()).expect("i");
        }
        migrate(&txn).expect("v4");
        txn.commit().expect("commit");
        let r = db.begin_read().expect("read");
        let index = r.open_table(AUTH_INDEX).expect("index");
        let keys: Vec<Vec<u8>> = index
            .iter()
            .expect("iter")
            .map(|i| i.expect("row").0.value().to_vec())
            .collect();
        let fam = family.to_be_bytes();
        let usr = user.to_be_bytes();
        for want in [
            key(SESSIONS_OF_USER, &[&usr, &session]),
            key(FAMILIES_OF_USER, &[&usr, &fam]),
            key(FAMILIES_OF_SESSION, &[&session, &fam]),
            key(ACCESS_OF_FAMILY, &[&fam, &[1u8; 32]]),
            key(REFRESH_OF_FAMILY, &[&fam, &[2u8; 32]]),
        ] {
            assert!(keys.contains(&want), "missing {want:?}");
        }
        assert_eq!(keys.len(), 5);
    }
}
