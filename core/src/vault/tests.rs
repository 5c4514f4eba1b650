use super::*;
use age::secrecy::ExposeSecret;
use std::collections::BTreeMap;

fn new_vault() -> (tempfile::TempDir, Vault, MasterKeySource) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "cli").expect("store");
    let vault = Vault::new(store);
    let source = MasterKeySource::KeyFile {
        path: dir.path().join("master.key"),
    };
    assert_eq!(vault.open_with(&source).expect("init"), Unlock::Initialized);
    (dir, vault, source)
}

fn rec(name: &str, kind: Kind) -> NewRecord {
    NewRecord {
        name: name.into(),
        kind,
        provider: Some("openai".into()),
        labels: BTreeMap::new(),
    }
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

#[test]
fn put_list_reveal_remove() {
    let (_d, v, _) = new_vault();
    let m = v
        .put(&rec("openai", Kind::ApiKey), &secret("sk-test-1"), false)
        .expect("put");
    assert_eq!(m.name, "openai");
    assert_eq!(v.list().expect("list").len(), 1);
    assert_eq!(
        v.reveal("openai").expect("reveal").expose_secret(),
        "sk-test-1"
    );
    assert!(matches!(
        v.put(&rec("openai", Kind::ApiKey), &secret("x"), false),
        Err(VaultError::AlreadyExists(_))
    ));
    let m2 = v
        .put(&rec("openai", Kind::ApiKey), &secret("sk-test-2"), true)
        .expect("replace");
    assert_eq!(m2.id, m.id, "replace keeps the id");
    assert_eq!(
        v.reveal_cached("openai").expect("reveal").expose_secret(),
        "sk-test-2"
    );
    v.remove("openai").expect("rm");
    assert!(matches!(v.reveal("openai"), Err(VaultError::NotFound(_))));
    assert!(matches!(v.remove("openai"), Err(VaultError::NotFound(_))));
}

#[test]
fn cache_follows_replacements() {
    let (_d, v, _) = new_vault();
    v.put(&rec("k", Kind::ApiKey), &secret("one"), false)
        .expect("put");
    assert_eq!(v.reveal_cached("k").expect("r").expose_secret(), "one");
    v.put(&rec("k", Kind::ApiKey), &secret("two"), true)
        .expect("replace");
    assert_eq!(v.reveal_cached("k").expect("r").expose_secret(), "two");
}

#[test]
fn sealed_vault_reveals_nothing_but_lists_metadata() {
    let (_d, v, source) = new_vault();
    v.put(&rec("k", Kind::Generic), &secret("s"), false)
        .expect("put");
    v.reveal_cached("k").expect("warm cache");
    v.seal();
    assert!(v.is_sealed());
    assert!(matches!(v.reveal("k"), Err(VaultError::Sealed)));
    assert!(matches!(v.reveal_cached("k"), Err(VaultError::Sealed)));
    assert!(matches!(
        v.put(&rec("j", Kind::Generic), &secret("s"), false),
        Err(VaultError::Sealed)
    ));
    assert_eq!(v.list().expect("list").len(), 1);
    assert_eq!(v.open_with(&source).expect("unseal"), Unlock::Unsealed);
    assert_eq!(v.reveal("k").expect("reveal").expose_secret(), "s");
}

/// Overwrites the stored envelope of `name` with `f(envelope)`.
fn tamper(v: &Vault, name: &str, f: impl FnOnce(&mut StoredRecord, &StoredRecord)) {
    let (id, mut r) = v.lookup(name).expect("lookup");
    let orig = r.clone();
    f(&mut r, &orig);
    let txn = v.store.begin_write().expect("w");
    {
        let mut t = txn.open_table(VAULT_RECORDS).expect("t");
        t.insert(id.to_key().as_slice(), encode(&r).expect("enc").as_slice())
            .expect("ins");
    }
    txn.commit().expect("commit");
}

#[test]
fn tampered_ciphertext_is_an_integrity_error() {
    let (_d, v, _) = new_vault();
    v.put(&rec("k", Kind::ApiKey), &secret("s"), false)
        .expect("put");
    tamper(&v, "k", |r, _| {
        let n = r.envelope.len();
        r.envelope[n - 5] ^= 1;
    });
    let err = v.reveal("k").expect_err("tampered");
    assert!(
        matches!(
            err,
            VaultError::Integrity {
                source: EnvelopeError::Tampered,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("integrity check failed"));
}

#[test]
fn ciphertext_swapped_between_records_is_refused() {
    let (_d, v, _) = new_vault();
    v.put(&rec("a", Kind::ApiKey), &secret("secret-a"), false)
        .expect("a");
    v.put(&rec("b", Kind::ApiKey), &secret("secret-b"), false)
        .expect("b");
    let (_, a) = v.lookup("a").expect("a");
    tamper(&v, "b", |r, _| r.envelope = a.envelope.clone());
    let err = v.reveal("b").expect_err("swapped");
    assert!(
        matches!(
            err,
            VaultError::Integrity {
                source: EnvelopeError::WrongRecord,
                ..
            }
        ),
        "{err}"
    );
    // Re-labelling the kind is caught as well.
    tamper(&v, "a", |r, _| r.kind = Kind::Generic);
    assert!(matches!(v.reveal("a"), Err(VaultError::Integrity { .. })));
    assert!(v.verify_all().is_err());
}

#[test]
fn wrong_master_key_is_refused() {
    let (d, v, _) = new_vault();
    v.put(&rec("k", Kind::ApiKey), &secret("s"), false)
        .expect("put");
    v.seal();
    let err = v
        .unseal(&MasterKey::generate(), "keyfile")
        .expect_err("wrong key");
    assert!(
        err.to_string().contains("does not open this vault"),
        "{err}"
    );
    assert!(v.is_sealed());
    drop(d);
}

#[test]
fn source_mismatch_is_explained() {
    let (_d, v, _) = new_vault();
    v.seal();
    let err = v
        .unseal(&MasterKey::Passphrase(secret("whatever")), "passphrase")
        .expect_err("mismatch");
    assert!(matches!(err, VaultError::SourceMismatch { .. }), "{err}");
}

#[test]
fn rewrap_to_passphrase_and_back() {
    let (_d, v, _) = new_vault();
    v.put(&rec("k", Kind::ApiKey), &secret("s"), false)
        .expect("put");
    let pass = MasterKey::Passphrase(secret("a long enough passphrase"));
    v.rewrap(&pass, "passphrase").expect("rewrap");
    v.seal();
    assert!(
        v.unseal(
            &MasterKey::Passphrase(secret("nope nope nope")),
            "passphrase"
        )
        .is_err()
    );
    v.unseal(&pass, "passphrase").expect("unseal");
    assert_eq!(v.reveal("k").expect("r").expose_secret(), "s");
}

#[test]
fn last_used_is_batched() {
    let (_d, v, _) = new_vault();
    v.put(&rec("k", Kind::ApiKey), &secret("s"), false)
        .expect("put");
    assert!(v.meta("k").expect("m").last_used_at.is_none());
    v.reveal_cached("k").expect("r");
    assert!(
        v.meta("k").expect("m").last_used_at.is_some(),
        "visible before flush"
    );
    assert_eq!(v.flush_last_used().expect("flush"), 1);
    let (_, r) = v.lookup("k").expect("l");
    assert!(r.last_used_at.is_some(), "persisted after flush");
}

#[test]
fn invalid_input_is_rejected_before_writing() {
    let (_d, v, _) = new_vault();
    assert!(matches!(
        v.put(&rec("bad name", Kind::ApiKey), &secret("s"), false),
        Err(VaultError::Invalid(_))
    ));
    assert!(matches!(
        v.put(&rec("ok", Kind::ApiKey), &secret(""), false),
        Err(VaultError::Invalid(_))
    ));
    assert!(v.list().expect("list").is_empty());
}

/// The same put → list → reveal → remove on the PostgreSQL backend.
#[test]
fn put_list_reveal_remove_on_postgres() {
    let db = crate::store::test_pg::PgServer::shared().database();
    let (store, dir) = crate::store::open_test_pg(&db);
    let v = Vault::new(store);
    let source = MasterKeySource::KeyFile {
        path: dir.path().join("master.key"),
    };
    assert_eq!(v.open_with(&source).expect("init"), Unlock::Initialized);
    v.put(&rec("openai", Kind::ApiKey), &secret("sk-pg-1"), false)
        .expect("put");
    assert_eq!(v.list().expect("list").len(), 1);
    assert_eq!(v.meta("openai").expect("meta").name, "openai");
    assert_eq!(
        v.reveal("openai").expect("reveal").expose_secret(),
        "sk-pg-1"
    );
}
