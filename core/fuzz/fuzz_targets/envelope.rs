//! The vault's envelopes (`vault::envelope`): the age ciphertext of each
//! secret, bound to its record id and kind (or, for values that are not
//! records, such as TOTP secrets, to a context string). Stored bytes and
//! backups hand these to `open`.
//!
//! Properties:
//! - seal then open with the same record and kind gives the secret back;
//!   with another record id or kind it is `WrongRecord`;
//! - an envelope with any byte changed, cut short or extended never opens
//!   (and never panics);
//! - a record envelope never opens as a context value and the reverse
//!   (for record ids as they are made: random, so at least 2^64);
//! - plaintexts of the fuzzer's choosing encrypted to the data key (what
//!   only the vault itself can make) open for one record id and kind at
//!   most, and never panic; arbitrary bytes never open.
#![no_main]

use latchkey_core::fuzzing::{
    envelope_open, envelope_open_context, envelope_seal, envelope_seal_context,
};
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::vault::{DataKey, EnvelopeError, Kind, RecordId};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static DataKey {
    static KEY: OnceLock<DataKey> = OnceLock::new();
    KEY.get_or_init(DataKey::generate)
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *b
    }
    fn u128(&mut self) -> u128 {
        let mut b = [0u8; 16];
        for x in &mut b {
            *x = self.byte();
        }
        u128::from_le_bytes(b)
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.byte()).min(self.0.len());
        let (t, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(t).into_owned()
    }
}

fn kind(b: u8) -> Kind {
    Kind::ALL[usize::from(b) % Kind::ALL.len()]
}

/// Changes `ct` as the rest of the input says: (op, position, byte).
fn mutate(ct: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = ct.to_vec();
    for op in ops.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([op[1], op[2]])) % out.len().max(1);
        match op[0] % 4 {
            0 if !out.is_empty() => out[at] ^= op[2] | 1,
            1 => out.truncate(at),
            2 => out.insert(at.min(out.len()), op[1]),
            _ if !out.is_empty() => {
                out.remove(at);
            }
            _ => {}
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let k = key();
    match inp.byte() % 4 {
        // A real envelope, then edits.
        0 => {
            let id = RecordId(inp.u128() | 1 << 100);
            let kd = kind(inp.byte());
            let secret = inp.text();
            let ct = envelope_seal(k, id, kd, &secret).expect("seal");
            let back = envelope_open(k, id, kd, &ct).expect("open");
            assert_eq!(back.expose_secret(), secret);
            let other = RecordId(id.0 ^ (1 << (inp.byte() % 128)));
            assert_eq!(
                envelope_open(k, other, kd, &ct).err(),
                Some(EnvelopeError::WrongRecord)
            );
            for other_kind in Kind::ALL.into_iter().filter(|x| *x != kd) {
                assert_eq!(
                    envelope_open(k, id, other_kind, &ct).err(),
                    Some(EnvelopeError::WrongRecord)
                );
            }
            let ctx = format!("totp:{:032x}", inp.u128());
            assert!(
                envelope_open_context(k, &ctx, &ct).is_err(),
                "record opened as {ctx}"
            );
            let bad = mutate(&ct, inp.0);
            if bad != ct {
                assert!(
                    envelope_open(k, id, kd, &bad).is_err(),
                    "an altered envelope opened"
                );
            }
        }
        // A context envelope, then edits.
        1 => {
            let ctx = inp.text();
            let secret = inp.text();
            let ct = envelope_seal_context(k, &ctx, &secret).expect("seal");
            let back = envelope_open_context(k, &ctx, &ct).expect("open");
            assert_eq!(back.expose_secret(), secret);
            let id = RecordId(inp.u128() | 1 << 100);
            for kd in Kind::ALL {
                assert!(
                    envelope_open(k, id, kd, &ct).is_err(),
                    "context value opened as a record"
                );
            }
            let wrong = format!("{ctx}x");
            assert_eq!(
                envelope_open_context(k, &wrong, &ct).err(),
                Some(EnvelopeError::WrongRecord)
            );
            let bad = mutate(&ct, inp.0);
            if bad != ct {
                assert!(
                    envelope_open_context(k, &ctx, &bad).is_err(),
                    "an altered envelope opened"
                );
            }
        }
        // The fuzzer's own plaintext, encrypted to the data key.
        2 => {
            let id = RecordId(inp.u128());
            let kd = kind(inp.byte());
            let ct = k.encrypt(inp.0).expect("encrypt");
            if envelope_open(k, id, kd, &ct).is_ok() {
                // It names this record: no other id or kind opens it.
                let other = RecordId(id.0 ^ 1);
                assert_eq!(
                    envelope_open(k, other, kd, &ct).err(),
                    Some(EnvelopeError::WrongRecord)
                );
                for other_kind in Kind::ALL.into_iter().filter(|x| *x != kd) {
                    assert!(envelope_open(k, id, other_kind, &ct).is_err());
                }
            }
            let _ = envelope_open_context(k, "totp:0", &ct);
        }
        // Arbitrary bytes as an envelope.
        _ => {
            let id = RecordId(inp.u128());
            assert!(
                envelope_open(k, id, Kind::Generic, inp.0).is_err(),
                "raw bytes opened"
            );
            assert!(
                envelope_open_context(k, "totp:0", inp.0).is_err(),
                "raw bytes opened"
            );
        }
    }
});
