//! Latchkey API keys: long-lived bearer credentials for agents and scripts.
//!
//! # Format
//!
//! ```text
//! lk_ 3fQ9xK2a 7hR…(43 symbols)…Zp 0aB9cD
//! │   │        │                   └ checksum: 6 base62 symbols
//! │   │        └ secret: 43 base62 symbols (≈ 256.03 bits)
//! │   └ id: 8 base62 symbols, public lookup id
//! └ prefix
//! ```
//!
//! A key is written without spaces: `lk_` followed by 57 base62 symbols
//! (`[0-9A-Za-z]`), 60 characters in all, so a double click selects all of
//! it and it survives URLs, shells and config files unquoted.
//!
//! * **id** — 8 symbols (≈ 47.6 bits) drawn from the OS CSPRNG. It is
//!   *not* secret: the server uses it to find the key's row without
//!   scanning, and lists show `lk_<id>` so an owner can recognise a key.
//!   Ids are random, not sequential, so they leak nothing about other keys;
//!   the store must still enforce uniqueness (and the caller generate again
//!   on the rare collision).
//! * **secret** — 43 symbols drawn uniformly from the 62-letter alphabet by
//!   the OS CSPRNG (`rand`'s `Alphanumeric` uses rejection sampling, so each
//!   symbol is uniform): 43 · log2 62 ≈ 256.03 bits, at least the 256 bits
//!   the design asks for.
//! * **checksum** — the first 4 bytes of SHA-256 over everything before it
//!   (`lk_` + id + secret), as a big-endian `u32` written in 6 base62
//!   symbols. It lets [`parse`] reject typos, truncations and pasted
//!   garbage before any database lookup, and lets secret scanners recognise
//!   a real Latchkey key offline (the idea behind GitHub's token format,
//!   which uses CRC32). We use truncated SHA-256 rather than CRC32 because
//!   SHA-256 is already at hand; a random corruption slips through with
//!   probability 2⁻³². The checksum is **not** a security control: anyone
//!   can compute it.
//!
//! # Storage
//!
//! The server stores only `SHA-256(whole key)` ([`GeneratedKey::hash`]),
//! never the key. A fast unsalted hash is the right tool here, unlike for
//! passwords: the secret carries 256 bits of CSPRNG output, so neither
//! brute force nor precomputed tables can invert the hash whatever its
//! speed, and a slow KDF would only cost CPU on every proxied request.
//! Verification compares the hashes in constant time ([`verify`]).

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::{CryptoRng, Rng, RngCore};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Every Latchkey API key starts with this.
pub const PREFIX: &str = "lk_";
/// Length of the public id, in base62 symbols.
pub const ID_LEN: usize = 8;
/// Length of the secret part, in base62 symbols (≈ 256.03 bits).
pub const SECRET_LEN: usize = 43;
/// Length of the checksum, in base62 symbols.
pub const CHECKSUM_LEN: usize = 6;
/// Length of a whole key: 60 characters.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// Presented values longer than this (before trimming) are refused without
/// further work.
pub const MAX_PRESENTED_LEN: usize = 128;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = KEY_LEN - CHECKSUM_LEN;

/// Why a presented value is not a usable API key. Messages never contain
/// any part of the presented value.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyError {
    /// Not shaped like a Latchkey key at all (wrong prefix, length or
    /// alphabet, or longer than [`MAX_PRESENTED_LEN`]).
    #[error("malformed API key: {reason}")]
    Malformed { reason: &'static str },
    /// Shaped like a key, but the checksum does not match: a typo or a
    /// truncated copy.
    #[error("API key checksum does not match (mistyped or incomplete key)")]
    BadChecksum,
}

/// The public lookup id of a key: 8 base62 symbols. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; ID_LEN]);

impl KeyId {
    /// The id as text (8 base62 symbols).
    pub fn as_str(&self) -> &str {
        // Always ASCII by construction (FromStr and generation check it).
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// How lists show the key: `lk_` + id, never any of the secret.
    pub fn display_prefix(&self) -> String {
        format!("{PREFIX}{}", self.as_str())
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; ID_LEN] = bytes.try_into().ok()?;
        arr.iter().all(|b| is_base62(*b)).then_some(KeyId(arr))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

impl FromStr for KeyId {
    type Err = ApiKeyError;

    /// Accepts the bare id (8 symbols) or the displayed `lk_` + id form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix(PREFIX).unwrap_or(s);
        KeyId::from_bytes(s.as_bytes()).ok_or(ApiKeyError::Malformed {
            reason: "a key id is 8 letters or digits",
        })
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A freshly generated key. `secret` is shown to its owner once and then
/// dropped (it zeroizes itself); only `id` and `hash` are stored.
pub struct GeneratedKey {
    /// Public lookup id.
    pub id: KeyId,
    /// The whole key text (`lk_…`, 60 characters), to hand out once.
    pub secret: SecretString,
    /// SHA-256 of the whole key text: what the server stores.
    pub hash: [u8; 32],
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .field("hash", &"[REDACTED]")
            .finish()
    }
}

/// A presented key that passed the format and checksum checks: the id to
/// look the row up by and the hash to compare with the stored one.
/// Deliberately not `PartialEq`: compare hashes only through [`verify`].
#[derive(Clone)]
pub struct ParsedKey {
    /// Public lookup id.
    pub id: KeyId,
    /// SHA-256 of the presented key text.
    pub hash: [u8; 32],
}

impl fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("id", &self.id)
            .field("hash", &"[REDACTED]")
            .finish()
    }
}

/// Generates a new key from the OS CSPRNG.
pub fn generate() -> GeneratedKey {
    generate_with(&mut OsRng)
}

/// Generates a new key from `rng`, which must be a CSPRNG (tests pass a
/// seeded one to get reproducible keys).
pub fn generate_with<R: RngCore + CryptoRng>(rng: &mut R) -> GeneratedKey {
    let mut id = [0u8; ID_LEN];
    for b in &mut id {
        *b = rng.sample(Alphanumeric);
    }
    let id = KeyId(id);
    // Exact capacity: the buffer never reallocates, so no stray copy of the
    // secret is left behind in freed memory before SecretString owns it.
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    key.push_str(id.as_str());
    for _ in 0..SECRET_LEN {
        key.push(char::from(rng.sample(Alphanumeric)));
    }
    let check = checksum(key.as_bytes());
    for b in check {
        key.push(char::from(b));
    }
    let hash = sha256(key.as_bytes());
    GeneratedKey {
        id,
        secret: SecretString::from(key),
        hash,
    }
}

/// Whether `presented` claims to be a Latchkey API key (after trimming), so
/// callers can tell API keys from other bearer tokens before parsing.
pub fn looks_like_api_key(presented: &str) -> bool {
    presented.trim_ascii_start().starts_with(PREFIX)
}

/// Checks a presented key's shape and checksum. Surrounding ASCII
/// whitespace is ignored; input longer than [`MAX_PRESENTED_LEN`] bytes is
/// refused before any other work.
pub fn parse(presented: &str) -> Result<ParsedKey, ApiKeyError> {
    let (key, id) = shape(presented)?;
    let (body, check) = key.split_at(BODY_LEN);
    // A plain comparison is fine: the checksum is computable by anyone.
    if checksum(body) != check {
        return Err(ApiKeyError::BadChecksum);
    }
    Ok(ParsedKey {
        id,
        hash: sha256(key),
    })
}

/// [`parse`] without the checksum, for the lookup on every proxied
/// request: one SHA-256 instead of two. Skipping it changes no answer: a
/// key with a wrong checksum cannot [`verify`], because every stored hash
/// is of a generated key (whose checksum is right) and covers the
/// checksum symbols too. Only *why* a typo fails differs (no such key,
/// rather than [`ApiKeyError::BadChecksum`]); where that matters, use
/// [`parse`].
pub fn parse_for_lookup(presented: &str) -> Result<ParsedKey, ApiKeyError> {
    let (key, id) = shape(presented)?;
    Ok(ParsedKey {
        id,
        hash: sha256(key),
    })
}

/// The trimmed key and its id, if `presented` is shaped like a key:
/// `lk_` + 57 base62 symbols, within [`MAX_PRESENTED_LEN`] untrimmed.
fn shape(presented: &str) -> Result<(&[u8], KeyId), ApiKeyError> {
    if presented.len() > MAX_PRESENTED_LEN {
        return Err(ApiKeyError::Malformed { reason: "too long" });
    }
    let key = presented.trim_ascii().as_bytes();
    let Some(rest) = key.strip_prefix(PREFIX.as_bytes()) else {
        return Err(ApiKeyError::Malformed {
            reason: "missing `lk_` prefix",
        });
    };
    if key.len() != KEY_LEN {
        return Err(ApiKeyError::Malformed {
            reason: "wrong length",
        });
    }
    if !rest.iter().all(|b| is_base62(*b)) {
        return Err(ApiKeyError::Malformed {
            reason: "unexpected character",
        });
    }
    let id = KeyId::from_bytes(&rest[..ID_LEN]).ok_or(ApiKeyError::Malformed {
        reason: "unexpected character",
    })?;
    Ok((key, id))
}

/// Whether a parsed key matches the hash stored for its id, compared in
/// constant time.
pub fn verify(parsed: &ParsedKey, stored_hash: &[u8; 32]) -> bool {
    parsed.hash.ct_eq(stored_hash).into()
}

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// SHA-256 by ring, not `sha2`: both use the CPU's SHA instructions where
/// it has them, but on CPUs without (many Intel Xeons before Ice Lake)
/// `sha2` falls back to portable Rust while ring has AVX2/SSSE3 assembly.
/// Every proxied request hashes the presented key once
/// ([`parse_for_lookup`]), so this is on the proxy's hot path.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// First 4 bytes of SHA-256(body) as a big-endian u32, in 6 base62 symbols
/// (62⁶ > 2³², so every value fits).
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = sha256(body);
    let mut n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use secrecy::ExposeSecret;
    use std::collections::HashSet;

    #[test]
    fn ring_sha256_is_sha256() {
        use sha2::Digest as _;
        // Keys stored before the switch from `sha2` must still verify.
        for input in [
            &b""[..],
            b"abc",
            &[0x5a; 55],
            &[0x5a; 56],
            &[0x5a; 64],
            &[7; 1000],
        ] {
            let want: [u8; 32] = sha2::Sha256::digest(input).into();
            assert_eq!(sha256(input), want);
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x1a7c_4e11)
    }

    fn text(k: &GeneratedKey) -> String {
        k.secret.expose_secret().to_owned()
    }

    /// Builds a well-formed key from a chosen body (for golden tests).
    fn with_checksum(body: &str) -> String {
        let c = checksum(body.as_bytes());
        format!("{body}{}", std::str::from_utf8(&c).unwrap())
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let mut rng = rng();
        for _ in 0..200 {
            let k = generate_with(&mut rng);
            let s = text(&k);
            assert_eq!(s.len(), KEY_LEN);
            assert_eq!(KEY_LEN, 60);
            assert!(s.starts_with("lk_"));
            assert!(s[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(&s[3..11], k.id.as_str());
            assert_eq!(k.hash, sha256(s.as_bytes()));
        }
    }

    #[test]
    fn secret_part_carries_at_least_256_bits() {
        assert!(SECRET_LEN as f64 * 62f64.log2() >= 256.0);
        assert!(62u64.pow(CHECKSUM_LEN as u32) > u64::from(u32::MAX));
    }

    #[test]
    fn generate_parse_verify_round_trip() {
        let mut rng = rng();
        for _ in 0..500 {
            let k = generate_with(&mut rng);
            let p = parse(k.secret.expose_secret()).unwrap();
            assert_eq!(p.id, k.id);
            assert!(verify(&p, &k.hash));
        }
        let k = generate();
        assert!(verify(&parse(k.secret.expose_secret()).unwrap(), &k.hash));
    }

    #[test]
    fn golden_key_parses_and_format_is_stable() {
        let body = format!("lk_abcDEF12{}", "x".repeat(SECRET_LEN));
        let key = with_checksum(&body);
        // Computed independently: Python's hashlib, big-endian u32, base62.
        assert_eq!(&key[BODY_LEN..], "3NUpKE", "checksum algorithm changed");
        let p = parse(&key).unwrap();
        assert_eq!(p.id.as_str(), "abcDEF12");
        assert_eq!(p.hash, sha256(key.as_bytes()));
    }

    #[test]
    fn ids_and_secrets_do_not_repeat() {
        let mut rng = rng();
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        for _ in 0..2000 {
            let k = generate_with(&mut rng);
            assert!(ids.insert(k.id));
            assert!(keys.insert(text(&k)));
        }
    }

    #[test]
    fn every_base62_symbol_is_used_by_secrets() {
        let mut rng = rng();
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let s = text(&generate_with(&mut rng));
            seen.extend(s[11..11 + SECRET_LEN].bytes());
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn surrounding_whitespace_is_accepted() {
        let k = generate_with(&mut rng());
        let s = text(&k);
        for wrapped in [format!(" {s}"), format!("{s}\n"), format!("\t {s} \r\n")] {
            let p = parse(&wrapped).unwrap();
            assert!(verify(&p, &k.hash));
        }
        // Whitespace inside the key is not.
        let inner = format!("{} {}", &s[..20], &s[20..]);
        assert!(parse(&inner).is_err());
    }

    #[test]
    fn overlong_input_is_refused_early() {
        let s = text(&generate_with(&mut rng()));
        let pad = " ".repeat(MAX_PRESENTED_LEN - KEY_LEN);
        assert!(parse(&format!("{s}{pad}")).is_ok());
        assert_eq!(
            parse(&format!("{s}{pad} ")).unwrap_err(),
            ApiKeyError::Malformed { reason: "too long" }
        );
        assert!(parse(&"lk_".repeat(10_000)).is_err());
    }

    #[test]
    fn every_single_symbol_typo_is_rejected() {
        // Attack/typo: change any one symbol of a valid key.
        let mut rng = rng();
        for _ in 0..50 {
            let s = text(&generate_with(&mut rng));
            for pos in 0..KEY_LEN {
                let mut bytes = s.clone().into_bytes();
                let mut new = bytes[pos];
                while new == bytes[pos] {
                    new = BASE62[rng.gen_range(0..62)];
                }
                bytes[pos] = new;
                let typo = String::from_utf8(bytes).unwrap();
                assert!(parse(&typo).is_err(), "accepted typo at {pos}");
            }
        }
    }

    #[test]
    fn adjacent_transpositions_are_rejected() {
        let mut rng = rng();
        for _ in 0..50 {
            let s = text(&generate_with(&mut rng));
            let b = s.as_bytes();
            for pos in 3..KEY_LEN - 1 {
                if b[pos] == b[pos + 1] {
                    continue;
                }
                let mut t = b.to_vec();
                t.swap(pos, pos + 1);
                let t = String::from_utf8(t).unwrap();
                assert_eq!(parse(&t).unwrap_err(), ApiKeyError::BadChecksum);
            }
        }
    }

    #[test]
    fn malformed_inputs_are_classified() {
        let s = text(&generate_with(&mut rng()));
        let malformed =
            |r: Result<ParsedKey, ApiKeyError>| matches!(r, Err(ApiKeyError::Malformed { .. }));
        assert!(malformed(parse("")));
        assert!(malformed(parse("   ")));
        assert!(malformed(parse(&s[..KEY_LEN - 1])));
        assert!(malformed(parse(&format!("{s}0"))));
        assert!(malformed(parse(&s.replacen("lk_", "LK_", 1))));
        assert!(malformed(parse(&s.replacen("lk_", "ghp_", 1))));
        assert!(malformed(parse(&s.replacen("lk_", "lk-", 1))));
        assert!(malformed(parse(&format!("Bearer {s}"))));
        // A multi-byte character in a string of the right byte length must
        // not panic on slicing.
        let mut odd = s[..KEY_LEN - 2].to_owned();
        odd.push('é');
        assert_eq!(odd.len(), KEY_LEN);
        assert!(malformed(parse(&odd)));
        let mut under = s.clone().into_bytes();
        under[20] = b'_';
        assert!(malformed(parse(&String::from_utf8(under).unwrap())));
    }

    #[test]
    fn random_garbage_never_panics_or_parses() {
        let mut rng = rng();
        for _ in 0..5000 {
            let len = rng.gen_range(0..140);
            let g: String = (0..len).map(|_| rng.r#gen::<char>()).collect();
            let _ = parse(&g);
            let ascii: String = (0..len)
                .map(|_| char::from(rng.sample(Alphanumeric)))
                .collect();
            assert!(parse(&format!("lk_{ascii}")).is_err() || ascii.len() == KEY_LEN - 3);
        }
    }

    #[test]
    fn verify_rejects_other_keys_and_hashes() {
        let mut rng = rng();
        let a = generate_with(&mut rng);
        let b = generate_with(&mut rng);
        let pa = parse(a.secret.expose_secret()).unwrap();
        assert!(!verify(&pa, &b.hash));
        let mut flipped = a.hash;
        flipped[31] ^= 1;
        assert!(!verify(&pa, &flipped));
        assert!(!verify(&pa, &[0u8; 32]));
    }

    #[test]
    fn lookup_parse_agrees_with_parse_and_typos_never_verify() {
        // The hot path's parse skips the checksum: whatever `parse`
        // accepts it reads the same, and a typo it lets through (any one
        // symbol changed, checksum symbols included) still never verifies.
        let mut rng = rng();
        for _ in 0..50 {
            let k = generate_with(&mut rng);
            let s = text(&k);
            let (full, quick) = (parse(&s).unwrap(), parse_for_lookup(&s).unwrap());
            assert_eq!((full.id, full.hash), (quick.id, quick.hash));
            assert!(verify(&quick, &k.hash));
            for pos in 3..KEY_LEN {
                let mut bytes = s.clone().into_bytes();
                bytes[pos] = if bytes[pos] == b'a' { b'b' } else { b'a' };
                let typo = String::from_utf8(bytes).unwrap();
                let p = parse_for_lookup(&typo).expect("still shaped like a key");
                assert!(!verify(&p, &k.hash), "typo at {pos} verified");
            }
        }
        // The shape checks are parse's.
        for bad in [
            "",
            "lk_short",
            &format!("LK_{}", "a".repeat(57)),
            &format!("lk_{}-", "a".repeat(56)),
            &format!("lk_{}", "a".repeat(200)),
        ] {
            assert!(parse_for_lookup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attacker_with_valid_id_and_checksum_but_wrong_secret_fails() {
        // A forged key reusing a real id with a fresh secret and a correct
        // checksum parses (the checksum is public) but never verifies.
        let mut rng = rng();
        let real = generate_with(&mut rng);
        let forged_body = format!(
            "lk_{}{}",
            real.id,
            (0..SECRET_LEN)
                .map(|_| char::from(rng.sample(Alphanumeric)))
                .collect::<String>()
        );
        let forged = parse(&with_checksum(&forged_body)).unwrap();
        assert_eq!(forged.id, real.id);
        assert!(!verify(&forged, &real.hash));
    }

    #[test]
    fn debug_and_errors_never_show_secrets() {
        let k = generate_with(&mut rng());
        let s = text(&k);
        let secret_part = &s[11..11 + SECRET_LEN];
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(secret_part), "{dbg}");
        assert!(dbg.contains(k.id.as_str()));
        let p = parse(&s).unwrap();
        let pdbg = format!("{p:?}");
        assert!(!pdbg.contains(secret_part));
        assert!(!pdbg.contains(&hex::encode(p.hash)));
        let mut typo = s.clone().into_bytes();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        let err = parse(std::str::from_utf8(&typo).unwrap()).unwrap_err();
        assert!(!err.to_string().contains(secret_part));
    }

    #[test]
    fn key_id_text_and_serde_round_trip() {
        let k = generate_with(&mut rng());
        let id = k.id;
        assert_eq!(id.as_str().parse::<KeyId>().unwrap(), id);
        assert_eq!(id.display_prefix().parse::<KeyId>().unwrap(), id);
        assert_eq!(id.display_prefix(), format!("lk_{id}"));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
        for bad in ["", "abc", "abcdefghi", "abc-efgh", "abcdéfg"] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<KeyId>("\"short\"").is_err());
    }

    #[test]
    fn looks_like_api_key_routes_bearer_tokens() {
        assert!(looks_like_api_key(" lk_anything"));
        assert!(!looks_like_api_key("eyJhbGciOi"));
        assert!(!looks_like_api_key("LK_x"));
    }
}
