//! Encrypted backups and verified restores.
//!
//! A backup is one age file (to an X25519 recipient or a passphrase) whose
//! plaintext is every table of the database as it was in one read
//! transaction — a consistent snapshot even while a server writes — plus the
//! vault's data key. The wrapped data key is left out: a restore re-wraps the
//! data key with the target's own master key, so a backup stays usable after
//! the original master key is lost. Records stay individually encrypted inside
//! the backup as well.
//!
//! A restore decrypts and checks everything (format, schema version, every
//! record's envelope) before it touches the data directory, then writes a new
//! database file beside the old one and renames it into place — or, for a
//! store shared by replicas (PostgreSQL), copies that file's tables into it
//! in one write transaction ([`store_target`]).
//!
//! Every backup is signed by the installation's backup key ([`signing`]),
//! and a restore believes only backups whose origin it can tell:
//! [`signing::Trust::check`] has the rule.

mod redb_target;
pub mod signing;
mod store_target;

pub use store_target::{RestoredStore, restore_into_store};

use crate::store::{self, DB_FILE, DataDirLock, META, Store, VAULT_RECORDS};
use crate::vault::{
    DataKey, META_MASTER_SOURCE, META_WRAPPED_DATA_KEY, MasterKey, MasterKeySource, RecordId,
    Vault, VaultError,
};
use age::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use signing::{Fingerprint, Origin, Trust};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const MAGIC: &str = "latchkey-backup";
const FORMAT: u32 = 1;

/// How long a passphrase backup waits for another passphrase derivation
/// (an unseal, another backup) to finish before answering busy.
const BACKUP_GATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Who can open a backup.
pub enum BackupRecipient {
    /// An age X25519 recipient (`age1…`).
    Recipient(age::x25519::Recipient),
    Passphrase(SecretString),
}

impl BackupRecipient {
    pub fn parse_recipient(s: &str) -> Result<Self, BackupError> {
        age::x25519::Recipient::from_str(s.trim())
            .map(BackupRecipient::Recipient)
            .map_err(|_| BackupError::BadRecipient)
    }
}

/// What opens a backup.
pub enum BackupIdentity {
    Identity(age::x25519::Identity),
    Passphrase(SecretString),
}

impl BackupIdentity {
    /// Reads an age identity file (comment lines allowed).
    pub fn from_identity_file(path: &Path) -> Result<Self, BackupError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| BackupError::Io {
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or_else(|| BackupError::BadIdentityFile(path.to_path_buf()))?;
        age::x25519::Identity::from_str(line)
            .map(BackupIdentity::Identity)
            .map_err(|_| BackupError::BadIdentityFile(path.to_path_buf()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a valid age recipient (expected age1…)")]
    BadRecipient,
    #[error("{0} does not contain an age identity (AGE-SECRET-KEY-1…)")]
    BadIdentityFile(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup cannot be decrypted: {0}")]
    Decrypt(String),
    #[error("the backup is damaged or not a Latchkey backup ({0}); nothing was changed")]
    Damaged(String),
    #[error(
        "the backup has schema version {found}, newer than this Latchkey supports ({supported}); \
         nothing was changed"
    )]
    TooNew { found: u32, supported: u32 },
    #[error(
        "the data directory {0} already holds a vault; restoring would replace it. \
         Pass --force to overwrite it"
    )]
    NotEmpty(PathBuf),
    #[error(
        "the PostgreSQL database {0} already holds a vault; restoring would replace it. \
         Pass --force to overwrite it"
    )]
    StoreNotEmpty(String),
    #[error(
        "{count} other Latchkey process(es) have {target} open: running replicas would go on \
         serving the vault, users and keys they hold in memory. Stop every replica first \
         (Kubernetes: kubectl scale deployment/latchkey --replicas=0) and run the restore \
         again; nothing was changed"
    )]
    ReplicasRunning { count: u64, target: String },
    #[error(
        "the restored store {target} does not read back as the backup ({detail}); do not \
         serve from it: restore again with every replica stopped"
    )]
    RestoredDiffers { target: String, detail: String },
    #[error("backup verification failed: {0}; nothing was changed")]
    Verify(String),
    #[error(
        "the backup's signature does not verify: the file was altered or damaged; \
         nothing was changed"
    )]
    BadSignature,
    #[error(
        "the backup is signed by backup key {signer}, not by the expected one ({expected}); \
         nothing was changed. Anyone holding the public age recipient can make a backup, \
         so only a signature shows where it came from: compare {signer} with the fingerprint \
         `latchkey backup` showed on the installation you backed up, and only if they are \
         the same, run the restore again with --trust {signer}"
    )]
    Untrusted { signer: String, expected: String },
    #[error(
        "the backup is not signed (made before Latchkey signed its backups, or its signature \
         was removed): anyone holding the public age recipient could have made it. Nothing \
         was changed. Only if you are certain where it came from, run the restore again with \
         --allow-unsigned"
    )]
    Unsigned,
    #[error(
        "another passphrase operation is running (each uses 256 MiB, so one runs at a time); \
         try again in a moment"
    )]
    PassphraseBusy,
    #[error("not a backup key fingerprint (expected SHA256:… as `latchkey backup` prints it)")]
    BadFingerprint,
    #[error("the backup signing key: {0}")]
    Signing(&'static str),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct TableDump {
    name: String,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Payload {
    magic: String,
    format: u32,
    schema_version: u32,
    created_at: i64,
    data_key: String,
    tables: Vec<TableDump>,
}

/// Summary of a backup, printed by the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub schema_version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    pub tables: usize,
    pub vault_records: usize,
    /// The fingerprint of the key that signed it (`None`: unsigned).
    pub signed_by: Option<String>,
}

/// Takes a consistent snapshot of the whole database and encrypts it.
pub fn create(
    vault: &Vault,
    to: &BackupRecipient,
) -> Result<(Vec<u8>, BackupSummary), BackupError> {
    let store = vault.store();
    let data_key = vault.with_data_key(|k| Ok(k.expose_identity_string()))?;
    // Made (on the first backup) before the snapshot, so the backup holds
    // the key and a restored installation goes on signing with it.
    let signer = signing::signing_key(vault)?;
    let signed_by = {
        use ring::signature::KeyPair;
        Fingerprint::of(signer.public_key().as_ref())
    };
    // Through the storage seam, so a backup reads the same snapshot from
    // redb and from PostgreSQL.
    let txn = store.begin_read()?;
    let mut tables = Vec::new();
    for name in txn.table_names()? {
        let table = txn.open_named(&name)?;
        let mut entries = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let key = k.value();
            if name == store::table_name(&META)
                && (key == META_WRAPPED_DATA_KEY || key == META_MASTER_SOURCE)
            {
                continue; // re-made by the restore for its own master key
            }
            entries.push((k.into_vec(), v.into_vec()));
        }
        tables.push(TableDump { name, entries });
    }
    let schema_version = txn
        .open_table(META)?
        .get(latchkey_migrations::SCHEMA_VERSION_KEY)?
        .and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes))
        .unwrap_or(0);
    drop(txn);
    let vault_records = tables
        .iter()
        .find(|t| t.name == store::table_name(&VAULT_RECORDS))
        .map_or(0, |t| t.entries.len());
    let created_at = time::OffsetDateTime::now_utc();
    let summary = BackupSummary {
        schema_version,
        created_at,
        tables: tables.len(),
        vault_records,
        signed_by: Some(signed_by.to_string()),
    };
    let payload = Payload {
        magic: MAGIC.into(),
        format: FORMAT,
        schema_version,
        created_at: created_at.unix_timestamp(),
        data_key: data_key.expose_secret().to_owned(),
        tables,
    };
    let plain = Zeroizing::new(
        postcard::to_allocvec(&payload).map_err(|e| BackupError::Damaged(e.to_string()))?,
    );
    // A passphrase means scrypt (256 MiB): one such derivation at a time
    // in the process, shared with unsealing (`crate::vault::gate`). Only
    // administrators make backups, so they queue (bounded) rather than
    // being refused.
    let _one = match to {
        BackupRecipient::Passphrase(_) => Some(
            vault
                .gate()
                .enter_waiting(BACKUP_GATE_PATIENCE)
                .map_err(|_| BackupError::PassphraseBusy)?,
        ),
        BackupRecipient::Recipient(_) => None,
    };
    let out = match to {
        BackupRecipient::Recipient(r) => age::encrypt(r, &plain),
        BackupRecipient::Passphrase(p) => {
            let mut r = age::scrypt::Recipient::new(p.clone());
            r.set_work_factor(crate::vault::keys::SCRYPT_WORK_FACTOR);
            age::encrypt(&r, &plain)
        }
    }
    .map_err(|e| BackupError::Decrypt(e.to_string()))?;
    Ok((signing::seal_container(&signer, &out), summary))
}

/// A backup that decrypted and whose every record verified.
pub struct VerifiedBackup {
    payload: Payload,
    data_key: DataKey,
    pub summary: BackupSummary,
    /// Who signed it (checked against the container's key already).
    pub signer: Option<Fingerprint>,
    /// Opened with a passphrase (which proves its maker knew it).
    pub by_passphrase: bool,
}

/// Decrypts and verifies a backup without touching any data directory. A
/// signed backup whose signature does not verify is refused here; whether
/// its signer is believed is the restore's decision ([`restore`]).
pub fn open(bytes: &[u8], identity: &BackupIdentity) -> Result<VerifiedBackup, BackupError> {
    let unwrapped = signing::unwrap(bytes)?;
    let (signer, bytes) = (unwrapped.signer, unwrapped.ciphertext);
    let plain = match identity {
        BackupIdentity::Identity(i) => age::decrypt(i, bytes),
        BackupIdentity::Passphrase(p) => {
            let mut id = age::scrypt::Identity::new(p.clone());
            id.set_max_work_factor(crate::vault::keys::SCRYPT_MAX_WORK_FACTOR);
            age::decrypt(&id, bytes)
        }
    }
    .map_err(|e| match e {
        age::DecryptError::DecryptionFailed => {
            BackupError::Decrypt("wrong passphrase or key, or the file was altered".into())
        }
        age::DecryptError::NoMatchingKeys => {
            BackupError::Decrypt("it was not encrypted to this key or passphrase".into())
        }
        other => BackupError::Damaged(other.to_string()),
    })?;
    let plain = Zeroizing::new(plain);
    let payload: Payload =
        postcard::from_bytes(&plain).map_err(|e| BackupError::Damaged(e.to_string()))?;
    if payload.magic != MAGIC || payload.format != FORMAT {
        return Err(BackupError::Damaged("unknown format".into()));
    }
    if payload.schema_version > latchkey_migrations::CURRENT_VERSION {
        return Err(BackupError::TooNew {
            found: payload.schema_version,
            supported: latchkey_migrations::CURRENT_VERSION,
        });
    }
    let data_key = DataKey::from_secret_str(&payload.data_key)
        .map_err(|_| BackupError::Damaged("data key".into()))?;
    let records = verify_records(&payload, &data_key)?;
    let summary = BackupSummary {
        schema_version: payload.schema_version,
        created_at: time::OffsetDateTime::from_unix_timestamp(payload.created_at)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        tables: payload.tables.len(),
        vault_records: records,
        signed_by: signer.map(|s| s.to_string()),
    };
    Ok(VerifiedBackup {
        payload,
        data_key,
        summary,
        signer,
        by_passphrase: matches!(identity, BackupIdentity::Passphrase(_)),
    })
}

fn verify_records(payload: &Payload, data_key: &DataKey) -> Result<usize, BackupError> {
    let Some(table) = payload
        .tables
        .iter()
        .find(|t| t.name == store::table_name(&VAULT_RECORDS))
    else {
        return Ok(0);
    };
    for (k, v) in &table.entries {
        let id = RecordId::from_key(k)
            .ok_or_else(|| BackupError::Verify("malformed record id".into()))?;
        crate::vault::verify_stored(data_key, id, v)
            .map_err(|e| BackupError::Verify(format!("record {id}: {e}")))?;
    }
    Ok(table.entries.len())
}

/// Writes a verified backup into `dir`, re-wrapping its data key with the
/// master key of `source` (`passphrase` gives it for passphrase sources).
/// The backup's origin is checked first ([`Trust::check`], against the
/// backup key of the installation in `dir`, if any): a backup the rule
/// does not believe changes nothing.
pub fn restore(
    backup: &VerifiedBackup,
    dir: &Path,
    source: &MasterKeySource,
    passphrase: Option<MasterKey>,
    force: bool,
    trust: &Trust,
) -> Result<(BackupSummary, Origin), BackupError> {
    let db_path = dir.join(DB_FILE);
    // Into a directory that does not exist yet, checked before it is
    // created: a refused backup leaves no trace. Otherwise under the lock
    // below (a running server holds the database; it is told so first).
    if !dir.exists() {
        trust.check(backup.signer, None, backup.by_passphrase)?;
    }
    store::ensure_data_dir(dir)?;
    let _lock = DataDirLock::acquire(dir, "restore").map_err(store::StoreError::from)?;
    if !force && redb_target::holds_vault(&db_path) {
        return Err(BackupError::NotEmpty(dir.to_path_buf()));
    }
    let origin = trust.check(
        backup.signer,
        redb_target::installation_key(&db_path),
        backup.by_passphrase,
    )?;
    let wrapped = wrap_data_key(backup, source, passphrase)?;

    let tmp = dir.join(format!("{DB_FILE}.restoring"));
    let _ = std::fs::remove_file(&tmp);
    let io = |source| BackupError::Io {
        path: tmp.clone(),
        source,
    };
    redb_target::write_new(&tmp, &backup.payload.tables, &wrapped, source.kind_name())?;
    crate::private_fs::restrict(&tmp).map_err(io)?;
    std::fs::rename(&tmp, &db_path).map_err(io)?;
    crate::private_fs::sync_dir(dir).map_err(io)?;
    let _ = std::fs::remove_file(db_path.with_extension("redb.pre-repair"));
    Ok((backup.summary.clone(), origin))
}

/// The backup's data key wrapped with the target's master key: `passphrase`
/// for passphrase sources, otherwise the source's key (made if the source
/// can make one and has none yet, as a first start would).
fn wrap_data_key(
    backup: &VerifiedBackup,
    source: &MasterKeySource,
    passphrase: Option<MasterKey>,
) -> Result<Vec<u8>, BackupError> {
    let master = match passphrase {
        Some(m) => m,
        None if source.can_generate() => source.load_or_create().map_err(VaultError::from)?,
        None => source.load().map_err(VaultError::from)?,
    };
    Ok(master.wrap(&backup.data_key).map_err(VaultError::from)?)
}

/// Opens the restored directory and checks every record, as a final proof.
pub fn verify_restored(
    dir: &Path,
    source: &MasterKeySource,
    master: Option<&MasterKey>,
) -> Result<usize, BackupError> {
    verify_store(Store::open(dir, "restore")?, source, master)
}

/// Opens the vault of a restored store with this installation's master key
/// and checks every record, as a final proof.
pub fn verify_store(
    store: std::sync::Arc<Store>,
    source: &MasterKeySource,
    master: Option<&MasterKey>,
) -> Result<usize, BackupError> {
    let vault = Vault::new(store);
    match master {
        Some(m) => {
            vault.unseal(m, source.kind_name())?;
        }
        None => {
            vault.open_with(source)?;
        }
    }
    Ok(vault.verify_all()?)
}

#[cfg(test)]
mod tests;
