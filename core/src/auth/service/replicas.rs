//! Following the changes other processes sharing the store commit: the
//! caches this process built from the store reload, and its long-lived
//! connections re-check their credential.
//!
//! With one process (the embedded redb file) nothing arrives here. With
//! several replicas on PostgreSQL, a key revoked, a user disabled or a
//! role changed on one replica reaches every other one through
//! `Store::subscribe`, and the app's cache reloader
//! (`app::reload`) calls [`Auth::on_store_change`].
//! The bound: notification latency plus one reload (see `docs/SCALE.md`).
//!
//! Invariants:
//!
//! - a change to `api_keys` or `users` reloads the key cache from one
//!   snapshot; a reload never brings back a key this process dropped, nor
//!   drops one it added, after the snapshot was taken (the key cache's
//!   generation, see [`Auth::load_keys`]);
//! - a change to `users` empties the people cache;
//! - a change to anything a credential lives in bumps
//!   [`Auth::revocations`], so open WebSockets and streams re-check;
//! - `Changed::Unknown` (missed notifications) does all of the above.

use super::Auth;
use crate::auth::AuthError;
use crate::auth::store::{
    ACCESS_TOKENS, API_KEYS, REFRESH_FAMILIES, REFRESH_TOKENS, SESSIONS, USERS,
};
use crate::store::{ByteTable, Changed, table_name};

impl Auth {
    /// Brings this process's caches in step with `change`, committed by
    /// another process (blocking: may read the store).
    pub fn on_store_change(&self, change: &Changed) -> Result<(), AuthError> {
        let touches = |t: ByteTable| change.touches(table_name(&t));
        if touches(USERS) {
            self.forget_people();
        }
        if touches(USERS) || touches(API_KEYS) {
            self.load_keys()?;
        }
        if [
            USERS,
            API_KEYS,
            SESSIONS,
            ACCESS_TOKENS,
            REFRESH_TOKENS,
            REFRESH_FAMILIES,
        ]
        .into_iter()
        .any(touches)
        {
            self.revocations.bump();
        }
        Ok(())
    }
}
