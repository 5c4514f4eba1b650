//! Several [`Connections`] over one store stand for several replicas: each
//! has its own slots, cached tokens and in-process locks, so only what goes
//! through the store (its shared lock, the row read again under it, the
//! change feed) keeps them in agreement. On PostgreSQL the same holds
//! across processes (`tests/it/replicas_limits.rs`).

use super::*;

fn replicas(e: &Env, n: usize) -> Vec<Arc<Connections>> {
    (0..n)
        .map(|_| {
            Arc::new(Connections::new(&e.settings, None, Arc::clone(&e.vault)).expect("replica"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_calls_spread_over_three_replicas_refresh_once() {
    let e = env().await;
    lock(&e.idp).ttl = 0;
    connect(&e, ALICE).await;
    let rs = replicas(&e, 3);
    fifty_calls_refresh_once(&e.idp, &rs, Duration::from_millis(200)).await;
    let total: u64 = rs.iter().map(|r| r.refresh_count()).sum();
    assert_eq!(total, 1, "one replica sent it");
    let row = store::get(e.vault.store(), ALICE, "idp")
        .expect("read")
        .expect("row");
    assert_eq!(row.status, Status::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_on_one_replica_reaches_the_others_caches_when_notified() {
    let e = env().await;
    connect(&e, ALICE).await;
    let rs = replicas(&e, 2);
    let token = |i: usize| {
        let c = Arc::clone(&rs[i]);
        async move {
            c.token(ALICE, "idp", "alice", None)
                .await
                .expect("token")
                .access_token
                .expose_secret()
                .to_string()
        }
    };
    assert_eq!(token(0).await, "at-1");
    assert_eq!(token(1).await, "at-1");
    // Replica 0 refreshes (as its scan would): the provider rotates both
    // tokens.
    rs[0]
        .refresh_in_background(ALICE, "idp", Due::Idle(0))
        .await
        .expect("refresh");
    assert_eq!(token(0).await, "at-2");
    // Replica 1 serves its copy until the feed says the table changed.
    assert_eq!(token(1).await, "at-1");
    let unrelated = crate::store::Changed::Tables(vec!["sessions".into()]);
    assert_eq!(rs[1].on_store_change(&unrelated).expect("sync"), 0);
    assert_eq!(token(1).await, "at-1");
    let change = crate::store::Changed::Tables(vec!["connections".into()]);
    assert_eq!(rs[1].on_store_change(&change).expect("sync"), 1);
    assert_eq!(token(1).await, "at-2", "read from the row, not refreshed");
    assert_eq!(lock(&e.idp).refreshes, 1);
    // Last-used writes change the rows but not their tokens: nothing
    // dropped.
    rs[0].flush().expect("flush");
    assert_eq!(
        rs[1]
            .on_store_change(&crate::store::Changed::Unknown)
            .expect("sync"),
        0
    );
    // A disconnect on replica 0 ends replica 1's copy too.
    rs[0]
        .disconnect(ALICE, "idp", "alice", None)
        .await
        .expect("disconnect");
    assert_eq!(rs[1].on_store_change(&change).expect("sync"), 1);
    assert!(matches!(
        rs[1].token(ALICE, "idp", "alice", None).await,
        Err(ConnectionError::NoConnection(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_refresh_runs_once_when_every_replica_finds_it_due() {
    let e = env().await;
    connect(&e, ALICE).await;
    lock(&e.idp).refresh_delay = Duration::from_millis(200);
    // Due when the stored token is 2 s old (the real rule says a day).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let rs = replicas(&e, 3);
    let mut tasks = Vec::new();
    for r in &rs {
        let r = Arc::clone(r);
        tasks.push(tokio::spawn(async move {
            r.refresh_in_background(ALICE, "idp", Due::Idle(2)).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("refresh");
    }
    assert_eq!(lock(&e.idp).refreshes, 1, "the others found it fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_set_on_one_replica_reaches_the_others_when_notified() {
    let e = env().await;
    let rs = replicas(&e, 2);
    rs[0]
        .set_client("idp", Some("new-client"), None, "admin", None)
        .expect("set");
    let id = |i: usize| {
        rs[i]
            .provider("idp")
            .expect("p")
            .provider()
            .client_id
            .clone()
    };
    assert_eq!(id(0), "new-client");
    assert_eq!(id(1), "latchkey");
    let change = crate::store::Changed::Tables(vec!["meta".into()]);
    rs[1].on_store_change(&change).expect("sync");
    assert_eq!(id(1), "new-client");
}
