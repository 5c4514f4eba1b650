//! Backups (`backup::open`): the file `latchkey backup restore` and
//! `POST /api/backup/restore`-style tools read is decrypted, parsed
//! (postcard) and every record's envelope verified before anything is
//! written.
//!
//! The target makes a real backup once (a vault in a temporary directory
//! with three records, backed up to a fresh age recipient). Modes, by the
//! first byte:
//! - 0: the real backup with edits (flip, cut, insert, remove) — it never
//!   opens once changed, and the damage is found before any record is
//!   verified (never "record failed verification" or "newer schema");
//! - 1: the input as the backup's plaintext, encrypted to the recipient
//!   (anyone holding the public `age1…` recipient can do this): it never
//!   panics and never fails as undecryptable; what opens reports a
//!   plausible summary;
//! - 2: the input as a backup file: it never opens.
//!
//! With `LATCHKEY_FUZZ_SEED_DIR` set, the first run writes the real
//! backup's plaintext there as a mode-1 seed (how the committed seed was
//! made).
#![no_main]

use latchkey_core::backup::{self, BackupError, BackupIdentity, BackupRecipient};
use latchkey_core::secrecy::SecretString;
use latchkey_core::store::Store;
use latchkey_core::vault::{Kind, MasterKeySource, NewRecord, Vault};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Fixture {
    _dir: tempfile::TempDir,
    identity: BackupIdentity,
    recipient: age::x25519::Recipient,
    backup: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "fuzz").expect("store");
        let vault = Arc::new(Vault::new(store));
        vault
            .open_with(&MasterKeySource::KeyFile {
                path: dir.path().join("master.key"),
            })
            .expect("vault");
        for (name, kind, secret) in [
            ("openai", Kind::ApiKey, "sk-proj-fuzz-0123456789"),
            (
                "github-oauth",
                Kind::OauthToken,
                r#"{"access_token":"gho_x","refresh_token":"r"}"#,
            ),
            ("db-password", Kind::Generic, "correct horse battery staple"),
        ] {
            let rec = NewRecord {
                name: name.into(),
                kind,
                provider: None,
                labels: Default::default(),
            };
            vault
                .put(&rec, &SecretString::from(secret.to_string()), false)
                .expect("put");
        }
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let (bytes, summary) =
            backup::create(&vault, &BackupRecipient::Recipient(recipient.clone())).expect("backup");
        assert_eq!(summary.vault_records, 3);
        if let Some(dir) = std::env::var_os("LATCHKEY_FUZZ_SEED_DIR") {
            // A plain age file (a signed container would need unwrapping
            // first: then no seed is written).
            if let Ok(plain) = age::decrypt(&identity, &bytes) {
                let mut seed = vec![1u8];
                seed.extend_from_slice(&plain);
                std::fs::write(
                    std::path::Path::new(&dir).join("real-backup-plaintext"),
                    seed,
                )
                .expect("write seed");
            }
        }
        Fixture {
            _dir: dir,
            identity: BackupIdentity::Identity(identity),
            recipient,
            backup: bytes,
        }
    })
}

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
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let bad = mutate(&f.backup, rest);
            match backup::open(&bad, &f.identity) {
                Ok(v) => {
                    assert!(bad == f.backup, "an altered backup opened");
                    assert_eq!(v.summary.vault_records, 3);
                }
                // Found before any record is checked (not as a record
                // that failed verification, nor as a newer schema).
                Err(e @ (BackupError::Verify(_) | BackupError::TooNew { .. })) => {
                    panic!("an altered backup failed late: {e}")
                }
                Err(_) => {}
            }
        }
        1 => {
            let file = age::encrypt(&f.recipient, rest).expect("encrypt");
            match backup::open(&file, &f.identity) {
                Ok(v) => {
                    assert!(v.summary.tables >= usize::from(v.summary.vault_records > 0));
                }
                Err(e @ BackupError::Decrypt(_)) => panic!("a well-encrypted file failed as {e}"),
                Err(_) => {}
            }
        }
        _ => {
            assert!(
                backup::open(rest, &f.identity).is_err(),
                "raw bytes opened as a backup"
            );
        }
    }
});
