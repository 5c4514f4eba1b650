//! The two keys of the hierarchy: the data key that encrypts every record,
//! and the master key that wraps the data key.
//!
//! Both are age keys: the data key is an X25519 identity; the master key is
//! either an X25519 identity (key file, systemd credential, OS keychain) or a
//! passphrase (age's scrypt recipient). Neither type can be printed, cloned or
//! serialized; the only way to the key material is an explicit `expose_…`.

use age::secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// scrypt work factor (log2 N) for passphrase-wrapped keys: age's own
/// recommendation for interactive use is about one second.
pub const SCRYPT_WORK_FACTOR: u8 = 18;
/// The most work a passphrase-wrapped key may demand before we refuse it (a
/// hostile file could otherwise make unsealing take hours).
pub const SCRYPT_MAX_WORK_FACTOR: u8 = 22;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a valid age X25519 identity (expected a line starting with AGE-SECRET-KEY-1)")]
    BadIdentity,
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("the master key does not open this vault ({0})")]
    WrongMasterKey(String),
    #[error("the stored data key is damaged")]
    DamagedDataKey,
}

/// The vault's data key: every record is encrypted to it.
pub struct DataKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        Self::from_identity(age::x25519::Identity::generate())
    }

    fn from_identity(identity: age::x25519::Identity) -> Self {
        let recipient = identity.to_public();
        DataKey {
            identity,
            recipient,
        }
    }

    /// Parses the identity string form (as stored in backups).
    pub fn from_secret_str(s: &str) -> Result<Self, KeyError> {
        age::x25519::Identity::from_str(s.trim())
            .map(Self::from_identity)
            .map_err(|_| KeyError::BadIdentity)
    }

    /// The identity string; only backups and re-wrapping need it.
    pub fn expose_identity_string(&self) -> SecretString {
        self.identity.to_string()
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        age::encrypt(&self.recipient, plaintext).map_err(|e| KeyError::Encrypt(e.to_string()))
    }

    /// Decrypts and authenticates; `None` when the ciphertext was not made
    /// with this key or was altered.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        age::decrypt(&self.identity, ciphertext)
            .ok()
            .map(Zeroizing::new)
    }
}

/// What wraps the data key.
pub enum MasterKey {
    Identity(age::x25519::Identity),
    Passphrase(SecretString),
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterKey::Identity(_) => f.write_str("MasterKey::Identity(<redacted>)"),
            MasterKey::Passphrase(_) => f.write_str("MasterKey::Passphrase(<redacted>)"),
        }
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        MasterKey::Identity(age::x25519::Identity::generate())
    }

    /// Parses an age identity (the content of a key file or credential).
    pub fn parse_identity(text: &str) -> Result<Self, KeyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(KeyError::BadIdentity)?;
        age::x25519::Identity::from_str(line)
            .map(MasterKey::Identity)
            .map_err(|_| KeyError::BadIdentity)
    }

    /// The text to write into a key file. `None` for passphrases, which are
    /// never written anywhere.
    pub fn expose_identity_string(&self) -> Option<SecretString> {
        match self {
            MasterKey::Identity(i) => Some(i.to_string()),
            MasterKey::Passphrase(_) => None,
        }
    }

    /// The public half (`age1…`) of an identity key; `None` for passphrases.
    pub fn recipient(&self) -> Option<String> {
        match self {
            MasterKey::Identity(i) => Some(i.to_public().to_string()),
            MasterKey::Passphrase(_) => None,
        }
    }

    /// Encrypts the data key to this master key.
    pub fn wrap(&self, data_key: &DataKey) -> Result<Vec<u8>, KeyError> {
        let plain = data_key.expose_identity_string();
        let bytes = plain.expose_secret().as_bytes();
        let out = match self {
            MasterKey::Identity(i) => age::encrypt(&i.to_public(), bytes),
            MasterKey::Passphrase(p) => {
                let mut r = age::scrypt::Recipient::new(p.clone());
                r.set_work_factor(SCRYPT_WORK_FACTOR);
                age::encrypt(&r, bytes)
            }
        };
        out.map_err(|e| KeyError::Encrypt(e.to_string()))
    }

    /// Decrypts a wrapped data key.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let plain = match self {
            MasterKey::Identity(i) => age::decrypt(i, wrapped),
            MasterKey::Passphrase(p) => {
                let mut id = age::scrypt::Identity::new(p.clone());
                id.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
                age::decrypt(&id, wrapped)
            }
        }
        .map_err(|e| KeyError::WrongMasterKey(describe_decrypt_error(&e, self)))?;
        let plain = Zeroizing::new(plain);
        let text = std::str::from_utf8(&plain).map_err(|_| KeyError::DamagedDataKey)?;
        DataKey::from_secret_str(text).map_err(|_| KeyError::DamagedDataKey)
    }
}

fn describe_decrypt_error(e: &age::DecryptError, key: &MasterKey) -> String {
    match (e, key) {
        (age::DecryptError::NoMatchingKeys, MasterKey::Passphrase(_)) => {
            "the data key is not wrapped by a passphrase".into()
        }
        (age::DecryptError::NoMatchingKeys, _) => "it was wrapped by a different key".into(),
        (age::DecryptError::DecryptionFailed, MasterKey::Passphrase(_)) => {
            "wrong passphrase".into()
        }
        (age::DecryptError::ExcessiveWork { .. }, _) => {
            "the stored key demands an excessive scrypt work factor".into()
        }
        (other, _) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_wrong_key() {
        let dk = DataKey::generate();
        let mk = MasterKey::generate();
        let wrapped = mk.wrap(&dk).expect("wrap");
        let back = mk.unwrap(&wrapped).expect("unwrap");
        let ct = dk.encrypt(b"hello").expect("enc");
        assert_eq!(back.decrypt(&ct).expect("dec").as_slice(), b"hello");

        let other = MasterKey::generate();
        assert!(matches!(
            other.unwrap(&wrapped),
            Err(KeyError::WrongMasterKey(_))
        ));
    }

    #[test]
    fn passphrase_wrong_and_right() {
        let dk = DataKey::generate();
        let mk = MasterKey::Passphrase(SecretString::from("correct horse battery"));
        let wrapped = mk.wrap(&dk).expect("wrap");
        let wrong = MasterKey::Passphrase(SecretString::from("incorrect horse"));
        let err = wrong.unwrap(&wrapped).expect_err("wrong passphrase");
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        mk.unwrap(&wrapped).expect("right passphrase");
    }

    #[test]
    fn debug_is_redacted() {
        let mk = MasterKey::generate();
        let secret = mk.expose_identity_string().expect("identity");
        let dbg = format!("{mk:?} {:?}", DataKey::generate());
        assert!(!dbg.contains("AGE-SECRET-KEY"), "{dbg}");
        assert!(!dbg.contains(secret.expose_secret()));
    }
}
