//! Keeping the decrypted cache in step with records other replicas change.
//!
//! Each replica keeps the provider secrets the proxy injects decrypted in
//! memory. A `put` or `remove` on this replica evicts its own copy; one on
//! another replica reaches this one through the store's change feed, and
//! the app's reload task calls [`Vault::on_store_change`]: every cached
//! copy whose name now points to another record, or whose record's
//! envelope changed, is dropped, and the next use decrypts the record
//! again (once per change, not per request). Records are compared by a
//! digest of their envelopes (a new one per write: fresh nonce), so the
//! scan decrypts nothing and last-used writes drop nothing.

use super::{RecordId, Vault, VaultError, decode};
use crate::store::{Changed, VAULT_NAMES, VAULT_RECORDS};

/// SHA-256 of a record's envelope.
pub(super) fn envelope_digest(envelope: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(envelope).into()
}

impl Vault {
    /// Drops the cached secrets `change` may have made stale (blocking:
    /// reads the store). How many were dropped.
    pub fn on_store_change(&self, change: &Changed) -> Result<usize, VaultError> {
        if !change.touches_table(VAULT_NAMES) && !change.touches_table(VAULT_RECORDS) {
            return Ok(0);
        }
        let cached: Vec<(String, RecordId, [u8; 32])> = match self.state.read() {
            Ok(s) => match s.as_ref() {
                Some(u) => u
                    .cache
                    .iter()
                    .map(|(n, c)| (n.clone(), c.id, c.envelope))
                    .collect(),
                None => return Ok(0),
            },
            Err(_) => return Ok(0),
        };
        if cached.is_empty() {
            return Ok(0);
        }
        let mut stale = Vec::new();
        {
            let txn = self.store.begin_read()?;
            let names = txn.open_table(VAULT_NAMES)?;
            let records = txn.open_table(VAULT_RECORDS)?;
            for (name, id, digest) in cached {
                let same_id = names
                    .get(name.as_bytes())?
                    .and_then(|v| RecordId::from_key(v.value()))
                    == Some(id);
                let same_envelope = same_id
                    && match records.get(id.to_key().as_slice())? {
                        Some(v) => envelope_digest(&decode(v.value())?.envelope) == digest,
                        None => false,
                    };
                if !same_envelope {
                    stale.push((name, digest));
                }
            }
        }
        let mut dropped = 0;
        if let Ok(mut s) = self.state.write()
            && let Some(u) = s.as_mut()
        {
            for (name, digest) in stale {
                // Only the copy found stale: one decrypted since from the
                // new record stays.
                if u.cache.get(&name).is_some_and(|c| c.envelope == digest) {
                    u.cache.remove(&name);
                    dropped += 1;
                }
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::vault::{Kind, MasterKeySource, NewRecord};
    use age::secrecy::{ExposeSecret, SecretString};
    use std::sync::Arc;

    fn record(name: &str) -> NewRecord {
        NewRecord {
            name: name.into(),
            kind: Kind::Generic,
            provider: None,
            labels: Default::default(),
        }
    }

    /// Two vaults over one store stand for two replicas: what one writes,
    /// the other's cache gives up once told the tables changed, and not
    /// before (it does not read the store per request).
    #[test]
    fn a_change_by_another_replica_reaches_the_cache_when_notified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "test").expect("store");
        let source = MasterKeySource::KeyFile {
            path: dir.path().join("master.key"),
        };
        let a = Vault::new(Arc::clone(&store));
        a.open_with(&source).expect("unseal a");
        let b = Vault::new(Arc::clone(&store));
        b.open_with(&source).expect("unseal b");
        a.put(&record("k"), &SecretString::from("one"), false)
            .expect("put");
        a.put(&record("other"), &SecretString::from("x"), false)
            .expect("put");
        assert_eq!(b.reveal_cached("k").expect("r").expose_secret(), "one");
        assert_eq!(b.reveal_cached("other").expect("r").expose_secret(), "x");

        a.put(&record("k"), &SecretString::from("two"), true)
            .expect("replace");
        // Not told yet: b serves its copy (the hot path reads no store).
        assert_eq!(b.reveal_cached("k").expect("r").expose_secret(), "one");
        // A change of other tables leaves the cache alone.
        let unrelated = Changed::Tables(vec!["sessions".into()]);
        assert_eq!(b.on_store_change(&unrelated).expect("sync"), 0);
        assert_eq!(b.reveal_cached("k").expect("r").expose_secret(), "one");

        let change = Changed::Tables(vec!["vault_records".into(), "vault_names".into()]);
        assert_eq!(b.on_store_change(&change).expect("sync"), 1, "only `k`");
        assert_eq!(b.reveal_cached("k").expect("r").expose_secret(), "two");
        assert_eq!(b.reveal_cached("other").expect("r").expose_secret(), "x");

        // Last-used writes change the records but not their envelopes.
        a.reveal_cached("other").expect("use");
        a.flush_last_used().expect("flush");
        assert_eq!(b.on_store_change(&Changed::Unknown).expect("sync"), 0);

        // A removal (and a new entry under the same name) is seen too.
        a.remove("k").expect("remove");
        assert_eq!(b.on_store_change(&change).expect("sync"), 1);
        assert!(matches!(b.reveal_cached("k"), Err(VaultError::NotFound(_))));
        a.put(&record("k"), &SecretString::from("three"), false)
            .expect("put again");
        assert_eq!(b.on_store_change(&Changed::Unknown).expect("sync"), 0);
        assert_eq!(b.reveal_cached("k").expect("r").expose_secret(), "three");
    }
}
