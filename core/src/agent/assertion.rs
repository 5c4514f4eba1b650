//! The identity assertion: a short-lived EdDSA (Ed25519) JWT that tells a
//! backend who is calling, signed with a key whose public half is served at
//! `GET /.well-known/jwks.json`.
//!
//! The signing key is made on first use (the first start with an unsealed
//! vault) and kept in the `meta` table under [`META_SIGNING_KEY`], sealed by
//! the vault's data key with its own context string, so it survives
//! restarts (backends that cache the JWKS keep working) and is as safe as
//! any vault secret. While the vault is sealed, nothing is signed.
//!
//! Claims: `iss` (`"latchkey"`), `aud` (`"agent:<name>"`, or `"latchkey"`
//! for a forward-auth check naming no agent), `sub` (the user id), `name`,
//! `role`, `key_id` (only for API keys), `iat`, `exp` (`iat` + 60 s), `jti`
//! (128 random bits, hex). The header carries `kid`, the RFC 7638
//! thumbprint of the public key.

use crate::auth::Principal;
use crate::auth::Via;
use crate::vault::{Vault, VaultError};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, RwLock};
use zeroize::Zeroizing;

/// Key in the `meta` table: the sealed signing key (see the module docs).
pub const META_SIGNING_KEY: &[u8] = b"agent_signing_key";
/// The context [`Vault::seal_value`] binds the sealed key to.
const SEAL_CONTEXT: &str = "latchkey/agent-assertion-signing-key/v1";
/// How long an assertion is valid.
pub const LIFETIME_SECS: i64 = 60;
/// `iss` of every assertion.
pub const ISSUER: &str = "latchkey";

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the stored agent signing key is damaged: {0}")]
    Damaged(&'static str),
    #[error("signing the assertion failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("cannot make a signing key: {0}")]
    Generate(&'static str),
}

/// The claims of an assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub name: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

impl Claims {
    /// The claims for `who` calling `audience` at `now` (unix seconds).
    pub fn new(who: &Principal, audience: &str, now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: audience.into(),
            sub: who.user_id.0.to_string(),
            name: who.username.clone(),
            role: who.role.as_str().into(),
            key_id: match &who.via {
                Via::ApiKey { id, .. } => Some(id.clone()),
                _ => None,
            },
            iat: now,
            exp: now + LIFETIME_SECS,
            jti: hex::encode(rand::random::<[u8; 16]>()),
        }
    }
}

/// A loaded key pair.
struct SigningKey {
    /// PKCS#8 bytes, as jsonwebtoken wants them for EdDSA.
    encoding: EncodingKey,
    kid: String,
    /// The public key, unpadded base64url (the JWK's `x`).
    x: String,
}

/// Signs assertions; loads or makes its key lazily (see the module docs).
pub struct Signer {
    vault: Arc<Vault>,
    key: RwLock<Option<Arc<SigningKey>>>,
    /// Serialises the first load so two requests cannot make two keys.
    init: Mutex<()>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(vault: Arc<Vault>) -> Signer {
        Signer {
            vault,
            key: RwLock::new(None),
            init: Mutex::new(()),
        }
    }

    /// Loads (or makes) the key now if the vault is unsealed, so the JWKS is
    /// fixed from the first start on. Failures are left for first use.
    pub fn warm_up(&self) {
        if !self.vault.is_sealed()
            && let Err(e) = self.key()
        {
            tracing::warn!(error = %e, "the agent signing key is not available yet");
        }
    }

    fn key(&self) -> Result<Arc<SigningKey>, SignerError> {
        // The vault's seal covers this key too.
        if self.vault.is_sealed() {
            return Err(VaultError::Sealed.into());
        }
        if let Some(k) = self.key.read().ok().and_then(|g| g.clone()) {
            return Ok(k);
        }
        let _once = self
            .init
            .lock()
            .map_err(|_| SignerError::Damaged("key lock poisoned"))?;
        if let Some(k) = self.key.read().ok().and_then(|g| g.clone()) {
            return Ok(k);
        }
        let pkcs8 = self.load_or_create()?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| SignerError::Damaged("not an Ed25519 PKCS#8 key"))?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let key = Arc::new(SigningKey {
            encoding: EncodingKey::from_ed_der(&pkcs8),
            kid: thumbprint(&x),
            x,
        });
        if let Ok(mut g) = self.key.write() {
            *g = Some(Arc::clone(&key));
        }
        Ok(key)
    }

    /// The stored PKCS#8 document, or a new one stored first.
    fn load_or_create(&self) -> Result<Zeroizing<Vec<u8>>, SignerError> {
        use latchkey_migrations::META;
        let store = self.vault.store();
        if let Some(sealed) = store.meta_get(META_SIGNING_KEY).map_err(VaultError::from)? {
            return self.open(&sealed);
        }
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| SignerError::Generate("the system RNG failed"))?;
        let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
        let text = SecretString::from(STANDARD.encode(pkcs8.as_slice()));
        let sealed = self.vault.seal_value(SEAL_CONTEXT, &text)?;
        let txn = store.begin_write().map_err(VaultError::from)?;
        {
            let mut meta = txn.open_table(META).map_err(VaultError::from)?;
            let existing = meta
                .get(META_SIGNING_KEY)
                .map_err(VaultError::from)?
                .map(|v| v.value().to_vec());
            if let Some(existing) = existing {
                // Another process of the same data directory cannot exist
                // (the lock), but keep whatever is stored regardless.
                drop(meta);
                txn.abort().map_err(VaultError::from)?;
                return self.open(&existing);
            }
            meta.insert(META_SIGNING_KEY, sealed.as_slice())
                .map_err(VaultError::from)?;
        }
        txn.commit().map_err(VaultError::from)?;
        tracing::info!("made the agent assertion signing key");
        Ok(pkcs8)
    }

    fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SignerError> {
        let text = self.vault.open_value(SEAL_CONTEXT, sealed)?;
        STANDARD
            .decode(text.expose_secret())
            .map(Zeroizing::new)
            .map_err(|_| SignerError::Damaged("not base64"))
    }

    /// A signed assertion of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, SignerError> {
        let key = self.key()?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// The JWKS document: the one current public key.
    pub fn jwks(&self) -> Result<serde_json::Value, SignerError> {
        let key = self.key()?;
        Ok(serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": key.x,
                "kid": key.kid,
                "alg": "EdDSA",
                "use": "sig",
            }]
        }))
    }
}

/// RFC 7638 (with RFC 8037's members for OKP keys): the SHA-256 of the
/// canonical JWK, unpadded base64url.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Role;
    use crate::auth::store::UserId;
    use crate::vault::MasterKey;
    use jsonwebtoken::{DecodingKey, Validation};

    fn vault(dir: &std::path::Path) -> Arc<Vault> {
        let store = crate::store::Store::open(dir, "test").expect("store");
        let v = Arc::new(Vault::new(store));
        v.initialize(&MasterKey::generate(), "keyfile")
            .expect("init");
        v
    }

    fn who() -> Principal {
        Principal {
            user_id: UserId(7),
            username: "ada".into(),
            role: Role::User,
            via: Via::ApiKey {
                id: "k1".into(),
                scopes: Default::default(),
            },
        }
    }

    fn decoding(jwks: &serde_json::Value) -> DecodingKey {
        DecodingKey::from_ed_components(jwks["keys"][0]["x"].as_str().expect("x")).expect("key")
    }

    fn validation(aud: &str) -> Validation {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[aud]);
        v.set_issuer(&[ISSUER]);
        v.leeway = 0;
        v
    }

    #[test]
    fn assertions_verify_and_tampering_fails() {
        let dir = tempfile::tempdir().expect("tmp");
        let signer = Signer::new(vault(dir.path()));
        let now = crate::auth::service::now();
        let claims = Claims::new(&who(), "agent:notes", now);
        assert_eq!(claims.exp - claims.iat, 60);
        let jwt = signer.sign(&claims).expect("sign");
        let jwks = signer.jwks().expect("jwks");
        let key = decoding(&jwks);
        let got = jsonwebtoken::decode::<Claims>(&jwt, &key, &validation("agent:notes"))
            .expect("verifies");
        assert_eq!(got.claims, claims);
        assert_eq!(got.header.kid.as_deref(), jwks["keys"][0]["kid"].as_str());
        // Another audience is refused.
        assert!(jsonwebtoken::decode::<Claims>(&jwt, &key, &validation("agent:other")).is_err());
        // Attack: raise the role in the payload, keep the signature.
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let mut forged = claims.clone();
        forged.role = "admin".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        parts[1] = &payload;
        let tampered = parts.join(".");
        assert!(
            jsonwebtoken::decode::<Claims>(&tampered, &key, &validation("agent:notes")).is_err()
        );
        // Expired: signed two minutes ago.
        let old = signer
            .sign(&Claims::new(&who(), "agent:notes", now - 120))
            .expect("sign");
        let err = jsonwebtoken::decode::<Claims>(&old, &key, &validation("agent:notes"))
            .expect_err("expired");
        assert_eq!(
            *err.kind(),
            jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[test]
    fn the_key_survives_a_restart_and_is_sealed_at_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let v = vault(dir.path());
        let first = Signer::new(Arc::clone(&v)).jwks().expect("jwks");
        let stored = v
            .store()
            .meta_get(META_SIGNING_KEY)
            .expect("meta")
            .expect("stored");
        // Sealed: neither the PKCS#8 bytes nor their base64 (which holds
        // the Ed25519 OID, `BQYDK2Vw`) are stored in clear.
        let text = String::from_utf8_lossy(&stored);
        assert!(!text.contains("BQYDK2Vw"), "the key is stored in clear");
        assert!(
            !stored
                .windows(5)
                .any(|w| w == [0x06, 0x03, 0x2b, 0x65, 0x70])
        );
        let second = Signer::new(Arc::clone(&v)).jwks().expect("jwks");
        assert_eq!(first, second);
        // Sealed vault: no signing.
        v.seal();
        let s = Signer::new(v);
        assert!(matches!(
            s.sign(&Claims::new(&who(), "agent:x", 0)),
            Err(SignerError::Vault(VaultError::Sealed))
        ));
    }
}
