//! A distinctive secret goes through every command; afterwards it must not
//! appear in the data directory, in backups, or in anything the binary
//! logged (at debug level) — only in the one place it was asked for.

use latchkey_e2e::{TestDir, contains_bytes, files_under};

const SECRET: &str = "sk-LEAKCANARY-7f3a9c1e5b";
const SECRET2: &str = "rt-LEAKCANARY-0d8e2b4a6c";

#[test]
fn secret_never_reaches_disk_logs_or_backups_in_plaintext() {
    let d = TestDir::new();
    let mut logs = String::new();
    let mut keep = |out: latchkey_e2e::Out| {
        logs.push_str(&out.stderr);
        out
    };
    keep(d.ok(
        &[
            "vault",
            "put",
            "canary",
            "--kind",
            "api_key",
            "--provider",
            "openai",
        ],
        SECRET.as_bytes(),
    ));
    keep(d.ok(
        &["vault", "import", "--format", "jsonl"],
        format!("{{\"name\":\"canary2\",\"secret\":\"{SECRET2}\"}}\n").as_bytes(),
    ));
    // Revealing prints the value on stdout — the one sanctioned place.
    let revealed = keep(d.ok(&["vault", "get", "canary", "--reveal"], b""));
    assert_eq!(revealed.stdout, SECRET);
    let mut stdout_all = String::new();
    for args in [
        &["vault", "list"][..],
        &["vault", "list", "--json"][..],
        &["vault", "get", "canary"][..],
        &["vault", "get", "canary", "--json"][..],
        &["vault", "verify"][..],
        &["vault", "rotate-master"][..],
        &["config", "check"][..],
    ] {
        let out = keep(d.ok(args, b""));
        stdout_all.push_str(&out.stdout);
    }
    let backup = d.path().join("canary.backup");
    let b = backup.to_str().expect("utf8");
    keep(d.ok(
        &["backup", "--out", b, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    ));
    let restored = TestDir::new();
    keep(restored.ok(
        &["restore", b, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    ));
    // Failures must not echo secrets either.
    let out = d.run(&["vault", "put", "canary"], SECRET.as_bytes());
    logs.push_str(&out.stderr);
    let out = d.run(
        &["vault", "import"],
        format!("broken line {SECRET}\n").as_bytes(),
    );
    logs.push_str(&out.stderr);
    assert!(!out.status.success());

    for s in [SECRET, SECRET2] {
        assert!(!logs.contains(s), "secret in stderr/logs:\n{logs}");
        assert!(!stdout_all.contains(s), "secret in command output");
        for dir in [d.path(), restored.path()] {
            for f in files_under(dir) {
                let bytes = std::fs::read(&f).expect("read");
                assert!(
                    !contains_bytes(&bytes, s.as_bytes()),
                    "plaintext secret in {}",
                    f.display()
                );
            }
        }
    }
    // The canary did make it: the search above was looking at real data.
    assert_eq!(
        restored
            .ok(&["vault", "get", "canary2", "--reveal"], b"")
            .stdout,
        SECRET2
    );
    assert!(backup.exists() && std::fs::metadata(&backup).expect("meta").len() > 200);
}
