//! The vault: secrets encrypted at rest, readable only while unsealed.
//!
//! Key hierarchy: master key → wraps the data key (stored in `meta`) → every
//! record's envelope is encrypted to the data key. Unsealing unwraps the data
//! key into memory; sealing drops it and every cached plaintext. Writes are
//! durable when they return (the store commits durably: redb with fsync).

mod envelope;
pub mod gate;
pub mod keychain;
pub mod keys;
pub mod master;
pub mod record;
pub mod rotation;
mod sync;

pub use envelope::EnvelopeError;
pub use keys::{DataKey, KeyError, MasterKey};
pub use master::{MasterKeyError, MasterKeySource};
pub use record::{InvalidField, Kind, NewRecord, RecordId, RecordMeta};

use crate::store::{META, Store, StoreError, VAULT_NAMES, VAULT_RECORDS};
use age::secrecy::SecretString;
use record::StoredRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

pub(crate) const META_VAULT_ID: &[u8] = b"vault_id";
/// The data key wrapped by the master key (public: `latchkey self-check`
/// reads it straight from a shared database to prove the key opens it).
pub const META_WRAPPED_DATA_KEY: &[u8] = b"wrapped_data_key";
pub(crate) const META_MASTER_SOURCE: &[u8] = b"master_source";
pub(crate) const META_CREATED_AT: &[u8] = b"created_at";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault is sealed; unseal it first (`latchkey unseal`)")]
    Sealed,
    #[error("the vault has not been initialized")]
    NotInitialized,
    #[error("the vault is already initialized")]
    AlreadyInitialized,
    #[error("no vault entry named `{0}`")]
    NotFound(String),
    #[error("a vault entry named `{0}` already exists (use replace to overwrite it)")]
    AlreadyExists(String),
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("integrity check failed for vault entry `{name}`: {source}")]
    Integrity {
        name: String,
        #[source]
        source: EnvelopeError,
    },
    #[error(
        "the vault's data key is wrapped by the `{stored}` master-key source, \
         but the configuration selects `{configured}`"
    )]
    SourceMismatch {
        stored: String,
        configured: &'static str,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("stored vault entry is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Unsealed {
    data_key: DataKey,
    /// Decrypted secrets by name, so the hot path neither decrypts nor
    /// touches the database, with the digest of the envelope each came
    /// from (`sync` drops copies whose record another replica changed).
    cache: HashMap<String, Cached>,
}

/// A decrypted secret held for the hot path.
struct Cached {
    id: RecordId,
    secret: SecretString,
    /// [`sync::envelope_digest`] of the record it was decrypted from.
    envelope: [u8; 32],
}

/// The vault of one data directory.
pub struct Vault {
    store: Arc<Store>,
    state: RwLock<Option<Unsealed>>,
    /// last-used times not yet written, so reads do no disk I/O.
    pending_last_used: Mutex<HashMap<RecordId, i64>>,
    /// One passphrase derivation at a time (see [`gate`]).
    gate: gate::UnsealGate,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn decode(bytes: &[u8]) -> Result<StoredRecord, VaultError> {
    postcard::from_bytes(bytes).map_err(|e| VaultError::Damaged(e.to_string()))
}

fn encode(r: &StoredRecord) -> Result<Vec<u8>, VaultError> {
    postcard::to_allocvec(r).map_err(|e| VaultError::Damaged(e.to_string()))
}

/// How the vault came to be unsealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlock {
    /// A new data key was made (first run).
    Initialized,
    /// The stored data key was unwrapped.
    Unsealed,
}

impl Vault {
    /// A sealed vault over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Vault {
            store,
            state: RwLock::new(None),
            pending_last_used: Mutex::new(HashMap::new()),
            gate: gate::UnsealGate::default(),
        }
    }

    /// The gate every passphrase key derivation goes through.
    pub fn gate(&self) -> &gate::UnsealGate {
        &self.gate
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn is_sealed(&self) -> bool {
        self.state.read().map(|s| s.is_none()).unwrap_or(true)
    }

    /// Whether a data key exists yet.
    pub fn is_initialized(&self) -> Result<bool, VaultError> {
        Ok(self.store.meta_get(META_WRAPPED_DATA_KEY)?.is_some())
    }

    /// The name of the source that wrapped the data key, if initialized.
    pub fn stored_source(&self) -> Result<Option<String>, VaultError> {
        Ok(self
            .store
            .meta_get(META_MASTER_SOURCE)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Unseals with the configured source: creates the data key (and, for
    /// sources that can, the master key) on first run. Passphrase sources go
    /// through [`Vault::unseal`] with a passphrase instead.
    pub fn open_with(&self, source: &MasterKeySource) -> Result<Unlock, VaultError> {
        if !self.is_initialized()? && source.can_generate() {
            // Key first, then the database: a crash in between leaves a
            // key the next first run uses, never a data key nobody can
            // unwrap. A key the source already holds is never replaced.
            let mk = source.load_or_create()?;
            self.initialize(&mk, source.kind_name())?;
            return Ok(Unlock::Initialized);
        }
        let mk = source.load()?;
        self.unseal(&mk, source.kind_name())
    }

    /// Creates a data key wrapped by `master` (first run only).
    pub fn initialize(&self, master: &MasterKey, source_name: &str) -> Result<(), VaultError> {
        let data_key = DataKey::generate();
        let wrapped = master.wrap(&data_key)?;
        let txn = self.store.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            if meta.get(META_WRAPPED_DATA_KEY)?.is_some() {
                return Err(VaultError::AlreadyInitialized);
            }
            let vault_id: [u8; 16] = rand::random();
            meta.insert(META_VAULT_ID, vault_id.as_slice())?;
            meta.insert(META_WRAPPED_DATA_KEY, wrapped.as_slice())?;
            meta.insert(META_MASTER_SOURCE, source_name.as_bytes())?;
            meta.insert(META_CREATED_AT, now().to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        self.set_unsealed(data_key);
        Ok(())
    }

    /// Unwraps the data key with `master`; initializes when there is none yet.
    pub fn unseal(
        &self,
        master: &MasterKey,
        source_name: &'static str,
    ) -> Result<Unlock, VaultError> {
        let Some(wrapped) = self.store.meta_get(META_WRAPPED_DATA_KEY)? else {
            self.initialize(master, source_name)?;
            return Ok(Unlock::Initialized);
        };
        if let Some(stored) = self.stored_source()?
            && stored != source_name
        {
            return Err(VaultError::SourceMismatch {
                stored,
                configured: source_name,
            });
        }
        let data_key = master.unwrap(&wrapped)?;
        self.set_unsealed(data_key);
        Ok(Unlock::Unsealed)
    }

    fn set_unsealed(&self, data_key: DataKey) {
        if let Ok(mut s) = self.state.write() {
            *s = Some(Unsealed {
                data_key,
                cache: HashMap::new(),
            });
        }
    }

    /// Drops the data key and every cached secret from memory.
    pub fn seal(&self) {
        if let Ok(mut s) = self.state.write() {
            *s = None; // DataKey and SecretString zeroize on drop
        }
    }

    fn with_key<T>(
        &self,
        f: impl FnOnce(&DataKey) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let guard = self.state.read().map_err(|_| VaultError::Sealed)?;
        let unsealed = guard.as_ref().ok_or(VaultError::Sealed)?;
        f(&unsealed.data_key)
    }

    /// Stores a secret under `new.name`; with `replace`, overwrites an
    /// existing entry of that name (keeping its id and creation time).
    pub fn put(
        &self,
        new: &NewRecord,
        secret: &SecretString,
        replace: bool,
    ) -> Result<RecordMeta, VaultError> {
        use age::secrecy::ExposeSecret;
        new.validate()?;
        record::validate_secret(secret.expose_secret())?;
        let meta = self.with_key(|key| {
            let txn = self.store.begin_write()?;
            let meta = {
                let mut names = txn.open_table(VAULT_NAMES)?;
                let mut records = txn.open_table(VAULT_RECORDS)?;
                let existing = names
                    .get(new.name.as_bytes())?
                    .map(|v| {
                        RecordId::from_key(v.value())
                            .ok_or_else(|| VaultError::Damaged("bad id in name index".into()))
                    })
                    .transpose()?;
                let t = now();
                let (id, created_at, last_used_at) = match existing {
                    Some(_) if !replace => return Err(VaultError::AlreadyExists(new.name.clone())),
                    Some(id) => {
                        let old = records.get(id.to_key().as_slice())?.ok_or_else(|| {
                            VaultError::Damaged("name index points nowhere".into())
                        })?;
                        let old = decode(old.value())?;
                        (id, old.created_at, old.last_used_at)
                    }
                    None => (RecordId::random(), t, None),
                };
                let stored = StoredRecord {
                    name: new.name.clone(),
                    kind: new.kind,
                    provider: new.provider.clone(),
                    labels: new.labels.clone(),
                    created_at,
                    updated_at: t,
                    last_used_at,
                    envelope: envelope::seal(key, id, new.kind, secret.expose_secret())?,
                };
                records.insert(id.to_key().as_slice(), encode(&stored)?.as_slice())?;
                names.insert(new.name.as_bytes(), id.to_key().as_slice())?;
                RecordMeta::from_stored(id, &stored)
            };
            txn.commit()?;
            Ok(meta)
        })?;
        self.evict(&new.name);
        Ok(meta)
    }

    fn evict(&self, name: &str) {
        if let Ok(mut s) = self.state.write()
            && let Some(u) = s.as_mut()
        {
            u.cache.remove(name);
        }
    }

    fn lookup(&self, name: &str) -> Result<(RecordId, StoredRecord), VaultError> {
        record::validate_name(name)?;
        let txn = self.store.begin_read()?;
        let names = txn.open_table(VAULT_NAMES)?;
        let id = names
            .get(name.as_bytes())?
            .and_then(|v| RecordId::from_key(v.value()))
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        let records = txn.open_table(VAULT_RECORDS)?;
        let stored = records
            .get(id.to_key().as_slice())?
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        Ok((id, decode(stored.value())?))
    }

    /// Metadata of one entry (works while sealed: metadata is not secret).
    pub fn meta(&self, name: &str) -> Result<RecordMeta, VaultError> {
        let (id, r) = self.lookup(name)?;
        let mut meta = RecordMeta::from_stored(id, &r);
        self.overlay_last_used(&mut meta);
        Ok(meta)
    }

    fn overlay_last_used(&self, meta: &mut RecordMeta) {
        if let Ok(p) = self.pending_last_used.lock()
            && let Some(t) = p.get(&meta.id)
        {
            meta.last_used_at = time::OffsetDateTime::from_unix_timestamp(*t).ok();
        }
    }

    /// Every entry's metadata, sorted by name.
    pub fn list(&self) -> Result<Vec<RecordMeta>, VaultError> {
        let txn = self.store.begin_read()?;
        let records = txn.open_table(VAULT_RECORDS)?;
        let mut out = Vec::new();
        for item in records.iter()? {
            let (k, v) = item?;
            let id = RecordId::from_key(k.value())
                .ok_or_else(|| VaultError::Damaged("bad record id".into()))?;
            let mut meta = RecordMeta::from_stored(id, &decode(v.value())?);
            self.overlay_last_used(&mut meta);
            out.push(meta);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Decrypts one secret (always from disk, authenticating the envelope).
    pub fn reveal(&self, name: &str) -> Result<SecretString, VaultError> {
        self.decrypt(name).map(|c| c.secret)
    }

    /// Reads, decrypts and authenticates `name`, and notes the use.
    fn decrypt(&self, name: &str) -> Result<Cached, VaultError> {
        let (id, r) = self.lookup(name)?;
        let secret = self.with_key(|key| {
            envelope::open(key, id, r.kind, &r.envelope).map_err(|source| VaultError::Integrity {
                name: name.to_string(),
                source,
            })
        })?;
        self.mark_used(id);
        Ok(Cached {
            id,
            secret,
            envelope: sync::envelope_digest(&r.envelope),
        })
    }

    /// The hot path's read: the in-memory copy when there is one, otherwise a
    /// decrypt that fills the cache.
    pub fn reveal_cached(&self, name: &str) -> Result<SecretString, VaultError> {
        {
            let guard = self.state.read().map_err(|_| VaultError::Sealed)?;
            let unsealed = guard.as_ref().ok_or(VaultError::Sealed)?;
            if let Some(c) = unsealed.cache.get(name) {
                self.mark_used(c.id);
                return Ok(c.secret.clone());
            }
        }
        let fresh = self.decrypt(name)?;
        let secret = fresh.secret.clone();
        if let Ok(mut s) = self.state.write()
            && let Some(u) = s.as_mut()
        {
            u.cache.insert(name.to_string(), fresh);
        }
        Ok(secret)
    }

    fn mark_used(&self, id: RecordId) {
        if let Ok(mut p) = self.pending_last_used.lock() {
            p.insert(id, now());
        }
    }

    /// Writes pending last-used times in one transaction.
    pub fn flush_last_used(&self) -> Result<usize, VaultError> {
        let pending: HashMap<RecordId, i64> = match self.pending_last_used.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(0),
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let txn = self.store.begin_write()?;
        let mut written = 0;
        {
            let mut records = txn.open_table(VAULT_RECORDS)?;
            for (id, t) in &pending {
                let current = records
                    .get(id.to_key().as_slice())?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let mut r = decode(&bytes)?;
                    // Another replica may have written a later use.
                    if r.last_used_at.is_some_and(|old| old >= *t) {
                        continue;
                    }
                    r.last_used_at = Some(*t);
                    records.insert(id.to_key().as_slice(), encode(&r)?.as_slice())?;
                    written += 1;
                }
            }
        }
        txn.commit()?;
        Ok(written)
    }

    /// Deletes an entry.
    pub fn remove(&self, name: &str) -> Result<RecordMeta, VaultError> {
        record::validate_name(name)?;
        let txn = self.store.begin_write()?;
        let meta = {
            let mut names = txn.open_table(VAULT_NAMES)?;
            let mut records = txn.open_table(VAULT_RECORDS)?;
            let id = names
                .remove(name.as_bytes())?
                .and_then(|v| RecordId::from_key(v.value()))
                .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
            let r = records
                .remove(id.to_key().as_slice())?
                .map(|v| decode(v.value()))
                .transpose()?
                .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
            RecordMeta::from_stored(id, &r)
        };
        txn.commit()?;
        self.evict(name);
        if let Ok(mut p) = self.pending_last_used.lock() {
            p.remove(&meta.id);
        }
        Ok(meta)
    }

    /// Re-wraps the data key with `new_master` in one write transaction.
    /// Records are untouched: they are encrypted to the data key.
    pub fn rewrap(&self, new_master: &MasterKey, source_name: &str) -> Result<(), VaultError> {
        let wrapped = self.with_key(|key| Ok(new_master.wrap(key)?))?;
        // Prove the new wrapping opens before it replaces the old one.
        new_master.unwrap(&wrapped)?;
        let txn = self.store.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_WRAPPED_DATA_KEY, wrapped.as_slice())?;
            meta.insert(META_MASTER_SOURCE, source_name.as_bytes())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Verifies every envelope decrypts and belongs to its record; returns
    /// the number checked. Used by `vault verify` and after restores.
    pub fn verify_all(&self) -> Result<usize, VaultError> {
        let txn = self.store.begin_read()?;
        let records = txn.open_table(VAULT_RECORDS)?;
        self.with_key(|key| {
            let mut n = 0;
            for item in records.iter()? {
                let (k, v) = item?;
                let id = RecordId::from_key(k.value())
                    .ok_or_else(|| VaultError::Damaged("bad record id".into()))?;
                let r = decode(v.value())?;
                envelope::open(key, id, r.kind, &r.envelope).map_err(|source| {
                    VaultError::Integrity {
                        name: r.name.clone(),
                        source,
                    }
                })?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Encrypts a non-record secret (e.g. a TOTP secret) to the data key,
    /// bound to `context`.
    pub fn seal_value(&self, context: &str, secret: &SecretString) -> Result<Vec<u8>, VaultError> {
        use age::secrecy::ExposeSecret;
        self.with_key(|key| {
            Ok(envelope::seal_context(
                key,
                context,
                secret.expose_secret(),
            )?)
        })
    }

    /// Opens what [`Vault::seal_value`] made for the same `context`.
    pub fn open_value(&self, context: &str, ciphertext: &[u8]) -> Result<SecretString, VaultError> {
        self.with_key(|key| {
            envelope::open_context(key, context, ciphertext).map_err(|source| {
                VaultError::Integrity {
                    name: context.to_string(),
                    source,
                }
            })
        })
    }

    /// Runs `f` with the data key (backups need it).
    pub(crate) fn with_data_key<T>(
        &self,
        f: impl FnOnce(&DataKey) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.with_key(f)
    }
}

#[cfg(test)]
mod tests;

/// Checks that a stored record's bytes decode and its envelope opens with
/// `key` (used to verify backups before restoring them).
pub(crate) fn verify_stored(key: &DataKey, id: RecordId, bytes: &[u8]) -> Result<(), VaultError> {
    let r = decode(bytes)?;
    envelope::open(key, id, r.kind, &r.envelope)
        .map(drop)
        .map_err(|source| VaultError::Integrity {
            name: r.name.clone(),
            source,
        })
}

/// The envelope functions, for the fuzz targets only (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) use envelope::{
    open as envelope_open, open_context as envelope_open_context, seal as envelope_seal,
    seal_context as envelope_seal_context,
};
