//! The encrypted envelope of one secret.
//!
//! The plaintext inside the age ciphertext carries the record's id and kind
//! next to the secret. On opening, both must match the record the envelope was
//! read from: a ciphertext copied onto another record (or re-labelled to a
//! different kind) is refused as an integrity failure, even though age itself
//! would decrypt it.

use super::keys::DataKey;
use super::record::{Kind, RecordId};
use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const ENVELOPE_VERSION: u8 = 1;

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Plain {
    version: u8,
    record_id: u128,
    kind: u8,
    secret: String,
}

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the ciphertext was altered or was not encrypted with this vault's data key")]
    Tampered,
    #[error("the ciphertext belongs to a different record (it was copied or moved)")]
    WrongRecord,
    #[error("the envelope format is not understood")]
    Malformed,
}

pub(crate) fn seal(
    key: &DataKey,
    id: RecordId,
    kind: Kind,
    secret: &str,
) -> Result<Vec<u8>, super::keys::KeyError> {
    let plain = Plain {
        version: ENVELOPE_VERSION,
        record_id: id.0,
        kind: kind.code(),
        secret: secret.to_owned(),
    };
    let bytes = Zeroizing::new(
        postcard::to_allocvec(&plain).map_err(|e| super::keys::KeyError::Encrypt(e.to_string()))?,
    );
    key.encrypt(&bytes)
}

pub(crate) fn open(
    key: &DataKey,
    id: RecordId,
    kind: Kind,
    ciphertext: &[u8],
) -> Result<SecretString, EnvelopeError> {
    let bytes = key.decrypt(ciphertext).ok_or(EnvelopeError::Tampered)?;
    let mut plain: Plain = postcard::from_bytes(&bytes).map_err(|_| EnvelopeError::Malformed)?;
    if plain.version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Malformed);
    }
    if plain.record_id != id.0 || plain.kind != kind.code() {
        return Err(EnvelopeError::WrongRecord);
    }
    Ok(SecretString::from(std::mem::take(&mut plain.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn round_trip() {
        let k = DataKey::generate();
        let id = RecordId::random();
        let ct = seal(&k, id, Kind::ApiKey, "sk-live-1").expect("seal");
        let s = open(&k, id, Kind::ApiKey, &ct).expect("open");
        assert_eq!(s.expose_secret(), "sk-live-1");
    }

    #[test]
    fn swapped_between_records_is_refused() {
        let k = DataKey::generate();
        let a = RecordId::random();
        let b = RecordId::random();
        let ct = seal(&k, a, Kind::ApiKey, "secret-a").expect("seal");
        assert_eq!(
            open(&k, b, Kind::ApiKey, &ct).err(),
            Some(EnvelopeError::WrongRecord)
        );
        assert_eq!(
            open(&k, a, Kind::Generic, &ct).err(),
            Some(EnvelopeError::WrongRecord)
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let k = DataKey::generate();
        let id = RecordId::random();
        let ct = seal(&k, id, Kind::Generic, "x").expect("seal");
        for i in (0..ct.len()).step_by(7) {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&k, id, Kind::Generic, &bad).is_err(),
                "flip at {i} accepted"
            );
        }
        assert_eq!(
            open(&DataKey::generate(), id, Kind::Generic, &ct).err(),
            Some(EnvelopeError::Tampered)
        );
    }
}

/// An envelope for a value that is not a vault record (e.g. a user's TOTP
/// secret): the `context` string (e.g. `totp:<user id>`) is bound inside
/// the ciphertext the way a record's id and kind are.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct ContextPlain {
    version: u8,
    context: String,
    secret: String,
}

pub(crate) fn seal_context(
    key: &DataKey,
    context: &str,
    secret: &str,
) -> Result<Vec<u8>, super::keys::KeyError> {
    let plain = ContextPlain {
        version: ENVELOPE_VERSION,
        context: context.to_owned(),
        secret: secret.to_owned(),
    };
    let bytes = Zeroizing::new(
        postcard::to_allocvec(&plain).map_err(|e| super::keys::KeyError::Encrypt(e.to_string()))?,
    );
    key.encrypt(&bytes)
}

pub(crate) fn open_context(
    key: &DataKey,
    context: &str,
    ciphertext: &[u8],
) -> Result<SecretString, EnvelopeError> {
    let bytes = key.decrypt(ciphertext).ok_or(EnvelopeError::Tampered)?;
    let mut plain: ContextPlain =
        postcard::from_bytes(&bytes).map_err(|_| EnvelopeError::Malformed)?;
    if plain.version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Malformed);
    }
    if plain.context != context {
        return Err(EnvelopeError::WrongRecord);
    }
    Ok(SecretString::from(std::mem::take(&mut plain.secret)))
}

#[cfg(test)]
mod context_tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn context_is_bound() {
        let k = DataKey::generate();
        let ct = seal_context(&k, "totp:alice", "JBSWY3DPEHPK3PXP").expect("seal");
        assert_eq!(
            open_context(&k, "totp:alice", &ct)
                .expect("open")
                .expose_secret(),
            "JBSWY3DPEHPK3PXP"
        );
        assert_eq!(
            open_context(&k, "totp:bob", &ct).err(),
            Some(EnvelopeError::WrongRecord)
        );
    }
}
