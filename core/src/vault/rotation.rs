//! Master-key rotation for stored keys (key file, OS keychain), safe
//! against a crash at any point.
//!
//! The new key is written beside the old one *before* the database commit
//! that re-wraps the data key, and promoted after it. A crash between the
//! two leaves both; the next open notices that the old key no longer fits,
//! tries the pending one, and finishes the promotion ([`open_recovering`]).
//! Used by the CLI (`vault rotate-master`) and the server's API alike.

use super::keychain;
use super::master::write_private_file;
use super::{MasterKey, MasterKeyError, MasterKeySource, Unlock, Vault, VaultError};
use age::secrecy::ExposeSecret;
use std::path::{Path, PathBuf};

fn pending_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

fn pending_account(account: &str) -> String {
    format!("{account}.next")
}

/// The not-yet-promoted key of an interrupted rotation, if any.
pub fn pending_key(source: &MasterKeySource) -> Result<Option<MasterKey>, MasterKeyError> {
    match source {
        MasterKeySource::KeyFile { path } => {
            let p = pending_path(path);
            if !p.exists() {
                return Ok(None);
            }
            Ok(Some(MasterKeySource::KeyFile { path: p }.load()?))
        }
        MasterKeySource::Keyring {
            service,
            account,
            backend,
        } => {
            let next = MasterKeySource::Keyring {
                service: service.clone(),
                account: pending_account(account),
                backend: *backend,
            };
            Ok(next.load().ok())
        }
        _ => Ok(None),
    }
}

/// Makes the pending key the current one.
pub fn promote_pending(source: &MasterKeySource) -> Result<(), MasterKeyError> {
    match source {
        MasterKeySource::KeyFile { path } => {
            let write_err = |source| MasterKeyError::Write {
                path: path.clone(),
                source,
            };
            std::fs::rename(pending_path(path), path).map_err(write_err)?;
            if let Some(dir) = path.parent() {
                crate::private_fs::sync_dir(dir).map_err(write_err)?;
            }
        }
        MasterKeySource::Keyring {
            service,
            account,
            backend,
        } => {
            let next = keychain::get(*backend, service, &pending_account(account))?;
            keychain::set(*backend, service, account, &next)?;
            keychain::delete(*backend, service, &pending_account(account))?;
        }
        _ => {}
    }
    Ok(())
}

/// Unseals with the configured (non-passphrase) source, finishing a
/// rotation that was interrupted after its commit.
pub fn open_recovering(vault: &Vault, source: &MasterKeySource) -> Result<Unlock, VaultError> {
    match vault.open_with(source) {
        Err(VaultError::Key(e)) => {
            let Some(pending) = pending_key(source)? else {
                return Err(VaultError::Key(e));
            };
            // If the pending key does not fit either, report the original
            // problem: it is about the key the user configured.
            let unlock = vault
                .unseal(&pending, source.kind_name())
                .map_err(|_| VaultError::Key(e))?;
            promote_pending(source)?;
            tracing::warn!("completed a master-key rotation that was interrupted");
            Ok(unlock)
        }
        other => other,
    }
}

/// Replaces a stored master key (key file or keychain) with a new random
/// one and re-wraps the data key. The vault must be unsealed.
pub fn rotate_stored(vault: &Vault, source: &MasterKeySource) -> Result<(), VaultError> {
    let new = MasterKey::generate();
    let text = new
        .expose_identity_string()
        .ok_or(VaultError::Damaged("generated key has no text form".into()))?;
    // Refuse before writing anything if the vault is sealed.
    if vault.is_sealed() {
        return Err(VaultError::Sealed);
    }
    match source {
        MasterKeySource::KeyFile { path } => {
            let line = zeroize::Zeroizing::new(format!("{}\n", text.expose_secret()));
            write_private_file(&pending_path(path), line.as_bytes())?;
        }
        MasterKeySource::Keyring {
            service,
            account,
            backend,
        } => {
            keychain::set(*backend, service, &pending_account(account), &text)
                .map_err(MasterKeyError::from)?;
        }
        MasterKeySource::Passphrase | MasterKeySource::SystemdCredential { .. } => {
            return Err(VaultError::MasterKey(MasterKeyError::NeedsPassphrase(
                source.kind_name(),
            )));
        }
    }
    vault.rewrap(&new, source.kind_name())?;
    promote_pending(source)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn rotation_and_interrupted_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("master.key");
        let source = MasterKeySource::KeyFile {
            path: key_path.clone(),
        };
        {
            let vault = Vault::new(Store::open(dir.path(), "test").expect("store"));
            vault.open_with(&source).expect("init");
            let before = std::fs::read(&key_path).expect("read");
            rotate_stored(&vault, &source).expect("rotate");
            assert_ne!(before, std::fs::read(&key_path).expect("read"));
            assert!(!pending_path(&key_path).exists());
            // Simulate a crash after commit: new key pending, old in place.
            let new = MasterKey::generate();
            let text = new.expose_identity_string().expect("text");
            write_private_file(
                &pending_path(&key_path),
                format!("{}\n", text.expose_secret()).as_bytes(),
            )
            .expect("write");
            vault.rewrap(&new, source.kind_name()).expect("rewrap");
        }
        let vault = Vault::new(Store::open(dir.path(), "test").expect("store"));
        open_recovering(&vault, &source).expect("recovered");
        assert!(!vault.is_sealed());
        assert!(!pending_path(&key_path).exists());
    }
}
