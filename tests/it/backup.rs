//! `latchkey backup` / `latchkey restore`.

use latchkey_e2e::{TestDir, file_bytes, files_under};

fn seeded() -> TestDir {
    let d = TestDir::new();
    d.ok(
        &[
            "vault",
            "put",
            "openai",
            "--kind",
            "api_key",
            "--provider",
            "openai",
        ],
        b"sk-backup-1",
    );
    d.ok(
        &["vault", "put", "spotify", "--kind", "oauth_token"],
        b"{\"refresh_token\":\"rt-1\"}",
    );
    d
}

#[test]
fn passphrase_backup_restores_into_a_fresh_directory() {
    let d = seeded();
    let file = d.path().join("vault.backup");
    let f = file.to_str().expect("utf8");
    d.ok(
        &["backup", "--out", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );

    let target = TestDir::new();
    target.ok(
        &["restore", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    assert_eq!(
        target
            .ok(&["vault", "get", "openai", "--reveal"], b"")
            .stdout,
        "sk-backup-1"
    );
    assert_eq!(
        target
            .ok(&["vault", "get", "spotify", "--reveal"], b"")
            .stdout,
        "{\"refresh_token\":\"rt-1\"}"
    );
    // The restored vault has its own master key, not the source's.
    assert!(
        file_bytes(&target.data().join("master.key")) != file_bytes(&d.data().join("master.key"))
    );
    let meta: serde_json::Value =
        serde_json::from_str(&target.ok(&["vault", "get", "openai", "--json"], b"").stdout)
            .expect("json");
    assert_eq!(meta["provider"], "openai");
}

#[test]
fn recipient_backup_and_identity_restore() {
    let d = seeded();
    let idfile = d.path().join("backup-identity.txt");
    let key = d.ok(&["keygen"], b"").stdout;
    std::fs::write(&idfile, &key).expect("write");
    let recipient = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    let file = d.path().join("b.age");
    let f = file.to_str().expect("utf8");
    let made = d.ok(&["backup", "--out", f, "--recipient", &recipient], b"");
    // The installation's backup key, as `backup` shows it.
    let fp = made
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no backup key fingerprint in: {}", made.stderr))
        .to_string();
    let target = TestDir::new();
    // Anyone can encrypt to the recipient: into a new data directory a
    // recipient backup is restored only when its signer is named.
    let err = target.fails(
        &["restore", f, "--identity", idfile.to_str().expect("utf8")],
        b"",
    );
    assert!(err.contains(&format!("--trust {fp}")), "{err}");
    assert!(!target.data().exists(), "a refused restore creates nothing");
    target.ok(
        &[
            "restore",
            f,
            "--identity",
            idfile.to_str().expect("utf8"),
            "--trust",
            &fp,
        ],
        b"",
    );
    assert_eq!(
        target
            .ok(&["vault", "get", "openai", "--reveal"], b"")
            .stdout,
        "sk-backup-1"
    );

    // Another identity cannot open it.
    let other = d.path().join("other.txt");
    std::fs::write(&other, d.ok(&["keygen"], b"").stdout).expect("write");
    let t2 = TestDir::new();
    let err = t2.fails(
        &["restore", f, "--identity", other.to_str().expect("utf8")],
        b"",
    );
    assert!(err.contains("cannot be decrypted"), "{err}");
    assert!(!t2.data().exists(), "a failed restore creates nothing");
}

#[test]
fn restore_refuses_a_non_empty_directory_without_force() {
    let d = seeded();
    let file = d.path().join("b");
    let f = file.to_str().expect("utf8");
    d.ok(
        &["backup", "--out", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    d.ok(&["vault", "put", "added-later"], b"x");
    let before = d.store_state();
    assert!(before.len() > 100, "the state is read");
    let err = d.fails(
        &["restore", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    assert!(err.contains("--force"), "{err}");
    assert!(
        d.store_state() == before,
        "refused restore modified the database"
    );
    d.ok(
        &["restore", f, "--passphrase-stdin", "--force"],
        b"backup passphrase 123\n",
    );
    let err = d.fails(&["vault", "get", "added-later"], b"");
    assert!(err.contains("no vault entry"), "{err}");
    assert_eq!(
        d.ok(&["vault", "get", "openai", "--reveal"], b"").stdout,
        "sk-backup-1"
    );
}

#[test]
fn tampered_or_wrong_backups_change_nothing() {
    let d = seeded();
    let file = d.path().join("b");
    let f = file.to_str().expect("utf8");
    d.ok(
        &["backup", "--out", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );

    // Wrong passphrase.
    let t = TestDir::new();
    let err = t.fails(
        &["restore", f, "--passphrase-stdin"],
        b"not the passphrase\n",
    );
    assert!(err.contains("cannot be decrypted"), "{err}");
    assert!(!t.data().exists());

    // Flipped bits anywhere: header, middle, end.
    let good = file_bytes(&file);
    for pos in [40, good.len() / 2, good.len() - 2] {
        let mut bad = good.clone();
        bad[pos] ^= 0x04;
        let badfile = d.path().join(format!("bad-{pos}"));
        std::fs::write(&badfile, &bad).expect("write");
        // Restoring over an existing vault with --force: still nothing may change.
        let before = d.store_state();
        let out = d.run(
            &[
                "restore",
                badfile.to_str().expect("utf8"),
                "--passphrase-stdin",
                "--force",
            ],
            b"backup passphrase 123\n",
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "tampered backup at {pos} accepted: {}",
            out.stderr
        );
        assert!(
            d.store_state() == before,
            "tampered restore at {pos} modified the database"
        );
    }
    // Truncated.
    let trunc = d.path().join("trunc");
    std::fs::write(&trunc, &good[..good.len() / 2]).expect("write");
    let t = TestDir::new();
    t.fails(
        &[
            "restore",
            trunc.to_str().expect("utf8"),
            "--passphrase-stdin",
        ],
        b"backup passphrase 123\n",
    );
    assert!(!t.data().exists());
}

#[test]
fn backup_refuses_to_overwrite_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = seeded();
    let file = d.path().join("b");
    let f = file.to_str().expect("utf8");
    d.ok(
        &["backup", "--out", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let err = d.fails(
        &["backup", "--out", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    assert!(err.contains("already exists"), "{err}");
    let err = d.fails(
        &[
            "backup",
            "--out",
            "/tmp/x-nope",
            "--recipient",
            "age1notarecipient",
        ],
        b"",
    );
    assert!(err.contains("not a valid age recipient"), "{err}");
    let err = d.fails(
        &["backup", "--out", "/tmp/x-nope2", "--passphrase-stdin"],
        b"short\n",
    );
    assert!(err.contains("at least 12"), "{err}");
    assert_eq!(
        files_under(d.path())
            .iter()
            .filter(|p| p.starts_with("/tmp/x-nope"))
            .count(),
        0
    );
}
