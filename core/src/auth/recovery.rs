//! Single-use recovery codes: the way back in when the authenticator is
//! lost.
//!
//! A set is [`CODE_COUNT`] codes of [`CODE_CHARS`] characters from
//! Crockford's base32 alphabet without `i l o u` (`0-9a-z` minus those four:
//! 32 symbols, so 5 bits each and 50 bits per code), shown once as
//! `xxxxx-xxxxx`. Only salted SHA-256 hashes are stored; a code is removed
//! from the stored list when it is used, so it works once.
//!
//! Input is forgiving the way Crockford intended: case, spaces and dashes
//! are ignored, and `i`/`l` are read as `1`, `o` as `0` (letters that never
//! appear in a code).
//!
//! ## Why a fast hash is enough
//!
//! A recovery code replaces only the *second* factor: using one still needs
//! the password (argon2id) and a login ticket, and every wrong code counts
//! towards the account lockout, so online guessing of 2^50 values is
//! hopeless. The hash only has to resist an attacker holding a copy of the
//! database. Each stored entry has its own 128-bit salt, so such an attacker
//! must search the 2^50 space separately for every single code (no
//! precomputed tables, no cracking all users' codes in one sweep): about
//! 2^49 SHA-256 evaluations for an even chance at one code — roughly a day
//! of a high-end GPU per code — and the prize is still a second factor for
//! an account whose argon2id password hash must also be broken. argon2
//! here would cost ten argon2 runs per attempt (one per stored code), a
//! denial-of-service lever on a small appliance, for little gain.

use std::fmt;

use rand::RngCore as _;
use rand::rngs::OsRng;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};
use zeroize::Zeroizing;

/// Codes per set.
pub const CODE_COUNT: usize = 10;
/// Symbols per code (excluding the dash).
pub const CODE_CHARS: usize = 10;
/// Crockford base32 (lower-case) without i, l, o, u.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Salt bytes per stored hash.
const SALT_BYTES: usize = 16;
/// Domain separation: these hashes are recovery codes, version 1.
const DOMAIN: &[u8] = b"latchkey recovery code v1\0";
/// Prefix of a stored entry: `rc1$<salt hex>$<sha256 hex>`.
const PREFIX: &str = "rc1";

/// A freshly generated set: the codes to show once, and what to store.
pub struct RecoveryCodes {
    /// `xxxxx-xxxxx`, to show the user once and then drop.
    pub codes: Vec<SecretString>,
    /// One `rc1$<salt>$<hash>` entry per code, to store for the user
    /// (replacing any previous set).
    pub hashes: Vec<String>,
}

impl fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCodes")
            .field("codes", &format_args!("[{} redacted]", self.codes.len()))
            .field("hashes", &self.hashes.len())
            .finish()
    }
}

/// Generates a new set of [`CODE_COUNT`] distinct codes. Regenerating
/// replaces the old set: store `hashes` in place of the previous list.
///
/// Returns `(codes to show once, hashes to store)`.
///
/// # Panics
/// If the operating system's random number generator fails.
#[must_use]
pub fn generate() -> (Vec<SecretString>, Vec<String>) {
    let set = generate_set();
    (set.codes, set.hashes)
}

/// Like [`generate`], returning a struct with a redacted `Debug`.
///
/// # Panics
/// If the operating system's random number generator fails.
#[must_use]
pub fn generate_set() -> RecoveryCodes {
    let mut normalized: Vec<Zeroizing<String>> = Vec::with_capacity(CODE_COUNT);
    while normalized.len() < CODE_COUNT {
        let mut random = Zeroizing::new([0u8; CODE_CHARS]);
        OsRng.fill_bytes(random.as_mut());
        // 32 divides 256, so the low five bits of a uniform byte are uniform.
        let code: Zeroizing<String> = Zeroizing::new(
            random
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(b & 0x1f)]))
                .collect(),
        );
        // A repeat within a set (chance ~ 2^-44) would be a wasted code.
        if !normalized.contains(&code) {
            normalized.push(code);
        }
    }

    let mut codes = Vec::with_capacity(CODE_COUNT);
    let mut hashes = Vec::with_capacity(CODE_COUNT);
    for code in &normalized {
        let mut salt = [0u8; SALT_BYTES];
        OsRng.fill_bytes(&mut salt);
        let digest = hash(&salt, code.as_bytes());
        hashes.push(format!(
            "{PREFIX}${}${}",
            hex::encode(salt),
            hex::encode(digest)
        ));
        codes.push(SecretString::from(format!(
            "{}-{}",
            &code[..CODE_CHARS / 2],
            &code[CODE_CHARS / 2..]
        )));
    }
    RecoveryCodes { codes, hashes }
}

/// SHA-256(domain ‖ salt ‖ normalized code).
fn hash(salt: &[u8], normalized: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(salt);
    hasher.update(normalized);
    hasher.finalize().into()
}

/// Lower-cases, drops spaces and dashes, reads `i`/`l` as `1` and `o` as
/// `0`; `None` unless [`CODE_CHARS`] alphabet symbols remain.
fn normalize(input: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(CODE_CHARS));
    for c in input.trim().chars() {
        let c = match c.to_ascii_lowercase() {
            ' ' | '-' => continue,
            'i' | 'l' => '1',
            'o' => '0',
            c => c,
        };
        let Ok(byte) = u8::try_from(c) else {
            return None;
        };
        if !ALPHABET.contains(&byte) || out.len() == CODE_CHARS {
            return None;
        }
        out.push(byte);
    }
    (out.len() == CODE_CHARS).then_some(out)
}

/// Parses a stored entry into (salt, digest).
fn parse_stored(entry: &str) -> Option<([u8; SALT_BYTES], [u8; 32])> {
    let mut parts = entry.split('$');
    if parts.next()? != PREFIX {
        return None;
    }
    let mut salt = [0u8; SALT_BYTES];
    hex::decode_to_slice(parts.next()?, &mut salt).ok()?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(parts.next()?, &mut digest).ok()?;
    parts.next().is_none().then_some((salt, digest))
}

/// If `input` is one of the codes behind `stored`, removes that entry (so
/// the code cannot be used again) and returns true. The caller must persist
/// the shortened list before treating the login as successful.
///
/// Every stored entry is hashed and compared in constant time, with no early
/// exit, so timing does not reveal which entry matched or how many remain
/// close. Malformed input (wrong length or symbols) returns false at once:
/// the code format is public.
pub fn find_and_consume(input: &str, stored: &mut Vec<String>) -> bool {
    let Some(code) = normalize(input) else {
        return false;
    };
    let mut found = Choice::from(0);
    let mut index = 0u64;
    for (i, entry) in stored.iter().enumerate() {
        let Some((salt, expected)) = parse_stored(entry) else {
            continue;
        };
        let actual = hash(&salt, &code);
        let matches = actual.ct_eq(&expected);
        let i = u64::try_from(i).unwrap_or(u64::MAX);
        index.conditional_assign(&i, matches & !found);
        found |= matches;
    }
    if !bool::from(found) {
        return false;
    }
    match usize::try_from(index) {
        Ok(i) if i < stored.len() => {
            stored.remove(i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use secrecy::ExposeSecret as _;
    use std::collections::HashSet;

    fn codes() -> (Vec<String>, Vec<String>) {
        let (codes, hashes) = generate();
        (
            codes.iter().map(|c| c.expose_secret().to_owned()).collect(),
            hashes,
        )
    }

    #[test]
    fn ten_codes_in_the_display_format() {
        let (codes, hashes) = codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(hashes.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 11, "{code}");
            let (a, b) = code.split_once('-').unwrap();
            assert_eq!((a.len(), b.len()), (5, 5), "{code}");
            assert!(
                a.bytes().chain(b.bytes()).all(|c| ALPHABET.contains(&c)),
                "{code}"
            );
            assert!(!code.contains(['i', 'l', 'o', 'u']), "{code}");
        }
    }

    #[test]
    fn alphabet_gives_at_least_50_bits() {
        assert_eq!(ALPHABET.len(), 32);
        assert_eq!(ALPHABET.iter().collect::<HashSet<_>>().len(), 32);
        let bits = (CODE_CHARS as f64) * (ALPHABET.len() as f64).log2();
        assert!(bits >= 50.0);
    }

    #[test]
    fn codes_are_unique_within_and_across_sets() {
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let (codes, _) = codes();
            for code in codes {
                assert!(seen.insert(code));
            }
        }
        // Every symbol shows up over 2,000 random symbols.
        let symbols: HashSet<char> = seen.iter().flat_map(|c| c.chars()).collect();
        assert_eq!(symbols.len(), 33); // 32 + the dash
    }

    #[test]
    fn stored_hashes_are_salted_and_do_not_contain_the_code() {
        let (codes, hashes) = codes();
        for (code, stored) in codes.iter().zip(&hashes) {
            assert!(stored.starts_with("rc1$"), "{stored}");
            assert!(parse_stored(stored).is_some());
            let bare = code.replace('-', "");
            assert!(!stored.contains(&bare));
            // Not a plain unsalted SHA-256 either.
            let plain = hex::encode(Sha256::digest(bare.as_bytes()));
            assert!(!stored.contains(&plain));
        }
        let unique: HashSet<_> = hashes.iter().collect();
        assert_eq!(unique.len(), 10);
    }

    #[test]
    fn each_code_works_once() {
        let (codes, mut stored) = codes();
        for (n, code) in codes.iter().enumerate() {
            assert!(find_and_consume(code, &mut stored), "{code}");
            assert_eq!(stored.len(), 9 - n);
            // Reuse is refused.
            assert!(!find_and_consume(code, &mut stored), "{code} reused");
        }
        assert!(stored.is_empty());
    }

    #[test]
    fn using_one_code_leaves_the_others_valid() {
        let (codes, mut stored) = codes();
        assert!(find_and_consume(&codes[4], &mut stored));
        assert_eq!(stored.len(), 9);
        assert!(find_and_consume(&codes[0], &mut stored));
        assert!(find_and_consume(&codes[9], &mut stored));
        assert_eq!(stored.len(), 7);
    }

    #[test]
    fn input_is_normalized() {
        let (codes, mut stored) = codes();
        let bare = codes[0].replace('-', "");
        let variants = [
            codes[0].to_uppercase(),
            format!("  {}  ", codes[1]),
            format!("{} {}", &codes[2][..5], &codes[2][6..]),
            codes[3].replace('-', " - ").to_uppercase(),
            bare.clone(),
        ];
        // Variants 0 and 4 name the same code: only the first succeeds.
        assert!(find_and_consume(&variants[0], &mut stored));
        assert!(find_and_consume(&variants[1], &mut stored));
        assert!(find_and_consume(&variants[2], &mut stored));
        assert!(find_and_consume(&variants[3], &mut stored));
        assert!(!find_and_consume(&variants[4], &mut stored));
    }

    #[test]
    fn crockford_look_alikes_are_read_as_digits() {
        let (codes, mut stored) = codes();
        let code = codes
            .iter()
            .find(|c| c.contains(['0', '1']))
            .cloned()
            .unwrap_or_default();
        if code.is_empty() {
            return; // ~ (30/32)^100: never in practice
        }
        let typed = code.replace('0', "O").replace('1', "l");
        assert!(find_and_consume(&typed, &mut stored), "{typed}");
    }

    #[test]
    fn wrong_codes_are_refused() {
        let (codes, mut stored) = codes();
        let before = stored.clone();
        let mut wrong = codes[0].clone().into_bytes();
        // Change one symbol to another valid symbol.
        wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
        let wrong = String::from_utf8(wrong).unwrap();
        for bad in [
            wrong.as_str(),
            "",
            "-----",
            "abcde-fghj",   // 9 symbols
            "abcde-fghjkm", // 11 symbols
            "abcde-fghju",  // u is not in the alphabet
            "abcde-fghj!",
            "ābcde-fghjk",
            &codes[0][..10],
            &format!("{}x", codes[0]),
        ] {
            assert!(!find_and_consume(bad, &mut stored), "{bad:?}");
        }
        assert_eq!(stored, before, "failed attempts must not change the list");
    }

    #[test]
    fn codes_of_another_set_are_refused() {
        let (codes, _) = codes();
        let (_, mut other) = super::tests::codes();
        for code in &codes {
            assert!(!find_and_consume(code, &mut other));
        }
        assert_eq!(other.len(), 10);
    }

    #[test]
    fn corrupt_stored_entries_are_skipped() {
        let (codes, mut stored) = codes();
        stored.insert(0, "garbage".to_owned());
        stored.insert(1, "rc1$zz$zz".to_owned());
        stored.insert(2, String::new());
        assert!(find_and_consume(&codes[5], &mut stored));
        assert_eq!(stored.len(), 12);
        assert_eq!(stored[0], "garbage");
    }

    #[test]
    fn debug_is_redacted() {
        let set = generate_set();
        let debug = format!("{set:?}");
        for code in &set.codes {
            assert!(!debug.contains(code.expose_secret()), "{debug}");
        }
        assert!(debug.contains("10 redacted"));
    }
}
