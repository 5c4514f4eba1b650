//! The key that signs known-device cookies (see `attempts`), the same on
//! every replica of a deployment: behind a load balancer the sign-in that
//! set the cookie and the next one land on different processes.
//!
//! Invariants:
//!
//! - the shared key is 32 random bytes sealed by the vault (the data key,
//!   context [`SEAL_CONTEXT`]) in `meta`: a copy of the store alone
//!   reveals nothing that could forge a cookie;
//! - it is made once for the deployment: the first replica to need it
//!   writes it only if no other did, in one write transaction, and every
//!   replica uses the stored one;
//! - while the vault is sealed no replica can read it: cookies are signed
//!   with a key of this process only (verified here, not elsewhere: a
//!   browser then falls back to the per-address lock, the stricter path);
//!   both keys are accepted while the process runs.

use super::Auth;
use crate::auth::AuthError;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::META;
use ring::hmac;
use std::sync::{Arc, Mutex, RwLock};

/// `meta` key of the sealed device key.
const META_DEVICE_KEY: &[u8] = b"auth_device_key";
/// What the sealed key is bound to.
const SEAL_CONTEXT: &str = "latchkey/device-cookie-key/v1";

/// The shared key once loaded, and this process's own.
pub(super) struct DeviceKeys {
    local: hmac::Key,
    shared: RwLock<Option<Arc<hmac::Key>>>,
    init: Mutex<()>,
}

impl DeviceKeys {
    pub(super) fn new() -> DeviceKeys {
        DeviceKeys {
            local: hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()),
            shared: RwLock::new(None),
            init: Mutex::new(()),
        }
    }

    fn loaded(&self) -> Option<Arc<hmac::Key>> {
        self.shared.read().ok().and_then(|k| k.clone())
    }
}

fn key_of(hex_key: &SecretString) -> Result<hmac::Key, AuthError> {
    let bytes = zeroize::Zeroizing::new(
        hex::decode(hex_key.expose_secret())
            .map_err(|_| AuthError::Internal("the stored device key is damaged".into()))?,
    );
    if bytes.len() != 32 {
        return Err(AuthError::Internal(
            "the stored device key is damaged".into(),
        ));
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

impl Auth {
    /// The key new cookies are signed with: the deployment's when the
    /// vault is unsealed, else this process's.
    pub(super) fn device_signing_key(&self) -> Arc<hmac::Key> {
        match self.shared_device_key() {
            Ok(Some(k)) => k,
            Ok(None) => Arc::new(self.device_keys.local.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "the shared device key is unavailable; this replica signs device cookies alone");
                Arc::new(self.device_keys.local.clone())
            }
        }
    }

    /// Whether `tag` is a valid signature of `body` by either key.
    pub(super) fn device_tag_valid(&self, body: &[u8], tag: &[u8]) -> bool {
        let shared = self.shared_device_key().ok().flatten();
        shared
            .as_deref()
            .into_iter()
            .chain(std::iter::once(&self.device_keys.local))
            .any(|k| hmac::verify(k, body, tag).is_ok())
    }

    /// The deployment's device key: loaded (or made) once the vault is
    /// unsealed; `None` while it is sealed.
    fn shared_device_key(&self) -> Result<Option<Arc<hmac::Key>>, AuthError> {
        if let Some(k) = self.device_keys.loaded() {
            return Ok(Some(k));
        }
        if self.vault.is_sealed() {
            return Ok(None);
        }
        let _once = self
            .device_keys
            .init
            .lock()
            .map_err(|_| AuthError::Internal("device key lock".into()))?;
        if let Some(k) = self.device_keys.loaded() {
            return Ok(Some(k));
        }
        let key = Arc::new(key_of(&self.load_or_make_device_key()?)?);
        if let Ok(mut g) = self.device_keys.shared.write() {
            *g = Some(Arc::clone(&key));
        }
        Ok(Some(key))
    }

    /// The stored key (hex), or a new one stored first if no replica made
    /// one yet.
    fn load_or_make_device_key(&self) -> Result<SecretString, AuthError> {
        let txn = self.store.begin_write()?;
        let stored = txn.open_table(META)?.get(META_DEVICE_KEY)?;
        let key = match stored {
            Some(sealed) => {
                drop(txn);
                return Ok(self.vault.open_value(SEAL_CONTEXT, sealed.value())?);
            }
            None => SecretString::from(hex::encode(rand::random::<[u8; 32]>())),
        };
        let sealed = self.vault.seal_value(SEAL_CONTEXT, &key)?;
        txn.open_table(META)?.insert(META_DEVICE_KEY, &sealed)?;
        txn.commit()?;
        Ok(key)
    }
}
