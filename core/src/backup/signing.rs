//! Where a backup came from: the installation's backup signing key and the
//! signed container every backup is written in.
//!
//! A backup encrypted to an age recipient proves nothing about its maker:
//! the recipient (`age1…`) is public, so anyone holding it can encrypt a
//! database of their choosing (an admin of their own, say) to it. So every
//! installation has an Ed25519 signing key, made on the first backup and
//! kept in the `meta` table — the private half sealed by the vault's data
//! key under its own context string (as the agent assertion key is), the
//! public half in the clear so a restore can read it without unsealing —
//! and every backup is signed with it:
//!
//! ```text
//! "latchkey-signed-backup/v2\n"  public key (32 bytes)  signature (64 bytes)  age file
//! ```
//!
//! The signature is Ed25519 over `"latchkey backup signature v2\0"` followed by
//! the SHA-256 of the age file (ring). The key's [`Fingerprint`] (`SHA256:`
//! and the unpadded base64 of the public key's SHA-256, as SSH writes
//! them) is what `latchkey backup` shows and what `latchkey restore
//! --trust` takes. The key travels inside the backup (it is a `meta`
//! entry), so a restored installation goes on signing with the same key.
//!
//! Which signatures a restore believes is [`Trust::check`]'s rule (see
//! there and docs/security/key-material-and-backups.md).

use super::BackupError;
use crate::vault::Vault;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// `meta` key: the sealed PKCS#8 document of the signing key.
pub const META_BACKUP_SIGNING_KEY: &[u8] = b"backup_signing_key";
/// `meta` key: the signing key's public half (32 bytes, not secret).
pub const META_BACKUP_PUBLIC_KEY: &[u8] = b"backup_signing_public";
/// The context [`Vault::seal_value`] binds the sealed key to.
const SEAL_CONTEXT: &str = "latchkey/backup-signing-key/v1";
/// The first bytes of a signed backup.
pub const CONTAINER_MAGIC: &[u8] = b"latchkey-signed-backup/v2\n";
/// What the signature covers before the digest: no signature made for
/// anything else (an agent assertion, say) can pass for a backup's.
const SIGNED_CONTEXT: &[u8] = b"latchkey backup signature v2\0";
const PUBLIC_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;

/// The SHA-256 of a backup signing key's public half.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a raw Ed25519 public key.
    pub fn of(public: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(public).into())
    }

    /// Parses what [`Display`](std::fmt::Display) writes (`SHA256:…`; the
    /// prefix may be left out).
    pub fn parse(text: &str) -> Result<Fingerprint, BackupError> {
        let t = text.trim();
        let b64 = t.strip_prefix("SHA256:").unwrap_or(t);
        STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .map(Fingerprint)
            .ok_or(BackupError::BadFingerprint)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The installation's signing key, made and stored on first use. The vault
/// must be unsealed (its data key seals the private half).
pub fn signing_key(vault: &Vault) -> Result<Ed25519KeyPair, BackupError> {
    use crate::store::META;
    let store = vault.store();
    if let Some(sealed) = store.meta_get(META_BACKUP_SIGNING_KEY)? {
        return open_key(vault, &sealed);
    }
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| BackupError::Signing("the system RNG failed"))?;
    let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| BackupError::Signing("a new key did not load"))?;
    let sealed = vault.seal_value(
        SEAL_CONTEXT,
        &SecretString::from(STANDARD.encode(pkcs8.as_slice())),
    )?;
    // Checked again inside the write transaction: of two first backups at
    // once, the second keeps the first one's key.
    let txn = store.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let existing = meta
            .get(META_BACKUP_SIGNING_KEY)?
            .map(|v| v.value().to_vec());
        if let Some(existing) = existing {
            drop(meta);
            txn.abort()?;
            return open_key(vault, &existing);
        }
        meta.insert(META_BACKUP_SIGNING_KEY, sealed.as_slice())?;
        meta.insert(META_BACKUP_PUBLIC_KEY, pair.public_key().as_ref())?;
    }
    txn.commit()?;
    tracing::info!(
        fingerprint = %Fingerprint::of(pair.public_key().as_ref()),
        "made the backup signing key"
    );
    Ok(pair)
}

fn open_key(vault: &Vault, sealed: &[u8]) -> Result<Ed25519KeyPair, BackupError> {
    let text = vault.open_value(SEAL_CONTEXT, sealed)?;
    let pkcs8 = Zeroizing::new(
        STANDARD
            .decode(text.expose_secret())
            .map_err(|_| BackupError::Signing("the stored key is not base64"))?,
    );
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| BackupError::Signing("the stored key is not an Ed25519 key"))
}

/// The fingerprint of the installation's backup key as stored in `meta`
/// (readable while sealed), if it has one yet.
pub fn installation_fingerprint(meta_public: Option<&[u8]>) -> Option<Fingerprint> {
    meta_public
        .filter(|p| p.len() == PUBLIC_LEN)
        .map(Fingerprint::of)
}

fn signed_message(ciphertext: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_CONTEXT.len() + 32);
    m.extend_from_slice(SIGNED_CONTEXT);
    m.extend_from_slice(&Sha256::digest(ciphertext));
    m
}

/// Wraps an age file in the signed container.
pub fn seal_container(key: &Ed25519KeyPair, ciphertext: &[u8]) -> Vec<u8> {
    let sig = key.sign(&signed_message(ciphertext));
    let mut out =
        Vec::with_capacity(CONTAINER_MAGIC.len() + PUBLIC_LEN + SIGNATURE_LEN + ciphertext.len());
    out.extend_from_slice(CONTAINER_MAGIC);
    out.extend_from_slice(key.public_key().as_ref());
    out.extend_from_slice(sig.as_ref());
    out.extend_from_slice(ciphertext);
    out
}

/// A backup file taken apart: who signed it (`None`: an unsigned file, as
/// backups were before format 2) and the age file.
#[derive(Debug)]
pub struct Unwrapped<'a> {
    pub signer: Option<Fingerprint>,
    pub ciphertext: &'a [u8],
}

/// Takes a backup file apart, checking its signature against the key it
/// names. A container whose signature does not verify is refused: it was
/// altered (a file without the container is returned as unsigned, for
/// [`Trust::check`] to judge).
pub fn unwrap(bytes: &[u8]) -> Result<Unwrapped<'_>, BackupError> {
    let Some(rest) = bytes.strip_prefix(CONTAINER_MAGIC) else {
        return Ok(Unwrapped {
            signer: None,
            ciphertext: bytes,
        });
    };
    if rest.len() < PUBLIC_LEN + SIGNATURE_LEN {
        return Err(BackupError::Damaged(
            "the signature block is cut short".into(),
        ));
    }
    let (public, rest) = rest.split_at(PUBLIC_LEN);
    let (sig, ciphertext) = rest.split_at(SIGNATURE_LEN);
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&signed_message(ciphertext), sig)
        .map_err(|_| BackupError::BadSignature)?;
    Ok(Unwrapped {
        signer: Some(Fingerprint::of(public)),
        ciphertext,
    })
}

/// Which backups a restore believes, given by whoever runs it.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `--trust`: the fingerprint of the installation the backup should
    /// come from (e.g. restoring into a new data directory).
    pub fingerprint: Option<Fingerprint>,
    /// `--allow-unsigned`: accept a recipient backup without a signature
    /// (made before backups were signed). Loudly warned about.
    pub allow_unsigned: bool,
}

/// How a backup proved its origin, for the restore's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Signed by the installation being restored into.
    ThisInstallation(Fingerprint),
    /// Signed by the key the operator named with `--trust`.
    Trusted(Fingerprint),
    /// Encrypted with the passphrase the operator typed: only someone who
    /// knew it could have made the file.
    Passphrase(Option<Fingerprint>),
    /// No signature, accepted with `--allow-unsigned`.
    UnsignedAllowed,
}

impl Trust {
    /// The rule:
    ///
    /// - A signed backup is believed when its key is the one named with
    ///   `--trust`, or (without `--trust`) the installation's own key.
    /// - A passphrase backup is believed on its passphrase too (age's
    ///   scrypt stanza cannot be made without it), whoever signed it.
    /// - Otherwise — a recipient backup from an unknown key, or one with
    ///   no signature at all — it is refused, the latter unless
    ///   `--allow-unsigned`.
    ///
    /// A `--trust` that names another key than the signer's is always a
    /// refusal: the operator said where it must come from.
    pub fn check(
        &self,
        signer: Option<Fingerprint>,
        installation: Option<Fingerprint>,
        by_passphrase: bool,
    ) -> Result<Origin, BackupError> {
        match (signer, self.fingerprint) {
            (Some(s), Some(t)) if s == t => Ok(Origin::Trusted(s)),
            (Some(s), Some(t)) => Err(BackupError::Untrusted {
                signer: s.to_string(),
                expected: t.to_string(),
            }),
            (Some(s), None) if installation == Some(s) => Ok(Origin::ThisInstallation(s)),
            (s, _) if by_passphrase => Ok(Origin::Passphrase(s)),
            (Some(s), None) => Err(BackupError::Untrusted {
                signer: s.to_string(),
                expected: installation.map_or_else(
                    || "none: this data directory has no backup key yet".to_owned(),
                    |i| format!("{i}, this installation's"),
                ),
            }),
            (None, _) if self.allow_unsigned => Ok(Origin::UnsignedAllowed),
            (None, _) => Err(BackupError::Unsigned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("gen");
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("load")
    }

    #[test]
    fn container_round_trip_and_tampering() {
        let k = key();
        let fp = Fingerprint::of(k.public_key().as_ref());
        let file = seal_container(&k, b"age ciphertext here");
        let u = unwrap(&file).expect("unwrap");
        assert_eq!(u.signer, Some(fp));
        assert_eq!(u.ciphertext, b"age ciphertext here");
        // Any flipped bit after the magic: refused.
        for pos in CONTAINER_MAGIC.len()..file.len() {
            let mut bad = file.clone();
            bad[pos] ^= 0x01;
            assert!(unwrap(&bad).is_err(), "flip at {pos} accepted");
        }
        // Someone else's key over the same ciphertext is just another signer.
        let forged = seal_container(&key(), b"age ciphertext here");
        assert_ne!(unwrap(&forged).expect("unwrap").signer, Some(fp));
        // Cut short.
        assert!(matches!(
            unwrap(&file[..CONTAINER_MAGIC.len() + 10]),
            Err(BackupError::Damaged(_))
        ));
        // Not a container: unsigned.
        assert_eq!(
            unwrap(b"age-encryption.org/v1").expect("plain").signer,
            None
        );
    }

    #[test]
    fn fingerprints_print_and_parse() {
        let fp = Fingerprint::of(b"0123456789abcdef0123456789abcdef");
        let text = fp.to_string();
        assert!(text.starts_with("SHA256:") && text.len() == 50, "{text}");
        assert_eq!(Fingerprint::parse(&text).expect("parse"), fp);
        assert_eq!(Fingerprint::parse(&text[7..]).expect("bare"), fp);
        assert_eq!(
            Fingerprint::parse(&format!(" {text}= \n")).expect("sloppy"),
            fp
        );
        assert!(Fingerprint::parse("SHA256:abc").is_err());
        assert!(Fingerprint::parse("").is_err());
    }

    #[test]
    fn the_trust_rule() {
        let (a, b) = (Fingerprint::of(b"a"), Fingerprint::of(b"b"));
        let none = Trust::default();
        let trust_a = Trust {
            fingerprint: Some(a),
            ..Trust::default()
        };
        let unsigned_ok = Trust {
            allow_unsigned: true,
            ..Trust::default()
        };
        // Own installation's key.
        assert_eq!(
            none.check(Some(a), Some(a), false).expect("own"),
            Origin::ThisInstallation(a)
        );
        // A forger's key: refused into this installation or a new one.
        assert!(matches!(
            none.check(Some(b), Some(a), false),
            Err(BackupError::Untrusted { .. })
        ));
        assert!(matches!(
            none.check(Some(b), None, false),
            Err(BackupError::Untrusted { .. })
        ));
        // Named with --trust.
        assert_eq!(
            trust_a.check(Some(a), None, false).expect("trusted"),
            Origin::Trusted(a)
        );
        assert!(
            trust_a.check(Some(b), Some(b), true).is_err(),
            "--trust is binding"
        );
        // The passphrase is proof of its own.
        assert_eq!(
            none.check(Some(b), None, true).expect("passphrase"),
            Origin::Passphrase(Some(b))
        );
        assert_eq!(
            none.check(None, None, true).expect("old passphrase"),
            Origin::Passphrase(None)
        );
        // Unsigned recipient backups only with the override.
        assert!(matches!(
            none.check(None, Some(a), false),
            Err(BackupError::Unsigned)
        ));
        assert!(matches!(
            trust_a.check(None, None, false),
            Err(BackupError::Unsigned)
        ));
        assert_eq!(
            unsigned_ok.check(None, None, false).expect("override"),
            Origin::UnsignedAllowed
        );
    }
}
