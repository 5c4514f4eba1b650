//! Who is making a request and how they proved it ([`Principal`], [`Via`]),
//! and the cache of people that resolves a user id to one without a
//! database read.
//!
//! Invariants:
//!
//! - another user's things are reached only with the `admin` scope
//!   ([`Principal::acts_for_everyone`]), never by the owner's role alone;
//! - an API key never exceeds its owner: it is capped by its scopes and by
//!   the owner's role;
//! - the cache holds only active, enabled users and is emptied after every
//!   committed change to `users`; a generation counter stops a fill that
//!   raced such a change.

use super::Auth;
use crate::auth::AuthError;
use crate::auth::scope::{Role, Scope, ScopeSet};
use crate::auth::store::UserId;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
            Via::ApiKey { scopes, .. } => {
                crate::auth::scope::effective_allows(self.role, scopes, scope)
            }
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

impl Auth {
    pub(super) fn principal(&self, id: UserId, via: Via) -> Result<Principal, AuthError> {
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
    pub(super) fn forget_people(&self) {
        // Bumped under the lock, so a fill that read the old row before
        // the commit either sees the new generation or is cleared here.
        if let Ok(mut p) = self.people.write() {
            self.people_gen.fetch_add(1, Ordering::AcqRel);
            p.clear();
        }
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
