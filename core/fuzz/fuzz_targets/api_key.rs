//! Latchkey API keys (`auth::apikey`): every `Authorization: Bearer lk_…`,
//! `x-api-key` and `x-goog-api-key` value is parsed by `parse` before any
//! lookup.
//!
//! Properties:
//! - a generated key parses back to its id and hash, and verifies;
//! - a key that differs from it anywhere (after trimming) never verifies
//!   against its hash, whatever the checksum says;
//! - whatever `parse` accepts is `lk_` + 57 base62 symbols after trimming,
//!   whose id is the 8 symbols after the prefix and whose hash is the
//!   SHA-256 of the trimmed text; `looks_like_api_key` holds for it;
//! - a key id parses from its own text and its `lk_` display form;
//! - `parse_for_lookup` (the proxy's hot path: no checksum) accepts all
//!   that `parse` accepts with the same id and hash, accepts nothing that
//!   is not shaped like a key, and an edited key it accepts verifies only
//!   if it is the key.
#![no_main]

use latchkey_core::auth::apikey::{self, KEY_LEN, KeyId, PREFIX};
use latchkey_core::secrecy::ExposeSecret;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    // 1. A key generated from a seed taken from the input, then edited.
    if data.len() >= 8 {
        let seed = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let key = apikey::generate_with(&mut StdRng::seed_from_u64(seed));
        let text = key.secret.expose_secret().to_owned();
        let parsed = apikey::parse(&text).expect("a generated key parses");
        assert_eq!(parsed.id, key.id);
        assert!(apikey::verify(&parsed, &key.hash));
        assert_eq!(text.parse::<KeyId>().ok(), None, "a whole key is not an id");
        assert_eq!(key.id.to_string().parse::<KeyId>(), Ok(key.id));
        assert_eq!(key.id.display_prefix().parse::<KeyId>(), Ok(key.id));
        // Edits: (position, byte) pairs from the rest of the input.
        let mut edited = text.clone().into_bytes();
        for pair in data[8..].chunks_exact(2) {
            let at = usize::from(pair[0]) % edited.len();
            edited[at] = pair[1];
        }
        if let Ok(edited) = String::from_utf8(edited) {
            let same = edited.trim_ascii() == text;
            if let Ok(p) = apikey::parse(&edited) {
                assert_eq!(apikey::verify(&p, &key.hash), same, "{edited:?}");
            }
            if let Ok(p) = apikey::parse_for_lookup(&edited) {
                assert_eq!(apikey::verify(&p, &key.hash), same, "{edited:?}");
            }
        }
    }
    // 2. The input as a presented key.
    let Ok(presented) = std::str::from_utf8(data) else {
        return;
    };
    let quick = apikey::parse_for_lookup(presented);
    if let Ok(p) = &quick {
        let t = presented.trim_ascii();
        assert_eq!(t.len(), KEY_LEN);
        assert!(t.starts_with(PREFIX));
        assert!(t[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(p.id.as_str(), &t[PREFIX.len()..PREFIX.len() + 8]);
        let hash: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        assert!(apikey::verify(p, &hash), "hash is not SHA-256 of the key");
    }
    if let Ok(p) = apikey::parse(presented) {
        let q = quick.as_ref().expect("parse_for_lookup accepts what parse does");
        assert_eq!(q.id, p.id);
        assert!(apikey::verify(q, &p.hash));
        let t = presented.trim_ascii();
        assert_eq!(t.len(), KEY_LEN);
        assert!(t.starts_with(PREFIX));
        assert!(t[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(p.id.as_str(), &t[PREFIX.len()..PREFIX.len() + 8]);
        let hash: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        assert!(apikey::verify(&p, &hash), "hash is not SHA-256 of the key");
        assert!(apikey::looks_like_api_key(presented));
    }
    if let Ok(id) = presented.parse::<KeyId>() {
        assert_eq!(
            id.as_str(),
            presented.strip_prefix(PREFIX).unwrap_or(presented)
        );
    }
});
