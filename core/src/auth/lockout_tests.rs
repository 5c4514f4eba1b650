//! Tests of `auth::lockout`, kept beside it so lockout.rs holds only the code.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const T0: u64 = 1_700_000_000;
const WINDOW: u64 = 15 * 60;

fn lockout() -> Lockout {
    Lockout::new(LockoutConfig::default()).unwrap()
}

fn fail_n(l: &Lockout, user: &str, n: u32, now: u64) -> LockState {
    let mut last = LockState::Open {
        failures: 0,
        remaining: 0,
    };
    for _ in 0..n {
        last = l.record_failure(user, now);
    }
    last
}

#[test]
fn fifth_failure_locks() {
    let l = lockout();
    for i in 1..=4 {
        assert_eq!(
            l.record_failure("alice", T0 + u64::from(i)),
            LockState::Open {
                failures: i,
                remaining: 5 - i
            }
        );
        assert!(l.check("alice", T0 + u64::from(i)).is_ok());
    }
    assert_eq!(
        l.record_failure("alice", T0 + 5),
        LockState::Locked {
            retry_after: Duration::from_secs(WINDOW),
            just_locked: true
        }
    );
    assert_eq!(
        l.check("alice", T0 + 5),
        Err(Locked {
            retry_after: Duration::from_secs(WINDOW)
        })
    );
}

#[test]
fn locked_stays_locked_until_the_window_passes() {
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    for t in [T0, T0 + 1, T0 + 60, T0 + WINDOW - 1] {
        let err = l.check("alice", t).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(T0 + WINDOW - t));
    }
    assert!(l.check("alice", T0 + WINDOW).is_ok());
}

#[test]
fn guessing_while_locked_does_not_extend_the_lock() {
    // Attack: keep guessing to keep the victim locked out forever.
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    for t in T0..T0 + WINDOW {
        assert!(matches!(
            l.record_failure("alice", t),
            LockState::Locked {
                just_locked: false,
                ..
            }
        ));
    }
    assert!(l.check("alice", T0 + WINDOW).is_ok());
}

#[test]
fn release_after_window_starts_a_fresh_count() {
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    let after = T0 + WINDOW;
    assert!(l.check("alice", after).is_ok());
    assert_eq!(
        l.record_failure("alice", after),
        LockState::Open {
            failures: 1,
            remaining: 4
        }
    );
    assert!(matches!(
        fail_n(&l, "alice", 4, after + 1),
        LockState::Locked {
            just_locked: true,
            ..
        }
    ));
}

#[test]
fn success_resets_the_counter() {
    let l = lockout();
    fail_n(&l, "alice", 4, T0);
    l.record_success("alice");
    assert_eq!(
        l.record_failure("alice", T0 + 1),
        LockState::Open {
            failures: 1,
            remaining: 4
        }
    );
    assert!(l.is_empty() || l.len() == 1);
}

#[test]
fn record_success_lifts_a_lock() {
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    l.record_success("alice");
    assert!(l.check("alice", T0 + 1).is_ok());
}

#[test]
fn users_are_independent() {
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    fail_n(&l, "bob", 4, T0);
    assert!(l.check("alice", T0).is_err());
    assert!(l.check("bob", T0).is_ok());
    assert!(l.check("carol", T0).is_ok());
    assert!(
        l.check("Alice", T0).is_ok(),
        "keys are exact; callers normalise"
    );
}

#[test]
fn quiet_streak_is_forgotten() {
    let l = lockout();
    fail_n(&l, "alice", 4, T0);
    let later = T0 + 24 * 3600;
    assert_eq!(
        l.record_failure("alice", later),
        LockState::Open {
            failures: 1,
            remaining: 4
        }
    );
}

#[test]
fn property_lock_iff_n_consecutive_failures() {
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..300 {
        let max = rng.gen_range(1..8);
        let lock_for = rng.gen_range(1..3600);
        let l = Lockout::new(LockoutConfig {
            max_failures: max,
            lock_for: Duration::from_secs(lock_for),
            ..LockoutConfig::default()
        })
        .unwrap();
        let mut now = T0;
        let mut streak = 0u32;
        let mut locked_until: Option<u64> = None;
        for _ in 0..200 {
            now += rng.gen_range(0..lock_for / 4 + 2);
            if locked_until.is_some_and(|u| u <= now) {
                locked_until = None;
                streak = 0;
            }
            assert_eq!(l.check("u", now).is_err(), locked_until.is_some());
            if locked_until.is_some() {
                continue;
            }
            if rng.gen_bool(0.2) {
                l.record_success("u");
                streak = 0;
            } else {
                streak += 1;
                let st = l.record_failure("u", now);
                if streak >= max {
                    assert!(matches!(
                        st,
                        LockState::Locked {
                            just_locked: true,
                            ..
                        }
                    ));
                    locked_until = Some(now + lock_for);
                } else {
                    assert_eq!(
                        st,
                        LockState::Open {
                            failures: streak,
                            remaining: max - streak
                        }
                    );
                }
            }
        }
    }
}

#[test]
fn clock_stepping_back_never_lengthens_a_lock() {
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    let earlier = T0 - 86_400;
    let err = l.check("alice", earlier).unwrap_err();
    assert_eq!(err.retry_after, Duration::from_secs(WINDOW));
    assert!(l.check("alice", earlier + WINDOW).is_ok());
}

#[test]
fn memory_is_bounded_and_spraying_cannot_evict_a_lock() {
    // Attack: lock the victim, then spray random usernames hoping the
    // victim's entry is evicted and the lock lifted.
    let l = Lockout::new(LockoutConfig {
        max_entries: 100,
        ..LockoutConfig::default()
    })
    .unwrap();
    fail_n(&l, "victim", 5, T0);
    let mut rng = StdRng::seed_from_u64(11);
    for i in 0..10_000u64 {
        let name = format!("spray-{}", rng.r#gen::<u64>());
        l.record_failure(&name, T0 + i / 100);
        assert!(l.len() <= 100);
    }
    assert!(l.check("victim", T0 + 200).is_err());
}

#[test]
fn all_locked_map_still_accepts_new_entries() {
    let l = Lockout::new(LockoutConfig {
        max_entries: 10,
        max_failures: 1,
        ..LockoutConfig::default()
    })
    .unwrap();
    for i in 0..50u64 {
        l.record_failure(&format!("u{i}"), T0 + i);
        assert!(l.len() <= 10);
    }
    assert!(l.check("u49", T0 + 50).is_err());
}

#[test]
fn long_keys_are_hashed_but_still_distinct() {
    let l = lockout();
    let a = "a".repeat(10_000);
    let b = format!("{}b", "a".repeat(9_999));
    fail_n(&l, &a, 5, T0);
    assert!(l.check(&a, T0).is_err());
    assert!(l.check(&b, T0).is_ok());
    let snap = l.snapshot();
    assert!(snap.entries[0].key.len() <= MAX_KEY_LEN);
}

#[test]
fn snapshot_restore_round_trip() {
    let l = lockout();
    fail_n(&l, "alice", 5, T0);
    fail_n(&l, "bob", 2, T0);
    let snap = l.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: LockoutSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    let restored = lockout();
    restored.restore(back, T0 + 10).unwrap();
    assert_eq!(
        restored.check("alice", T0 + 10).unwrap_err().retry_after,
        Duration::from_secs(WINDOW - 10)
    );
    assert_eq!(
        restored.record_failure("bob", T0 + 10),
        LockState::Open {
            failures: 3,
            remaining: 2
        }
    );
    assert_eq!(snap.entries[0].key, "alice");
}

#[test]
fn restore_drops_expired_and_clamps_tampered_entries() {
    let l = lockout();
    let snap = LockoutSnapshot {
        version: SNAPSHOT_VERSION,
        entries: vec![
            SnapshotEntry {
                key: "expired".into(),
                failures: 5,
                last_failure: T0 - 2 * WINDOW,
                locked_until: Some(T0 - WINDOW),
            },
            SnapshotEntry {
                key: "forever".into(),
                failures: 5,
                last_failure: T0,
                locked_until: Some(u64::MAX),
            },
            SnapshotEntry {
                key: "old-streak".into(),
                failures: 3,
                last_failure: T0 - 7 * 86_400,
                locked_until: None,
            },
            SnapshotEntry {
                key: "many".into(),
                failures: 9999,
                last_failure: T0,
                locked_until: None,
            },
        ],
    };
    l.restore(snap, T0).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(
        l.check("forever", T0).unwrap_err().retry_after,
        Duration::from_secs(WINDOW)
    );
    assert!(l.check("forever", T0 + WINDOW).is_ok());
    assert!(matches!(
        l.record_failure("many", T0),
        LockState::Locked {
            just_locked: true,
            ..
        }
    ));
}

#[test]
fn restore_respects_capacity_and_version() {
    let l = Lockout::new(LockoutConfig {
        max_entries: 3,
        ..LockoutConfig::default()
    })
    .unwrap();
    let entries = (0..10)
        .map(|i| SnapshotEntry {
            key: format!("u{i}"),
            failures: 1,
            last_failure: T0 + i,
            locked_until: None,
        })
        .collect();
    l.restore(
        LockoutSnapshot {
            version: SNAPSHOT_VERSION,
            entries,
        },
        T0 + 10,
    )
    .unwrap();
    assert_eq!(l.len(), 3);
    let keys: Vec<String> = l.snapshot().entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["u7", "u8", "u9"], "newest streaks kept");
    assert_eq!(
        l.restore(
            LockoutSnapshot {
                version: 2,
                entries: vec![]
            },
            T0
        ),
        Err(LockoutError::UnsupportedSnapshot(2))
    );
}

#[test]
fn sweep_forgets_what_no_longer_matters() {
    let l = lockout();
    fail_n(&l, "locked", 5, T0);
    fail_n(&l, "streak", 2, T0);
    assert_eq!(l.sweep(T0 + WINDOW), 1);
    assert_eq!(l.sweep(T0 + 86_400), 1);
    assert!(l.is_empty());
}

#[test]
fn concurrent_failures_lock_exactly_once() {
    let l = Arc::new(lockout());
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                (0..10)
                    .filter(|_| {
                        matches!(
                            l.record_failure("alice", T0),
                            LockState::Locked {
                                just_locked: true,
                                ..
                            }
                        )
                    })
                    .count()
            })
        })
        .collect();
    let locks: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(locks, 1);
    assert!(l.check("alice", T0).is_err());
}

#[test]
fn config_is_validated() {
    let ok = LockoutConfig::default();
    assert_eq!(ok.max_failures, 5);
    assert_eq!(ok.lock_for, Duration::from_secs(900));
    let err = |c| Lockout::new(c).unwrap_err();
    assert_eq!(
        err(LockoutConfig {
            max_failures: 0,
            ..ok
        }),
        LockoutError::ZeroFailures
    );
    assert_eq!(
        err(LockoutConfig {
            lock_for: Duration::from_millis(500),
            ..ok
        }),
        LockoutError::ZeroLock
    );
    assert_eq!(
        err(LockoutConfig {
            max_entries: 0,
            ..ok
        }),
        LockoutError::ZeroCapacity
    );
}

#[test]
fn locked_message_gives_only_the_wait() {
    let e = Locked {
        retry_after: Duration::from_secs(42),
    };
    assert_eq!(e.to_string(), "too many failed attempts; try again in 42 s");
}

#[test]
fn per_source_keys_keep_an_attacker_from_locking_the_owner_out() {
    let l = Lockout::new(LockoutConfig::default()).unwrap();
    let attacker = source_key("owner", "203.0.113.7");
    let owner = source_key("owner", "198.51.100.2");
    for _ in 0..20 {
        l.record_failure(&attacker, 1000);
    }
    assert!(
        l.check(&attacker, 1000).is_err(),
        "the attacker's source is locked"
    );
    assert!(l.check(&owner, 1000).is_ok(), "the owner's source is not");
    l.forget_prefix(&account_prefix("owner"));
    assert!(
        l.check(&attacker, 1000).is_ok(),
        "an admin lifts every source"
    );
}

#[test]
fn account_throttle_slows_distributed_guessing_without_locking() {
    let t = AccountThrottle::new(50, Duration::from_secs(180), 100);
    let mut just = 0;
    for i in 0..50 {
        assert!(t.check("owner", 1000).is_ok(), "attempt {i}");
        just += usize::from(t.record_failure("owner", 1000));
    }
    assert_eq!(just, 1, "the start of a throttle is reported once");
    let wait = t.check("owner", 1000).unwrap_err().retry_after;
    assert_eq!(wait, Duration::from_secs(180));
    // One attempt per interval, never a lock that outlives it.
    assert!(t.check("owner", 1000 + 180).is_ok());
    t.record_failure("owner", 1180);
    assert!(t.check("owner", 1181).is_err());
    assert!(t.check("other", 1000).is_ok(), "per account");
    assert_eq!(t.sweep(1000 + 52 * 180), 1);
}

/// `threads` attempts released at once by a barrier; how many of them
/// `attempt` admitted.
fn admitted_at_once(threads: usize, attempt: impl Fn() -> bool + Send + Sync + 'static) -> usize {
    let attempt = Arc::new(attempt);
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (attempt, barrier) = (attempt.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                attempt()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum()
}

#[test]
fn concurrent_reservations_admit_at_most_the_threshold() {
    let l = Arc::new(lockout());
    let l2 = l.clone();
    let n = admitted_at_once(32, move || l2.reserve("alice", T0).is_ok());
    assert_eq!(n, 5, "an attempt in flight counts as a failure");
    assert!(l.check("alice", T0).is_err());
}

#[test]
fn release_and_success_give_a_reservation_back() {
    let l = lockout();
    for _ in 0..4 {
        l.reserve("alice", T0).unwrap();
    }
    // The fifth locks while in flight; a right password gives it back.
    assert!(matches!(
        l.reserve("alice", T0),
        Ok(LockState::Locked {
            just_locked: true,
            ..
        })
    ));
    assert!(l.check("alice", T0).is_err());
    l.release("alice");
    assert!(l.check("alice", T0).is_ok(), "four failures, no lock");
    l.reserve("alice", T0).unwrap();
    l.record_success("alice");
    assert_eq!(l.len(), 0);
}

#[test]
fn concurrent_throttle_reservations_never_overshoot() {
    let t = Arc::new(AccountThrottle::new(25, Duration::from_secs(180), 100));
    let t2 = t.clone();
    let n = admitted_at_once(100, move || t2.reserve("owner", 1000).is_ok());
    assert_eq!(n, 25);
    let wait = t.reserve("owner", 1000).unwrap_err().retry_after;
    assert!(wait <= Duration::from_secs(180), "{wait:?}");
    // Unreserved failures past the burst do not push the wait out.
    for _ in 0..100 {
        t.record_failure("owner", 1000);
    }
    assert_eq!(
        t.check("owner", 1000).unwrap_err().retry_after,
        Duration::from_secs(180)
    );
    assert!(t.reserve("owner", 1180).is_ok(), "one per interval");
    // A success gives its room back.
    t.release("owner", 1180);
    assert!(t.reserve("owner", 1180).is_ok());
}
