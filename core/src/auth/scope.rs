//! What an API key may do (scopes) and what its owner may do (roles).
//!
//! A request authenticated by an API key is allowed only when **both** the
//! key's scopes and its owner's role allow it ([`effective_allows`]): a
//! key can never exceed the person who made it.
//!
//! # Scope grammar
//!
//! ```text
//! scope    = "admin"                          ; everything the owner's role allows
//!          | "keys:manage"                    ; list/create/revoke the owner's keys
//!          | "proxy:"       ( "*" | provider ); call a provider through the proxy
//!          | "connections:" ( "*" | provider ); manage OAuth connections
//!          | "agent:"       ( "*" | agent )   ; reach a local agent backend
//!          | "livekit:"     ( "*" | livekit ) ; mint LiveKit room tokens
//!          | "vault:read:"  ( "*" | entry )   ; read an entry's secret value
//!          | "vault:write:" ( "*" | entry )   ; create, change, delete entries
//! provider = [a-z0-9][a-z0-9._-]{0,63}
//! agent    = [a-z0-9][a-z0-9._-]{0,63}        ; an `[agents.<name>]` section
//! livekit  = [a-z0-9][a-z0-9._-]{0,63}        ; a `[livekit.<name>]` section
//! entry    = [A-Za-z0-9][A-Za-z0-9._-]{0,127}  ; the vault's record-name rule
//! ```
//!
//! Scopes are case-sensitive and written exactly as above; `*` is only a
//! whole-name wildcard (`proxy:open*` is an error). `vault:write` without a
//! name is accepted as a synonym of `vault:write:*` and is written back in
//! that canonical form. Reading and writing are separate: a key that may
//! refresh a token in `vault:write:spotify` cannot read it back unless it
//! also holds `vault:read:spotify`.
//!
//! # Wildcards
//!
//! A granted scope allows a needed scope when it is `admin`, or when both
//! have the same kind and the granted name is `*` or equal to the needed
//! name. A needed `*` (e.g. listing every entry needs `vault:read:*`) is
//! allowed only by a granted `*` (or `admin`).
//!
//! Scopes say nothing about *which* entries a user owns: the vault handler
//! still checks ownership for the `…Own…` permissions below.

use crate::vault::record::validate_name;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 160;
/// Most scopes one key may carry.
pub const MAX_SCOPES: usize = 64;
const MAX_PROVIDER_LEN: usize = 64;

/// Why a scope or scope list was refused. Messages name the bad scope
/// (scopes are not secret) with control characters escaped.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScopeError {
    #[error("empty scope")]
    Empty,
    #[error("scope is longer than {MAX_SCOPE_LEN} characters")]
    TooLong,
    #[error(
        "unknown scope {0:?}: expected admin, keys:manage, proxy:…, connections:…, agent:…, livekit:…, vault:read:… or vault:write:…"
    )]
    Unknown(String),
    #[error("scope {0:?} needs a name or `*` after the last colon")]
    MissingName(String),
    #[error("scope {scope:?}: {reason}")]
    InvalidName { scope: String, reason: String },
    #[error("at most {MAX_SCOPES} scopes per key")]
    TooMany,
    #[error("a {role} may not grant scope {scope:?}")]
    ExceedsRole { role: Role, scope: String },
}

/// A provider name: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderName(String);

impl ProviderName {
    /// Checks `name` against the provider-name rule; the error is a reason.
    pub fn new(name: &str) -> Result<Self, String> {
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
        if name.len() > MAX_PROVIDER_LEN {
            return Err(format!(
                "a provider name has at most {MAX_PROVIDER_LEN} characters"
            ));
        }
        if !first_ok || !rest_ok {
            return Err("a provider name starts with a lower-case letter or digit and contains only lower-case letters, digits, `.`, `_` and `-`".into());
        }
        Ok(ProviderName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An agent backend's name (`[agents.<name>]`): the provider-name rule,
/// `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

impl AgentName {
    /// Checks `name` against the agent-name rule; the error is a reason.
    pub fn new(name: &str) -> Result<Self, String> {
        ProviderName::new(name)
            .map(|p| AgentName(p.0))
            .map_err(|e| e.replace("a provider name", "an agent name"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A vault entry name, following the vault's record-name rule
/// (`[A-Za-z0-9][A-Za-z0-9._-]{0,127}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryName(String);

impl EntryName {
    /// Checks `name` against the vault's record-name rule; the error is a
    /// reason.
    pub fn new(name: &str) -> Result<Self, String> {
        validate_name(name).map_err(|e| e.reason)?;
        Ok(EntryName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which resources of a kind a scope covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target<T> {
    /// `*`: all of them.
    Any,
    /// Just this one.
    Only(T),
}

impl<T: PartialEq> Target<T> {
    /// Whether a grant of `self` covers a need of `needed`.
    fn covers(&self, needed: &Target<T>) -> bool {
        match (self, needed) {
            (Target::Any, _) => true,
            (Target::Only(granted), Target::Only(needed)) => granted == needed,
            (Target::Only(_), Target::Any) => false,
        }
    }
}

/// One scope; see the module docs for the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `admin`: anything the owner's role allows.
    Admin,
    /// `keys:manage`.
    KeysManage,
    /// `proxy:*` or `proxy:<provider>`.
    Proxy(Target<ProviderName>),
    /// `connections:*` or `connections:<provider>`.
    Connections(Target<ProviderName>),
    /// `agent:*` or `agent:<name>`: requests to a local agent backend
    /// (`/agent/<name>/…`) and forward-auth checks naming it.
    Agent(Target<AgentName>),
    /// `livekit:*` or `livekit:<name>`: minting room tokens with a
    /// `[livekit.<name>]` section (`POST /api/livekit/<name>/token`).
    LiveKit(Target<ProviderName>),
    /// `vault:read:*` or `vault:read:<entry>`.
    VaultRead(Target<EntryName>),
    /// `vault:write:*` or `vault:write:<entry>`.
    VaultWrite(Target<EntryName>),
}

impl Scope {
    /// `proxy:<provider>`, checking the name (what parsing
    /// `proxy:<provider>` gives, without building that text).
    pub fn proxy(provider: &str) -> Result<Self, ScopeError> {
        named("proxy:", provider, ProviderName::new).map(Scope::Proxy)
    }

    /// `agent:<name>`, checking the name.
    pub fn agent(name: &str) -> Result<Self, ScopeError> {
        named("agent:", name, AgentName::new).map(Scope::Agent)
    }

    /// `livekit:<name>`, checking the name.
    pub fn livekit(name: &str) -> Result<Self, ScopeError> {
        named("livekit:", name, ProviderName::new).map(Scope::LiveKit)
    }

    /// `vault:read:<entry>`, checking the name.
    pub fn vault_read(entry: &str) -> Result<Self, ScopeError> {
        named("vault:read:", entry, EntryName::new).map(Scope::VaultRead)
    }

    /// Whether a credential holding this scope can obtain a secret's
    /// plaintext, or a credential that can — the class the step-up rule
    /// guards (`Auth::step_up`): putting such a scope on a new key needs
    /// the same fresh re-authentication as revealing a secret.
    ///
    /// - `admin`: everything, backups of the whole vault included;
    /// - `vault:read:…`: secret values;
    /// - `vault:write:…`: replacing the credential a provider injects with
    ///   one for an account the writer controls hands them every agent's
    ///   traffic (and deleting secrets is as grave);
    /// - `connections:…`: the OAuth access tokens of the owner's
    ///   connections (`GET /api/connections/{p}/token`).
    ///
    /// `proxy:…` and `agent:…` use credentials without ever seeing them;
    /// `livekit:…` has a LiveKit secret sign room tokens, capped by its
    /// section, and never sees the secret either;
    /// `keys:manage` lists and revokes keys but cannot mint any (only an
    /// `admin` key may, and never one of these).
    pub fn needs_step_up(&self) -> bool {
        match self {
            Scope::Admin | Scope::VaultRead(_) | Scope::VaultWrite(_) | Scope::Connections(_) => {
                true
            }
            Scope::KeysManage | Scope::Proxy(_) | Scope::Agent(_) | Scope::LiveKit(_) => false,
        }
    }

    /// Whether a key holding this scope may live on when its owner's role
    /// changes from `old` to `new`. Not when `new` may not grant it (it
    /// would lie dormant, capped by the role, and come back with a later
    /// promotion), nor when it means more under `new` than under `old`:
    /// `admin` stands for whatever the role may, and a named
    /// `vault:…:<entry>` scope covers only a user's own entries but every
    /// entry of the household for an admin.
    pub fn survives_role_change(&self, old: Role, new: Role) -> bool {
        if old == new {
            return true;
        }
        let widens = match self {
            Scope::Admin => true,
            Scope::VaultRead(Target::Only(_)) | Scope::VaultWrite(Target::Only(_)) => {
                old.may(Permission::ManageAllVault) != new.may(Permission::ManageAllVault)
            }
            _ => false,
        };
        !widens && new.may_grant(self)
    }

    /// Whether holding `self` allows an action that needs `needed`.
    pub fn allows(&self, needed: &Scope) -> bool {
        use Scope::*;
        match (self, needed) {
            (Admin, _) => true,
            (KeysManage, KeysManage) => true,
            (Proxy(g), Proxy(n)) | (Connections(g), Connections(n)) => g.covers(n),
            (Agent(g), Agent(n)) => g.covers(n),
            (LiveKit(g), LiveKit(n)) => g.covers(n),
            (VaultRead(g), VaultRead(n)) | (VaultWrite(g), VaultWrite(n)) => g.covers(n),
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn target<T>(t: &Target<T>, name: impl Fn(&T) -> &str) -> &str {
            match t {
                Target::Any => "*",
                Target::Only(n) => name(n),
            }
        }
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::KeysManage => f.write_str("keys:manage"),
            Scope::Proxy(t) => write!(f, "proxy:{}", target(t, ProviderName::as_str)),
            Scope::Connections(t) => {
                write!(f, "connections:{}", target(t, ProviderName::as_str))
            }
            Scope::Agent(t) => write!(f, "agent:{}", target(t, AgentName::as_str)),
            Scope::LiveKit(t) => write!(f, "livekit:{}", target(t, ProviderName::as_str)),
            Scope::VaultRead(t) => write!(f, "vault:read:{}", target(t, EntryName::as_str)),
            Scope::VaultWrite(t) => write!(f, "vault:write:{}", target(t, EntryName::as_str)),
        }
    }
}

/// `<prefix><name>` as a scope's target, with the checks parsing that
/// text applies (its length first).
fn named<T>(
    prefix: &str,
    name: &str,
    check: fn(&str) -> Result<T, String>,
) -> Result<Target<T>, ScopeError> {
    if prefix.len() + name.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::TooLong);
    }
    target(prefix, name, check)
}

/// The target `name` of a scope starting `prefix`: `*` or a checked name.
/// The scope's text is built only for an error.
fn target<T>(
    prefix: &str,
    name: &str,
    check: fn(&str) -> Result<T, String>,
) -> Result<Target<T>, ScopeError> {
    match name {
        "" => Err(ScopeError::MissingName(prefix.to_owned())),
        "*" => Ok(Target::Any),
        _ => check(name)
            .map(Target::Only)
            .map_err(|reason| ScopeError::InvalidName {
                scope: format!("{prefix}{name}"),
                reason,
            }),
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        match s {
            "admin" => return Ok(Scope::Admin),
            "keys:manage" => return Ok(Scope::KeysManage),
            "vault:write" => return Ok(Scope::VaultWrite(Target::Any)),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("proxy:") {
            target("proxy:", name, ProviderName::new).map(Scope::Proxy)
        } else if let Some(name) = s.strip_prefix("connections:") {
            target("connections:", name, ProviderName::new).map(Scope::Connections)
        } else if let Some(name) = s.strip_prefix("agent:") {
            target("agent:", name, AgentName::new).map(Scope::Agent)
        } else if let Some(name) = s.strip_prefix("livekit:") {
            target("livekit:", name, ProviderName::new).map(Scope::LiveKit)
        } else if let Some(name) = s.strip_prefix("vault:read:") {
            target("vault:read:", name, EntryName::new).map(Scope::VaultRead)
        } else if let Some(name) = s.strip_prefix("vault:write:") {
            target("vault:write:", name, EntryName::new).map(Scope::VaultWrite)
        } else {
            Err(ScopeError::Unknown(s.to_owned()))
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The scopes of one key: at most [`MAX_SCOPES`], kept sorted and without
/// duplicates. Serialized as a JSON array of scope strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Scope>", into = "Vec<Scope>")]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses a list of scope strings; the error names the first bad one.
    pub fn parse<I, S>(scopes: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for s in scopes {
            set.insert(s.as_ref().parse::<Scope>()?);
            if set.len() > MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
        }
        Ok(ScopeSet(set))
    }

    /// Whether any scope in the set allows `needed`.
    pub fn allows(&self, needed: &Scope) -> bool {
        self.0.iter().any(|granted| granted.allows(needed))
    }

    /// Whether every scope of `other` is allowed by this set: a key
    /// creating another key may only hand out what it holds itself.
    pub fn covers(&self, other: &ScopeSet) -> bool {
        other.0.iter().all(|s| self.allows(s))
    }

    /// Refuses a scope list a user of `role` may not put on a new key,
    /// naming the first offending scope.
    pub fn check_grantable(&self, role: Role) -> Result<(), ScopeError> {
        match self.0.iter().find(|s| !role.may_grant(s)) {
            Some(s) => Err(ScopeError::ExceedsRole {
                role,
                scope: s.to_string(),
            }),
            None => Ok(()),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<Scope>> for ScopeSet {
    type Error = ScopeError;

    fn try_from(v: Vec<Scope>) -> Result<Self, Self::Error> {
        let set: BTreeSet<Scope> = v.into_iter().collect();
        if set.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        Ok(ScopeSet(set))
    }
}

impl From<ScopeSet> for Vec<Scope> {
    fn from(s: ScopeSet) -> Self {
        s.0.into_iter().collect()
    }
}

/// Space-separated, as in OAuth `scope` parameters and CLI flags.
impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Parses a space- or comma-separated list.
impl FromStr for ScopeSet {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeSet::parse(
            s.split(|c: char| c == ',' || c.is_ascii_whitespace())
                .filter(|s| !s.is_empty()),
        )
    }
}

/// A user's role. Serialized in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
    Guest,
}

/// Something a role may or may not do; see [`Role::may`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Invite, change, disable and delete users; reset their MFA.
    ManageUsers,
    /// Read, create, change and delete every vault entry, whoever owns it.
    ManageAllVault,
    /// Read the secret values of entries the user owns.
    ReadOwnVault,
    /// Create entries (owned by their creator), change and delete own ones.
    WriteOwnVault,
    /// Connect and disconnect OAuth providers for oneself.
    ManageConnections,
    /// Send requests through the agent proxy.
    UseProxy,
    /// Create, list and revoke one's own API keys (never beyond one's role).
    ManageOwnKeys,
    /// Create API keys carrying the `admin` scope.
    CreateAdminKeys,
    /// Read the audit log.
    ReadAudit,
    /// Change server settings (providers, trusted proxies, policies).
    ManageSettings,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::ManageUsers,
        Permission::ManageAllVault,
        Permission::ReadOwnVault,
        Permission::WriteOwnVault,
        Permission::ManageConnections,
        Permission::UseProxy,
        Permission::ManageOwnKeys,
        Permission::CreateAdminKeys,
        Permission::ReadAudit,
        Permission::ManageSettings,
    ];

    /// The permissions only an administrator holds; the `admin` scope
    /// needs all of them.
    pub const ADMIN_ONLY: [Permission; 5] = [
        Permission::ManageUsers,
        Permission::ManageAllVault,
        Permission::CreateAdminKeys,
        Permission::ReadAudit,
        Permission::ManageSettings,
    ];
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::User, Role::Guest];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Guest => "guest",
        }
    }

    /// The permission table (the documentation copies it; a test checks
    /// that this table and the code agree):
    ///
    /// | Permission        | admin | user | guest |
    /// |-------------------|-------|------|-------|
    /// | ManageUsers       | yes   | no   | no    |
    /// | ManageAllVault    | yes   | no   | no    |
    /// | ReadOwnVault      | yes   | yes  | no    |
    /// | WriteOwnVault     | yes   | yes  | no    |
    /// | ManageConnections | yes   | yes  | no    |
    /// | UseProxy          | yes   | yes  | yes   |
    /// | ManageOwnKeys     | yes   | yes  | yes   |
    /// | CreateAdminKeys   | yes   | no   | no    |
    /// | ReadAudit         | yes   | no   | no    |
    /// | ManageSettings    | yes   | no   | no    |
    ///
    /// A guest uses the proxy (with keys of their own, limited to what a
    /// guest may do) but never sees a secret value.
    pub fn may(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::User => matches!(
                permission,
                ReadOwnVault | WriteOwnVault | ManageConnections | UseProxy | ManageOwnKeys
            ),
            Role::Guest => matches!(permission, UseProxy | ManageOwnKeys),
        }
    }

    /// Whether this role may perform an action that needs `needed` — the
    /// ceiling a key of this role's owner can never go above. `*` on the
    /// vault means every entry, so it needs [`Permission::ManageAllVault`].
    pub fn may_exercise(self, needed: &Scope) -> bool {
        use Permission::*;
        match needed {
            Scope::Admin => Permission::ADMIN_ONLY.iter().all(|p| self.may(*p)),
            Scope::KeysManage => self.may(ManageOwnKeys),
            Scope::Proxy(_) => self.may(UseProxy),
            Scope::Connections(_) => self.may(ManageConnections),
            // Every role may reach agents in principle; each agent's
            // `roles` setting narrows that (checked by the agent route).
            Scope::Agent(_) => self.may(UseProxy),
            // Room tokens use a secret without showing it, like the proxy.
            Scope::LiveKit(_) => self.may(UseProxy),
            Scope::VaultRead(Target::Any) | Scope::VaultWrite(Target::Any) => {
                self.may(ManageAllVault)
            }
            Scope::VaultRead(Target::Only(_)) => self.may(ReadOwnVault) || self.may(ManageAllVault),
            Scope::VaultWrite(Target::Only(_)) => {
                self.may(WriteOwnVault) || self.may(ManageAllVault)
            }
        }
    }

    /// Whether a user of this role may put `scope` on a new key: only what
    /// the role could exercise, and `admin` only with
    /// [`Permission::CreateAdminKeys`].
    pub fn may_grant(self, scope: &Scope) -> bool {
        self.may_exercise(scope)
            && (*scope != Scope::Admin || self.may(Permission::CreateAdminKeys))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A role name that is not `admin`, `user` or `guest`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unknown role {0:?}: expected admin, user or guest")]
pub struct UnknownRole(pub String);

/// Whether a request authenticated by a key with `scopes`, owned by a user
/// of `role`, may do something that needs `needed`: the key must allow it
/// **and** the owner's role must. A guest's key with scope `admin` can use
/// the proxy (a guest may) but cannot manage users (a guest may not).
pub fn effective_allows(role: Role, scopes: &ScopeSet, needed: &Scope) -> bool {
    role.may_exercise(needed) && scopes.allows(needed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#[path = "scope_tests.rs"]
mod tests;
