//! The PostgreSQL store backend with the real binary: what the database
//! holds (no secret in a dump), two data directories sharing one database
//! as two replicas do, and a clear error for a database that cannot be
//! reached. The rest of the suite runs on PostgreSQL too with
//! `LATCHKEY_TEST_STORE=postgres` (see `TestDir`).

use latchkey_e2e::TestDir;
use latchkey_e2e::postgres::{PG_PASSWORD, PgServer};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    latchkey_e2e::contains_bytes(haystack, needle)
}

#[test]
fn a_database_dump_holds_no_vault_secret() {
    let server = PgServer::shared();
    let db = server.database();
    let d = TestDir::on_postgres(db.clone());
    let canary = "sk-pg-dump-canary-7f3a9c";
    // `TestDir` runs commands with LATCHKEY_LOG=debug: the driver's own
    // debug lines (statement parameters: the rows) must stay out of it.
    let put = d.ok(&["vault", "put", "dump-canary-entry"], canary.as_bytes());
    assert!(!put.stderr.contains("parameters"), "{}", put.stderr);
    assert!(!put.stderr.contains("tokio_postgres"), "{}", put.stderr);
    let out = d.ok(&["vault", "get", "dump-canary-entry", "--reveal"], b"");
    assert_eq!(out.stdout, canary);
    assert!(
        !d.data().join("latchkey.redb").exists(),
        "the data lives in PostgreSQL, not in a redb file"
    );
    let dump = server.dump(&db.name);
    // pg_dump writes bytea as hex: look for both spellings.
    assert!(
        !contains(&dump, canary.as_bytes()),
        "the secret is in the dump"
    );
    assert!(
        !contains(&dump, hex::encode(canary).as_bytes()),
        "the secret is in the dump (hex)"
    );
    // The check can fail: the entry's name is stored readable, and found.
    assert!(
        contains(&dump, hex::encode("dump-canary-entry").as_bytes()),
        "the dump holds the vault's rows"
    );
    assert!(!contains(&dump, PG_PASSWORD.as_bytes()));
}

#[test]
fn two_data_directories_on_one_database_see_the_same_vault() {
    let db = PgServer::shared().database();
    let first = TestDir::on_postgres(db.clone());
    first.ok(&["vault", "put", "shared-entry"], b"sk-shared-0001");
    // The second replica: its own data directory, the same master key (as
    // a mounted Secret would give it).
    let second = TestDir::on_postgres(db);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(second.data())
        .expect("second data dir");
    let key = second.data().join("master.key");
    std::fs::copy(first.data().join("master.key"), &key).expect("copy the master key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = second.ok(&["vault", "get", "shared-entry", "--reveal"], b"");
    assert_eq!(out.stdout, "sk-shared-0001");
    // A server on the first directory while the second writes directly.
    let server = first.serve();
    second.ok(&["vault", "put", "from-second"], b"sk-shared-0002");
    let list = first.ok(&["vault", "list", "--json"], b"");
    assert!(list.stdout.contains("from-second"), "{}", list.stdout);
    drop(server);
}

#[test]
fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let d = TestDir::new();
    let mut c = d.cmd(&["vault", "list"]);
    c.env("LATCHKEY_STORE__BACKEND", "postgres").env(
        "LATCHKEY_STORE__URL",
        "postgres://lk:pw-canary-0042@127.0.0.1:1/latchkey",
    );
    refused_unreachable(c, "pw-canary-0042");
    // A missing URL names the key.
    let mut c = d.cmd(&["vault", "list"]);
    c.env("LATCHKEY_STORE__BACKEND", "postgres")
        .env_remove("LATCHKEY_STORE__URL");
    let out = latchkey_e2e::run_cmd(c, b"");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("store.url is required"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_backup_of_a_postgres_store_restores_into_a_directory_and_into_postgres() {
    let d = TestDir::on_postgres(PgServer::shared().database());
    d.ok(&["vault", "put", "backed-up"], b"sk-backup-pg-1");
    let file = d.path().join("pg.backup");
    let f = file.to_str().expect("utf8");
    d.ok(
        &["backup", "--out", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    // The backup (read through the seam) restores into a redb directory.
    let target = TestDir::new();
    let mut c = target.cmd(&["restore", f, "--passphrase-stdin"]);
    c.env_remove("LATCHKEY_STORE__BACKEND")
        .env_remove("LATCHKEY_STORE__URL");
    let out = latchkey_e2e::run_cmd(c, b"backup passphrase 123\n");
    assert!(out.status.success(), "{}", out.stderr);
    assert!(target.data().join("latchkey.redb").exists());
    // And back into the PostgreSQL deployment it came from (no replica
    // running), over what changed since: `--force`.
    d.ok(&["vault", "put", "changed-since"], b"sk-changed-since");
    let err = d.fails(
        &["restore", f, "--passphrase-stdin"],
        b"backup passphrase 123\n",
    );
    assert!(err.contains("already holds a vault"), "{err}");
    assert!(err.contains("--force"), "{err}");
    d.ok(
        &["restore", f, "--passphrase-stdin", "--force"],
        b"backup passphrase 123\n",
    );
    assert_eq!(
        d.ok(&["vault", "get", "backed-up", "--reveal"], b"").stdout,
        "sk-backup-pg-1"
    );
    assert!(!d.data().join("latchkey.redb").exists());
}

#[test]
fn self_check_reads_the_postgres_database_writes_nothing_and_opens_the_vault() {
    let pg = PgServer::shared();
    let db = pg.database();
    let d = TestDir::on_postgres(db.clone());
    let has_tables = || pg.psql(&db.name, "SELECT to_regclass('latchkey_kv') IS NOT NULL");
    // An empty database: reachable, nothing installed, and nothing made.
    let out = d.ok(&["self-check"], b"");
    let target = db.url_without_password();
    assert!(
        out.stdout.contains(&format!("data=\"{target}: none yet\"")),
        "{}",
        out.stdout
    );
    assert_eq!(has_tables().trim(), "f", "self-check created the schema");

    d.ok(&["vault", "put", "checked"], b"sk-self-check");
    let out = d.ok(&["self-check"], b"");
    assert!(
        out.stdout.starts_with("self-check ok version="),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("{target}: schema ")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("vault opens"), "{}", out.stdout);
    assert!(!out.stdout.contains(PG_PASSWORD) && !out.stderr.contains(PG_PASSWORD));

    // While a replica serves from the same data directory (an update
    // checks the new build before the old one stops): no lock needed.
    let server = d.serve();
    let out = d.ok(&["self-check"], b"");
    assert!(out.stdout.contains("vault opens"), "{}", out.stdout);
    drop(server);

    // Another installation's master key does not open this vault.
    let other = TestDir::on_postgres(db.clone());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(other.data())
        .expect("data dir");
    let stranger = TestDir::new();
    stranger.ok(&["vault", "put", "x"], b"y");
    let key = other.data().join("master.key");
    std::fs::copy(stranger.data().join("master.key"), &key).expect("copy a key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = other.fails(&["self-check"], b"");
    assert!(err.contains("does not open the vault"), "{err}");
    assert!(err.contains(&target), "{err}");

    // Unreachable: a clear error without the password.
    let mut c = d.cmd(&["self-check"]);
    c.env(
        "LATCHKEY_STORE__URL",
        "postgres://lk:pw-canary-0043@127.0.0.1:1/latchkey",
    );
    refused_unreachable(c, "pw-canary-0043");
}

/// Runs `c` (pointed at `postgres://lk:CANARY@127.0.0.1:1/latchkey`, where
/// nothing listens): exit 1, the database named without its password.
fn refused_unreachable(c: std::process::Command, canary: &str) {
    let out = latchkey_e2e::run_cmd(c, b"");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot connect to PostgreSQL at postgres://lk@127.0.0.1:1/latchkey"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(canary), "{}", out.stderr);
}
