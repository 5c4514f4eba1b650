//! The broker across processes: three `Connections`, each over its own
//! store opened on one PostgreSQL database (own pool, own in-process
//! locks, own change feed), as three replicas have. Only the database's
//! advisory lock and `NOTIFY` connect them.

use super::*;
use crate::store::test_pg::{PgDatabase, PgServer};

struct Replica {
    conns: Arc<Connections>,
    vault: Arc<Vault>,
    _dir: tempfile::TempDir,
}

fn replica(
    db: &PgDatabase,
    key_file: &std::path::Path,
    settings: &BTreeMap<String, ConnectionSettings>,
) -> Replica {
    let (store, dir) = crate::store::open_test_pg(db);
    let vault = Arc::new(Vault::new(store));
    vault
        .open_with(&MasterKeySource::KeyFile {
            path: key_file.to_path_buf(),
        })
        .expect("unseal");
    let conns =
        Arc::new(Connections::new(settings, None, Arc::clone(&vault)).expect("connections"));
    Replica {
        conns,
        vault,
        _dir: dir,
    }
}

/// Three replicas on one fresh database, the provider's client secret in
/// the vault, and an `Env` whose `conns` is replica 0's.
async fn three_replicas() -> (Vec<Replica>, Shared, Env) {
    let db = PgServer::shared().database();
    let (base, idp) = spawn_idp().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let key_file = keys.path().join("master.key");
    let mut settings = BTreeMap::new();
    settings.insert(
        "idp".into(),
        ConnectionSettings {
            issuer: Some(base),
            client_id: Some("latchkey".into()),
            client_secret_entry: Some("idp-secret".into()),
            scopes: Some(vec!["openid".into(), "offline_access".into()]),
            refresh_margin_secs: Some(1),
            ..Default::default()
        },
    );
    let rs: Vec<Replica> = (0..3).map(|_| replica(&db, &key_file, &settings)).collect();
    rs[0]
        .vault
        .put(
            &NewRecord {
                name: "idp-secret".into(),
                kind: Kind::Generic,
                provider: None,
                labels: Default::default(),
            },
            &SecretString::from(SECRET),
            false,
        )
        .expect("put secret");
    let e = Env {
        _dir: keys,
        vault: Arc::clone(&rs[0].vault),
        settings: settings.clone(),
        conns: Arc::clone(&rs[0].conns),
        idp: Arc::clone(&idp),
    };
    (rs, idp, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_calls_over_three_processes_refresh_once_and_the_feed_carries_the_next() {
    let (rs, idp, e) = three_replicas().await;
    // Connect through replica 0, with tokens that are due at once.
    lock(&idp).ttl = 0;
    connect(&e, ALICE).await;
    let all: Vec<Arc<Connections>> = rs.iter().map(|r| Arc::clone(&r.conns)).collect();
    fifty_calls_refresh_once(&idp, &all, Duration::from_millis(300)).await;

    // Replica 1 serves at-2 from memory; replica 0 refreshes again; the
    // feed tells replica 1, whose reload drops its copy.
    let mut feed = rs[1].vault.store().subscribe();
    rs[0]
        .conns
        .refresh_in_background(ALICE, "idp", Due::Idle(0))
        .await
        .expect("refresh");
    let change = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.recv().await {
                Ok(c) if c.touches_table(latchkey_migrations::v3::CONNECTIONS) => return c,
                Ok(_) => {}
                Err(e) => panic!("feed: {e}"),
            }
        }
    })
    .await
    .expect("the change arrives");
    assert_eq!(rs[1].conns.on_store_change(&change).expect("reload"), 1);
    let t = rs[1]
        .conns
        .token(ALICE, "idp", "alice", None)
        .await
        .expect("token");
    assert_eq!(t.access_token.expose_secret(), "at-3");
    assert_eq!(lock(&idp).refreshes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_oauth_state_raced_on_three_processes_connects_once() {
    // A flow started on replica 0; the provider's redirect (with the
    // browser's binding cookie) arrives at all three at the same moment, as
    // a retried or duplicated callback behind a load balancer would: the
    // state is taken in one write transaction, serialized across the
    // processes, so exactly one callback connects and the others are told
    // the state is unknown.
    let (rs, _idp, e) = three_replicas().await;
    for round in 0..3 {
        let (params, binding, _) = authorize(&e, ALICE).await;
        let gate = Arc::new(tokio::sync::Barrier::new(3));
        let mut tasks = Vec::new();
        for r in &rs {
            let (c, gate) = (Arc::clone(&r.conns), Arc::clone(&gate));
            let params = CallbackParams {
                state: params.state.clone(),
                code: params.code.clone(),
                ..Default::default()
            };
            let binding = binding.clone();
            tasks.push(tokio::spawn(async move {
                gate.wait().await;
                c.callback("idp", params, Some(&binding), alive(), None)
                    .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => ok += 1,
                Err(ConnectionError::InvalidState) => {}
                Err(other) => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: exactly one callback connects");
    }
    for r in &rs {
        assert_eq!(r.conns.list(Some(ALICE)).expect("list").len(), 1);
    }
}
