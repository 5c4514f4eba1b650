//! `latchkey vault …` as a user runs it.

use latchkey_e2e::TestDir;

#[test]
fn put_list_get_round_trips_across_processes() {
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
            "--label",
            "env=prod",
        ],
        b"sk-round-trip-0001\n",
    );
    // A fresh process each time: the value survives restarts.
    let out = d.ok(&["vault", "get", "openai", "--reveal"], b"");
    assert_eq!(
        out.stdout, "sk-round-trip-0001",
        "--reveal prints the value alone"
    );

    let out = d.ok(&["vault", "list", "--json"], b"");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let items = list.as_array().expect("array");
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["name"], "openai");
    assert_eq!(item["kind"], "api_key");
    assert_eq!(item["provider"], "openai");
    assert_eq!(item["labels"]["env"], "prod");
    assert!(item["created_at"].as_str().is_some_and(|t| t.contains('T')));
    assert!(
        item["last_used_at"].as_str().is_some(),
        "reveal marks it used"
    );
    assert!(
        !out.stdout.contains("sk-round-trip"),
        "list shows metadata only"
    );

    let human = d.ok(&["vault", "list"], b"");
    assert!(human.stdout.contains("openai") && human.stdout.contains("api_key"));
}

#[test]
fn key_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    for f in ["master.key", "latchkey.redb"] {
        let mode = std::fs::metadata(d.data().join(f))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let mode = std::fs::metadata(d.data())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "data dir");
}

#[test]
fn replace_needs_a_flag() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"one");
    let err = d.fails(&["vault", "put", "k"], b"two");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        d.ok(&["vault", "get", "k", "--reveal"], b"").stdout,
        "one",
        "nothing changed"
    );
    d.ok(&["vault", "put", "k", "--replace"], b"two");
    assert_eq!(d.ok(&["vault", "get", "k", "--reveal"], b"").stdout, "two");
}

#[test]
fn rm_deletes_and_then_reports_missing() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "k"], b"v");
    d.ok(&["vault", "rm", "k"], b"");
    let err = d.fails(&["vault", "get", "k", "--reveal"], b"");
    assert_eq!(err, "latchkey: no vault entry named `k`");
    let err = d.fails(&["vault", "rm", "k"], b"");
    assert!(err.contains("no vault entry named `k`"), "{err}");
}

#[test]
fn bad_input_gets_one_line_errors_and_writes_nothing() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "seed"], b"v");
    let cases: &[(&[&str], &[u8], &str)] = &[
        (&["vault", "put", "bad name"], b"v", "invalid name"),
        (&["vault", "put", "../etc"], b"v", "invalid name"),
        (
            &["vault", "put", "k", "--provider", "Open AI"],
            b"v",
            "invalid provider",
        ),
        (
            &["vault", "put", "k", "--label", "env=a\u{7}b"],
            b"v",
            "invalid label value",
        ),
        (
            &["vault", "put", "k"],
            b"",
            "invalid secret: must not be empty",
        ),
        (&["vault", "put", "k"], b"\xff\xfe", "not valid UTF-8"),
        (
            &["vault", "get", "no/such", "--reveal"],
            b"",
            "invalid name",
        ),
    ];
    for (args, stdin, want) in cases {
        let err = d.fails(args, stdin);
        assert!(err.contains(want), "{args:?}: expected `{want}` in `{err}`");
    }
    let big = vec![b'x'; 70 * 1024];
    let err = d.fails(&["vault", "put", "k"], &big);
    assert!(err.contains("at most 65536 bytes"), "{err}");
    // Nothing but the seed was stored.
    let out = d.ok(&["vault", "list", "--json"], b"");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[test]
fn usage_errors_exit_2() {
    let d = TestDir::new();
    for args in [
        &["vault", "put", "k", "--kind", "password"][..],
        &["vault", "frobnicate"][..],
        &["backup", "--out", "x"][..],
    ] {
        let out = d.run(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn secrets_are_not_accepted_on_the_command_line() {
    // There is no flag that takes a secret value: argv is world-readable.
    let d = TestDir::new();
    let out = d.run(&["vault", "put", "k", "--secret", "sk-x"], b"");
    assert_eq!(out.status.code(), Some(2));
    let help = d.ok(&["vault", "put", "--help"], b"");
    assert!(help.stdout.contains("stdin"), "{}", help.stdout);
}

#[test]
fn import_env_file_acknowledges_each_entry() {
    let d = TestDir::new();
    let env = b"# my old .env\nOPENAI_API_KEY=sk-imp-1\nexport ANTHROPIC_API_KEY=\"sk-imp-2\"\n";
    let out = d.ok(&["vault", "import", "--provider", "openai"], env);
    assert_eq!(
        out.stdout,
        "stored OPENAI_API_KEY\nstored ANTHROPIC_API_KEY\n"
    );
    assert_eq!(
        d.ok(&["vault", "get", "ANTHROPIC_API_KEY", "--reveal"], b"")
            .stdout,
        "sk-imp-2"
    );
    // A malformed line stops the import before anything is written.
    let err = d.fails(&["vault", "import"], b"NEW_ONE=1\nthis line is wrong\n");
    assert!(err.contains("line 2"), "{err}");
    let err = d.fails(&["vault", "get", "NEW_ONE"], b"");
    assert!(err.contains("no vault entry"), "{err}");
}

#[test]
fn second_process_is_told_who_holds_the_data_dir() {
    let d = TestDir::new();
    d.ok(&["vault", "put", "seed"], b"v");
    // Hold the data directory the way another one-shot command does, from
    // this process: the CLI must name us, not hang and not touch the database.
    let db = d.data().join("latchkey.redb");
    let before = latchkey_e2e::file_bytes(&db);
    let _lock = latchkey_core::store::DataDirLock::acquire(&d.data(), "cli").expect("lock");
    let started = std::time::Instant::now();
    let err = d.fails(&["vault", "put", "other"], b"v");
    assert!(
        err.contains(&format!(
            "already in use by another latchkey command (PID {})",
            std::process::id()
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "it must not wait"
    );
    assert!(
        latchkey_e2e::file_bytes(&db) == before,
        "the database was modified"
    );
}

#[test]
fn closed_stdout_pipe_is_not_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let d = TestDir::new();
    let env: String = (0..2000).map(|i| format!("K{i}=v\n")).collect();
    d.ok(&["vault", "import"], env.as_bytes());
    // Like `latchkey vault list --json | head -c 1`.
    let mut child = d
        .cmd(&["vault", "list", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("first byte");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// The audit entries of `vault put`/`get --reveal`/`rm`, as JSON objects
/// (oldest first), from `latchkey audit tail --json`.
fn vault_entries(d: &TestDir) -> Vec<serde_json::Value> {
    let tail = d.ok(&["audit", "tail", "-n", "100", "--json"], b"");
    tail.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON entry per line"))
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("vault.") || a == "backup.create")
        })
        .collect()
}

/// What an entry says, without its time, sequence number and address
/// (the API's carries the loopback address, the offline one none).
fn said(e: &serde_json::Value) -> (String, String, String, String, String) {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    (
        s("actor"),
        s("action"),
        s("target"),
        s("outcome"),
        s("detail"),
    )
}

/// A vault change made with the CLI while no server runs is audited
/// exactly as the same change made through a running server's API: same
/// actions, actor `host`, same details — never the value.
#[test]
fn offline_vault_changes_are_audited_like_the_apis() {
    let steps = |d: &TestDir| {
        d.ok(&["vault", "put", "audited"], b"sk-audited-0001\n");
        d.ok(
            &["vault", "put", "audited", "--replace"],
            b"sk-audited-0002\n",
        );
        d.ok(&["vault", "get", "audited", "--reveal"], b"");
        d.ok(&["vault", "rm", "audited"], b"");
    };
    let offline = TestDir::new();
    steps(&offline);
    let got = vault_entries(&offline);
    let want: Vec<(String, String, String, String, String)> = [
        ("vault.put", "created"),
        ("vault.put", "replaced"),
        ("vault.reveal", "-"),
        ("vault.delete", "deleted"),
    ]
    .iter()
    .map(|(a, detail)| {
        (
            "host".to_string(),
            a.to_string(),
            "audited".to_string(),
            "success".to_string(),
            detail.to_string(),
        )
    })
    .collect();
    assert_eq!(got.iter().map(said).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|e| e["ip"].is_null()), "{got:?}");

    let online = TestDir::new();
    let mut s = online.serve();
    steps(&online);
    let api = vault_entries(&online);
    assert_eq!(api.iter().map(said).collect::<Vec<_>>(), want, "the API's");
    assert!(api.iter().all(|e| e["ip"] == "127.0.0.1"), "{api:?}");
    s.stop();

    for d in [&offline, &online] {
        let all = d.ok(&["audit", "tail", "-n", "100", "--json"], b"").stdout;
        assert!(!all.contains("sk-audited"), "a value in the log: {all}");
    }
}
