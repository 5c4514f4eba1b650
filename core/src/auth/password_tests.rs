//! Tests of `auth::password`, kept beside it so password.rs holds only the code.

#![allow(clippy::unwrap_used)]

use super::*;
use argon2::{PasswordHasher as _, PasswordVerifier as _};

#[test]
fn argon2_runs_at_most_one_per_cpu_however_many_callers() {
    let hasher = std::sync::Arc::new(
        PasswordHasher::new(Argon2Params {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        })
        .expect("hasher"),
    );
    let phc = hasher
        .hash(&SecretString::from("correct horse battery".to_string()))
        .expect("hash");
    let callers = 4 * hasher.concurrency() + 2;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(callers));
    let handles: Vec<_> = (0..callers)
        .map(|i| {
            let (h, b, phc) = (hasher.clone(), barrier.clone(), phc.clone());
            std::thread::spawn(move || {
                b.wait();
                let pw = SecretString::from(format!("guess number {i}"));
                if i % 2 == 0 {
                    h.verify(&pw, &phc).expect("verify")
                } else {
                    h.verify_dummy(&pw)
                }
            })
        })
        .collect();
    for t in handles {
        assert!(!t.join().expect("join"), "no guess matches");
    }
    assert!(hasher.peak_concurrency() >= 1);
    assert!(
        hasher.peak_concurrency() <= hasher.concurrency(),
        "{} ran at once, limit {}",
        hasher.peak_concurrency(),
        hasher.concurrency()
    );
}

#[test]
fn argon2_memory_is_allocated_once_per_worker_and_reused() {
    // A burst of verifications (and hashes) from more callers than
    // workers: each worker allocates its memory once, on its first job,
    // and keeps it — nothing of 19 MiB goes back to the allocator.
    let hasher = std::sync::Arc::new(hasher());
    let pw = secret("correct horse battery");
    let phc = hasher.hash(&pw).unwrap();
    let callers = 3 * hasher.concurrency() + 2;
    let handles: Vec<_> = (0..callers)
        .map(|i| {
            let (h, phc) = (hasher.clone(), phc.clone());
            std::thread::spawn(move || {
                for j in 0..3 {
                    let guess = secret(&format!("guess number {i}.{j}"));
                    assert!(!h.verify(&guess, &phc).unwrap());
                    assert!(!h.verify_dummy(&guess));
                }
            })
        })
        .collect();
    for t in handles {
        t.join().expect("join");
    }
    assert!(
        hasher.verify(&pw, &phc).unwrap(),
        "and the right one matches"
    );
    let made = hasher.memory_allocations();
    assert!(
        (1..=hasher.concurrency()).contains(&made),
        "{made} argon2 memory areas for {} workers and {} computations",
        hasher.concurrency(),
        callers * 6 + 3
    );
    // A stored hash made with more memory gets an area of its own, each
    // time (the workers' stay the configured size); a weaker one fits.
    let strong = PasswordHasher::new(Argon2Params {
        memory_kib: 47_104,
        iterations: 2,
        parallelism: 1,
    })
    .unwrap()
    .hash(&pw)
    .unwrap();
    assert!(hasher.verify(&pw, &strong).unwrap());
    assert!(!hasher.verify(&secret("not it at all"), &strong).unwrap());
    assert_eq!(hasher.memory_allocations(), made + 2);
    let weak = PasswordHasher::new(Argon2Params {
        memory_kib: 9_216,
        iterations: 4,
        parallelism: 1,
    })
    .unwrap()
    .hash(&pw)
    .unwrap();
    assert!(hasher.verify(&pw, &weak).unwrap());
    assert!(hasher.memory_allocations() <= hasher.concurrency() + 2);
}

#[test]
fn hashes_agree_with_the_argon2_crates_own() {
    // Our hashing runs argon2 in reused memory and writes the PHC string
    // itself: what it writes must be what the crate verifies, and what the
    // crate wrote (every stored hash so far) must verify here, for the
    // right password only — also with another lane count and output length.
    let h = hasher();
    let pw = "a perfectly fine passphrase";
    let ours = h.hash(&secret(pw)).unwrap();
    let parsed = PasswordHash::new(&ours).unwrap();
    let crate_argon2 = Argon2::default();
    assert!(crate_argon2.verify_password(pw.as_bytes(), &parsed).is_ok());
    assert!(
        crate_argon2
            .verify_password(b"a perfectly fine passphrasE", &parsed)
            .is_err()
    );
    for (lanes, out_len) in [(1, 32), (2, 32), (1, 64), (4, 16)] {
        let params = Params::new(19_456, 2, lanes, Some(out_len)).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(pw.as_bytes(), &[9u8; 16])
            .unwrap()
            .to_string();
        assert!(h.verify(&secret(pw), &theirs).unwrap(), "{theirs}");
        assert!(!h.verify(&secret("another passphrase"), &theirs).unwrap());
    }
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn hasher() -> PasswordHasher {
    PasswordHasher::new(Argon2Params::default()).unwrap()
}

#[test]
fn default_hasher_uses_owasp_params_and_has_a_dummy() {
    let h = PasswordHasher::default();
    assert_eq!(h.params(), Argon2Params::default());
    assert!(h.dummy_phc.is_some());
}

// ----- policy -------------------------------------------------------

#[test]
fn bundled_list_is_an_honest_top_10k() {
    let policy = PasswordPolicy::new();
    assert_eq!(policy.common.len(), COMMON_PASSWORDS_COUNT);
    assert_eq!(COMMON_PASSWORDS.lines().count(), COMMON_PASSWORDS_COUNT);
    assert_eq!(COMMON_PASSWORDS.lines().next(), Some("123456"));
    assert!(
        COMMON_PASSWORDS
            .lines()
            .all(|l| !l.is_empty() && l == l.to_lowercase() && l.trim() == l)
    );
}

#[test]
fn length_is_counted_in_characters_not_bytes() {
    let policy = PasswordPolicy::new();
    // 11 characters, 33 bytes: too short even though it has > 12 bytes.
    let eleven = "ж".repeat(3) + "€€€€€€€€";
    assert_eq!(eleven.chars().count(), 11);
    assert!(matches!(
        policy.check(&eleven, "alice"),
        Err(PasswordError::TooShort {
            actual: 11,
            min: 12
        })
    ));
    // 12 multi-byte characters are fine.
    let twelve = "ж€".repeat(6);
    assert!(policy.check(&twelve, "alice").is_ok());
    // 256 is the maximum, 257 is refused, counted in characters.
    assert!(policy.check(&"é".repeat(256), "alice").is_ok());
    assert!(matches!(
        policy.check(&"é".repeat(257), "alice"),
        Err(PasswordError::TooLong {
            actual: 257,
            max: 256
        })
    ));
}

#[test]
fn boundaries_11_12() {
    let policy = PasswordPolicy::new();
    assert!(policy.check("kq8vz3mwpxt", "alice").is_err());
    assert!(policy.check("kq8vz3mwpxtr", "alice").is_ok());
}

#[test]
fn no_composition_rules() {
    let policy = PasswordPolicy::new();
    // All lower-case letters, no digit, no symbol: fine.
    assert!(
        policy
            .check("correct horse battery staple", "alice")
            .is_ok()
    );
    assert!(policy.check("zebracloudlantern", "alice").is_ok());
}

#[test]
fn common_passwords_are_refused_case_insensitively() {
    let policy = PasswordPolicy::new();
    // On the list and at least 12 characters long.
    for pw in [
        "1qaz2wsx3edc",
        "QWERTY123456",
        "LeaveMeAlone",
        "123456789123",
    ] {
        let err = policy.check(pw, "alice").unwrap_err();
        assert!(matches!(err, PasswordError::Common), "{pw}: {err}");
        assert!(err.to_string().contains("10,000 most common passwords"));
        assert!(err.is_policy_violation());
    }
}

#[test]
fn short_common_passwords_report_length_first() {
    let policy = PasswordPolicy::new();
    assert!(matches!(
        policy.check("password", "alice"),
        Err(PasswordError::TooShort { .. })
    ));
}

#[test]
fn password_equal_to_username_is_refused_case_insensitively() {
    let policy = PasswordPolicy::new();
    let err = policy
        .check("Alice.Liddell.1865", "alice.liddell.1865")
        .unwrap_err();
    assert!(matches!(err, PasswordError::SameAsUsername));
    assert!(err.to_string().contains("username"));
    // Containing the username is allowed (NIST forbids equality only).
    assert!(policy.check("alice-rides-a-bicycle", "alice").is_ok());
}

#[test]
fn messages_name_the_rule() {
    let policy = PasswordPolicy::new();
    let short = policy.check("abc", "alice").unwrap_err().to_string();
    assert!(
        short.contains("too short") && short.contains("at least 12"),
        "{short}"
    );
    let long = policy
        .check(&"a".repeat(300), "alice")
        .unwrap_err()
        .to_string();
    assert!(
        long.contains("too long") && long.contains("at most 256"),
        "{long}"
    );
}

// ----- hashing ------------------------------------------------------

#[test]
fn default_params_are_owasp() {
    let p = Argon2Params::default();
    assert_eq!((p.memory_kib, p.iterations, p.parallelism), (19_456, 2, 1));
}

#[test]
fn weaker_than_owasp_is_refused() {
    for (m, t) in [(19_456, 1), (4_096, 10), (7_168, 4), (1_024, 1)] {
        let err = PasswordHasher::new(Argon2Params {
            memory_kib: m,
            iterations: t,
            parallelism: 1,
        })
        .unwrap_err();
        assert!(
            matches!(err, PasswordError::WeakParams { .. }),
            "{m},{t}: {err}"
        );
    }
    // Each of OWASP's documented options is accepted by validation.
    for (m, t) in [
        (47_104, 1),
        (19_456, 2),
        (12_288, 3),
        (9_216, 4),
        (7_168, 5),
    ] {
        let p = Argon2Params {
            memory_kib: m,
            iterations: t,
            parallelism: 1,
        };
        assert!(p.to_argon2().is_ok(), "{m},{t}");
    }
    let huge = Argon2Params {
        memory_kib: u32::MAX,
        iterations: 2,
        parallelism: 1,
    };
    assert!(matches!(
        huge.to_argon2(),
        Err(PasswordError::InvalidParams(_))
    ));
    let no_lanes = Argon2Params {
        parallelism: 0,
        ..Argon2Params::default()
    };
    assert!(matches!(
        no_lanes.to_argon2(),
        Err(PasswordError::InvalidParams(_))
    ));
}

#[test]
fn hash_is_argon2id_phc_with_configured_params_and_verifies() {
    let h = hasher();
    let pw = secret("a perfectly fine passphrase");
    let phc = h.hash(&pw).unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(!phc.contains("passphrase"));
    assert!(h.verify(&pw, &phc).unwrap());
    assert!(!h.needs_rehash(&phc));
}

#[test]
fn wrong_password_is_refused() {
    let h = hasher();
    let phc = h.hash(&secret("a perfectly fine passphrase")).unwrap();
    assert!(
        !h.verify(&secret("a perfectly fine passphrasE"), &phc)
            .unwrap()
    );
    assert!(!h.verify(&secret(""), &phc).unwrap());
}

#[test]
fn salts_differ_between_hashes_of_the_same_password() {
    let h = hasher();
    let pw = secret("a perfectly fine passphrase");
    assert_ne!(h.hash(&pw).unwrap(), h.hash(&pw).unwrap());
}

#[test]
fn malformed_hash_is_an_error_not_a_match() {
    let h = hasher();
    let pw = secret("a perfectly fine passphrase");
    for bad in [
        "",
        "not a hash",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
    ] {
        assert!(
            matches!(h.verify(&pw, bad), Err(PasswordError::MalformedHash)),
            "{bad}"
        );
    }
}

#[test]
fn verifies_old_hashes_and_asks_for_rehash_when_params_are_raised() {
    let old = PasswordHasher::new(Argon2Params {
        memory_kib: 9_216,
        iterations: 4,
        parallelism: 1,
    })
    .unwrap();
    let pw = secret("a perfectly fine passphrase");
    let old_phc = old.hash(&pw).unwrap();

    let current = hasher();
    // Old parameters are read from the hash, so the login still works…
    assert!(current.verify(&pw, &old_phc).unwrap());
    // …and the caller is told to store a new hash.
    assert!(current.needs_rehash(&old_phc));
    assert!(!old.needs_rehash(&old_phc));

    // A stronger stored hash is not "upgraded" down.
    let strong = PasswordHasher::new(Argon2Params {
        memory_kib: 47_104,
        iterations: 2,
        parallelism: 1,
    })
    .unwrap();
    let strong_phc = strong.hash(&pw).unwrap();
    assert!(!current.needs_rehash(&strong_phc));
    assert!(current.verify(&pw, &strong_phc).unwrap());
}

#[test]
fn needs_rehash_for_other_variants_and_garbage() {
    let h = hasher();
    let pw = b"a perfectly fine passphrase";
    let salt = [7u8; 16];
    let params = Params::new(19_456, 2, 1, None).unwrap();
    let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params.clone())
        .hash_password_with_salt(pw, &salt)
        .unwrap()
        .to_string();
    assert!(argon2i.starts_with("$argon2i$"));
    assert!(h.needs_rehash(&argon2i));
    // It still verifies (the algorithm is taken from the hash).
    assert!(
        h.verify(&secret("a perfectly fine passphrase"), &argon2i)
            .unwrap()
    );
    let v10 = Argon2::new(Algorithm::Argon2id, Version::V0x10, params)
        .hash_password_with_salt(pw, &salt)
        .unwrap()
        .to_string();
    assert!(h.needs_rehash(&v10));
    assert!(h.needs_rehash("garbage"));
}

#[test]
fn dummy_verification_takes_comparable_time() {
    // Not a precise timing test (CI machines are noisy): only that the
    // dummy path really runs argon2 with the current parameters rather
    // than returning at once.
    let h = hasher();
    let pw = secret("a perfectly fine passphrase");
    let phc = h.hash(&pw).unwrap();
    let wrong = secret("another passphrase here");

    let start = std::time::Instant::now();
    for _ in 0..3 {
        assert!(!h.verify_dummy(&wrong));
    }
    let dummy = start.elapsed();
    let start = std::time::Instant::now();
    for _ in 0..3 {
        assert!(!h.verify(&wrong, &phc).unwrap());
    }
    let real = start.elapsed();
    assert!(
        dummy * 3 > real && real * 3 > dummy,
        "dummy {dummy:?} vs real {real:?}"
    );
    let dummy = h.dummy_phc.as_deref().unwrap();
    assert!(dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    // Even the dummy password itself does not "log in".
    let dummy_password = secret(std::str::from_utf8(PasswordHasher::DUMMY_PASSWORD).unwrap());
    assert!(h.verify(&dummy_password, dummy).unwrap());
    assert!(!h.verify_dummy(&dummy_password));
}

#[test]
fn debug_output_holds_no_hash() {
    let h = hasher();
    let debug = format!("{h:?}");
    assert!(!debug.contains("$argon2"), "{debug}");
    assert!(format!("{:?}", PasswordPolicy::new()).contains("10000"));
}

#[test]
fn argon2_memory_holds_nothing_of_the_password_after_a_computation() {
    // The worker's area outlives the computation: it must not keep the
    // password-derived blocks (core dumps, swap): without the wipe every
    // block argon2 filled would still be there, non-zero.
    let params = Params::new(8192, 1, 1, None).expect("params");
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut memory = Memory::new(8192, Arc::new(AtomicUsize::new(0)));
    let mut out = [0u8; 32];
    for _ in 0..2 {
        memory
            .hash_into(
                &argon2,
                b"a perfectly fine passphrase",
                &[7u8; 16],
                &mut out,
            )
            .expect("argon2");
        assert!(out.iter().any(|b| *b != 0), "argon2 wrote its output");
        assert_eq!(memory.area.len(), 8192);
        let dirty = memory
            .area
            .iter()
            .filter(|b| b.as_ref().iter().any(|w| *w != 0))
            .count();
        assert_eq!(dirty, 0, "{dirty} blocks still hold derived data");
    }
    // A hash needing more than the worker holds gets (and wipes) its own.
    let bigger = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(9000, 1, 1, None).expect("params"),
    );
    memory
        .hash_into(&bigger, b"another one", &[8u8; 16], &mut out)
        .expect("argon2");
    assert_eq!(memory.area.len(), 8192, "the worker's area stays its size");
}
