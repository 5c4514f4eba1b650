//! The auth service: first-run setup, login with a second factor, sessions,
//! access and refresh tokens, API keys, re-authentication — with lockout,
//! rate limits and audit. HTTP lives in `crate::http::auth`; this module
//! knows nothing of it.
//!
//! Everything that costs CPU on purpose (argon2) runs in the caller's
//! blocking context: the HTTP layer calls these methods on the blocking pool.

use super::AuthError;
use super::apikey;
use super::epoch::{Change, Epochs, Stamp};
use super::index;
use super::lockout::{self, AccountThrottle, LockState, Lockout, LockoutConfig};
use super::password::{PasswordHasher, PasswordPolicy};
use super::ratelimit::{self, RateLimitConfig, RateLimiter};
use super::recovery;
use super::scope::{Role, Scope, ScopeSet};
use super::settings::AuthSettings;
use super::store::{self as db, *};
use super::totp::{self, TotpSecret};
use crate::audit::{self, AuditEvent, Outcome};
use crate::secrecy::{ExposeSecret, SecretString};
use crate::store::Store;
use crate::vault::Vault;
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How long a password-verified login may take to present its second factor.
const MFA_TICKET_SECS: i64 = 300;
/// last_seen is written at most this often per session.
const TOUCH_EVERY_SECS: i64 = 60;

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether a session row is still good at `t`: before its absolute end
/// and not idle.
fn session_live(s: &Session, t: i64) -> bool {
    t < s.expires_at && t < s.last_seen_at.saturating_add(s.idle_secs)
}

/// `t + d` in unix seconds, saturating: a lifetime from the configuration
/// or a request can never wrap into the past.
pub fn expiry(t: i64, d: Duration) -> i64 {
    t.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The most live (unrevoked, unexpired) API keys one user may hold.
pub const MAX_KEYS_PER_USER: usize = 256;

/// The longest an invite may stay valid (`expires_in_secs`).
pub const MAX_INVITE_LIFETIME: Duration = Duration::from_secs(30 * 86400);

/// The account-wide ceiling on failures, as a multiple of the per-source
/// threshold (see [`AccountThrottle`]).
const ACCOUNT_BURST_FACTOR: u32 = 10;

/// How long a known-device cookie is honoured after the sign-in that set it.
pub const DEVICE_LIFETIME: Duration = Duration::from_secs(90 * 86400);

/// Where a sign-in attempt comes from, for lockout: a client address, or
/// a device that completed a sign-in to this very account before (see
/// [`Auth::device_cookie`]). A known device has its own lock and is not
/// slowed by the account-wide throttle, so guessing from elsewhere never
/// keeps the owner's own browser out.
#[derive(Debug, Clone)]
struct Source {
    key: String,
    known_device: bool,
}

/// A credential attempt admitted by `Auth::admit`: counted against its
/// source's lock (and the account's throttle) from before its
/// verification until it ends.
#[must_use = "an attempt ends as failed, succeeded or released"]
#[derive(Debug)]
struct Attempt {
    source_key: String,
    /// This attempt's reservation set the source's lock.
    locked_now: bool,
    known_device: bool,
    /// The throttle key, unless from a known device, and whether this
    /// reservation filled the bucket.
    throttle: Option<(String, bool)>,
}

fn random_token(prefix: &str) -> SecretString {
    use rand::RngCore;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    SecretString::from(format!("{prefix}{}", hex::encode(&bytes[..])))
}

/// Who is making a request, and how they proved it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    pub via: Via,
}

#[derive(Debug, Clone)]
pub enum Via {
    Session {
        hash: [u8; 32],
        last_auth_at: i64,
    },
    AccessToken {
        family_id: u128,
    },
    ApiKey {
        id: String,
        scopes: Arc<ScopeSet>,
    },
    /// The CLI on the host, holding the data directory's admin token.
    Host,
}

impl Principal {
    /// The actor name written to the audit log.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::ApiKey { id, .. } => format!("{} (key {id})", self.username),
            Via::Host => "host".into(),
            _ => self.username.clone(),
        }
    }

    /// Whether this principal may use `scope`: API keys are capped by their
    /// scopes and by their owner's role; people by their role.
    pub fn allows(&self, scope: &Scope) -> bool {
        match &self.via {
            Via::ApiKey { scopes, .. } => super::scope::effective_allows(self.role, scopes, scope),
            Via::Host => true,
            _ => self.role.may_exercise(scope),
        }
    }

    /// Whether this principal may act on other users' things (their keys
    /// and key limits, everyone's lists): only with the `admin` scope —
    /// an admin's session or access token, an admin's key that carries
    /// `admin`, or the host. The owner's role alone never suffices: an
    /// admin's `keys:manage` key manages the admin's own keys only.
    pub fn acts_for_everyone(&self) -> bool {
        self.allows(&Scope::Admin)
    }
}

/// Whether an API key may stand in for a fresh re-authentication under
/// the step-up rule ([`Auth::step_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStepUp {
    /// Using a key whose scopes cover the action — a reveal with
    /// `vault:read:<name>`, a backup with `admin`, a connection's token
    /// with `connections:<p>`: the key is itself the grant, and minting a
    /// key with such a scope needed a step-up.
    UseGrant,
    /// Minting or widening a credential: a key never stands in for a
    /// person.
    Refuse,
}

/// What a successful password step returns.
#[derive(Debug)]
pub enum LoginStep {
    MfaRequired {
        ticket: SecretString,
    },
    /// An admin without a second factor (after `reset-mfa`, or invited as
    /// admin): sign-in continues only by confirming this enrollment.
    EnrollRequired {
        ticket: SecretString,
        enrollment: EnrollmentView,
    },
    Done(NewSession),
}

/// A new browser session: the token goes into the cookie.
#[derive(Debug)]
pub struct NewSession {
    pub token: SecretString,
    pub user: UserView,
    pub expires_at: i64,
    /// Set when this sign-in completed a TOTP enrollment: shown once.
    pub recovery_codes: Vec<SecretString>,
}

/// A user as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub mfa_enabled: bool,
    pub recovery_codes_left: usize,
    pub disabled: bool,
    pub created_at: i64,
}

impl UserView {
    pub fn of(id: UserId, u: &User) -> Self {
        UserView {
            id: id.to_string(),
            username: u.username.clone(),
            role: u.role,
            mfa_enabled: u.totp.is_some(),
            recovery_codes_left: u.recovery_hashes.len(),
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: SecretView,
    pub refresh_token: SecretView,
    pub expires_in: i64,
    pub token_type: &'static str,
}

/// A secret serialized exactly once, into a response body.
#[derive(Debug)]
pub struct SecretView(pub SecretString);

impl Serialize for SecretView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_secret())
    }
}

/// What first-run setup and TOTP (re-)enrollment hand back.
#[derive(Debug, Serialize)]
pub struct EnrollmentView {
    pub otpauth_uri: SecretView,
    pub qr_png_base64: String,
    pub qr_svg: String,
}

/// The first-run setup token's hash and expiry.
type SetupToken = ([u8; 32], i64);

struct Ticket {
    user_id: UserId,
    expires_at: i64,
    /// Where the password step came from: the second step counts its
    /// failures there too.
    source: Source,
    /// The password epoch before the password step verified anything:
    /// an account event since then voids the ticket (see `auth::epoch`).
    password_epoch: Stamp,
}

#[derive(Debug, Clone)]
struct CachedKey {
    user_id: UserId,
    hash: [u8; 32],
    /// Shared with every principal the key authenticates (one pointer
    /// copy per proxied request, not a tree).
    scopes: Arc<ScopeSet>,
    expires_at: Option<i64>,
}

/// The auth service of one data directory.
pub struct Auth {
    store: Arc<Store>,
    vault: Arc<Vault>,
    pub settings: AuthSettings,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    /// Failed attempts per (account, source): locks that source only.
    lockout: Lockout,
    /// Failed attempts per account from all sources: slows, never locks.
    throttle: AccountThrottle,
    pub limiter: RateLimiter,
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    setup_token: Mutex<Option<SetupToken>>,
    /// Signs known-device cookies; random per process, so a restart
    /// forgets every device (they fall back to the per-address lock).
    device_key: ring::hmac::Key,
    /// Active API keys by public id: the hot path verifies keys in memory.
    keys: RwLock<HashMap<String, CachedKey>>,
    key_last_used: Mutex<HashMap<String, i64>>,
    /// Username and role of active, enabled users, so an API-key request
    /// needs no database read. Emptied after every committed change to
    /// `users`; `people_gen` stops a fill that raced such a change.
    people: RwLock<HashMap<UserId, (String, Role)>>,
    people_gen: AtomicU64,
    /// Bumped after every change that ends or narrows a credential.
    pub revocations: super::revocation::Revocations,
    /// Per-user epochs a sign-in in progress re-checks before its session
    /// is written, so an account event between its steps voids it.
    epochs: Epochs,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(
        store: Arc<Store>,
        vault: Arc<Vault>,
        settings: AuthSettings,
    ) -> Result<Arc<Auth>, AuthError> {
        let lockout = Lockout::new(LockoutConfig {
            max_failures: settings.lockout_threshold,
            lock_for: settings.lockout_duration,
            ..LockoutConfig::default()
        })
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        let throttle = AccountThrottle::new(
            settings
                .lockout_threshold
                .saturating_mul(ACCOUNT_BURST_FACTOR),
            settings.lockout_duration / settings.lockout_threshold.max(1),
            LockoutConfig::default().max_entries,
        );
        let limiter = RateLimiter::new(RateLimitConfig::per_minute(
            settings.rate_limit_per_minute,
            settings.rate_limit_burst,
        ))
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        let auth = Auth {
            store,
            vault,
            hasher: PasswordHasher::default(),
            policy: PasswordPolicy::new(),
            lockout,
            throttle,
            limiter,
            tickets: Mutex::new(HashMap::new()),
            setup_token: Mutex::new(None),
            device_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()),
            keys: RwLock::new(HashMap::new()),
            key_last_used: Mutex::new(HashMap::new()),
            people: RwLock::new(HashMap::new()),
            people_gen: AtomicU64::new(0),
            revocations: super::revocation::Revocations::new(),
            epochs: Epochs::new(),
            settings,
        };
        auth.load_keys()?;
        Ok(Arc::new(auth))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    fn audit(&self, e: AuditEvent) {
        if let Err(err) = audit::append(&self.store, e) {
            tracing::error!(error = %err, "could not write an audit entry");
        }
    }

    fn load_keys(&self) -> Result<(), AuthError> {
        let txn = self.store.db().begin_read()?;
        let rows: Vec<(Vec<u8>, ApiKeyRow)> = db::scan(&txn.open_table(API_KEYS)?)?;
        let users = txn.open_table(USERS)?;
        let mut map = HashMap::new();
        for (k, row) in rows {
            if row.revoked_at.is_some() {
                continue;
            }
            // Keys of accounts that cannot sign in (disabled, unfinished,
            // gone — or the host's owner-less keys of older versions) are
            // never loaded: disabling revokes keys, and this holds for
            // rows written before it did.
            let owner = db::get::<User>(&users, &row.user_id.key())?;
            if !owner.is_some_and(|u| u.active && !u.disabled) {
                continue;
            }
            let id = String::from_utf8_lossy(&k).into_owned();
            let scopes =
                ScopeSet::parse(&row.scopes).map_err(|e| AuthError::Internal(e.to_string()))?;
            map.insert(
                id,
                CachedKey {
                    user_id: row.user_id,
                    hash: row.hash,
                    scopes: Arc::new(scopes),
                    expires_at: row.expires_at,
                },
            );
        }
        if let Ok(mut keys) = self.keys.write() {
            *keys = map;
        }
        Ok(())
    }

    // ---- users -------------------------------------------------------

    pub fn user_count(&self) -> Result<usize, AuthError> {
        let txn = self.store.db().begin_read()?;
        Ok(db::scan::<User>(&txn.open_table(USERS)?)?
            .iter()
            .filter(|(_, u)| u.active)
            .count())
    }

    pub fn get_user(&self, id: UserId) -> Result<User, AuthError> {
        let txn = self.store.db().begin_read()?;
        db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))
    }

    pub fn find_user(&self, username: &str) -> Result<Option<(UserId, User)>, AuthError> {
        let txn = self.store.db().begin_read()?;
        let names = txn.open_table(USERNAMES)?;
        let Some(id) = names.get(username_key(username).as_bytes())? else {
            return Ok(None);
        };
        let id = UserId::from_key(id.value())
            .ok_or_else(|| AuthError::Internal("bad user id".into()))?;
        let user = db::get(&txn.open_table(USERS)?, &id.key())?;
        Ok(user.map(|u| (id, u)))
    }

    pub fn list_users(&self) -> Result<Vec<UserView>, AuthError> {
        let txn = self.store.db().begin_read()?;
        let mut out: Vec<UserView> = db::scan::<User>(&txn.open_table(USERS)?)?
            .into_iter()
            .filter_map(|(k, u)| UserId::from_key(&k).map(|id| UserView::of(id, &u)))
            .collect();
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    fn validate_username(name: &str) -> Result<(), AuthError> {
        let ok = (1..=64).contains(&name.chars().count())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(())
        } else {
            Err(AuthError::Invalid {
                field: "username",
                reason: "1 to 64 characters: letters, digits, `.`, `_`, `-`, `@`, starting with a letter or digit".into(),
            })
        }
    }

    /// Creates a user row (password already checked and hashed).
    fn insert_user(&self, user: User) -> Result<UserId, AuthError> {
        let id = UserId::random();
        let txn = self.store.db().begin_write()?;
        Self::insert_user_in(&txn, id, &user)?;
        txn.commit()?;
        self.forget_people();
        Ok(id)
    }

    /// Inserts `user` as `id` in `txn`, refusing a taken username; the
    /// caller commits (and then calls `forget_people`).
    fn insert_user_in(
        txn: &redb::WriteTransaction,
        id: UserId,
        user: &User,
    ) -> Result<(), AuthError> {
        {
            let mut names = txn.open_table(USERNAMES)?;
            let key = username_key(&user.username);
            if names.get(key.as_bytes())?.is_some() {
                return Err(Self::username_taken(&user.username));
            }
            names.insert(key.as_bytes(), id.key().as_slice())?;
        }
        db::put(txn, USERS, &id.key(), user)?;
        audit::append_in(
            txn,
            AuditEvent::new("system", "user.create", Outcome::Success)
                .target(&user.username)
                .detail(user.role.as_str()),
        )?;
        Ok(())
    }

    fn update_user(
        &self,
        id: UserId,
        f: impl FnOnce(&mut User) -> Result<(), AuthError>,
    ) -> Result<User, AuthError> {
        let txn = self.store.db().begin_write()?;
        let mut user: User =
            db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))?;
        f(&mut user)?;
        user.updated_at = now();
        db::put(&txn, USERS, &id.key(), &user)?;
        txn.commit()?;
        self.forget_people();
        Ok(user)
    }

    fn new_user(
        &self,
        username: &str,
        password: &SecretString,
        role: Role,
    ) -> Result<User, AuthError> {
        Self::validate_username(username)?;
        let hash = self.checked_hash(password, username)?;
        let t = now();
        Ok(User {
            username: username.to_string(),
            role,
            password_hash: hash,
            totp: None,
            totp_pending: None,
            totp_last_step: None,
            recovery_hashes: Vec::new(),
            disabled: false,
            active: true,
            created_at: t,
            updated_at: t,
        })
    }

    /// Applies the password policy, then hashes (argon2id: slow on purpose).
    fn checked_hash(&self, password: &SecretString, username: &str) -> Result<String, AuthError> {
        self.policy
            .check(password.expose_secret(), username)
            .map_err(|e| AuthError::Invalid {
                field: "password",
                reason: e.to_string(),
            })?;
        self.hasher
            .hash(password)
            .map_err(|e| AuthError::Internal(e.to_string()))
    }

    fn totp_context(id: UserId) -> String {
        format!("totp:{id}")
    }

    fn enrollment(
        &self,
        id: UserId,
        username: &str,
    ) -> Result<(Vec<u8>, EnrollmentView), AuthError> {
        let secret = TotpSecret::generate();
        let e =
            totp::enrollment(username, &secret).map_err(|e| AuthError::Internal(e.to_string()))?;
        let sealed = self
            .vault
            .seal_value(&Self::totp_context(id), &secret.to_base32())?;
        Ok((
            sealed,
            EnrollmentView {
                otpauth_uri: SecretView(e.otpauth_uri),
                qr_png_base64: e.qr_png_base64,
                qr_svg: e.qr_svg,
            },
        ))
    }

    fn check_totp(
        &self,
        id: UserId,
        user: &User,
        sealed: &[u8],
        code: &str,
    ) -> Result<u64, AuthError> {
        let secret = self.vault.open_value(&Self::totp_context(id), sealed)?;
        let secret = TotpSecret::from_base32(secret.expose_secret())
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        totp::verify(&secret, code, now().max(0) as u64, user.totp_last_step).map_err(|e| match e {
            totp::TotpError::Replayed => AuthError::Unauthorized(
                "code_replayed",
                "this code was already used; wait for the next one".into(),
            ),
            other => AuthError::Unauthorized("invalid_code", other.to_string()),
        })
    }
}

// ---- first-run setup ------------------------------------------------------
impl Auth {
    /// While no owner exists: a fresh one-time setup token (the previous one
    /// stops working). `None` once an owner exists.
    pub fn issue_setup_token(&self) -> Result<Option<SecretString>, AuthError> {
        if self.user_count()? > 0 {
            return Ok(None);
        }
        let token = random_token("lku_");
        let expires = expiry(now(), self.settings.setup_token_lifetime);
        if let Ok(mut t) = self.setup_token.lock() {
            *t = Some((token_hash(token.expose_secret()), expires));
        }
        Ok(Some(token))
    }

    /// Holds the setup token for one whole setup step, after checking
    /// `token` against it: setup steps run one at a time, so checking the
    /// token, changing the owner and consuming the token are one step.
    fn setup_guard(
        &self,
        token: &str,
    ) -> Result<std::sync::MutexGuard<'_, Option<SetupToken>>, AuthError> {
        let guard = self
            .setup_token
            .lock()
            .map_err(|_| AuthError::Internal("setup lock".into()))?;
        let ok = match *guard {
            Some((hash, expires)) => {
                subtle::ConstantTimeEq::ct_eq(&hash[..], &token_hash(token)[..]).into()
                    && now() < expires
            }
            None => false,
        };
        if !ok {
            return Err(AuthError::Forbidden("invalid_setup_token", "the setup link is invalid, used or expired; restart `latchkey serve` for a new one".into()));
        }
        Ok(guard)
    }

    /// Step 1 of web setup: creates the (inactive) owner and returns the
    /// TOTP enrollment to confirm.
    pub fn setup_begin(
        &self,
        token: &str,
        username: &str,
        password: &SecretString,
    ) -> Result<EnrollmentView, AuthError> {
        let _setup = self.setup_guard(token)?;
        if self.user_count()? > 0 {
            return Err(AuthError::Conflict(
                "already_set_up",
                "an owner already exists".into(),
            ));
        }
        let mut user = self.new_user(username, password, Role::Admin)?;
        user.active = false;
        // A retried setup (the wizard's "Back", or a reload) replaces every
        // earlier unconfirmed owner, whatever name it chose: while nobody is
        // active, inactive rows can only be such leftovers, and one left
        // behind would hold its username forever.
        let leftovers: Vec<(UserId, String)> = {
            let txn = self.store.db().begin_read()?;
            db::scan::<User>(&txn.open_table(USERS)?)?
                .into_iter()
                .filter(|(_, u)| !u.active)
                .filter_map(|(k, u)| UserId::from_key(&k).map(|id| (id, u.username)))
                .collect()
        };
        for (old, name) in leftovers {
            self.delete_user_rows(old, &name)?;
        }
        let id = self.insert_user(user)?;
        let (sealed, view) = self.enrollment(id, username)?;
        self.update_user(id, |u| {
            u.totp_pending = Some(sealed);
            Ok(())
        })?;
        Ok(view)
    }

    /// Step 2 of web setup: a valid code activates the owner; the recovery
    /// codes are returned once.
    pub fn setup_confirm(
        &self,
        token: &str,
        username: &str,
        code: &str,
        ip: Option<IpAddr>,
    ) -> Result<(UserView, Vec<SecretString>), AuthError> {
        let mut setup = self.setup_guard(token)?;
        let (id, user) = self
            .find_user(username)?
            .filter(|(_, u)| !u.active)
            .ok_or(AuthError::NotFound("pending owner"))?;
        let pending = user
            .totp_pending
            .clone()
            .ok_or(AuthError::NotFound("pending enrollment"))?;
        let step = self.check_totp(id, &user, &pending, code)?;
        let (codes, hashes) = recovery::generate();
        // One write decides: nobody is active yet, and this is still the
        // enrollment the code was checked against.
        let txn = self.store.db().begin_write()?;
        let active = db::scan::<User>(&txn.open_table(USERS)?)?
            .iter()
            .any(|(_, u)| u.active);
        if active {
            return Err(AuthError::Conflict(
                "already_set_up",
                "an owner already exists".into(),
            ));
        }
        let mut user: User =
            db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))?;
        if user.active || user.totp_pending.as_deref() != Some(pending.as_slice()) {
            return Err(AuthError::NotFound("pending owner"));
        }
        user.totp = user.totp_pending.take();
        user.totp_last_step = Some(step);
        user.recovery_hashes = hashes;
        user.active = true;
        user.updated_at = now();
        db::put(&txn, USERS, &id.key(), &user)?;
        txn.commit()?;
        self.forget_people();
        *setup = None;
        drop(setup);
        self.audit(AuditEvent::new(username, "setup.complete", Outcome::Success).ip(ip));
        Ok((UserView::of(id, &user), codes))
    }

    /// [`Auth::setup_confirm`], then the owner's first session: setup
    /// proved the password and a TOTP code, so the browser is signed in.
    pub fn setup_confirm_and_sign_in(
        &self,
        token: &str,
        username: &str,
        code: &str,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<(UserView, Vec<SecretString>, NewSession), AuthError> {
        let (view, codes) = self.setup_confirm(token, username, code, ip)?;
        let (id, _) = self.user_by_name(username)?;
        let stamps = (self.epochs.password(id), self.epochs.sign_in(id));
        let user = self.get_user(id)?;
        let session = self.create_session(id, &user, stamps, ip, user_agent)?;
        Ok((view, codes, session))
    }

    /// `latchkey setup` on the host: the owner is active at once (whoever
    /// runs it controls the machine); the URI and codes go to the terminal.
    pub fn setup_host(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(UserView, EnrollmentView, Vec<SecretString>), AuthError> {
        if self.user_count()? > 0 {
            return Err(AuthError::Conflict(
                "already_set_up",
                "an owner already exists".into(),
            ));
        }
        if let Some((old, u)) = self.find_user(username)?
            && !u.active
        {
            self.delete_user_rows(old, &u.username)?;
        }
        let user = self.new_user(username, password, Role::Admin)?;
        let id = self.insert_user(user)?;
        let (sealed, view) = self.enrollment(id, username)?;
        let (codes, hashes) = recovery::generate();
        let user = self.update_user(id, |u| {
            u.totp = Some(sealed);
            u.recovery_hashes = hashes;
            Ok(())
        })?;
        if let Ok(mut t) = self.setup_token.lock() {
            *t = None;
        }
        self.audit(AuditEvent::new("host", "setup.complete", Outcome::Success).target(username));
        Ok((UserView::of(id, &user), view, codes))
    }

    fn delete_user_rows(&self, id: UserId, username: &str) -> Result<(), AuthError> {
        let txn = self.store.db().begin_write()?;
        db::delete(&txn, USERS, &id.key())?;
        db::delete(&txn, USERNAMES, username_key(username).as_bytes())?;
        txn.commit()?;
        self.forget_people();
        Ok(())
    }
}

// ---- login ------------------------------------------------------------------
impl Auth {
    fn lock_key(username: &str) -> String {
        username_key(username)
    }

    /// An attempt from a client address (an IPv6 /64 as one, like the
    /// rate limit), or `-` when there is none (the CLI on the host, or a
    /// caller that passes none).
    fn ip_source(ip: Option<IpAddr>) -> Source {
        Source {
            key: ip.map_or_else(|| "-".into(), |ip| ratelimit::bucket_key(ip).to_string()),
            known_device: false,
        }
    }

    /// The value of the known-device cookie set after `user_id` completed a
    /// sign-in: `v1.<user id>.<issued unix>.<HMAC-SHA256>`. It proves only
    /// that this browser signed in to this account before; it is no
    /// credential.
    pub fn device_cookie(&self, user_id: &str) -> String {
        let body = format!("v1.{user_id}.{}", now());
        let tag = ring::hmac::sign(&self.device_key, body.as_bytes());
        format!("{body}.{}", hex::encode(tag.as_ref()))
    }

    /// Where a sign-in to `username` comes from: the device, if `device`
    /// is a valid, unexpired cookie of this very account; else the address.
    fn login_source(&self, username: &str, ip: Option<IpAddr>, device: Option<&str>) -> Source {
        let known = device.and_then(|d| {
            let (body, tag) = d.rsplit_once('.')?;
            let tag = hex::decode(tag).ok()?;
            ring::hmac::verify(&self.device_key, body.as_bytes(), &tag).ok()?;
            let mut parts = body.split('.');
            let (Some("v1"), Some(user), Some(issued), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let issued: i64 = issued.parse().ok()?;
            let age = now().checked_sub(issued)?;
            if !(0..=DEVICE_LIFETIME.as_secs() as i64).contains(&age) {
                return None;
            }
            let (id, _) = self.find_user(username).ok()??;
            (id.to_string() == user).then(|| format!("device:{}", &hex::encode(&tag)[..16]))
        });
        match known {
            Some(key) => Source {
                key,
                known_device: true,
            },
            None => Self::ip_source(ip),
        }
    }

    /// Admits a credential attempt from `src` before anything is
    /// verified, or refuses it: a locked source, or (unless from a known
    /// device) a throttled account. Check and count are one step, so an
    /// attempt in flight counts as a failure until it ends otherwise
    /// ([`Auth::failed`], [`Auth::succeeded`], [`Auth::release`]); an
    /// attempt dropped on an error stays a failure.
    fn admit(&self, username: &str, src: &Source) -> Result<Attempt, AuthError> {
        let t = now().max(0) as u64;
        let account = Self::lock_key(username);
        let source_key = lockout::source_key(&account, &src.key);
        let locked = |l: lockout::Locked| AuthError::Locked {
            retry_after: l.retry_after,
        };
        let state = self.lockout.reserve(&source_key, t).map_err(locked)?;
        let throttle = if src.known_device {
            None
        } else {
            match self.throttle.reserve(&account, t) {
                Ok(filled) => Some((account, filled)),
                Err(l) => {
                    self.lockout.release(&source_key);
                    return Err(locked(l));
                }
            }
        };
        Ok(Attempt {
            source_key,
            locked_now: matches!(
                state,
                LockState::Locked {
                    just_locked: true,
                    ..
                }
            ),
            known_device: src.known_device,
            throttle,
        })
    }

    /// [`Auth::admit`] for an attempt from a client address (or none).
    fn admit_from(&self, username: &str, ip: Option<IpAddr>) -> Result<Attempt, AuthError> {
        self.admit(username, &Self::ip_source(ip))
    }

    /// A failed attempt: it stays counted; audited, with the lock or
    /// throttle it started.
    fn failed(&self, a: Attempt, username: &str, action: &str, reason: &str, ip: Option<IpAddr>) {
        self.audit(
            AuditEvent::new(username, action, Outcome::Failure)
                .ip(ip)
                .detail(reason),
        );
        if a.locked_now {
            self.audit(
                AuditEvent::new(username, "lockout", Outcome::Failure)
                    .ip(ip)
                    .detail(format!(
                        "after {} failures from this {}",
                        self.settings.lockout_threshold,
                        if a.known_device { "device" } else { "source" }
                    )),
            );
        }
        if a.throttle.as_ref().is_some_and(|(_, filled)| *filled) {
            self.audit(
                AuditEvent::new(username, "lockout.throttle", Outcome::Failure)
                    .ip(ip)
                    .detail("account-wide failure ceiling reached: attempts slowed"),
            );
        }
    }

    /// A success: the source's failures are forgotten and the account's
    /// room given back.
    fn succeeded(&self, a: Attempt) {
        self.lockout.record_success(&a.source_key);
        self.release_throttle(&a);
    }

    /// An attempt that proved nothing either way (a right password whose
    /// second step is to come, malformed input): its reservation is given
    /// back, earlier failures stay.
    fn release(&self, a: Attempt) {
        self.lockout.release(&a.source_key);
        self.release_throttle(&a);
    }

    fn release_throttle(&self, a: &Attempt) {
        if let Some((account, _)) = &a.throttle {
            self.throttle.release(account, now().max(0) as u64);
        }
    }

    /// The password step. Unknown users, wrong passwords and disabled
    /// accounts all get the same answer after the same work.
    pub fn login(
        &self,
        username: &str,
        password: &SecretString,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<LoginStep, AuthError> {
        self.login_with_device(username, password, ip, user_agent, None)
    }

    /// [`Auth::login`] from a browser that may hold a known-device cookie
    /// (`device`): a valid one of this account has its own lock and skips
    /// the account-wide throttle (see [`Source`]).
    pub fn login_with_device(
        &self,
        username: &str,
        password: &SecretString,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        device: Option<&str>,
    ) -> Result<LoginStep, AuthError> {
        let bad =
            || AuthError::Unauthorized("invalid_credentials", "wrong username or password".into());
        let src = self.login_source(username, ip, device);
        let attempt = self.admit(username, &src)?;
        let Some((id, _)) = self.find_user(username)? else {
            let _ = self.hasher.verify_dummy(password);
            // Counted like any other failure: an unknown name locks after
            // the same attempts, or the 429 would reveal which names exist.
            self.failed(attempt, username, "login", "unknown_user", ip);
            return Err(bad());
        };
        // Stamped before the row the password is checked against is read:
        // an account event from here on voids this sign-in.
        let stamps = (self.epochs.password(id), self.epochs.sign_in(id));
        let user = self
            .get_user(id)
            .map_err(|_| AuthError::unauthenticated())?;
        let ok = self
            .hasher
            .verify(password, &user.password_hash)
            .unwrap_or(false);
        if !ok || user.disabled || !user.active {
            let reason = if !ok {
                "wrong_password"
            } else if user.disabled {
                "disabled"
            } else {
                "setup_unfinished"
            };
            self.failed(attempt, username, "login", reason, ip);
            return Err(bad());
        }
        if self.hasher.needs_rehash(&user.password_hash)
            && let Ok(h) = self.hasher.hash(password)
        {
            let _ = self.update_user(id, |u| {
                u.password_hash = h;
                Ok(())
            });
        }
        // The password proved itself; the second step, if any, is counted
        // on its own.
        if user.totp.is_some() || user.role == Role::Admin {
            self.release(attempt);
        } else {
            self.succeeded(attempt);
        }
        if user.totp.is_none() && user.role == Role::Admin {
            // Admins must have a second factor: enroll now, before any session.
            let (sealed, enrollment) = self.enrollment(id, &user.username)?;
            self.update_user(id, |u| {
                u.totp_pending = Some(sealed);
                Ok(())
            })?;
            let ticket = self.new_ticket(id, src.clone(), stamps.0);
            self.audit(
                AuditEvent::new(username, "login.password", Outcome::Success)
                    .ip(ip)
                    .detail("mfa_enrollment_required"),
            );
            return Ok(LoginStep::EnrollRequired { ticket, enrollment });
        }
        if user.totp.is_some() {
            let ticket = self.new_ticket(id, src.clone(), stamps.0);
            self.audit(AuditEvent::new(username, "login.password", Outcome::Success).ip(ip));
            return Ok(LoginStep::MfaRequired { ticket });
        }
        self.audit(AuditEvent::new(username, "login", Outcome::Success).ip(ip));
        Ok(LoginStep::Done(
            self.create_session(id, &user, stamps, ip, user_agent)?,
        ))
    }

    /// Completes the enrollment a ticket was issued with.
    #[allow(clippy::too_many_arguments)] // the ticket's context, passed through
    fn mfa_enroll(
        &self,
        ticket: &str,
        id: UserId,
        user: &User,
        code: Option<&str>,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        attempt: Attempt,
        stamps: (Stamp, Stamp),
    ) -> Result<NewSession, AuthError> {
        let again = || AuthError::Unauthorized("invalid_ticket", "sign in again".into());
        let (Some(pending), Some(code)) = (user.totp_pending.clone(), code) else {
            self.release(attempt);
            return Err(if user.totp_pending.is_none() {
                again()
            } else {
                AuthError::Invalid {
                    field: "code",
                    reason: "confirm the new authenticator with a `code`".into(),
                }
            });
        };
        let mut probe = user.clone();
        probe.totp_last_step = None;
        let step = match self.check_totp(id, &probe, &pending, code) {
            Ok(s) => s,
            Err(e) => {
                self.failed(attempt, &user.username, "login.mfa", "invalid_code", ip);
                return Err(e);
            }
        };
        let (codes, hashes) = recovery::generate();
        // Checked again inside the write: a concurrent confirmation of the
        // same enrollment finds it gone and gets no second session.
        let taken = self.take_ticket(ticket, id).and_then(|()| {
            self.update_user(id, |u| {
                if u.totp.is_some() || u.totp_pending.as_deref() != Some(pending.as_slice()) {
                    return Err(again());
                }
                u.totp = u.totp_pending.take();
                u.totp_last_step = Some(step);
                u.recovery_hashes = hashes;
                Ok(())
            })
        });
        let user = match taken {
            Ok(u) => u,
            Err(e) => {
                // The code was right; a concurrent request won the ticket.
                self.release(attempt);
                return Err(e);
            }
        };
        self.succeeded(attempt);
        self.audit(AuditEvent::new(&user.username, "mfa.enroll", Outcome::Success).ip(ip));
        self.audit(
            AuditEvent::new(&user.username, "login", Outcome::Success)
                .ip(ip)
                .detail("totp_enrolled"),
        );
        let mut s = self.create_session(id, &user, stamps, ip, user_agent)?;
        s.recovery_codes = codes;
        Ok(s)
    }

    fn new_ticket(&self, id: UserId, source: Source, password_epoch: Stamp) -> SecretString {
        let ticket = random_token("lkt_");
        if let Ok(mut t) = self.tickets.lock() {
            let n = now();
            t.retain(|_, v| v.expires_at > n);
            t.insert(
                token_hash(ticket.expose_secret()),
                Ticket {
                    user_id: id,
                    expires_at: n + MFA_TICKET_SECS,
                    source,
                    password_epoch,
                },
            );
        }
        ticket
    }

    /// The user a live ticket was issued to, where its password step came
    /// from and its password-epoch stamp (the ticket stays).
    fn ticket_user(&self, ticket: &str) -> Result<(UserId, Source, Stamp), AuthError> {
        let mut t = self
            .tickets
            .lock()
            .map_err(|_| AuthError::Internal("tickets".into()))?;
        let h = token_hash(ticket);
        match t.get(&h) {
            Some(v) if v.expires_at > now() => Ok((v.user_id, v.source.clone(), v.password_epoch)),
            _ => {
                t.remove(&h);
                Err(Self::ticket_expired())
            }
        }
    }

    /// Consumes a ticket once its code has been verified: of concurrent
    /// requests on one ticket, exactly one gets past this.
    fn take_ticket(&self, ticket: &str, id: UserId) -> Result<(), AuthError> {
        let mut t = self
            .tickets
            .lock()
            .map_err(|_| AuthError::Internal("tickets".into()))?;
        match t.remove(&token_hash(ticket)) {
            Some(v) if v.expires_at > now() && v.user_id == id => Ok(()),
            _ => Err(Self::ticket_expired()),
        }
    }

    fn ticket_expired() -> AuthError {
        AuthError::Unauthorized(
            "invalid_ticket",
            "the login step expired or is unknown; sign in again".into(),
        )
    }

    fn code_replayed() -> AuthError {
        AuthError::Unauthorized(
            "code_replayed",
            "this code was already used; wait for the next one".into(),
        )
    }

    /// Records TOTP `step` of the confirmed secret `sealed` as used, in the
    /// same write transaction that reads the stored last step: of
    /// concurrent requests with one code, exactly one passes.
    fn consume_totp_step(&self, id: UserId, sealed: &[u8], step: u64) -> Result<User, AuthError> {
        self.update_user(id, |u| {
            if u.totp.as_deref() != Some(sealed) {
                return Err(AuthError::Unauthorized(
                    "invalid_code",
                    "the second factor changed; try again".into(),
                ));
            }
            if u.totp_last_step.is_some_and(|last| step <= last) {
                return Err(Self::code_replayed());
            }
            u.totp_last_step = Some(step);
            Ok(())
        })
    }

    /// Removes recovery code `code` from the stored set, reading the set
    /// inside the write transaction: two different codes at once both
    /// leave, one code twice is accepted once.
    fn consume_recovery_code(&self, id: UserId, code: &str) -> Result<User, AuthError> {
        self.update_user(id, |u| {
            if recovery::find_and_consume(code, &mut u.recovery_hashes) {
                Ok(())
            } else {
                Err(Self::invalid_recovery_code())
            }
        })
    }

    fn invalid_recovery_code() -> AuthError {
        AuthError::Unauthorized(
            "invalid_code",
            "that recovery code is not valid (each works once)".into(),
        )
    }

    /// The second step: a TOTP code or a recovery code for a ticket.
    ///
    /// Cheap checks and the code's verification come first, so a wrong
    /// code leaves the ticket usable; then the ticket is taken and the
    /// code consumed, each atomically, so concurrent requests with one
    /// ticket or one code yield one session.
    pub fn mfa(
        &self,
        ticket: &str,
        code: Option<&str>,
        recovery_code: Option<&str>,
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<NewSession, AuthError> {
        let (id, src, password_epoch) = self.ticket_user(ticket)?;
        // Stamped before the row the code is checked against is read.
        let stamps = (password_epoch, self.epochs.sign_in(id));
        let user = self.get_user(id)?;
        if user.totp.is_some() && code.is_some() == recovery_code.is_some() {
            return Err(AuthError::Invalid {
                field: "code",
                reason: "send exactly one of `code` or `recovery_code`".into(),
            });
        }
        let attempt = self.admit(&user.username, &src)?;
        if user.totp.is_none() {
            return self.mfa_enroll(ticket, id, &user, code, ip, user_agent, attempt, stamps);
        }
        let sealed = user.totp.clone().ok_or_else(Self::ticket_expired)?;
        let result = match (code, recovery_code) {
            (Some(c), None) => self
                .check_totp(id, &user, &sealed, c)
                .and_then(|step| {
                    self.take_ticket(ticket, id)?;
                    self.consume_totp_step(id, &sealed, step)
                })
                .map(|u| (u, "totp")),
            (None, Some(r)) => {
                // A dry run first, so a wrong code does not burn the ticket.
                let mut probe = user.recovery_hashes.clone();
                if recovery::find_and_consume(r, &mut probe) {
                    self.take_ticket(ticket, id)
                        .and_then(|()| self.consume_recovery_code(id, r))
                        .map(|u| (u, "recovery_code"))
                } else {
                    Err(Self::invalid_recovery_code())
                }
            }
            _ => Err(AuthError::Invalid {
                field: "code",
                reason: "send exactly one of `code` or `recovery_code`".into(),
            }),
        };
        match result {
            Ok((user, how)) => {
                if how == "recovery_code" {
                    self.audit(
                        AuditEvent::new(&user.username, "recovery_code.use", Outcome::Success)
                            .ip(ip),
                    );
                }
                self.succeeded(attempt);
                self.audit(
                    AuditEvent::new(&user.username, "login", Outcome::Success)
                        .ip(ip)
                        .detail(how),
                );
                self.create_session(id, &user, stamps, ip, user_agent)
            }
            Err(e) => {
                let reason = match &e {
                    AuthError::Unauthorized(code, _) => *code,
                    AuthError::Invalid { .. } => {
                        self.release(attempt);
                        return Err(e);
                    }
                    _ => "invalid",
                };
                self.failed(attempt, &user.username, "login.mfa", reason, ip);
                Err(e)
            }
        }
    }
}

// ---- sessions and tokens -------------------------------------------------
impl Auth {
    /// Writes the session of a sign-in whose credentials were verified
    /// after `stamps` (password epoch, sign-in epoch) were taken.
    fn create_session(
        &self,
        id: UserId,
        user: &User,
        stamps: (Stamp, Stamp),
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<NewSession, AuthError> {
        let token = random_token("lks_");
        let t = now();
        let expires_at = expiry(t, self.settings.session_lifetime);
        let session = Session {
            user_id: id,
            created_at: t,
            last_seen_at: t,
            expires_at,
            idle_secs: i64::try_from(self.settings.session_idle.as_secs()).unwrap_or(i64::MAX),
            last_auth_at: t,
            ip: ip.map(|i| i.to_string()),
            // From the network: capped and cleaned like an audit field.
            user_agent: user_agent.map(|u| audit::clean(u, 200)),
        };
        let txn = self.store.db().begin_write()?;
        // The account as it is now: a sign-in whose password step ran
        // before the account was disabled or promoted (which end every
        // sign-in) must not slip in after.
        let now_row = db::get::<User>(&txn.open_table(USERS)?, &id.key())?;
        if !now_row.is_some_and(|u| u.active && !u.disabled && u.role == user.role) {
            return Err(AuthError::unauthenticated());
        }
        // And no account event (password change, new recovery codes…)
        // between the verification and now: its revocation found no
        // session of ours to end, so we must not write one (see `auth::epoch`).
        if !self.epochs.holds(id, stamps.0, stamps.1) {
            return Err(AuthError::Unauthorized(
                "invalid_ticket",
                "the account changed during sign-in; sign in again".into(),
            ));
        }
        index::put_session(&txn, &token_hash(token.expose_secret()), &session)?;
        txn.commit()?;
        Ok(NewSession {
            recovery_codes: Vec::new(),
            token,
            user: UserView::of(id, user),
            expires_at,
        })
    }

    fn principal(&self, id: UserId, via: Via) -> Result<Principal, AuthError> {
        let known = self.people.read().ok().and_then(|p| p.get(&id).cloned());
        let (username, role) = match known {
            Some(known) => known,
            None => {
                let generation = self.people_gen.load(Ordering::Acquire);
                let user = self
                    .get_user(id)
                    .map_err(|_| AuthError::unauthenticated())?;
                if user.disabled || !user.active {
                    return Err(AuthError::unauthenticated());
                }
                let known = (user.username, user.role);
                if let Ok(mut p) = self.people.write()
                    && self.people_gen.load(Ordering::Acquire) == generation
                {
                    p.insert(id, known.clone());
                }
                known
            }
        };
        Ok(Principal {
            user_id: id,
            username,
            role,
            via,
        })
    }

    /// After a committed change to `users`: the next request reads the row.
    fn forget_people(&self) {
        // Bumped under the lock, so a fill that read the old row before
        // the commit either sees the new generation or is cleared here.
        if let Ok(mut p) = self.people.write() {
            self.people_gen.fetch_add(1, Ordering::AcqRel);
            p.clear();
        }
    }

    /// The session behind a cookie value; expired or idle sessions are
    /// deleted and refused.
    pub fn authenticate_session(&self, token: &str) -> Result<Principal, AuthError> {
        let hash = token_hash(token);
        let txn = self.store.db().begin_read()?;
        let s: Session =
            db::get(&txn.open_table(SESSIONS)?, &hash)?.ok_or_else(AuthError::unauthenticated)?;
        drop(txn);
        let t = now();
        if t >= s.expires_at || t >= s.last_seen_at.saturating_add(s.idle_secs) {
            let w = self.store.db().begin_write()?;
            index::delete_session(&w, &hash)?;
            w.commit()?;
            return Err(AuthError::unauthenticated());
        }
        if t - s.last_seen_at >= TOUCH_EVERY_SECS {
            let w = self.store.db().begin_write()?;
            // Read again inside the write: a logout that committed since the
            // read above must not be undone by writing the old row back.
            let current = db::get::<Session>(&w.open_table(SESSIONS)?, &hash)?;
            let Some(mut s2) = current else {
                return Err(AuthError::unauthenticated());
            };
            s2.last_seen_at = t;
            db::put(&w, SESSIONS, &hash, &s2)?;
            w.commit()?;
        }
        self.principal(
            s.user_id,
            Via::Session {
                hash,
                last_auth_at: s.last_auth_at,
            },
        )
    }

    /// `Authorization: Bearer …`: an access token (`lka_…`) or an API key (`lk_…`).
    pub fn authenticate_bearer(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.starts_with("lka_") {
            let hash = token_hash(token);
            let txn = self.store.db().begin_read()?;
            let a: AccessToken = db::get(&txn.open_table(ACCESS_TOKENS)?, &hash)?
                .ok_or_else(AuthError::unauthenticated)?;
            let t = now();
            // An access token lives no longer than what it came from: its
            // family (not revoked, within its absolute lifetime) and that
            // family's session (not ended, expired or idle).
            let family = db::get::<Family>(
                &txn.open_table(REFRESH_FAMILIES)?,
                &a.family_id.to_be_bytes(),
            )?;
            let alive = match family {
                Some(f) if !f.revoked && t < self.family_end(&f) => {
                    let session = db::get::<Session>(&txn.open_table(SESSIONS)?, &f.session_hash)?;
                    session.is_some_and(|s| session_live(&s, t))
                }
                _ => false,
            };
            if t >= a.expires_at || !alive {
                return Err(AuthError::unauthenticated());
            }
            return self.principal(
                a.user_id,
                Via::AccessToken {
                    family_id: a.family_id,
                },
            );
        }
        self.authenticate_key(token)
    }

    /// Verifies an API key from memory: checksum first (typos never reach a
    /// lookup), then a constant-time hash comparison.
    pub fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        let parsed = apikey::parse(key).map_err(|_| AuthError::unauthenticated())?;
        let cached = {
            let keys = self
                .keys
                .read()
                .map_err(|_| AuthError::Internal("keys".into()))?;
            keys.get(parsed.id.as_str()).cloned()
        }
        .ok_or_else(AuthError::unauthenticated)?;
        if !apikey::verify(&parsed, &cached.hash) || cached.expires_at.is_some_and(|e| now() >= e) {
            return Err(AuthError::unauthenticated());
        }
        if let Ok(mut m) = self.key_last_used.lock() {
            let t = now();
            match m.get_mut(parsed.id.as_str()) {
                Some(last) => *last = t,
                None => {
                    m.insert(parsed.id.to_string(), t);
                }
            }
        }
        self.principal(
            cached.user_id,
            Via::ApiKey {
                id: parsed.id.to_string(),
                scopes: cached.scopes,
            },
        )
    }

    /// Exchanges a browser session for an access token and a refresh token.
    pub fn issue_tokens(&self, p: &Principal) -> Result<TokenPair, AuthError> {
        let Via::Session { hash, .. } = &p.via else {
            return Err(AuthError::Forbidden(
                "session_required",
                "tokens are issued to a signed-in session".into(),
            ));
        };
        let family_id: u128 = rand::random();
        let family = Family {
            user_id: p.user_id,
            session_hash: *hash,
            created_at: now(),
            revoked: false,
        };
        let end = self.family_end(&family);
        let txn = self.store.db().begin_write()?;
        // The session as it is now: one revoked since this request was
        // authenticated gets no tokens (they would be dead anyway, but a
        // family must not stand on a session that is gone).
        let session = db::get::<Session>(&txn.open_table(SESSIONS)?, hash)?;
        if !session.is_some_and(|s| session_live(&s, now())) {
            return Err(AuthError::unauthenticated());
        }
        index::put_family(&txn, family_id, &family)?;
        let pair = self.mint_pair(&txn, p.user_id, family_id, end)?;
        txn.commit()?;
        Ok(pair)
    }

    /// When a refresh family ends whatever its tokens say:
    /// `auth.refresh_absolute_lifetime` after the sign-in it came from was
    /// exchanged (the family's `created_at`).
    fn family_end(&self, f: &Family) -> i64 {
        let lifetime =
            i64::try_from(self.settings.refresh_absolute_lifetime.as_secs()).unwrap_or(i64::MAX);
        f.created_at.saturating_add(lifetime)
    }

    /// A new access/refresh pair of `family_id`, neither outliving the
    /// family's absolute end `family_end`.
    fn mint_pair(
        &self,
        txn: &redb::WriteTransaction,
        user_id: UserId,
        family_id: u128,
        family_end: i64,
    ) -> Result<TokenPair, AuthError> {
        let access = random_token("lka_");
        let refresh = random_token("lkr_");
        let t = now();
        let ttl = (self.settings.access_token_lifetime.as_secs() as i64).min(family_end - t);
        index::put_access(
            txn,
            &token_hash(access.expose_secret()),
            &AccessToken {
                user_id,
                family_id,
                expires_at: t + ttl,
            },
        )?;
        index::put_refresh(
            txn,
            &token_hash(refresh.expose_secret()),
            &RefreshToken {
                family_id,
                user_id,
                expires_at: (t + self.settings.refresh_token_lifetime.as_secs() as i64)
                    .min(family_end),
                used: false,
            },
        )?;
        Ok(TokenPair {
            access_token: SecretView(access),
            refresh_token: SecretView(refresh),
            expires_in: ttl,
            token_type: "Bearer",
        })
    }

    /// Rotates a refresh token. Presenting one that was already used means
    /// it was stolen (or replayed): the whole family is revoked.
    pub fn refresh(&self, token: &str, ip: Option<IpAddr>) -> Result<TokenPair, AuthError> {
        let hash = token_hash(token.trim());
        let txn = self.store.db().begin_write()?;
        let r: RefreshToken = db::get(&txn.open_table(REFRESH_TOKENS)?, &hash)?
            .ok_or_else(AuthError::unauthenticated)?;
        let fam_key = r.family_id.to_be_bytes();
        let mut family: Family = db::get(&txn.open_table(REFRESH_FAMILIES)?, &fam_key)?
            .ok_or_else(AuthError::unauthenticated)?;
        let user = db::get::<User>(&txn.open_table(USERS)?, &r.user_id.key())?;
        let username = user
            .as_ref()
            .map(|u| u.username.clone())
            .unwrap_or_default();
        if r.used || family.revoked {
            family.revoked = true;
            db::put(&txn, REFRESH_FAMILIES, &fam_key, &family)?;
            Self::delete_family_tokens(&txn, r.family_id)?;
            audit::append_in(
                &txn,
                AuditEvent::new(&username, "token.reuse", Outcome::Failure)
                    .ip(ip)
                    .detail("refresh token presented twice: family revoked"),
            )?;
            txn.commit()?;
            tracing::warn!(user = %username, "refresh token reuse detected; token family revoked");
            return Err(AuthError::Unauthorized(
                "token_reused",
                "this refresh token was already used; all tokens from that sign-in are revoked"
                    .into(),
            ));
        }
        // A family renews itself only while everything it stands on
        // holds: the token's own expiry, the family's absolute lifetime,
        // its session (not signed out, revoked, expired or idle) and an
        // enabled account. Otherwise the family ends here, access tokens
        // included.
        let t = now();
        let session = db::get::<Session>(&txn.open_table(SESSIONS)?, &family.session_hash)?
            .filter(|s| session_live(s, t));
        let end = self.family_end(&family);
        let usable = t < r.expires_at
            && t < end
            && session.is_some()
            && user.is_some_and(|u| u.active && !u.disabled);
        let Some(mut session) = session.filter(|_| usable) else {
            family.revoked = true;
            db::put(&txn, REFRESH_FAMILIES, &fam_key, &family)?;
            Self::delete_family_tokens(&txn, r.family_id)?;
            txn.commit()?;
            return Err(AuthError::unauthenticated());
        };
        // Refreshing is the session's activity too: a client living on
        // tokens keeps its sign-in from going idle, never past its end.
        session.last_seen_at = t;
        db::put(&txn, SESSIONS, &family.session_hash, &session)?;
        let mut used = r.clone();
        used.used = true;
        db::put(&txn, REFRESH_TOKENS, &hash, &used)?;
        let pair = self.mint_pair(&txn, r.user_id, r.family_id, end.min(session.expires_at))?;
        txn.commit()?;
        Ok(pair)
    }

    /// Deletes a family's access tokens and marks its refresh tokens used,
    /// through the index (no table scan).
    fn delete_family_tokens(
        txn: &redb::WriteTransaction,
        family_id: u128,
    ) -> Result<(), AuthError> {
        let tokens = index::tokens_of_family(txn, family_id)?;
        for h in tokens.access {
            index::delete_access(txn, family_id, &h)?;
        }
        // Used refresh tokens of a revoked family stay, marked, so a late
        // replay is still recognised as reuse.
        for h in tokens.refresh {
            let row = db::get::<RefreshToken>(&txn.open_table(REFRESH_TOKENS)?, &h)?;
            if let Some(mut row) = row
                && !row.used
            {
                row.used = true;
                index::put_refresh(txn, &h, &row)?;
            }
        }
        Ok(())
    }

    /// Ends what authenticated this request: a session (and the tokens
    /// issued from it) or an access token's family.
    pub fn logout(&self, p: &Principal) -> Result<(), AuthError> {
        let txn = self.store.db().begin_write()?;
        match &p.via {
            Via::Session { hash, .. } => {
                index::delete_session(&txn, hash)?;
                Self::revoke_families_of_session(&txn, hash)?;
            }
            Via::AccessToken { family_id } => {
                let key = family_id.to_be_bytes();
                // Bound first: the table must be closed before `put` reopens it.
                let family = db::get::<Family>(&txn.open_table(REFRESH_FAMILIES)?, &key)?;
                if let Some(mut f) = family {
                    f.revoked = true;
                    db::put(&txn, REFRESH_FAMILIES, &key, &f)?;
                }
                Self::delete_family_tokens(&txn, *family_id)?;
            }
            Via::ApiKey { .. } | Via::Host => {}
        }
        audit::append_in(&txn, AuditEvent::new(p.actor(), "logout", Outcome::Success))?;
        txn.commit()?;
        self.revocations.bump();
        Ok(())
    }

    fn revoke_families_of_session(
        txn: &redb::WriteTransaction,
        session: &[u8; 32],
    ) -> Result<(), AuthError> {
        for id in index::families_of_session(txn, session)? {
            Self::revoke_family(txn, id)?;
        }
        Ok(())
    }

    /// Marks family `id` revoked and ends its tokens.
    fn revoke_family(txn: &redb::WriteTransaction, id: u128) -> Result<(), AuthError> {
        let key = id.to_be_bytes();
        let family = db::get::<Family>(&txn.open_table(REFRESH_FAMILIES)?, &key)?;
        if let Some(mut f) = family
            && !f.revoked
        {
            f.revoked = true;
            db::put(txn, REFRESH_FAMILIES, &key, &f)?;
            Self::delete_family_tokens(txn, id)?;
        }
        Ok(())
    }

    /// Privileged actions call this: the session must have proved a factor
    /// within `reauth_window`. Keys and access tokens never qualify for
    /// what needs it, except the host.
    pub fn require_recent_auth(&self, p: &Principal) -> Result<(), AuthError> {
        match &p.via {
            Via::Host => Ok(()),
            Via::Session { last_auth_at, .. }
                if now() - last_auth_at <= self.settings.reauth_window.as_secs() as i64 =>
            {
                Ok(())
            }
            _ => Err(AuthError::Forbidden(
                "reauth_required",
                "confirm it's you: POST /api/auth/reauth with your password or a TOTP code".into(),
            )),
        }
    }

    /// The step-up rule for secrets (docs/security, "Step-up"): every path
    /// that yields a secret's plaintext, or mints a credential that can,
    /// calls this after its permission check — reveal, backup, a
    /// connection's token, a key with a [`Scope::needs_step_up`] scope, a
    /// provider's client secret. Refusals are audited as `action` (detail
    /// `reauth_required`); the caller audits the success.
    ///
    /// - the host token passes: it stands for someone at the machine, who
    ///   holds the data directory and its master key anyway;
    /// - a session passes when it proved a factor within `reauth_window`;
    /// - an access token never does: it is a session lent to a program for
    ///   15 minutes, no proof that a person is present;
    /// - an API key passes only under [`KeyStepUp::UseGrant`].
    pub fn step_up(
        &self,
        p: &Principal,
        keys: KeyStepUp,
        action: &str,
        target: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let res = match (&p.via, keys) {
            (Via::ApiKey { .. }, KeyStepUp::UseGrant) => Ok(()),
            _ => self.require_recent_auth(p),
        };
        if res.is_err() {
            let mut e = AuditEvent::new(p.actor(), action, Outcome::Failure)
                .ip(ip)
                .detail("reauth_required");
            if let Some(t) = target {
                e = e.target(t);
            }
            self.audit(e);
        }
        res
    }

    /// Re-authentication: a TOTP code (or the password when the user has
    /// no second factor) refreshes the session's `last_auth_at`.
    pub fn reauth(
        &self,
        p: &Principal,
        password: Option<&SecretString>,
        code: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let Via::Session { hash, .. } = &p.via else {
            return Err(AuthError::Forbidden(
                "session_required",
                "re-authentication is for signed-in sessions".into(),
            ));
        };
        let attempt = self.admit_from(&p.username, ip)?;
        let user = self.get_user(p.user_id)?;
        let ok = match (&user.totp, code, password) {
            (Some(sealed), Some(c), _) => match self
                .check_totp(p.user_id, &user, sealed, c)
                .and_then(|step| self.consume_totp_step(p.user_id, sealed, step))
            {
                Ok(_) => true,
                Err(AuthError::Unauthorized(..)) => false,
                Err(e) => return Err(e),
            },
            (None, _, Some(pw)) => self.hasher.verify(pw, &user.password_hash).unwrap_or(false),
            _ => {
                self.release(attempt);
                return Err(AuthError::Invalid {
                    field: "code",
                    reason: if user.totp.is_some() {
                        "send a TOTP `code`".into()
                    } else {
                        "send your `password`".into()
                    },
                });
            }
        };
        if !ok {
            self.failed(attempt, &p.username, "reauth", "invalid", ip);
            return Err(AuthError::Unauthorized(
                "invalid_code",
                "that did not match".into(),
            ));
        }
        self.succeeded(attempt);
        let txn = self.store.db().begin_write()?;
        // Bound first: the table must be closed before `put` reopens it.
        let session = db::get::<Session>(&txn.open_table(SESSIONS)?, hash)?;
        if let Some(mut s) = session {
            s.last_auth_at = now();
            db::put(&txn, SESSIONS, hash, &s)?;
        }
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "reauth", Outcome::Success).ip(ip),
        )?;
        txn.commit()?;
        Ok(())
    }
}

/// What [`Auth::prune_expired`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub sessions: usize,
    pub access_tokens: usize,
    pub refresh_tokens: usize,
    pub families: usize,
    pub invites: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.sessions + self.access_tokens + self.refresh_tokens + self.families + self.invites
    }
}

/// Rows deleted per write transaction while pruning: keeps each one short,
/// so sign-ins never wait long behind the pruner.
const PRUNE_BATCH: usize = 500;

// ---- pruning ----------------------------------------------------------------
impl Auth {
    /// Deletes what can no longer be used, as of `t`: expired or idle
    /// sessions, expired access and refresh tokens, families with no token
    /// left, expired invites; and forgets expired MFA tickets, a stale
    /// setup token, drained lockout, throttle and rate-limit entries. Run
    /// periodically by the server (`latchkey serve`); each write
    /// transaction deletes at most [`PRUNE_BATCH`] rows and re-checks every
    /// row inside it.
    pub fn prune_expired(&self, t: i64) -> Result<Pruned, AuthError> {
        let mut out = Pruned::default();
        let session_dead =
            |s: &Session| t >= s.expires_at || t >= s.last_seen_at.saturating_add(s.idle_secs);
        out.sessions = self.prune_table(
            SESSIONS,
            |b| postcard::from_bytes::<Session>(b).is_ok_and(|s| session_dead(&s)),
            |txn, k| {
                let Ok(h) = <[u8; 32]>::try_from(k) else {
                    return Ok(false);
                };
                let row = db::get::<Session>(&txn.open_table(SESSIONS)?, &h)?;
                if row.as_ref().is_some_and(&session_dead) {
                    index::delete_session(txn, &h)?;
                    Self::revoke_families_of_session(txn, &h)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )?;
        out.access_tokens = self.prune_table(
            ACCESS_TOKENS,
            |b| postcard::from_bytes::<AccessToken>(b).is_ok_and(|a| t >= a.expires_at),
            |txn, k| {
                let Ok(h) = <[u8; 32]>::try_from(k) else {
                    return Ok(false);
                };
                let row = db::get::<AccessToken>(&txn.open_table(ACCESS_TOKENS)?, &h)?;
                match row {
                    Some(a) if t >= a.expires_at => {
                        index::delete_access(txn, a.family_id, &h)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )?;
        out.refresh_tokens = self.prune_table(
            REFRESH_TOKENS,
            |b| postcard::from_bytes::<RefreshToken>(b).is_ok_and(|r| t >= r.expires_at),
            |txn, k| {
                let Ok(h) = <[u8; 32]>::try_from(k) else {
                    return Ok(false);
                };
                let row = db::get::<RefreshToken>(&txn.open_table(REFRESH_TOKENS)?, &h)?;
                match row {
                    Some(r) if t >= r.expires_at => {
                        index::delete_refresh(txn, r.family_id, &h)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            },
        )?;
        // A family without a token can never be used again.
        out.families = self.prune_table(
            REFRESH_FAMILIES,
            |_| true,
            |txn, k| {
                let Ok(b) = <[u8; 16]>::try_from(k) else {
                    return Ok(false);
                };
                let id = u128::from_be_bytes(b);
                let tokens = index::tokens_of_family(txn, id)?;
                if tokens.access.is_empty() && tokens.refresh.is_empty() {
                    index::delete_family(txn, id)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )?;
        out.invites = self.prune_table(
            INVITES,
            |b| postcard::from_bytes::<Invite>(b).is_ok_and(|i| t >= i.expires_at),
            |txn, k| {
                let row = db::get::<Invite>(&txn.open_table(INVITES)?, k)?;
                if row.is_some_and(|i| t >= i.expires_at) {
                    db::delete(txn, INVITES, k)?;
                    return Ok(true);
                }
                Ok(false)
            },
        )?;
        if let Ok(mut tickets) = self.tickets.lock() {
            tickets.retain(|_, v| v.expires_at > t);
        }
        if let Ok(mut token) = self.setup_token.lock()
            && token.is_some_and(|(_, exp)| t >= exp)
        {
            *token = None;
        }
        let tu = t.max(0) as u64;
        self.lockout.sweep(tu);
        self.throttle.sweep(tu);
        self.limiter.sweep(std::time::Instant::now());
        Ok(out)
    }

    /// Finds the keys of `table` whose value `candidate` accepts (in a
    /// read transaction, so nothing waits on the scan), then runs `remove`
    /// on each inside write transactions of [`PRUNE_BATCH`] keys; `remove`
    /// re-reads the row and says whether it deleted it.
    fn prune_table(
        &self,
        table: latchkey_migrations::ByteTable,
        candidate: impl Fn(&[u8]) -> bool,
        remove: impl Fn(&redb::WriteTransaction, &[u8]) -> Result<bool, AuthError>,
    ) -> Result<usize, AuthError> {
        let keys: Vec<Vec<u8>> = {
            let txn = self.store.db().begin_read()?;
            let t = txn.open_table(table)?;
            let mut keys = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                if candidate(v.value()) {
                    keys.push(k.value().to_vec());
                }
            }
            keys
        };
        let mut removed = 0;
        for chunk in keys.chunks(PRUNE_BATCH) {
            let txn = self.store.db().begin_write()?;
            for k in chunk {
                if remove(&txn, k)? {
                    removed += 1;
                }
            }
            txn.commit()?;
        }
        Ok(removed)
    }
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A session as listed to its user.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// First 16 hex digits of the token's hash: names the session without
    /// revealing anything usable.
    pub id: String,
    pub current: bool,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

// ---- API keys ----------------------------------------------------------
impl Auth {
    /// Creates a key for `p`'s user. Scopes beyond the owner's role are
    /// refused; a key with a scope that reaches secrets
    /// ([`Scope::needs_step_up`]) needs the step-up of a person. The host
    /// stands for no user and cannot own keys.
    pub fn create_key(
        &self,
        p: &Principal,
        name: &str,
        scopes: &[String],
        expires_at: Option<i64>,
    ) -> Result<(KeyView, SecretString), AuthError> {
        if matches!(p.via, Via::Host) {
            return Err(AuthError::Forbidden(
                "host_cannot_own_keys",
                "the host's admin token stands for no user, so a key made with it would belong to nobody: sign in as the user who should own the key (or use an `admin` key of theirs)".into(),
            ));
        }
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid {
                field: "name",
                reason: "1 to 64 characters, no control characters".into(),
            });
        }
        if scopes.is_empty() {
            return Err(AuthError::Invalid {
                field: "scopes",
                reason: "give at least one scope, e.g. `proxy:openai`".into(),
            });
        }
        let set = ScopeSet::parse(scopes).map_err(|e| AuthError::Invalid {
            field: "scopes",
            reason: e.to_string(),
        })?;
        for s in set.iter() {
            if !p.allows(s) {
                return Err(AuthError::Forbidden(
                    "scope_exceeds_role",
                    format!("your role cannot grant `{s}`"),
                ));
            }
        }
        if set.iter().any(Scope::needs_step_up) {
            self.step_up(p, KeyStepUp::Refuse, "key.create", None, None)?;
        }
        if let Some(e) = expires_at
            && e <= now()
        {
            return Err(AuthError::Invalid {
                field: "expires_at",
                reason: "must be in the future".into(),
            });
        }
        if matches!(p.via, Via::ApiKey { .. }) && !p.allows(&Scope::Admin) {
            return Err(AuthError::Forbidden(
                "forbidden",
                "an API key cannot create keys unless it has the `admin` scope".into(),
            ));
        }
        let generated = apikey::generate();
        let row = ApiKeyRow {
            user_id: p.user_id,
            name: name.to_string(),
            hash: generated.hash,
            scopes: set.iter().map(ToString::to_string).collect(),
            created_at: now(),
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        let id = generated.id.to_string();
        let txn = self.store.db().begin_write()?;
        // A bounded number of live keys per user, counted in the writing
        // transaction (redb runs one at a time, so parallel requests
        // cannot overshoot): each key is a row, a cache entry and usage rows.
        let t = now();
        let live = db::scan::<ApiKeyRow>(&txn.open_table(API_KEYS)?)?
            .iter()
            .filter(|(_, k)| {
                k.user_id == p.user_id
                    && k.revoked_at.is_none()
                    && k.expires_at.is_none_or(|e| e > t)
            })
            .count();
        if live >= MAX_KEYS_PER_USER {
            return Err(AuthError::Conflict(
                "too_many_keys",
                format!(
                    "you have {live} active API keys, the most one user may have; revoke unused ones first"
                ),
            ));
        }
        // The owner as they are now, in the transaction that writes the
        // key: one disabled, or whose role changed, since this request was
        // authenticated would get a key outliving that change.
        let owner = db::get::<User>(&txn.open_table(USERS)?, &p.user_id.key())?;
        match owner {
            Some(u) if u.active && !u.disabled && u.role == p.role => {}
            Some(u) if u.active && !u.disabled => {
                return Err(AuthError::Conflict(
                    "account_changed",
                    "your role changed while the key was being made; try again".into(),
                ));
            }
            _ => return Err(AuthError::unauthenticated()),
        }
        db::put(&txn, API_KEYS, id.as_bytes(), &row)?;
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "key.create", Outcome::Success)
                .target(&id)
                .detail(row.scopes.join(" ")),
        )?;
        txn.commit()?;
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(
                id.clone(),
                CachedKey {
                    user_id: p.user_id,
                    hash: generated.hash,
                    scopes: Arc::new(set),
                    expires_at,
                },
            );
        }
        // A revocation that committed after our commit but before the
        // insert (disabling the owner, a role change) has already emptied
        // the cache of what it revoked: look again, now that the key is in.
        let revoked = {
            let txn = self.store.db().begin_read()?;
            db::get::<ApiKeyRow>(&txn.open_table(API_KEYS)?, id.as_bytes())?
                .is_none_or(|r| r.revoked_at.is_some())
        };
        if revoked {
            self.forget_keys(std::slice::from_ref(&id));
            return Err(AuthError::unauthenticated());
        }
        Ok((self.key_view(&id, &row, &p.username), generated.secret))
    }

    fn key_view(&self, id: &str, row: &ApiKeyRow, owner: &str) -> KeyView {
        let pending = self
            .key_last_used
            .lock()
            .ok()
            .and_then(|m| m.get(id).copied());
        KeyView {
            id: id.to_string(),
            name: row.name.clone(),
            owner: owner.to_string(),
            scopes: row.scopes.clone(),
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: pending.or(row.last_used_at),
            revoked_at: row.revoked_at,
        }
    }

    /// The user's own keys; admins with `all` see everyone's.
    pub fn list_keys(&self, p: &Principal, all: bool) -> Result<Vec<KeyView>, AuthError> {
        let all = all && p.acts_for_everyone();
        let txn = self.store.db().begin_read()?;
        let rows: Vec<(Vec<u8>, ApiKeyRow)> = db::scan(&txn.open_table(API_KEYS)?)?;
        let users = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for (k, row) in rows {
            if !all && row.user_id != p.user_id {
                continue;
            }
            let owner = db::get::<User>(&users, &row.user_id.key())?
                .map(|u| u.username)
                .unwrap_or_default();
            out.push(self.key_view(&String::from_utf8_lossy(&k), &row, &owner));
        }
        out.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        Ok(out)
    }

    /// Revokes a key: effective on the very next request.
    pub fn revoke_key(&self, p: &Principal, id: &str) -> Result<(), AuthError> {
        let txn = self.store.db().begin_write()?;
        let mut row: ApiKeyRow = db::get(&txn.open_table(API_KEYS)?, id.as_bytes())?
            .ok_or(AuthError::NotFound("key"))?;
        if row.user_id != p.user_id && !p.acts_for_everyone() {
            return Err(AuthError::NotFound("key"));
        }
        if row.revoked_at.is_none() {
            row.revoked_at = Some(now());
            db::put(&txn, API_KEYS, id.as_bytes(), &row)?;
        }
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "key.revoke", Outcome::Success).target(id),
        )?;
        txn.commit()?;
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(id);
        }
        self.revocations.bump();
        Ok(())
    }

    /// Writes batched key last-used times.
    pub fn flush_key_usage(&self) -> Result<(), AuthError> {
        let pending: HashMap<String, i64> = match self.key_last_used.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let txn = self.store.db().begin_write()?;
        for (id, t) in pending {
            // Bound first: the table must be closed before `put` reopens it.
            let row = db::get::<ApiKeyRow>(&txn.open_table(API_KEYS)?, id.as_bytes())?;
            if let Some(mut row) = row {
                row.last_used_at = Some(t);
                db::put(&txn, API_KEYS, id.as_bytes(), &row)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

// ---- the user's own account -----------------------------------------
impl Auth {
    pub fn change_password(
        &self,
        p: &Principal,
        current: &SecretString,
        new: &SecretString,
    ) -> Result<(), AuthError> {
        let attempt = self.admit_from(&p.username, None)?;
        let user = self.get_user(p.user_id)?;
        if !matches!(p.via, Via::Host)
            && !self
                .hasher
                .verify(current, &user.password_hash)
                .unwrap_or(false)
        {
            self.failed(
                attempt,
                &p.username,
                "password.change",
                "wrong_password",
                None,
            );
            return Err(AuthError::Unauthorized(
                "invalid_credentials",
                "the current password is wrong".into(),
            ));
        }
        // Proved nothing new about the account: earlier failures stay.
        self.release(attempt);
        let hash = self.checked_hash(new, &p.username)?;
        // Whoever knew the old password may hold a sign-in made with it:
        // every other session and every token ends with the change.
        let keep = Keep::session_of(p);
        let _changing = self.epochs.begin(p.user_id, Change::Password);
        let (_, ended) = self.change_user(p.user_id, |txn, u| {
            u.password_hash = hash;
            Self::revoke_user_credentials(txn, p.user_id, keep)
        })?;
        self.sign_ins_ended(p.user_id, Tickets::End);
        self.audit(
            AuditEvent::new(p.actor(), "password.change", Outcome::Success)
                .target(&p.username)
                .detail(format!("{ended} other session(s) and all tokens ended")),
        );
        self.revocations.bump();
        Ok(())
    }

    /// Starts (re-)enrollment of a TOTP secret; the current one keeps
    /// working until [`Auth::totp_confirm`].
    pub fn totp_begin(&self, p: &Principal) -> Result<EnrollmentView, AuthError> {
        self.require_recent_auth(p)?;
        let (sealed, view) = self.enrollment(p.user_id, &p.username)?;
        self.update_user(p.user_id, |u| {
            u.totp_pending = Some(sealed);
            Ok(())
        })?;
        // The answer carries a new TOTP secret: audited like any secret
        // handed out.
        self.audit(
            AuditEvent::new(p.actor(), "mfa.enroll_begin", Outcome::Success).target(&p.username),
        );
        Ok(view)
    }

    /// Confirms enrollment with a code from the new secret; returns new
    /// recovery codes when the user had none.
    pub fn totp_confirm(&self, p: &Principal, code: &str) -> Result<Vec<SecretString>, AuthError> {
        let user = self.get_user(p.user_id)?;
        let pending = user
            .totp_pending
            .clone()
            .ok_or(AuthError::NotFound("pending enrollment"))?;
        let mut probe = user.clone();
        probe.totp_last_step = None;
        let step = self.check_totp(p.user_id, &probe, &pending, code)?;
        let mut codes = Vec::new();
        // Replacing a factor ends sign-ins in progress with the old one.
        let _changing = user
            .totp
            .is_some()
            .then(|| self.epochs.begin(p.user_id, Change::SignIns));
        // Decided on the row as it is inside the write: a concurrent
        // confirmation of the same enrollment finds nothing pending.
        self.update_user(p.user_id, |u| {
            if u.totp_pending.as_deref() != Some(pending.as_slice()) {
                return Err(AuthError::NotFound("pending enrollment"));
            }
            if u.recovery_hashes.is_empty() {
                let (c, hashes) = recovery::generate();
                codes = c;
                u.recovery_hashes = hashes;
            }
            u.totp = u.totp_pending.take();
            u.totp_last_step = Some(step);
            Ok(())
        })?;
        self.audit(AuditEvent::new(p.actor(), "mfa.enroll", Outcome::Success).target(&p.username));
        if user.totp.is_some() {
            // A replaced authenticator may be in someone else's hands.
            self.end_other_sign_ins(p)?;
        }
        Ok(codes)
    }

    /// Turns the second factor off. Policy: admins must keep one (it guards
    /// every secret); users and guests may remove theirs after re-auth.
    pub fn totp_disable(&self, p: &Principal) -> Result<(), AuthError> {
        if p.role == Role::Admin {
            return Err(AuthError::Conflict(
                "mfa_required_for_role",
                "admins must keep a second factor; re-enroll instead".into(),
            ));
        }
        self.require_recent_auth(p)?;
        let keep = Keep::sign_in_of(p);
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        self.change_user(p.user_id, |txn, u| {
            u.totp = None;
            u.totp_pending = None;
            u.totp_last_step = None;
            u.recovery_hashes.clear();
            Self::revoke_user_credentials(txn, p.user_id, keep)
        })?;
        self.sign_ins_ended(p.user_id, Tickets::Keep);
        self.audit(AuditEvent::new(p.actor(), "mfa.disable", Outcome::Success).target(&p.username));
        Ok(())
    }

    /// New recovery codes; the old set stops working, and so does every
    /// sign-in but this one (an old code may have made one).
    pub fn regenerate_recovery(&self, p: &Principal) -> Result<Vec<SecretString>, AuthError> {
        self.require_recent_auth(p)?;
        let (codes, hashes) = recovery::generate();
        let keep = Keep::sign_in_of(p);
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        self.change_user(p.user_id, |txn, u| {
            u.recovery_hashes = hashes;
            Self::revoke_user_credentials(txn, p.user_id, keep)
        })?;
        self.sign_ins_ended(p.user_id, Tickets::Keep);
        self.audit(
            AuditEvent::new(p.actor(), "recovery_codes.regenerate", Outcome::Success)
                .target(&p.username),
        );
        Ok(codes)
    }

    pub fn list_sessions(&self, p: &Principal) -> Result<Vec<SessionView>, AuthError> {
        let current = match &p.via {
            Via::Session { hash, .. } => Some(*hash),
            _ => None,
        };
        let txn = self.store.db().begin_read()?;
        let sessions = txn.open_table(SESSIONS)?;
        let mut rows = Vec::new();
        for h in index::sessions_of_read(&txn, p.user_id)? {
            if let Some(s) = db::get::<Session>(&sessions, &h)?
                && s.user_id == p.user_id
            {
                rows.push((h, s));
            }
        }
        let mut out: Vec<SessionView> = rows
            .into_iter()
            .map(|(k, s)| SessionView {
                id: hex::encode(&k[..8.min(k.len())]),
                current: current.is_some_and(|c| c[..] == k[..]),
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.last_seen_at));
        Ok(out)
    }

    /// Revokes the user's session `id`, or with `None` every session but
    /// the current one.
    pub fn revoke_sessions(&self, p: &Principal, id: Option<&str>) -> Result<usize, AuthError> {
        let current = match &p.via {
            Via::Session { hash, .. } => Some(*hash),
            _ => None,
        };
        // "Sign out everywhere" ends sign-ins in progress too.
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        let txn = self.store.db().begin_write()?;
        let mut n = 0;
        for k in index::sessions_of(&txn, p.user_id)? {
            let hit = match id {
                Some(id) => hex::encode(&k[..8]) == id,
                None => current.is_none_or(|c| c != k),
            };
            if hit && index::delete_session(&txn, &k)?.is_some() {
                Self::revoke_families_of_session(&txn, &k)?;
                n += 1;
            }
        }
        if id.is_some() && n == 0 {
            return Err(AuthError::NotFound("session"));
        }
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "session.revoke", Outcome::Success)
                .detail(format!("{n} session(s)")),
        )?;
        txn.commit()?;
        self.revocations.bump();
        Ok(n)
    }
}

// ---- what account events end ----------------------------------------------
//
// The one place account events end credentials (docs/security, "What ends
// a credential"): a password or second-factor change ends every other
// sign-in; promotion to admin ends every sign-in; disabling ends every
// sign-in and every key; a role change ends the keys whose scopes would
// lie dormant or widen. Each runs inside the transaction of the account
// change, so both commit or neither.

/// Whether an account event ends the user's pending second steps: yes
/// when their password step no longer proves anything (password changed,
/// account disabled, promoted or reset); no after a second-factor change,
/// which a pending step still has to pass with the new factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tickets {
    End,
    Keep,
}

/// What of the caller's own sign-in an account event leaves standing.
#[derive(Debug, Clone, Copy)]
enum Keep {
    Nothing,
    /// This session; its token families end with the rest.
    Session([u8; 32]),
    /// This session and the token families issued from it.
    SignIn([u8; 32]),
    /// The sign-in this token family came from: its session and families.
    SignInOfFamily(u128),
}

impl Keep {
    /// A password change: the session that made it stays, every token
    /// ends (programs holding one sign in again).
    fn session_of(p: &Principal) -> Keep {
        match &p.via {
            Via::Session { hash, .. } => Keep::Session(*hash),
            _ => Keep::Nothing,
        }
    }

    /// A second-factor change: the threat is another sign-in made with
    /// the old factor, so the caller's own sign-in stays whole — its
    /// session, or the token family it is using.
    fn sign_in_of(p: &Principal) -> Keep {
        match &p.via {
            Via::Session { hash, .. } => Keep::SignIn(*hash),
            Via::AccessToken { family_id } => Keep::SignInOfFamily(*family_id),
            Via::ApiKey { .. } | Via::Host => Keep::Nothing,
        }
    }
}

impl Auth {
    /// Runs `f` on user `id`'s row and commits the row with whatever `f`
    /// wrote in the same transaction.
    fn change_user<R>(
        &self,
        id: UserId,
        f: impl FnOnce(&redb::WriteTransaction, &mut User) -> Result<R, AuthError>,
    ) -> Result<(User, R), AuthError> {
        let txn = self.store.db().begin_write()?;
        let mut user: User =
            db::get(&txn.open_table(USERS)?, &id.key())?.ok_or(AuthError::NotFound("user"))?;
        let out = f(&txn, &mut user)?;
        user.updated_at = now();
        db::put(&txn, USERS, &id.key(), &user)?;
        txn.commit()?;
        self.forget_people();
        Ok((user, out))
    }

    /// Ends every sign-in of `user` but what `keep` names: its sessions,
    /// its refresh families (marked revoked, so a late replay is still
    /// recognised as reuse) with their unused refresh tokens, and its
    /// access tokens. How many sessions ended.
    fn revoke_user_credentials(
        txn: &redb::WriteTransaction,
        user: UserId,
        keep: Keep,
    ) -> Result<usize, AuthError> {
        // Read through the schema-v4 index: key ranges, no table scans.
        let families = index::families_of_user(txn, user)?;
        let family_row = |id: u128| -> Result<Option<Family>, AuthError> {
            Ok(
                db::get::<Family>(&txn.open_table(REFRESH_FAMILIES)?, &id.to_be_bytes())?
                    .filter(|f| f.user_id == user),
            )
        };
        // The session that stays, and whether its families stay with it.
        let (kept_session, with_families) = match keep {
            Keep::Nothing => (None, false),
            Keep::Session(h) => (Some(h), false),
            Keep::SignIn(h) => (Some(h), true),
            Keep::SignInOfFamily(id) => (
                if families.contains(&id) {
                    family_row(id)?.map(|f| f.session_hash)
                } else {
                    None
                },
                true,
            ),
        };
        let mut ended = 0;
        for h in index::sessions_of(txn, user)? {
            if kept_session != Some(h) && index::delete_session(txn, &h)?.is_some() {
                ended += 1;
            }
        }
        for id in families {
            let Some(f) = family_row(id)? else { continue };
            if with_families && kept_session == Some(f.session_hash) {
                continue;
            }
            if !f.revoked {
                db::put(
                    txn,
                    REFRESH_FAMILIES,
                    &id.to_be_bytes(),
                    &Family { revoked: true, ..f },
                )?;
            }
            // Access tokens deleted, unused refresh tokens marked used (a
            // late replay is still recognised as reuse).
            Self::delete_family_tokens(txn, id)?;
        }
        Ok(ended)
    }

    /// Revokes the unrevoked keys of `user` whose scopes `ends` picks;
    /// their ids, to drop from the cache after the commit
    /// ([`Auth::forget_keys`]).
    fn revoke_user_keys(
        txn: &redb::WriteTransaction,
        user: UserId,
        ends: impl Fn(&ScopeSet) -> bool,
    ) -> Result<Vec<String>, AuthError> {
        let rows: Vec<(Vec<u8>, ApiKeyRow)> = db::scan(&txn.open_table(API_KEYS)?)?;
        let t = now();
        let mut revoked = Vec::new();
        for (k, mut row) in rows {
            if row.user_id != user || row.revoked_at.is_some() {
                continue;
            }
            // A row whose scopes no longer parse ends too.
            if ScopeSet::parse(&row.scopes).map_or(true, |s| ends(&s)) {
                row.revoked_at = Some(t);
                db::put(txn, API_KEYS, &k, &row)?;
                revoked.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(revoked)
    }

    /// After a commit that ended sign-ins of `user`. With
    /// [`Tickets::End`] their pending second steps (MFA tickets, in
    /// memory) end too, so a password step taken before a password
    /// change, a disable or a promotion cannot be finished after it.
    /// Open WebSockets and streams re-check their credential on the
    /// revocation epoch bumped here.
    fn sign_ins_ended(&self, user: UserId, tickets: Tickets) {
        self.revocations.bump();
        if tickets == Tickets::End
            && let Ok(mut t) = self.tickets.lock()
        {
            t.retain(|_, v| v.user_id != user);
        }
    }

    /// Drops revoked keys from the in-memory cache (after their commit).
    fn forget_keys(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        self.revocations.bump();
        if let Ok(mut keys) = self.keys.write() {
            for id in ids {
                keys.remove(id);
            }
        }
    }

    /// Ends every sign-in of `p`'s user but the caller's own, in a
    /// transaction of its own.
    fn end_other_sign_ins(&self, p: &Principal) -> Result<usize, AuthError> {
        let _changing = self.epochs.begin(p.user_id, Change::SignIns);
        let txn = self.store.db().begin_write()?;
        let n = Self::revoke_user_credentials(&txn, p.user_id, Keep::sign_in_of(p))?;
        txn.commit()?;
        self.sign_ins_ended(p.user_id, Tickets::Keep);
        Ok(n)
    }
}

// ---- users, for admins -------------------------------------------------
impl Auth {
    fn require_admin(p: &Principal) -> Result<(), AuthError> {
        if p.acts_for_everyone() {
            Ok(())
        } else {
            Err(AuthError::Forbidden(
                "forbidden",
                "this needs an admin".into(),
            ))
        }
    }

    /// A single-use invite link token for a new user with `role`.
    pub fn create_invite(
        &self,
        p: &Principal,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<(SecretString, i64), AuthError> {
        Self::require_admin(p)?;
        if role == Role::Admin {
            self.require_recent_auth(p)?;
        }
        let ttl = ttl.unwrap_or(self.settings.invite_lifetime);
        if ttl.is_zero() || ttl > MAX_INVITE_LIFETIME {
            return Err(AuthError::Invalid {
                field: "expires_in_secs",
                reason: format!(
                    "must be 1 to {} seconds (30 days)",
                    MAX_INVITE_LIFETIME.as_secs()
                ),
            });
        }
        let token = random_token("lki_");
        let t = now();
        let expires_at = expiry(t, ttl);
        let txn = self.store.db().begin_write()?;
        db::put(
            &txn,
            INVITES,
            &token_hash(token.expose_secret()),
            &Invite {
                role,
                created_by: p.user_id,
                created_at: t,
                expires_at,
                used_at: None,
            },
        )?;
        audit::append_in(
            &txn,
            AuditEvent::new(p.actor(), "invite.create", Outcome::Success).detail(role.as_str()),
        )?;
        txn.commit()?;
        Ok((token, expires_at))
    }

    /// Redeems an invite: creates the user. Admins must then enroll TOTP
    /// before they can sign in (see `login`); others may later.
    ///
    /// Everything that can be refused (the invite, the username, the
    /// password) is checked before the invite is touched, and the invite
    /// is consumed in the same write transaction that creates the user: a
    /// refused request leaves the invite usable, and of concurrent
    /// redemptions exactly one creates a user.
    pub fn accept_invite(
        &self,
        token: &str,
        username: &str,
        password: &SecretString,
        ip: Option<IpAddr>,
    ) -> Result<UserView, AuthError> {
        let hash = token_hash(token.trim());
        let bad = || {
            AuthError::Forbidden(
                "invalid_invite",
                "the invite link is invalid, used or expired; ask for a new one".into(),
            )
        };
        let usable = |inv: &Invite| inv.used_at.is_none() && now() < inv.expires_at;
        let inv_role = {
            let txn = self.store.db().begin_read()?;
            let inv: Invite = db::get(&txn.open_table(INVITES)?, &hash)?.ok_or_else(bad)?;
            if !usable(&inv) {
                self.audit(
                    AuditEvent::new(username, "invite.accept", Outcome::Failure)
                        .ip(ip)
                        .detail("expired_or_used"),
                );
                return Err(bad());
            }
            inv.role
        };
        Self::validate_username(username)?;
        if self.find_user(username)?.is_some() {
            return Err(Self::username_taken(username));
        }
        // Password policy and argon2 (slow): outside the write transaction.
        let user = self.new_user(username, password, inv_role)?;
        let id = UserId::random();
        let txn = self.store.db().begin_write()?;
        let mut inv: Invite = db::get(&txn.open_table(INVITES)?, &hash)?.ok_or_else(bad)?;
        if !usable(&inv) {
            return Err(bad());
        }
        Self::insert_user_in(&txn, id, &user)?;
        inv.used_at = Some(now());
        db::put(&txn, INVITES, &hash, &inv)?;
        audit::append_in(
            &txn,
            AuditEvent::new(username, "invite.accept", Outcome::Success)
                .ip(ip)
                .detail(inv_role.as_str()),
        )?;
        txn.commit()?;
        self.forget_people();
        Ok(UserView::of(id, &user))
    }

    fn username_taken(username: &str) -> AuthError {
        AuthError::Conflict(
            "username_taken",
            format!("the username `{username}` is taken"),
        )
    }

    fn user_by_name(&self, username: &str) -> Result<(UserId, User), AuthError> {
        self.find_user(username)?.ok_or(AuthError::NotFound("user"))
    }

    pub fn set_role(
        &self,
        p: &Principal,
        username: &str,
        role: Role,
    ) -> Result<UserView, AuthError> {
        Self::require_admin(p)?;
        self.require_recent_auth(p)?;
        let (id, _) = self.user_by_name(username)?;
        if id == p.user_id && role != Role::Admin {
            self.ensure_another_admin(id)?;
        }
        let _changing = self.epochs.begin(id, Change::Password);
        let (u, revoked) = self.change_user(id, |txn, u| {
            let old = u.role;
            u.role = role;
            if role == Role::Admin && old != Role::Admin {
                // Sign-ins made under a lesser role's rules (a password
                // alone) do not carry an admin's rights: the user signs in
                // again, with the second factor admins must have.
                Self::revoke_user_credentials(txn, id, Keep::Nothing)?;
            }
            Self::revoke_user_keys(txn, id, |scopes| {
                !scopes.iter().all(|s| s.survives_role_change(old, role))
            })
        })?;
        self.forget_keys(&revoked);
        self.sign_ins_ended(id, Tickets::End);
        self.audit(
            AuditEvent::new(p.actor(), "user.role", Outcome::Success)
                .target(username)
                .detail(format!(
                    "{} ({} key(s) revoked)",
                    role.as_str(),
                    revoked.len()
                )),
        );
        self.revocations.bump();
        Ok(UserView::of(id, &u))
    }

    fn ensure_another_admin(&self, except: UserId) -> Result<(), AuthError> {
        let txn = self.store.db().begin_read()?;
        let others = db::scan::<User>(&txn.open_table(USERS)?)?
            .into_iter()
            .filter(|(k, u)| {
                UserId::from_key(k) != Some(except)
                    && u.role == Role::Admin
                    && !u.disabled
                    && u.active
            })
            .count();
        if others == 0 {
            return Err(AuthError::Conflict(
                "last_admin",
                "this is the last active admin".into(),
            ));
        }
        Ok(())
    }

    /// Disables (or re-enables) a user; disabling ends their sessions,
    /// tokens and keys at once.
    pub fn set_disabled(
        &self,
        p: &Principal,
        username: &str,
        disabled: bool,
    ) -> Result<UserView, AuthError> {
        Self::require_admin(p)?;
        // As strong as a role change (it ends every sign-in and key of the
        // account, an admin's included): the same fresh re-authentication.
        self.require_recent_auth(p)?;
        let (id, _) = self.user_by_name(username)?;
        if disabled && id == p.user_id {
            return Err(AuthError::Conflict(
                "cannot_disable_self",
                "you cannot disable your own account".into(),
            ));
        }
        if disabled {
            self.ensure_another_admin(id).or_else(|e| {
                if self.get_user(id)?.role == Role::Admin {
                    Err(e)
                } else {
                    Ok(())
                }
            })?;
        }
        let _changing = disabled.then(|| self.epochs.begin(id, Change::Password));
        let (u, revoked) = self.change_user(id, |txn, u| {
            u.disabled = disabled;
            if disabled {
                Self::revoke_user_credentials(txn, id, Keep::Nothing)?;
            }
            // Disabling ends the keys for good (re-enabling gives back the
            // sign-in, not the keys); enabling finds none left unless the
            // account was disabled by an older version, whose keys end now
            // rather than come back after some restart.
            Self::revoke_user_keys(txn, id, |_| true)
        })?;
        self.forget_keys(&revoked);
        if disabled {
            self.sign_ins_ended(id, Tickets::End);
        }
        self.audit(
            AuditEvent::new(
                p.actor(),
                if disabled {
                    "user.disable"
                } else {
                    "user.enable"
                },
                Outcome::Success,
            )
            .target(username),
        );
        self.revocations.bump();
        Ok(UserView::of(id, &u))
    }

    /// Last resort for a locked-out user (`latchkey user reset-mfa` on the
    /// host, or an admin): removes TOTP and recovery codes and ends the
    /// user's sessions and tokens; they enroll again at next sign-in. Their
    /// API keys stay (they do not depend on the second factor; disable the
    /// user to end those too).
    pub fn reset_mfa(&self, p: &Principal, username: &str) -> Result<UserView, AuthError> {
        Self::require_admin(p)?;
        self.require_recent_auth(p)?;
        let (id, _) = self.user_by_name(username)?;
        let _changing = self.epochs.begin(id, Change::Password);
        let (u, _) = self.change_user(id, |txn, u| {
            u.totp = None;
            u.totp_pending = None;
            u.totp_last_step = None;
            u.recovery_hashes.clear();
            Self::revoke_user_credentials(txn, id, Keep::Nothing)
        })?;
        self.sign_ins_ended(id, Tickets::End);
        self.lockout
            .forget_prefix(&lockout::account_prefix(&Self::lock_key(username)));
        self.audit(AuditEvent::new(p.actor(), "mfa.reset", Outcome::Success).target(username));
        self.revocations.bump();
        Ok(UserView::of(id, &u))
    }

    /// The host's principal: the CLI on the machine, holding the admin token.
    pub fn host_principal(&self) -> Principal {
        Principal {
            user_id: UserId(0),
            username: "host".into(),
            role: Role::Admin,
            via: Via::Host,
        }
    }
}
