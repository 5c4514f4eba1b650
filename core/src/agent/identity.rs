//! The identity headers that say who is calling an agent route or
//! `/api/verify`, and what counts as a Latchkey credential (which never
//! reaches a backend).
//!
//! The caller is authenticated by the HTTP layer (`crate::http::agent`),
//! by exactly the rules of `crate::http::authn` minus the backend's own
//! credentials: an `Authorization` or `x-api-key` that is not a Latchkey
//! credential belongs to the backend and is not a reason to refuse. The
//! host's admin token is refused there: it stands for the machine, not a
//! person a backend could know.

use super::AgentError;
use super::assertion::{Claims, Signer};
use crate::auth::Principal;
use crate::auth::scope::Role;
use axum::http::{HeaderName, HeaderValue};

pub const USER: HeaderName = HeaderName::from_static("x-latchkey-user");
pub const ROLE: HeaderName = HeaderName::from_static("x-latchkey-role");
pub const KEY: HeaderName = HeaderName::from_static("x-latchkey-key");
pub const ASSERTION: HeaderName = HeaderName::from_static("x-latchkey-assertion");

/// Token prefixes Latchkey hands out: API keys, access tokens, sessions.
const PREFIXES: [&str; 3] = ["lk_", "lka_", "lks_"];

/// Whether `value` carries something that looks like a Latchkey
/// credential: a word starting with one of [`PREFIXES`].
pub fn looks_like_credential(value: &[u8]) -> bool {
    let s = String::from_utf8_lossy(value);
    s.split(|c: char| c.is_ascii_whitespace() || matches!(c, ',' | ';' | '=' | ':' | '"'))
        .any(|w| PREFIXES.iter().any(|p| w.starts_with(p)))
}

/// Whether an agent open to `roles` lets `who` in.
pub fn role_allowed(who: &Principal, roles: &[Role]) -> bool {
    roles.contains(&who.role)
}

/// The identity headers for `who`, with an assertion for `audience`.
pub fn headers(
    signer: &Signer,
    who: &Principal,
    audience: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, AgentError> {
    let claims = Claims::new(who, audience, crate::auth::service::now());
    let jwt = signer.sign(&claims)?;
    let value = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| AgentError::Internal("identity is not a valid header value".into()))
    };
    let mut out = vec![
        (USER, value(&who.username)?),
        (ROLE, value(who.role.as_str())?),
    ];
    if let Some(id) = &claims.key_id {
        out.push((KEY, value(id)?));
    }
    let mut a = value(&jwt)?;
    a.set_sensitive(true);
    out.push((ASSERTION, a));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_shapes() {
        for yes in [
            "Bearer lk_abc",
            "lk_abc",
            "  lka_x",
            "a=1; __Host-latchkey_session=lks_abc",
            "Token lks_x",
        ] {
            assert!(looks_like_credential(yes.as_bytes()), "{yes}");
        }
        for no in ["Bearer abc", "walk_fast", "Basic bGtfYWJj", "milk_"] {
            assert!(!looks_like_credential(no.as_bytes()), "{no}");
        }
    }
}
