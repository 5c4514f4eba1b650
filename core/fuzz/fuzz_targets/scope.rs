//! API key scopes (`auth::scope`): what `POST /api/keys` and stored keys
//! are parsed from.
//!
//! Properties:
//! - a parsed scope prints back as its input (only `vault:write` is
//!   rewritten, to `vault:write:*`) and parses again to itself;
//! - the named constructors agree with parsing `<prefix><name>`;
//! - a scope set survives JSON (what keys are stored and listed as), has
//!   at most 64 scopes, and refuses a list the way its first bad scope is
//!   refused;
//! - `allows`: every scope allows itself, `admin` allows everything, and a
//!   named scope never allows a wildcard; a set covers each of its subsets;
//! - nothing a role may not exercise is allowed by `effective_allows`.
#![no_main]

use latchkey_core::auth::scope::{
    MAX_SCOPE_LEN, MAX_SCOPES, Role, Scope, ScopeSet, Target, effective_allows,
};
use libfuzzer_sys::fuzz_target;

fn is_wildcard(s: &Scope) -> bool {
    matches!(
        s,
        Scope::Proxy(Target::Any)
            | Scope::Connections(Target::Any)
            | Scope::Agent(Target::Any)
            | Scope::VaultRead(Target::Any)
            | Scope::VaultWrite(Target::Any)
    )
}

fn is_named(s: &Scope) -> bool {
    matches!(
        s,
        Scope::Proxy(Target::Only(_))
            | Scope::Connections(Target::Only(_))
            | Scope::Agent(Target::Only(_))
            | Scope::VaultRead(Target::Only(_))
            | Scope::VaultWrite(Target::Only(_))
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // One scope per line; each parsed alone first.
    let items: Vec<&str> = text.split('\n').collect();
    let mut parsed = Vec::new();
    for item in &items {
        match item.parse::<Scope>() {
            Ok(s) => {
                let shown = s.to_string();
                if *item == "vault:write" {
                    assert_eq!(shown, "vault:write:*");
                } else {
                    assert_eq!(shown, *item, "printed differently");
                }
                assert!(item.len() <= MAX_SCOPE_LEN);
                assert_eq!(shown.parse::<Scope>().as_ref(), Ok(&s), "no round trip");
                assert!(s.allows(&s), "{s} does not allow itself");
                assert!(Scope::Admin.allows(&s));
                for other in &parsed {
                    if is_wildcard(other) && is_named(&s) {
                        assert!(!s.allows(other), "{s} allows the wildcard {other}");
                    }
                }
                parsed.push(s);
            }
            Err(e) => {
                // Errors name the scope with control characters escaped.
                let msg = e.to_string();
                assert!(!msg.chars().any(char::is_control), "raw control in {msg:?}");
            }
        }
        // The named constructors are parsing without building the text.
        for (prefix, build) in [
            ("proxy:", Scope::proxy as fn(&str) -> _),
            ("agent:", Scope::agent),
            ("vault:read:", Scope::vault_read),
        ] {
            let by_parse = format!("{prefix}{item}").parse::<Scope>();
            assert_eq!(build(item), by_parse, "{prefix}{item}");
        }
    }
    // The whole list as one key's scopes.
    match ScopeSet::parse(&items) {
        Ok(set) => {
            assert!(set.len() <= MAX_SCOPES);
            assert_eq!(set.len(), {
                let mut v = parsed.clone();
                v.sort();
                v.dedup();
                v.len()
            });
            let json = serde_json::to_string(&set).expect("serialize");
            let back: ScopeSet = serde_json::from_str(&json).expect("its own JSON");
            assert_eq!(back, set);
            assert_eq!(set.to_string().parse::<ScopeSet>().as_ref(), Ok(&set));
            for s in set.iter() {
                assert!(set.allows(s));
                let one = ScopeSet::parse([s.to_string()]).expect("one scope");
                assert!(set.covers(&one));
                for role in Role::ALL {
                    if effective_allows(role, &set, s) {
                        assert!(role.may_exercise(s), "{role} exercises {s}");
                    }
                }
            }
        }
        Err(_) => {
            assert!(parsed.len() < items.len() || parsed.len() > MAX_SCOPES);
        }
    }
});
