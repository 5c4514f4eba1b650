//! Every master-key source through the real binary: key file, systemd
//! credential, passphrase, OS keychain.

use latchkey_e2e::{TestDir, run_cmd};
use std::os::unix::fs::PermissionsExt;

#[test]
fn world_readable_key_file_is_refused_with_the_fix() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    let key = d.data().join("master.key");
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = d.fails(&["vault", "get", "k", "--reveal"], b"");
        assert!(err.contains("readable by group or others"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", key.display())),
            "{err}"
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(d.ok(&["vault", "get", "k", "--reveal"], b"").stdout, "v");
}

#[test]
fn wrong_master_key_is_refused() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    let key = d.data().join("master.key");
    let other = d.ok(&["keygen"], b"").stdout;
    std::fs::write(&key, other).expect("write");
    let err = d.fails(&["vault", "get", "k", "--reveal"], b"");
    assert!(err.contains("does not open this vault"), "{err}");
}

#[test]
fn missing_key_file_for_an_existing_vault_is_explained() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    std::fs::remove_file(d.data().join("master.key")).expect("rm");
    let err = d.fails(&["vault", "get", "k", "--reveal"], b"");
    assert!(
        err.contains("is missing, but the vault already holds data"),
        "{err}"
    );
    assert!(
        !d.data().join("master.key").exists(),
        "no new key may be invented"
    );
}

#[test]
fn systemd_credential_source() {
    let d = TestDir::new();
    let creds = d.path().join("creds");
    std::fs::create_dir(&creds).expect("mkdir");
    let key = d.ok(&["keygen"], b"").stdout;
    let cred = creds.join("latchkey-master");
    std::fs::write(&cred, key).expect("write");
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).expect("chmod");

    let with_creds = |args: &[&str], stdin: &[u8]| {
        let mut c = d.cmd(args);
        c.env("LATCHKEY_VAULT__MASTER_KEY", "systemd-credential")
            .env("CREDENTIALS_DIRECTORY", &creds);
        run_cmd(c, stdin)
    };
    let out = with_creds(&["vault", "put", "k"], b"from-systemd");
    assert!(out.status.success(), "{}", out.stderr);
    let out = with_creds(&["vault", "get", "k", "--reveal"], b"");
    assert_eq!(out.stdout, "from-systemd");
    assert!(
        !d.data().join("master.key").exists(),
        "no key file in this mode"
    );

    // Without $CREDENTIALS_DIRECTORY the error says what to add to the unit.
    let mut c = d.cmd(&["vault", "get", "k", "--reveal"]);
    c.env("LATCHKEY_VAULT__MASTER_KEY", "systemd-credential");
    let out = run_cmd(c, b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("LoadCredentialEncrypted="),
        "{}",
        out.stderr
    );
}

fn passphrase_dir() -> TestDir {
    let d = TestDir::new();
    std::fs::create_dir_all(d.data()).expect("mkdir");
    std::fs::write(
        d.data().join("latchkey.toml"),
        "[vault]\nmaster_key = \"passphrase\"\n",
    )
    .expect("config");
    d
}

#[test]
fn passphrase_source_seals_until_the_passphrase_is_given() {
    let d = passphrase_dir();
    let err = d.fails(&["vault", "put", "k"], b"v");
    assert!(err.contains("latchkey vault init"), "{err}");
    let err = d.fails(&["vault", "init", "--passphrase-stdin"], b"short\n");
    assert!(err.contains("at least 12 characters"), "{err}");
    d.ok(
        &["vault", "init", "--passphrase-stdin"],
        b"correct horse battery staple\n",
    );
    assert!(
        !d.data().join("master.key").exists(),
        "passphrases are never stored"
    );

    let good = d.path().join("pass");
    std::fs::write(&good, "correct horse battery staple\n").expect("write");
    let bad = d.path().join("bad");
    std::fs::write(&bad, "incorrect horse battery staple\n").expect("write");
    let good = good.to_str().expect("utf8");
    let bad = bad.to_str().expect("utf8");

    d.ok(
        &["--passphrase-file", good, "vault", "put", "k"],
        b"sealed-value",
    );
    assert_eq!(
        d.ok(
            &["--passphrase-file", good, "vault", "get", "k", "--reveal"],
            b""
        )
        .stdout,
        "sealed-value"
    );
    let err = d.fails(
        &["--passphrase-file", bad, "vault", "get", "k", "--reveal"],
        b"",
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    // Metadata stays listable while sealed; values do not.
    assert!(d.ok(&["vault", "list"], b"").stdout.contains('k'));

    // Rotation: current passphrase, then the new one, on stdin.
    d.ok(
        &["vault", "rotate-master", "--passphrase-stdin"],
        b"correct horse battery staple\nan entirely new passphrase\n",
    );
    let err = d.fails(
        &["--passphrase-file", good, "vault", "get", "k", "--reveal"],
        b"",
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    std::fs::write(d.path().join("new"), "an entirely new passphrase\n").expect("write");
    let new = d.path().join("new");
    let out = d.ok(
        &[
            "--passphrase-file",
            new.to_str().expect("utf8"),
            "vault",
            "get",
            "k",
            "--reveal",
        ],
        b"",
    );
    assert_eq!(out.stdout, "sealed-value");
}

#[test]
fn rotate_master_key_file() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "a"], b"value-a");
    d.ok(&["vault", "put", "b"], b"value-b");
    let key = d.data().join("master.key");
    let old = std::fs::read(&key).expect("read");
    d.ok(&["vault", "rotate-master"], b"");
    let new = std::fs::read(&key).expect("read");
    assert_ne!(old, new, "a new key was written");
    let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        d.ok(&["vault", "get", "a", "--reveal"], b"").stdout,
        "value-a"
    );
    assert_eq!(
        d.ok(&["vault", "get", "b", "--reveal"], b"").stdout,
        "value-b"
    );
    // The old key no longer opens the vault.
    std::fs::write(&key, &old).expect("write");
    let err = d.fails(&["vault", "get", "a", "--reveal"], b"");
    assert!(err.contains("does not open this vault"), "{err}");
}

#[test]
fn interrupted_rotation_is_completed_on_next_open() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "a"], b"value-a");
    let key = d.data().join("master.key");
    let old = std::fs::read(&key).expect("read");
    d.ok(&["vault", "rotate-master"], b"");
    // Simulate a crash after the commit but before the rename: the new key
    // is still beside the old one.
    let new = std::fs::read(&key).expect("read");
    let pending = d.data().join("master.key.new");
    std::fs::write(&pending, &new).expect("write");
    std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&key, &old).expect("write");
    assert_eq!(
        d.ok(&["vault", "get", "a", "--reveal"], b"").stdout,
        "value-a"
    );
    assert!(!pending.exists(), "the pending key was promoted");
    assert!(std::fs::read(&key).expect("read") == new);
}

/// The keychain source against a real keyring: the kernel's keyutils
/// session keyring (what `auto` picks on a headless box). `keyctl session`
/// gives the run its own session keyring, so nothing leaks into the
/// caller's.
#[test]
fn keyring_source_with_kernel_keyutils() {
    if std::process::Command::new("keyctl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("keyctl (Debian package keyutils) is required; scripts/install-deps.sh installs it");
    }
    let d = TestDir::new();
    let script = format!(
        "set -e\n\
         printf 'from-keyring' | \"$LK\" --data-dir '{dir}' vault put k\n\
         \"$LK\" --data-dir '{dir}' vault get k --reveal\n\
         echo\n\
         \"$LK\" --data-dir '{dir}' vault rotate-master\n\
         \"$LK\" --data-dir '{dir}' vault get k --reveal\n",
        dir = d.data().display()
    );
    let mut c = std::process::Command::new("keyctl");
    c.args(["session", "-", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", d.path())
        .env("LK", latchkey_e2e::latchkey_bin())
        .env("LATCHKEY_VAULT__MASTER_KEY", "keyring")
        .env("LATCHKEY_VAULT__KEYRING_BACKEND", "keyutils");
    let out = run_cmd(c, b"");
    assert!(
        out.status.success(),
        "stdout={} stderr={}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stdout, "from-keyring\nfrom-keyring");
    assert!(
        !d.data().join("master.key").exists(),
        "no key file in keyring mode"
    );

    // Outside that session the key is gone: the vault cannot be opened.
    let mut c = d.cmd(&["vault", "get", "k", "--reveal"]);
    c.env("LATCHKEY_VAULT__MASTER_KEY", "keyring")
        .env("LATCHKEY_VAULT__KEYRING_BACKEND", "keyutils");
    let out = run_cmd(c, b"");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("keychain"), "{}", out.stderr);
}

/// The keychain source against the Secret Service (what the desktop app uses
/// on Linux): a private D-Bus session with a real, unlocked GNOME Keyring.
/// `auto` must pick it because a session bus is advertised.
#[test]
fn keyring_source_with_secret_service() {
    for tool in ["dbus-run-session", "gnome-keyring-daemon"] {
        if std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            panic!("{tool} is required; scripts/install-deps.sh installs it");
        }
    }
    let d = TestDir::new();
    let script = format!(
        "set -e\n\
         ctl=\"$XDG_RUNTIME_DIR/keyring\"\n\
         trap 'pkill -f \"control-directory=$ctl\" || true' EXIT\n\
         printf 'keyring-unlock-pw' | gnome-keyring-daemon --unlock --components=secrets --control-directory=\"$ctl\" >/dev/null 2>&1\n\
         printf 'from-secret-service' | \"$LK\" --data-dir '{dir}' vault put k\n\
         \"$LK\" --data-dir '{dir}' vault get k --reveal\n\
         echo\n\
         \"$LK\" --data-dir '{dir}' vault rotate-master\n\
         \"$LK\" --data-dir '{dir}' vault get k --reveal\n",
        dir = d.data().display()
    );
    let mut c = std::process::Command::new("dbus-run-session");
    c.args(["--", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", d.path())
        .env("XDG_RUNTIME_DIR", d.path())
        .env("LK", latchkey_e2e::latchkey_bin())
        .env("LATCHKEY_VAULT__MASTER_KEY", "keyring");
    let out = run_cmd(c, b"");
    assert!(
        out.status.success(),
        "stdout={} stderr={}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stdout, "from-secret-service\nfrom-secret-service");
    assert!(
        !d.data().join("master.key").exists(),
        "no key file in keyring mode"
    );
}
