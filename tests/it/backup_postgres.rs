//! `latchkey restore` into PostgreSQL through the real binary, on a real
//! server (`latchkey_e2e::postgres`), whatever `LATCHKEY_TEST_STORE` says:
//! a backup of a serving PostgreSQL deployment restored into a fresh
//! database with every secret, user and key intact (a server on it signs
//! the owner in with password and TOTP and proxies with the key and the
//! vault's credential); a restore refused, changing nothing, while a
//! replica has the database open, and accepted once it stopped; forged and
//! unsigned backups refused, changing nothing.

use super::hardening_vault_proxy::{backup_to, keygen, strip_signature};
use super::proxy::{ANTHROPIC_SECRET, Mock, OPENAI_SECRET, config};
use super::store_migrate::{inventory, proxies};
use latchkey_e2e::postgres::{PG_PASSWORD, PgDatabase, PgServer};
use latchkey_e2e::{
    Browser, Owner, PASSWORD, ServeOpts, TestDir, create_key, spawn_server, web_setup,
};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

const PASS: &[u8] = b"backup passphrase 123\n";

/// A second data directory on `db` holding `d`'s master key: what an
/// operator's one-off restore pod is (the key from the deployment's
/// Secret).
fn operator_on(db: PgDatabase, d: &TestDir) -> TestDir {
    let op = TestDir::on_postgres(db);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(op.data())
        .expect("data dir");
    let key = op.data().join("master.key");
    std::fs::copy(d.data().join("master.key"), &key).expect("copy the master key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    op
}

#[test]
fn a_postgres_backup_restores_into_a_fresh_database_with_every_secret_user_and_key() {
    let pg = PgServer::shared();
    let db1 = pg.database();
    let mock = Mock::start();
    let cfg = config(mock.port, "");

    // A serving deployment on PostgreSQL: two secrets, an owner with TOTP,
    // an API key.
    let d1 = TestDir::on_postgres(db1.clone());
    d1.ok(&["vault", "put", "openai-main"], OPENAI_SECRET.as_bytes());
    d1.ok(
        &["vault", "put", "anthropic-main"],
        ANTHROPIC_SECRET.as_bytes(),
    );
    let mut s1 = spawn_server(&d1, &ServeOpts::new().config(&cfg));
    let Owner { totp, browser, .. } = web_setup(&s1, "owner");
    let (key_id, key) = create_key(&browser, "agent", &["proxy:openai"]);
    proxies(&s1, &mock, &key);
    let before = inventory(&browser);
    assert!(before.1.contains(&key_id), "{before:?}");
    drop(browser);

    // The backup, made by the running replica.
    let file = d1.path().join("pg.backup");
    let f = file.to_str().expect("utf8");
    d1.ok(&["backup", "--out", f, "--passphrase-stdin"], PASS);

    // Restoring into the deployment while the replica runs is refused
    // (from another data directory with the deployment's key, as an
    // operator's one-off pod), and changes nothing.
    let op = operator_on(db1.clone(), &d1);
    d1.ok(&["vault", "put", "added-later"], b"sk-later");
    // The replica writes in the background (usage, rate windows, last-used
    // times of keys and entries): compared are the rows a restore
    // replaces, of keys and entries only which exist.
    let durable = |db: &PgDatabase| {
        pg.psql(
            &db.name,
            "SELECT tbl, encode(k, 'hex'), CASE WHEN tbl IN ('vault_records', 'api_keys') THEN '' \
             ELSE encode(v, 'hex') END FROM latchkey_kv \
             WHERE tbl IN ('meta', 'users', 'api_keys', 'vault_names', 'vault_records') \
             ORDER BY tbl, k",
        )
    };
    let rows = durable(&db1);
    assert!(rows.contains("vault_records|"), "{rows}");
    let err = op.fails(&["restore", f, "--passphrase-stdin", "--force"], PASS);
    assert!(err.contains("1 other Latchkey process"), "{err}");
    assert!(err.contains("--replicas=0"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!err.contains(PG_PASSWORD), "{err}");
    assert_eq!(
        durable(&db1),
        rows,
        "a refused restore changed the database"
    );
    assert!(
        !op.data().join(".latchkey-restore").exists(),
        "staging left behind"
    );

    // With the replica stopped, the same restore goes through: the entry
    // added after the backup is gone, the backup's are back.
    s1.stop();
    let out = op.ok(&["restore", f, "--passphrase-stdin", "--force"], PASS);
    assert!(out.stderr.contains("all 2 verified"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&db1.url_without_password()),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(PG_PASSWORD), "{}", out.stderr);
    let err = d1.fails(&["vault", "get", "added-later"], b"");
    assert!(err.contains("no vault entry"), "{err}");

    // Into a fresh database: a new installation with its own master key.
    let d2 = TestDir::on_postgres(pg.database());
    let out = d2.ok(&["restore", f, "--passphrase-stdin"], PASS);
    assert!(out.stderr.contains("all 2 verified"), "{}", out.stderr);
    assert!(
        !d2.data().join("latchkey.redb").exists(),
        "the restore went into PostgreSQL, not a redb file"
    );
    assert_ne!(
        std::fs::read(d2.data().join("master.key")).expect("key"),
        std::fs::read(d1.data().join("master.key")).expect("key")
    );
    assert_eq!(
        d2.ok(&["vault", "get", "anthropic-main", "--reveal"], b"")
            .stdout,
        ANTHROPIC_SECRET
    );
    // A server on it: the owner signs in with password and TOTP, sees the
    // same users, keys and entries, and the key proxies with the vault's
    // credential.
    let mut s2 = spawn_server(&d2, &ServeOpts::new().config(&cfg));
    let b = Browser::new(&s2);
    b.login("owner", PASSWORD, Some(&totp));
    assert_eq!(inventory(&b), before);
    proxies(&s2, &mock, &key);
    // The restore is in the restored store's audit log.
    let r = b.get("/api/audit?action=backup.restore");
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.json()["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{}", r.body);
    assert!(
        events[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("opened with its passphrase")),
        "{}",
        r.body
    );
    drop(b);
    s2.stop();
}

#[test]
fn forged_and_unsigned_backups_change_nothing_in_postgres() {
    let pg = PgServer::shared();
    // The victim: a PostgreSQL deployment with an owner and a secret.
    let victim = TestDir::on_postgres(pg.database());
    victim.ok(&["vault", "put", "openai"], b"sk-genuine-pg");
    victim.ok(
        &["setup", "--username", "owner", "--password-stdin"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    let (identity, recipient) = keygen(&victim, "identity.txt");
    let id = identity.to_str().expect("utf8");
    let fp = backup_to(&victim, &victim.path().join("genuine.backup"), &recipient);

    // The attacker's own installation (an admin of their choosing),
    // backed up to the victim's public recipient.
    let attacker = TestDir::on_postgres(pg.database());
    attacker.ok(&["vault", "put", "openai"], b"sk-attacker");
    attacker.ok(
        &["setup", "--username", "mallory", "--password-stdin"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    let forged = attacker.path().join("forged.backup");
    let forged_fp = backup_to(&attacker, &forged, &recipient);
    assert_ne!(forged_fp, fp);
    let f = forged.to_str().expect("utf8");

    let before = victim.store_state();
    assert!(before.len() > 100, "the rows are read");
    let err = victim.fails(&["restore", f, "--identity", id, "--force"], b"");
    assert!(err.contains("not by the expected one"), "{err}");
    assert!(err.contains(&forged_fp), "{err}");
    let err = victim.fails(
        &["restore", f, "--identity", id, "--force", "--trust", &fp],
        b"",
    );
    assert!(err.contains("not by the expected one"), "{err}");
    assert_eq!(victim.store_state(), before, "a forgery changed the store");

    // Its signature stripped: unsigned, refused.
    let stripped = strip_signature(&forged, &attacker.path().join("stripped.backup"));
    let s = stripped.to_str().expect("utf8");
    let err = victim.fails(&["restore", s, "--identity", id, "--force"], b"");
    assert!(err.contains("not signed"), "{err}");
    assert_eq!(
        victim.store_state(),
        before,
        "an unsigned backup changed it"
    );
    assert_eq!(
        victim
            .ok(&["vault", "get", "openai", "--reveal"], b"")
            .stdout,
        "sk-genuine-pg"
    );

    // Into a fresh database: refused, no data directory made, and the
    // database holds no installation (only the schema every open makes).
    let fresh = TestDir::on_postgres(pg.database());
    for args in [
        vec!["restore", f, "--identity", id, "--trust", &fp],
        vec!["restore", s, "--identity", id, "--trust", &fp],
    ] {
        fresh.fails(&args, b"");
        assert!(!fresh.data().exists(), "a refused restore made {args:?}");
    }
    let db = fresh.store.as_ref().expect("on PostgreSQL");
    assert_eq!(
        pg.psql(
            &db.name,
            "SELECT tbl || '/' || encode(k, 'escape') FROM latchkey_kv"
        )
        .trim(),
        "meta/schema_version"
    );
}
