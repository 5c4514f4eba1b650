//! The auth rules that must hold across replicas, in one process: two
//! [`Auth`]s on one store stand for two replicas (each with its own
//! memory: caches, in-flight attempts), so state kept in one process's
//! memory instead of the store fails these tests. The end-to-end proof on
//! PostgreSQL with real processes is `tests/it/replicas.rs`.

use super::AuthError;
use super::service::*;
use super::service_tests::{PASSWORD, code, pw};
use crate::auth::settings::AuthSettings;
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::{Changed, Store};
use crate::vault::{MasterKeySource, Vault};
use std::net::IpAddr;
use std::sync::Arc;

struct Pair {
    dir: tempfile::TempDir,
    a: Arc<Auth>,
    b: Arc<Auth>,
    /// The replicas' own data directories (PostgreSQL pairs).
    _pg: Vec<tempfile::TempDir>,
}

fn replica(store: &Arc<Store>, dir: &std::path::Path) -> Arc<Auth> {
    let vault = Arc::new(Vault::new(Arc::clone(store)));
    vault
        .open_with(&MasterKeySource::KeyFile {
            path: dir.join("master.key"),
        })
        .expect("vault");
    Auth::new(Arc::clone(store), vault, AuthSettings::default()).expect("auth")
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "test").expect("store");
    let a = replica(&store, dir.path());
    let b = replica(&store, dir.path());
    Pair {
        dir,
        a,
        b,
        _pg: Vec::new(),
    }
}

/// Two replicas as the deployment runs them: two stores (each its own
/// connections, its own process-wide state) on one real PostgreSQL
/// database (`store::test_pg`), one master key.
fn pg_pair() -> Pair {
    let db = crate::store::test_pg::PgServer::shared().database();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, da) = crate::store::open_test_pg(&db);
    let (sb, dbd) = crate::store::open_test_pg(&db);
    let a = replica(&sa, dir.path());
    let b = replica(&sb, dir.path());
    Pair {
        dir,
        a,
        b,
        _pg: vec![da, dbd],
    }
}

/// Runs a test body on both backends: two `Auth`s on one redb store, and
/// two stores on one PostgreSQL database.
macro_rules! on_both {
    ($name:ident, $redb:ident, $pg:ident) => {
        #[test]
        fn $redb() {
            $name(pair());
        }
        #[test]
        fn $pg() {
            $name(pg_pair());
        }
    };
}

/// The owner, made on `a`; the otpauth URI.
fn owner(p: &Pair) -> String {
    let (_, enrollment, _) = p.a.setup_host("owner", &pw(PASSWORD)).expect("setup");
    enrollment.otpauth_uri.0.expose_secret().to_string()
}

fn ticket(auth: &Auth, ip: Option<IpAddr>) -> SecretString {
    match auth.login("owner", &pw(PASSWORD), ip, None).expect("login") {
        LoginStep::MfaRequired { ticket } => ticket,
        other => panic!("MFA must be required, got {other:?}"),
    }
}

fn wrong(auth: &Auth, ip: Option<IpAddr>) -> AuthError {
    auth.login("owner", &pw("not the password at all"), ip, None)
        .expect_err("a wrong password")
}

on_both!(
    failures_on_every_replica_count_towards_one_lock,
    lock_redb,
    lock_postgres
);

fn failures_on_every_replica_count_towards_one_lock(p: Pair) {
    let _uri = owner(&p);
    let ip: Option<IpAddr> = Some([192, 0, 2, 7].into());
    // Five failures (the default threshold), three here and two there.
    for n in 0..5 {
        let auth = if n % 2 == 0 { &p.a } else { &p.b };
        let e = wrong(auth, ip);
        assert!(
            matches!(e, AuthError::Unauthorized(..)),
            "attempt {n}: {e:?}"
        );
    }
    // The right password is refused on both, unchecked.
    for auth in [&p.a, &p.b] {
        let e = auth
            .login("owner", &pw(PASSWORD), ip, None)
            .expect_err("locked");
        assert!(matches!(e, AuthError::Locked { .. }), "{e:?}");
    }
    // Locks stay per source: another address signs in on either.
    let other: Option<IpAddr> = Some([198, 51, 100, 9].into());
    let _ = ticket(&p.b, other);
    // An admin's reset on one replica lifts the lock for all.
    let host = p.b.host_principal();
    p.b.reset_mfa(&host, "owner").expect("reset");
    assert!(matches!(
        p.a.login("owner", &pw(PASSWORD), ip, None)
            .expect("unlocked"),
        LoginStep::EnrollRequired { .. }
    ));
}

on_both!(
    a_ticket_made_on_one_replica_finishes_on_the_other_once,
    ticket_redb,
    ticket_postgres
);

fn a_ticket_made_on_one_replica_finishes_on_the_other_once(p: Pair) {
    let uri = owner(&p);
    let t = ticket(&p.a, None);
    let s =
        p.b.mfa(t.expose_secret(), Some(&code(&uri, 0)), None, None, None)
            .expect("second step on the other replica");
    // The session is good on both.
    p.a.authenticate_session(s.token.expose_secret())
        .expect("session on a");
    p.b.authenticate_session(s.token.expose_secret())
        .expect("session on b");
    // The ticket is gone everywhere, even with a fresh code.
    for auth in [&p.a, &p.b] {
        let e = auth
            .mfa(t.expose_secret(), Some(&code(&uri, 1)), None, None, None)
            .expect_err("ticket taken");
        assert!(
            matches!(e, AuthError::Unauthorized("invalid_ticket", _)),
            "{e:?}"
        );
    }
}

on_both!(
    key_changes_reach_the_other_replica_when_it_hears_of_them,
    keys_redb,
    keys_postgres
);

fn key_changes_reach_the_other_replica_when_it_hears_of_them(p: Pair) {
    let uri = owner(&p);
    let t = ticket(&p.a, None);
    let s =
        p.a.mfa(t.expose_secret(), Some(&code(&uri, 0)), None, None, None)
            .expect("mfa");
    let who =
        p.a.authenticate_session(s.token.expose_secret())
            .expect("session");
    let (view, key) =
        p.a.create_key(&who, "agent", &["proxy:openai".to_string()], None)
            .expect("key");
    p.a.authenticate_key(key.expose_secret())
        .expect("the replica that made it");
    // The other replica's cache was filled before the key existed.
    assert!(p.b.authenticate_key(key.expose_secret()).is_err());
    p.b.on_store_change(&Changed::Tables(vec!["api_keys".into()]))
        .expect("reload");
    p.b.authenticate_key(key.expose_secret())
        .expect("after the change reached b");
    // Revoked on a: b refuses it once it hears of the change.
    p.a.revoke_key(&who, &view.id).expect("revoke");
    assert!(p.a.authenticate_key(key.expose_secret()).is_err());
    let unrelated = Changed::Tables(vec!["vault_records".into()]);
    p.b.on_store_change(&unrelated).expect("no reload");
    assert!(
        p.b.authenticate_key(key.expose_secret()).is_ok(),
        "a change to another table reloads nothing (so the next assertion is the reload's doing)"
    );
    p.b.on_store_change(&Changed::Unknown).expect("reload all");
    assert!(p.b.authenticate_key(key.expose_secret()).is_err());
}

on_both!(
    the_setup_token_is_one_for_the_deployment,
    setup_redb,
    setup_postgres
);

fn the_setup_token_is_one_for_the_deployment(p: Pair) {
    let first =
        p.a.issue_setup_token()
            .expect("issue")
            .expect("no owner yet");
    let second =
        p.b.issue_setup_token()
            .expect("issue")
            .expect("no owner yet");
    // The newer token replaced the older one, on both replicas.
    for auth in [&p.a, &p.b] {
        let e = auth
            .setup_begin(first.expose_secret(), "owner", &pw(PASSWORD))
            .expect_err("replaced");
        assert!(
            matches!(e, AuthError::Forbidden("invalid_setup_token", _)),
            "{e:?}"
        );
    }
    let enrollment =
        p.a.setup_begin(second.expose_secret(), "owner", &pw(PASSWORD))
            .expect("the current token works on the replica that did not issue it");
    let uri = enrollment.otpauth_uri.0.expose_secret().to_string();
    p.b.setup_confirm(second.expose_secret(), "owner", &code(&uri, 0), None)
        .expect("confirmed on the other replica");
    // Used up: an owner exists, and the token is gone everywhere.
    for auth in [&p.a, &p.b] {
        let e = auth
            .setup_begin(second.expose_secret(), "other", &pw(PASSWORD))
            .expect_err("used");
        assert!(
            matches!(e, AuthError::Forbidden("invalid_setup_token", _)),
            "{e:?}"
        );
    }
    drop(p.dir);
}

on_both!(
    a_device_cookie_from_one_replica_is_known_to_the_other,
    device_redb,
    device_postgres
);

fn a_device_cookie_from_one_replica_is_known_to_the_other(p: Pair) {
    let (user, _, _) = p.a.setup_host("owner", &pw(PASSWORD)).expect("setup");
    let cookie = p.a.device_cookie(&user.id);
    let ip: Option<IpAddr> = Some([192, 0, 2, 7].into());
    for _ in 0..5 {
        let _ = wrong(&p.b, ip);
    }
    // The address is locked on both replicas...
    let e =
        p.a.login("owner", &pw(PASSWORD), ip, None)
            .expect_err("locked");
    assert!(matches!(e, AuthError::Locked { .. }), "{e:?}");
    // ...but the owner's own browser, known from a sign-in on replica a,
    // has its own lock on replica b too.
    let step =
        p.b.login_with_device("owner", &pw(PASSWORD), ip, None, Some(&cookie))
            .expect("a known device");
    assert!(matches!(step, LoginStep::MfaRequired { .. }));
    // A forged or foreign tag is no device.
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &cookie[..cookie.len() - 1]);
    let e =
        p.b.login_with_device("owner", &pw(PASSWORD), ip, None, Some(&forged))
            .expect_err("not a device");
    assert!(matches!(e, AuthError::Locked { .. }), "{e:?}");
}

on_both!(
    the_shared_address_limit_counts_requests_on_every_replica,
    rate_redb,
    rate_postgres
);

fn the_shared_address_limit_counts_requests_on_every_replica(p: Pair) {
    let burst = AuthSettings::default().rate_limit_burst;
    let ip: IpAddr = [192, 0, 2, 7].into();
    // Alternating replicas: together they get one burst, not one each.
    let settings = AuthSettings::default();
    let refill = 60.0 / f64::from(settings.rate_limit_per_minute);
    let start = std::time::Instant::now();
    let mut allowed = 0;
    for n in 0..burst * 2 {
        let auth = if n % 2 == 0 { &p.a } else { &p.b };
        match auth.check_shared_rate(ip).expect("store") {
            Ok(()) => allowed += 1,
            Err(wait) => assert!(wait.0 > std::time::Duration::ZERO),
        }
    }
    // One burst, plus what refilled while the loop ran (a bucket per
    // replica would have let all of them through).
    let refilled = (start.elapsed().as_secs_f64() / refill).ceil() as u32;
    assert!(
        (burst..=burst + refilled).contains(&allowed),
        "{allowed} allowed of {}, burst {burst}",
        burst * 2
    );
    // Another address has its own bucket.
    let other: IpAddr = [198, 51, 100, 9].into();
    assert!(p.b.check_shared_rate(other).expect("store").is_ok());
}

on_both!(
    a_role_change_on_one_replica_reaches_the_others_people_cache,
    roles_redb,
    roles_postgres
);

fn a_role_change_on_one_replica_reaches_the_others_people_cache(p: Pair) {
    use crate::auth::scope::Role;
    let _uri = owner(&p);
    let host = p.a.host_principal();
    let (invite, _) = p.a.create_invite(&host, Role::User, None).expect("invite");
    p.a.accept_invite(invite.expose_secret(), "alice", &pw(PASSWORD), None)
        .expect("accept");
    let LoginStep::Done(s) =
        p.b.login("alice", &pw(PASSWORD), None, None)
            .expect("login")
    else {
        panic!("a user without a second factor signs in with the password");
    };
    let token = s.token.expose_secret();
    // b has looked alice up: her role is in b's people cache now.
    assert_eq!(
        p.b.authenticate_session(token).expect("session").role,
        Role::User
    );
    // Demoted on a (her session stays: a demotion narrows, it ends nothing).
    p.a.set_role(&host, "alice", Role::Guest).expect("demote");
    assert_eq!(
        p.a.authenticate_session(token).expect("session").role,
        Role::Guest
    );
    assert_eq!(
        p.b.authenticate_session(token).expect("session").role,
        Role::User,
        "b has not heard of the change yet (so the next assertion is the reload's doing)"
    );
    p.b.on_store_change(&Changed::Tables(vec!["users".into()]))
        .expect("reload");
    assert_eq!(
        p.b.authenticate_session(token).expect("session").role,
        Role::Guest
    );
    // Disabled on a: once b hears of it, her session is refused there too.
    p.a.set_disabled(&host, "alice", true).expect("disable");
    p.b.on_store_change(&Changed::Tables(vec!["users".into(), "sessions".into()]))
        .expect("reload");
    assert!(p.b.authenticate_session(token).is_err());
}

on_both!(
    one_ticket_raced_on_both_replicas_gives_one_session,
    ticket_race_redb,
    ticket_race_postgres
);

fn one_ticket_raced_on_both_replicas_gives_one_session(p: Pair) {
    let uri = owner(&p);
    for round in 0..3 {
        let t = ticket(&p.a, None);
        let c = code(&uri, round - 1);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let auth = Arc::clone(if i % 2 == 0 { &p.a } else { &p.b });
                let (t, c, barrier) = (t.expose_secret().to_string(), c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    auth.mfa(&t, Some(&c), None, None, None).is_ok()
                })
            })
            .collect();
        let won = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|ok| *ok)
            .count();
        assert_eq!(won, 1, "round {round}");
    }
}

on_both!(
    concurrent_guesses_on_both_replicas_verify_at_most_the_threshold,
    guess_race_redb,
    guess_race_postgres
);

fn concurrent_guesses_on_both_replicas_verify_at_most_the_threshold(p: Pair) {
    let _uri = owner(&p);
    let ip: Option<IpAddr> = Some([192, 0, 2, 7].into());
    let barrier = Arc::new(std::sync::Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let auth = Arc::clone(if i % 2 == 0 { &p.a } else { &p.b });
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                wrong(&auth, ip)
            })
        })
        .collect();
    let results: Vec<AuthError> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let verified = results
        .iter()
        .filter(|e| matches!(e, AuthError::Unauthorized(..)))
        .count();
    let refused = results
        .iter()
        .filter(|e| matches!(e, AuthError::Locked { .. }))
        .count();
    // The default threshold is five: five guesses checked, anywhere.
    assert_eq!((verified, refused), (5, 7), "{results:?}");
}

// Two browsers through first-run setup at the same moment, one on each
// replica, with the deployment's one setup token: each step of one runs
// either wholly before or wholly after the other's (`Store::lock_shared`),
// so exactly one owner comes out, no second (inactive) account is left
// behind, and the loser is told why. Three rounds, fresh stores each.
#[test]
fn two_wizards_at_once_make_exactly_one_owner_redb() {
    for _ in 0..3 {
        two_wizards_at_once_make_exactly_one_owner(pair());
    }
}

#[test]
fn two_wizards_at_once_make_exactly_one_owner_postgres() {
    for _ in 0..3 {
        two_wizards_at_once_make_exactly_one_owner(pg_pair());
    }
}

fn two_wizards_at_once_make_exactly_one_owner(p: Pair) {
    use super::store::{self as db, USERS, User};
    let token =
        p.a.issue_setup_token()
            .expect("issue")
            .expect("no owner yet");
    let token = token.expose_secret().to_string();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let wizards: Vec<_> = [("alice", &p.a), ("bob", &p.b)]
        .into_iter()
        .map(|(name, auth)| {
            let (auth, token, barrier) = (Arc::clone(auth), token.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<String, AuthError> {
                barrier.wait();
                let begun = auth.setup_begin(&token, name, &pw(PASSWORD));
                // Both have begun (or been refused) before either confirms.
                barrier.wait();
                let uri = begun?.otpauth_uri.0.expose_secret().to_string();
                let (owner, _codes) = auth.setup_confirm(&token, name, &code(&uri, 0), None)?;
                Ok(owner.username)
            })
        })
        .collect();
    let results: Vec<Result<String, AuthError>> = wizards
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let owners: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(owners.len(), 1, "exactly one wizard wins: {results:?}");
    // The loser's wizard was replaced by the winner's (it began first), or
    // the winner finished before it confirmed (the link is used): either
    // way it is told, not left with a half-made account.
    let lost = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("a loser");
    assert!(
        matches!(
            lost,
            AuthError::Conflict("setup_replaced", _)
                | AuthError::Forbidden("invalid_setup_token", _)
        ),
        "{lost:?}"
    );
    // The store holds the one owner, active, and nothing else.
    let users = {
        let txn = p.a.store().begin_read().expect("read");
        db::scan::<User>(&txn.open_table(USERS).expect("users")).expect("scan")
    };
    let rows: Vec<(&str, bool)> = users
        .iter()
        .map(|(_, u)| (u.username.as_str(), u.active))
        .collect();
    assert_eq!(rows, [(owners[0].as_str(), true)], "{results:?}");
    for auth in [&p.a, &p.b] {
        assert_eq!(auth.user_count().expect("count"), 1);
        let e = auth
            .setup_begin(&token, "carol", &pw(PASSWORD))
            .expect_err("the token is used");
        assert!(
            matches!(e, AuthError::Forbidden("invalid_setup_token", _)),
            "{e:?}"
        );
    }
    drop(p.dir);
}

on_both!(
    one_invite_accepted_on_both_replicas_at_once_makes_one_user,
    invite_race_redb,
    invite_race_postgres
);

// An invite link opened in several browsers at once, the requests spread
// over two replicas: the invite is consumed in the write transaction that
// creates the user, which the store serializes across replicas, so exactly
// one account comes out, and the others are told the link is used.
fn one_invite_accepted_on_both_replicas_at_once_makes_one_user(p: Pair) {
    owner(&p);
    let host = p.a.host_principal();
    for round in 0..3 {
        let (token, _) =
            p.a.create_invite(&host, crate::auth::scope::Role::User, None)
                .expect("invite");
        let token = token.expose_secret().to_string();
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let auth = Arc::clone(if i % 2 == 0 { &p.a } else { &p.b });
                let (token, barrier) = (token.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    auth.accept_invite(
                        &token,
                        &format!("user{round}x{i}"),
                        &pw("a long enough passphrase"),
                        None,
                    )
                })
            })
            .collect();
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "round {round}: {results:?}"
        );
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, AuthError::Forbidden("invalid_invite", _)),
                "{r:?}"
            );
        }
        // Both replicas count the owner and one user per round.
        for auth in [&p.a, &p.b] {
            assert_eq!(auth.user_count().expect("count"), 2 + round);
        }
    }
}
