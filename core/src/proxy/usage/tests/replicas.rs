//! Books over one store stand for replicas: each flushes its own counts,
//! and budgets see what the others flushed.

use super::*;
use std::sync::Arc;

const DAY: &str = "2026-11-22";

fn all() -> UsageQuery {
    UsageQuery {
        from: "2026-11-01".into(),
        to: "2026-11-30".into(),
        ..UsageQuery::default()
    }
}

#[test]
fn each_count_is_stored_once_and_budgets_see_every_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let a = UsageBook::load(&store, DAY).expect("load");
    let b = UsageBook::load(&store, DAY).expect("load");
    a.record(key(DAY, "k", "m"), &usage("m", 100, 20), false);
    b.record(key(DAY, "k", "m"), &usage("m", 5, 5), false);
    b.record(key(DAY, "j", "m"), &usage("m", 1, 1), true);
    assert_eq!(a.spent("k", DAY), 120);
    assert_eq!(b.spent("k", DAY), 10);
    assert_eq!(a.flush_on(&store, DAY).expect("flush"), 1);
    assert_eq!(a.spent("k", DAY), 120, "b has not flushed yet");
    assert_eq!(b.flush_on(&store, DAY).expect("flush"), 2);
    assert_eq!(b.spent("k", DAY), 130, "a's flushed tokens count here");
    assert_eq!(b.spent("j", DAY), 2);
    a.record(key(DAY, "k", "m"), &usage("m", 1, 0), false);
    assert_eq!(a.spent("k", DAY), 121, "until its next flush");
    assert_eq!(a.flush_on(&store, DAY).expect("flush"), 1);
    assert_eq!(a.spent("k", DAY), 131);
    assert_eq!(a.spent("j", DAY), 2);
    // Stored once each: the totals are the sums of what was recorded.
    let rows = a.query(&store, &all()).expect("query");
    assert_eq!(rows.len(), 2);
    let k = rows.iter().find(|r| r.key_id == "k").expect("k");
    assert_eq!(
        k.totals,
        Totals {
            requests: 3,
            input_tokens: 106,
            output_tokens: 25,
            ..Totals::default()
        }
    );
    let j = rows.iter().find(|r| r.key_id == "j").expect("j");
    assert_eq!((j.totals.requests, j.totals.errors), (1, 1));
    // Pending counts of this book still count, on top of the stored ones.
    b.record(key(DAY, "k", "m"), &usage("m", 0, 9), false);
    b.record(key(DAY, "j", "m"), &usage("m", 0, 1), false);
    a.record(key(DAY, "j", "m"), &usage("m", 0, 1), false);
    assert_eq!(b.flush_on(&store, DAY).expect("flush"), 2);
    assert_eq!(b.spent("k", DAY), 140);
    assert_eq!(a.flush_on(&store, DAY).expect("flush"), 1);
    assert_eq!(a.spent("j", DAY), 4);
}

#[test]
fn concurrent_flushes_lose_and_double_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let books: Vec<Arc<UsageBook>> = (0..3)
        .map(|_| Arc::new(UsageBook::load(&store, DAY).expect("load")))
        .collect();
    let mut threads = Vec::new();
    for book in &books {
        for _ in 0..2 {
            let (book, store) = (Arc::clone(book), Arc::clone(&store));
            threads.push(std::thread::spawn(move || {
                for i in 0..300 {
                    book.record(key(DAY, "k", "m"), &usage("m", 1, 2), false);
                    if i % 25 == 0 {
                        book.flush_on(&store, DAY).expect("flush");
                    }
                }
            }));
        }
    }
    for t in threads {
        t.join().expect("thread");
    }
    for book in &books {
        book.flush_on(&store, DAY).expect("final flush");
    }
    let rows = books[0].query(&store, &all()).expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].totals.requests, 1_800);
    assert_eq!(rows[0].totals.input_tokens, 1_800);
    assert_eq!(rows[0].totals.output_tokens, 3_600);
    // The last to flush has read every replica's tokens back.
    assert_eq!(books[2].spent("k", DAY), 5_400);
}
