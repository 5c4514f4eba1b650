//! `latchkey store migrate` through the real binary, against a real
//! PostgreSQL server (`latchkey_e2e::postgres`, a throwaway `initdb` on
//! loopback): an embedded install moved to PostgreSQL and back with every
//! secret, user, key and usage row intact, a server on each migrated store
//! working (password + TOTP sign-in, the key proxying with the vault's
//! credential); the refusals (a running server, a database or directory
//! that already holds data, a password on the command line); the URL's
//! password never printed; and a backup of a PostgreSQL-backed install
//! restored into a directory and verified.

use super::proxy::{ANTHROPIC_SECRET, Mock, OPENAI_SECRET, config, no_secrets, post};
use latchkey_e2e::postgres::{PG_PASSWORD, PgDatabase, PgServer};
use latchkey_e2e::{
    Authenticator, Browser, Out, Owner, PASSWORD, ServeOpts, Server, TestDir, contains_bytes,
    create_key, run_cmd, spawn_server, totp_code_at, web_setup,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// A data directory on the embedded store, whatever
/// `LATCHKEY_TEST_STORE` says: these tests choose each side's backend.
fn redb_dir() -> TestDir {
    TestDir {
        tmp: tempfile::tempdir().expect("tempdir"),
        store: None,
    }
}

/// An embedded install holding the two provider secrets.
fn seeded() -> TestDir {
    let d = redb_dir();
    d.ok(&["vault", "put", "openai-main"], OPENAI_SECRET.as_bytes());
    d.ok(
        &["vault", "put", "anthropic-main"],
        ANTHROPIC_SECRET.as_bytes(),
    );
    d
}

/// `latchkey ARGS…` on `d` with `env` added, stdin empty.
fn run_with(d: &TestDir, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = d.cmd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_cmd(c, b"")
}

/// The environment that points a command or server at `db`: the URL
/// without its password, the password in PGPASSWORD.
fn pg_env(db: &PgDatabase, key_file: &Path) -> Vec<(String, String)> {
    vec![
        ("LATCHKEY_STORE__BACKEND".into(), "postgres".into()),
        ("LATCHKEY_STORE__URL".into(), db.url_without_password()),
        ("PGPASSWORD".into(), PG_PASSWORD.into()),
        (
            "LATCHKEY_VAULT__KEY_FILE".into(),
            key_file.to_string_lossy().into_owned(),
        ),
    ]
}

/// Every row of the database's one table, as text (a dump differs between
/// runs; the rows do not).
fn kv_rows(pg: &PgServer, db: &PgDatabase) -> String {
    pg.psql(
        &db.name,
        "SELECT tbl, encode(k, 'hex'), md5(v) FROM latchkey_kv ORDER BY tbl, k",
    )
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `(input, output)` tokens of `model` in `GET /api/usage`, summed over
/// days; waits (5 s at most) for the row to appear.
fn usage(b: &Browser<'_>, model: &str) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = b.get("/api/usage");
        assert_eq!(r.status, 200, "usage: {}", r.body);
        let rows: Vec<serde_json::Value> = r.json()["usage"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|x| x["model"] == model)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !rows.is_empty() {
            let sum = |f: &str| rows.iter().filter_map(|x| x[f].as_u64()).sum::<u64>();
            return (sum("input_tokens"), sum("output_tokens"));
        }
        assert!(
            Instant::now() < deadline,
            "no usage for {model}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One proxied chat completion with `key`; the upstream must have seen
/// the vault's credential.
pub(crate) fn proxies(s: &Server, mock: &Mock, key: &str) {
    let r = post(
        s,
        "/proxy/openai/v1/chat/completions",
        &format!("Authorization: Bearer {key}"),
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "proxy: {}", r.body);
    no_secrets("a proxied response", &r.body);
    let seen = mock.seen();
    let last = seen.last().expect("the upstream saw the request");
    assert_eq!(
        last.headers["authorization"],
        format!("Bearer {OPENAI_SECRET}"),
        "the vault's credential did not reach the upstream"
    );
}

/// What a signed-in owner sees: the users, the key ids, the vault names.
pub(crate) fn inventory(b: &Browser<'_>) -> (Vec<String>, Vec<String>, Vec<String>) {
    let names = |path: &str, field: &str| -> Vec<String> {
        let r = b.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let mut v: Vec<String> = r
            .json()
            .as_array()
            .unwrap_or_else(|| panic!("{path}: not a list: {}", r.body))
            .iter()
            .map(|x| x[field].as_str().expect("string").to_string())
            .collect();
        v.sort();
        v
    };
    (
        names("/api/users", "username"),
        names("/api/keys", "id"),
        names("/api/vault", "name"),
    )
}

/// Signs `username` in on `s` with the password and a fresh TOTP code.
fn sign_in<'a>(s: &'a Server, totp: &Authenticator) -> Browser<'a> {
    let b = Browser::new(s);
    b.login("owner", PASSWORD, Some(totp));
    b
}

#[test]
fn store_migrate_round_trip_keeps_everything_and_servers_work() {
    let pg = PgServer::shared();
    let db = pg.database();
    let mock = Mock::start();
    let cfg = config(mock.port, "");

    // An embedded install with a user (TOTP), a key, vault secrets and
    // usage.
    let d1 = seeded();
    let key_file = d1.data().join("master.key");
    let mut s1 = spawn_server(&d1, &ServeOpts::new().config(&cfg));
    let Owner { totp, browser, .. } = web_setup(&s1, "owner");
    let (key_id, key) = create_key(&browser, "agent", &["proxy:openai"]);
    proxies(&s1, &mock, &key);
    assert_eq!(usage(&browser, "gpt-4o-mini"), (12, 3));
    let before = inventory(&browser);
    assert!(before.1.contains(&key_id), "{before:?}");
    assert_eq!(before.0, vec!["owner".to_string()]);

    // Refused while the server holds the data directory.
    let url = db.url_without_password();
    let pgpass = [("PGPASSWORD", PG_PASSWORD)];
    let out = run_with(&d1, &["store", "migrate", "--to", &url], &pgpass);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        out.stderr.contains(&format!("PID {}", s1.pid)),
        "{}",
        out.stderr
    );
    drop(browser);
    s1.stop();

    // A password on the command line is refused, and not echoed.
    let out = run_with(&d1, &["store", "migrate", "--to", &db.url()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(out.stderr.contains("PGPASSWORD"), "{}", out.stderr);
    assert!(!both(&out).contains(PG_PASSWORD), "{}", both(&out));

    // redb → PostgreSQL.
    let out = run_with(&d1, &["store", "migrate", "--to", &url], &pgpass);
    assert!(out.status.success(), "migrate: {}", both(&out));
    assert!(out.stdout.contains("Verified"), "{}", out.stdout);
    assert!(
        out.stdout.contains("vault_records: 2 rows"),
        "{}",
        out.stdout
    );
    assert!(!both(&out).contains(PG_PASSWORD));
    // The database holds sealed envelopes only: no secret in a dump.
    let dump = pg.dump(&db.name);
    assert!(!contains_bytes(&dump, OPENAI_SECRET.as_bytes()));
    assert!(!contains_bytes(&dump, ANTHROPIC_SECRET.as_bytes()));
    assert!(
        contains_bytes(&dump, b"vault_records"),
        "the rows are not there"
    );
    let rows = kv_rows(pg, &db);

    // Again into the same, now non-empty, database: refused, unchanged.
    let out = run_with(&d1, &["store", "migrate", "--to", &url], &pgpass);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(out.stderr.contains("already holds data"), "{}", out.stderr);
    assert!(!both(&out).contains(PG_PASSWORD));
    assert_eq!(
        kv_rows(pg, &db),
        rows,
        "a refused migration changed the database"
    );

    // A server on PostgreSQL, with its own data directory (lock and admin
    // token only) and the installation's master key: everything is there.
    let d2 = redb_dir();
    let env = pg_env(&db, &key_file);
    let mut opts = ServeOpts::new().config(&cfg);
    for (k, v) in &env {
        opts = opts.env(k, v);
    }
    let mut s2 = spawn_server(&d2, &opts);
    assert!(!d2.data().join("latchkey.redb").exists());
    // The TOTP replay guard came along: the step used last is refused.
    let b = Browser::new(&s2);
    let r = b.post(
        "/api/auth/login",
        &serde_json::json!({"username": "owner", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let ticket = r.json()["ticket"].as_str().expect("ticket").to_string();
    let used = totp.last_step().expect("a step was used");
    let r = b.post(
        "/api/auth/mfa",
        &serde_json::json!({"ticket": ticket, "code": totp_code_at(&totp.uri, used * 30)}),
    );
    assert_ne!(
        r.status, 200,
        "a used TOTP step was accepted after the migration"
    );
    drop(b);
    let b = sign_in(&s2, &totp);
    assert_eq!(inventory(&b), before);
    assert_eq!(usage(&b, "gpt-4o-mini"), (12, 3));
    proxies(&s2, &mock, &key);
    drop(b);
    // A graceful stop writes the usage counted since (into PostgreSQL).
    s2.stop();

    // PostgreSQL → a new directory. A directory that has a database is
    // refused first.
    let out = run_with(
        &d2,
        &["store", "migrate", "--to", &d1.data().to_string_lossy()],
        &borrowed(&env),
    );
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        out.stderr.contains("already holds a database"),
        "{}",
        out.stderr
    );
    let d3 = redb_dir();
    let out = run_with(
        &d2,
        &["store", "migrate", "--to", &d3.data().to_string_lossy()],
        &borrowed(&env),
    );
    assert!(out.status.success(), "migrate back: {}", both(&out));
    assert!(out.stdout.contains("Verified"), "{}", out.stdout);
    assert!(!both(&out).contains(PG_PASSWORD));
    assert!(
        !d3.data().join(".latchkey-migrate").exists(),
        "staging left behind"
    );

    // A server on the new directory (embedded store, the same key).
    let mut opts3 = ServeOpts::new()
        .config(&cfg)
        .env("LATCHKEY_VAULT__KEY_FILE", &key_file.to_string_lossy());
    opts3 = opts3.unset("PGPASSWORD");
    let mut s3 = spawn_server(&d3, &opts3);
    let b = sign_in(&s3, &totp);
    assert_eq!(inventory(&b), before);
    assert_eq!(usage(&b, "gpt-4o-mini"), (24, 6));
    proxies(&s3, &mock, &key);
    // Each migration is in the audit log of the store it went to.
    let r = b.get("/api/audit?action=store.migrate");
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.json()["events"].as_array().cloned().unwrap_or_default();
    let targets: Vec<String> = entries
        .iter()
        .map(|e| e["target"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(targets.iter().any(|t| t.contains(&db.name)), "{targets:?}");
    assert!(
        targets.iter().any(|t| t == &d3.data().to_string_lossy()),
        "{targets:?}"
    );
    assert!(!r.body.contains(PG_PASSWORD));
    drop(b);
    s3.stop();
}

#[test]
fn backup_of_a_postgres_install_restores_into_a_directory() {
    let pg = PgServer::shared();
    let db = pg.database();
    // An embedded install with two secrets, moved to PostgreSQL.
    let d1 = seeded();
    let key_file = d1.data().join("master.key");
    let out = run_with(
        &d1,
        &["store", "migrate", "--to", &db.url_without_password()],
        &[("PGPASSWORD", PG_PASSWORD)],
    );
    assert!(out.status.success(), "migrate: {}", both(&out));

    // `latchkey backup` on the PostgreSQL-backed install (offline).
    let d2 = redb_dir();
    let env = pg_env(&db, &key_file);
    let idfile = d2.path().join("backup-identity.txt");
    let id = d2.ok(&["keygen"], b"").stdout;
    std::fs::write(&idfile, &id).expect("write identity");
    let recipient = id
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    let file = d2.path().join("pg.age");
    let f = file.to_string_lossy().into_owned();
    let made = run_with(
        &d2,
        &["backup", "--out", &f, "--recipient", &recipient],
        &borrowed(&env),
    );
    assert!(made.status.success(), "backup: {}", both(&made));
    assert!(made.stderr.contains("2 vault entries"), "{}", made.stderr);
    assert!(!both(&made).contains(PG_PASSWORD));
    let fp = made
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no backup key fingerprint: {}", made.stderr))
        .to_string();

    // Restored into a new directory (embedded store) and verified.
    let d3 = redb_dir();
    let out = run_with(
        &d3,
        &[
            "restore",
            &f,
            "--identity",
            &idfile.to_string_lossy(),
            "--trust",
            &fp,
        ],
        &[],
    );
    assert!(out.status.success(), "restore: {}", both(&out));
    assert!(out.stderr.contains("all 2 verified"), "{}", out.stderr);
    assert_eq!(
        d3.ok(&["vault", "get", "openai-main", "--reveal"], b"")
            .stdout,
        OPENAI_SECRET
    );
    assert_eq!(
        d3.ok(&["vault", "get", "anthropic-main", "--reveal"], b"")
            .stdout,
        ANTHROPIC_SECRET
    );
}

fn both(o: &Out) -> String {
    format!("{}\n{}", o.stdout, o.stderr)
}
