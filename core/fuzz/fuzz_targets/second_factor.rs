//! Second factors typed by people (and attackers): TOTP codes
//! (`auth::totp::verify`) and recovery codes
//! (`auth::recovery::find_and_consume`).
//!
//! Properties:
//! - a TOTP code is accepted only if it is, after trimming and removing
//!   spaces, the RFC 6238 code (computed here independently, HMAC-SHA1,
//!   6 digits, 30 s) of the step accepted; that step is within one step of
//!   now and after the last one used; and the same code is never accepted
//!   for that step again;
//! - the real code, typed with spaces anywhere and whitespace around it,
//!   is accepted; `Malformed` exactly when the input is not 6 digits;
//! - a recovery code is consumed at most once: a consuming input removes
//!   exactly one entry and never works a second time; every real code,
//!   typed in any case, with or without the dash, extra spaces and the
//!   look-alikes `i`/`l`/`o`, consumes its own entry; unparsable stored
//!   entries are skipped, never matched.
#![no_main]

use hmac::{Hmac, Mac};
use latchkey_core::auth::recovery::{self, RecoveryCodes};
use latchkey_core::auth::totp::{self, TotpError, TotpSecret};
use latchkey_core::secrecy::ExposeSecret;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// RFC 4226 HOTP, 6 digits, HMAC-SHA1.
fn hotp(secret: &[u8], counter: u64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    format!("{:06}", bin % 1_000_000)
}

fn normalized(code: &str) -> Option<String> {
    let c: String = code.trim().chars().filter(|c| *c != ' ').collect();
    (c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())).then_some(c)
}

fn totp_case(data: &[u8]) {
    if data.len() < 16 + 8 + 9 {
        return;
    }
    let (secret, rest) = data.split_at(16 + usize::from(data[0] % 16));
    let Some((head, rest)) = rest.split_at_checked(17) else {
        return;
    };
    let now = u64::from_le_bytes(head[..8].try_into().expect("8"));
    let last = (head[16] & 1 == 1).then(|| u64::from_le_bytes(head[8..16].try_into().expect("8")));
    let s = TotpSecret::from_bytes(secret).expect("16 bytes or more");
    let current = now / 30;

    // The input as a typed code.
    if let Ok(code) = std::str::from_utf8(rest) {
        let r = totp::verify(&s, code, now, last);
        assert_eq!(
            r == Err(TotpError::Malformed),
            normalized(code).is_none(),
            "{code:?}: {r:?}"
        );
        if let Ok(step) = r {
            let n = normalized(code).expect("6 digits");
            assert_eq!(hotp(secret, step), n, "accepted a wrong code");
            assert!(
                step + 1 >= current && step <= current.saturating_add(1),
                "step {step} out of the window"
            );
            assert!(
                last.is_none_or(|l| step > l),
                "step {step} not after {last:?}"
            );
            match totp::verify(&s, code, now, Some(step)) {
                Ok(later) => assert!(later > step && hotp(secret, later) == n),
                Err(e) => assert!(matches!(e, TotpError::Replayed | TotpError::Invalid { .. })),
            }
        }
    }
    // The real code of the current step, typed with spaces.
    let real = hotp(secret, current);
    let mut typed = String::from(" \t");
    for (i, c) in real.chars().enumerate() {
        if rest.get(i).is_some_and(|b| b & 1 == 1) {
            typed.push(' ');
        }
        typed.push(c);
    }
    typed.push('\n');
    match totp::verify(&s, &typed, now, None) {
        Ok(step) => assert_eq!(hotp(secret, step), real),
        Err(e) => panic!("the real code {typed:?} was refused: {e:?}"),
    }
}

fn codes() -> &'static RecoveryCodes {
    static SET: OnceLock<RecoveryCodes> = OnceLock::new();
    SET.get_or_init(recovery::generate_set)
}

/// A real code typed the way a person might.
fn retype(code: &str, how: &[u8]) -> String {
    let mut out = String::from("  ");
    for (i, c) in code.chars().enumerate() {
        let b = how.get(i).copied().unwrap_or(0);
        let c = match (c, b % 4) {
            ('-', 1) => continue,
            ('1', 2) => 'l',
            ('1', 3) => 'I',
            ('0', 2 | 3) => 'O',
            (c, 1 | 3) => c.to_ascii_uppercase(),
            (c, _) => c,
        };
        out.push(c);
        if b & 0x80 != 0 {
            out.push(' ');
        }
    }
    out
}

fn recovery_case(data: &[u8]) {
    let set = codes();
    let (pick, rest) = data.split_first().unwrap_or((&0, &[]));
    // Garbage entries (from the input) stored among the real ones.
    let garbage: Vec<String> = rest
        .split(|&b| b == b'\n')
        .skip(1)
        .take(3)
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .collect();
    let stored = || {
        let mut s = set.hashes.clone();
        s.extend(garbage.iter().cloned());
        s
    };
    let full = stored().len();

    // The input as typed.
    let typed =
        String::from_utf8_lossy(rest.split(|&b| b == b'\n').next().unwrap_or(&[])).into_owned();
    let mut s = stored();
    if recovery::find_and_consume(&typed, &mut s) {
        assert_eq!(s.len(), full - 1, "more than one entry consumed");
        assert!(!recovery::find_and_consume(&typed, &mut s), "used twice");
        assert_eq!(s.len(), full - 1);
    } else {
        assert_eq!(s.len(), full, "an entry consumed by a refused code");
    }

    // A real code, retyped.
    let i = usize::from(*pick) % set.codes.len();
    let code = retype(set.codes[i].expose_secret(), rest);
    let mut s = stored();
    assert!(
        recovery::find_and_consume(&code, &mut s),
        "{i}: real code refused"
    );
    assert!(!s.contains(&set.hashes[i]), "another entry consumed");
    assert_eq!(s.len(), full - 1);
    assert!(!recovery::find_and_consume(&code, &mut s), "used twice");
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b, rest)) if b & 1 == 0 => totp_case(rest),
        Some((_, rest)) => recovery_case(rest),
        None => {}
    }
});
