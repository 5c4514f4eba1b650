//! Tests of `auth::scope`, kept beside it so scope.rs holds only the code.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn sc(s: &str) -> Scope {
    s.parse().unwrap()
}

fn set(list: &[&str]) -> ScopeSet {
    ScopeSet::parse(list).unwrap()
}

#[test]
fn canonical_scopes_round_trip() {
    for s in [
        "admin",
        "keys:manage",
        "proxy:*",
        "proxy:openai",
        "proxy:local-llama.cpp_2",
        "connections:*",
        "connections:spotify",
        "agent:*",
        "agent:notes",
        "agent:local-ui.v2_x",
        "livekit:*",
        "livekit:home",
        "vault:read:*",
        "vault:read:OpenAI-Main.v2",
        "vault:write:*",
        "vault:write:spotify_token",
    ] {
        let parsed = sc(s);
        assert_eq!(parsed.to_string(), s);
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), parsed);
    }
}

#[test]
fn vault_write_alias_is_canonicalised() {
    assert_eq!(sc("vault:write"), Scope::VaultWrite(Target::Any));
    assert_eq!(sc("vault:write").to_string(), "vault:write:*");
}

#[test]
fn random_valid_scopes_round_trip() {
    const PROVIDER_FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const PROVIDER_REST: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
    const ENTRY_FIRST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const ENTRY_REST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    fn name(rng: &mut StdRng, first: &[u8], rest: &[u8], max: usize) -> String {
        let len = rng.gen_range(1..=max);
        let mut s = String::new();
        s.push(char::from(first[rng.gen_range(0..first.len())]));
        for _ in 1..len {
            s.push(char::from(rest[rng.gen_range(0..rest.len())]));
        }
        s
    }
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..3000 {
        let p = name(&mut rng, PROVIDER_FIRST, PROVIDER_REST, 64);
        let e = name(&mut rng, ENTRY_FIRST, ENTRY_REST, 128);
        for s in [
            format!("proxy:{p}"),
            format!("connections:{p}"),
            format!("agent:{p}"),
            format!("vault:read:{e}"),
            format!("vault:write:{e}"),
        ] {
            let parsed: Scope = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(parsed.to_string(), s);
            assert!(parsed.allows(&parsed));
        }
    }
}

#[test]
fn malformed_scopes_are_refused_and_named() {
    type Check = fn(&ScopeError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("", |e| *e == ScopeError::Empty),
        ("proxy:", |e| matches!(e, ScopeError::MissingName(_))),
        ("vault:read:", |e| matches!(e, ScopeError::MissingName(_))),
        ("vault:read:../x", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("vault:read:a/b", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("vault:read:.hidden", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("proxy:OpenAI", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("proxy:open*", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("proxy:-x", |e| matches!(e, ScopeError::InvalidName { .. })),
        ("proxy:a b", |e| matches!(e, ScopeError::InvalidName { .. })),
        ("proxy:ünï", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("connections:Spotify", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("agent:", |e| matches!(e, ScopeError::MissingName(_))),
        ("agent:Notes", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("agent:no*", |e| matches!(e, ScopeError::InvalidName { .. })),
        ("agent:../x", |e| {
            matches!(e, ScopeError::InvalidName { .. })
        }),
        ("agents:notes", |e| matches!(e, ScopeError::Unknown(_))),
        ("ADMIN", |e| matches!(e, ScopeError::Unknown(_))),
        ("Proxy:openai", |e| matches!(e, ScopeError::Unknown(_))),
        ("billing:read", |e| matches!(e, ScopeError::Unknown(_))),
        ("vault:*", |e| matches!(e, ScopeError::Unknown(_))),
        ("vault:delete:x", |e| matches!(e, ScopeError::Unknown(_))),
        (" admin", |e| matches!(e, ScopeError::Unknown(_))),
        ("keys:manage:x", |e| matches!(e, ScopeError::Unknown(_))),
    ];
    for (input, check) in cases {
        let err = input.parse::<Scope>().unwrap_err();
        assert!(check(&err), "{input:?} gave {err:?}");
        if !input.is_empty() {
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }
    let long_provider = format!("proxy:{}", "a".repeat(65));
    assert!(matches!(
        long_provider.parse::<Scope>(),
        Err(ScopeError::InvalidName { .. })
    ));
    let long_entry = format!("vault:read:{}", "a".repeat(129));
    assert!(long_entry.parse::<Scope>().is_err());
    assert_eq!(
        "x".repeat(MAX_SCOPE_LEN + 1).parse::<Scope>(),
        Err(ScopeError::TooLong)
    );
    // Control characters are escaped in messages.
    let err = "proxy:a\nb".parse::<Scope>().unwrap_err().to_string();
    assert!(!err.contains('\n'));
}

#[test]
fn list_errors_name_the_bad_scope() {
    let err = ScopeSet::parse(["proxy:openai", "vault:read:../etc"]).unwrap_err();
    assert!(err.to_string().contains("vault:read:../etc"), "{err}");
    let err = serde_json::from_str::<ScopeSet>(r#"["proxy:*","nope"]"#).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("proxy:p{i}")).collect();
    assert_eq!(ScopeSet::parse(&many), Err(ScopeError::TooMany));
    let json = serde_json::to_string(&many).unwrap();
    assert!(serde_json::from_str::<ScopeSet>(&json).is_err());
}

#[test]
fn scope_set_text_and_json_round_trip() {
    let s = set(&["vault:read:x", "proxy:openai", "proxy:openai", "admin"]);
    assert_eq!(s.len(), 3);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<ScopeSet>(&json).unwrap(), s);
    assert_eq!(s.to_string().parse::<ScopeSet>().unwrap(), s);
    assert_eq!(
        "proxy:openai, vault:read:x admin"
            .parse::<ScopeSet>()
            .unwrap(),
        s
    );
    assert!("".parse::<ScopeSet>().unwrap().is_empty());
}

#[test]
fn wildcards_and_exact_names() {
    let allows = |granted: &str, needed: &str| sc(granted).allows(&sc(needed));
    assert!(allows("proxy:*", "proxy:openai"));
    assert!(allows("proxy:*", "proxy:*"));
    assert!(allows("proxy:openai", "proxy:openai"));
    assert!(!allows("proxy:openai", "proxy:anthropic"));
    assert!(!allows("proxy:openai", "proxy:*"));
    assert!(!allows("proxy:openai", "proxy:openai.evil"));
    assert!(!allows("proxy:*", "connections:openai"));
    assert!(!allows("connections:*", "proxy:openai"));
    assert!(allows("connections:*", "connections:spotify"));
    assert!(allows("agent:*", "agent:notes"));
    assert!(allows("agent:notes", "agent:notes"));
    assert!(!allows("agent:notes", "agent:notes2"));
    assert!(!allows("agent:notes", "agent:*"));
    assert!(!allows("agent:*", "proxy:notes"));
    assert!(!allows("proxy:*", "agent:notes"));
    assert!(allows("admin", "agent:notes"));
    assert!(allows("livekit:*", "livekit:home"));
    assert!(allows("livekit:home", "livekit:home"));
    assert!(!allows("livekit:home", "livekit:office"));
    assert!(!allows("livekit:home", "livekit:*"));
    assert!(!allows("proxy:*", "livekit:home"));
    assert!(!allows("livekit:*", "proxy:home"));
    assert!(allows("admin", "livekit:home"));
    assert!(allows("vault:read:*", "vault:read:x"));
    assert!(!allows("vault:read:x", "vault:read:X"));
    assert!(!allows("vault:read:*", "vault:write:x"));
    assert!(!allows("vault:write:*", "vault:read:x"));
    assert!(!allows("vault:read:x", "vault:read:*"));
    assert!(allows("keys:manage", "keys:manage"));
    assert!(!allows("keys:manage", "admin"));
    assert!(!allows("proxy:*", "admin"));
    for needed in [
        "admin",
        "keys:manage",
        "proxy:x",
        "vault:write:*",
        "connections:*",
    ] {
        assert!(allows("admin", needed));
    }
    let s = set(&["proxy:openai", "vault:read:a"]);
    assert!(s.allows(&sc("proxy:openai")));
    assert!(s.allows(&sc("vault:read:a")));
    assert!(!s.allows(&sc("vault:read:b")));
    assert!(!ScopeSet::default().allows(&sc("proxy:openai")));
}

#[test]
fn covers_prevents_key_escalation() {
    let parent = set(&["proxy:*", "keys:manage"]);
    assert!(parent.covers(&set(&["proxy:openai"])));
    assert!(parent.covers(&set(&["proxy:*", "keys:manage"])));
    assert!(!parent.covers(&set(&["proxy:openai", "vault:read:x"])));
    assert!(!parent.covers(&set(&["admin"])));
    assert!(set(&["admin"]).covers(&parent));
}

#[test]
fn permission_table_matches_the_docs() {
    let source = include_str!("scope.rs");
    let yes = |b: bool| if b { "yes" } else { "no" };
    for p in Permission::ALL {
        let row = format!(
            "/// | {:<17} | {:<5} | {:<4} | {:<5} |",
            format!("{p:?}"),
            yes(Role::Admin.may(p)),
            yes(Role::User.may(p)),
            yes(Role::Guest.may(p)),
        );
        assert!(
            source.contains(&row),
            "docs table lacks or contradicts: {row}"
        );
    }
}

#[test]
fn admin_only_permissions_belong_to_admins_alone() {
    for role in Role::ALL {
        for p in Permission::ADMIN_ONLY {
            assert_eq!(role.may(p), role == Role::Admin, "{role} {p:?}");
        }
    }
    // Everything a user may, an admin may; everything a guest may, a
    // user may.
    for p in Permission::ALL {
        assert!(!Role::User.may(p) || Role::Admin.may(p));
        assert!(!Role::Guest.may(p) || Role::User.may(p));
    }
}

#[test]
fn guest_key_with_admin_scope_stays_a_guest() {
    let admin_key = set(&["admin"]);
    let g = Role::Guest;
    assert!(effective_allows(g, &admin_key, &sc("proxy:openai")));
    assert!(effective_allows(g, &admin_key, &sc("keys:manage")));
    // Attack: use the admin scope for admin-only actions.
    assert!(!effective_allows(g, &admin_key, &Scope::Admin));
    assert!(!effective_allows(g, &admin_key, &sc("vault:read:x")));
    assert!(!effective_allows(g, &admin_key, &sc("vault:write:x")));
    assert!(!effective_allows(g, &admin_key, &sc("connections:spotify")));
    assert!(!g.may(Permission::ManageUsers));
}

#[test]
fn user_keys_are_capped_by_the_user_role() {
    let u = Role::User;
    let key = set(&["admin"]);
    assert!(!effective_allows(u, &key, &Scope::Admin));
    assert!(!effective_allows(u, &key, &sc("vault:read:*")));
    assert!(effective_allows(u, &key, &sc("vault:read:mine")));
    assert!(effective_allows(u, &key, &sc("connections:spotify")));
    assert!(effective_allows(u, &key, &sc("proxy:openai")));
}

#[test]
fn admin_keys_are_capped_by_their_scopes() {
    let a = Role::Admin;
    let key = set(&["proxy:openai"]);
    assert!(effective_allows(a, &key, &sc("proxy:openai")));
    // Attack: an admin's narrow key used for something else.
    assert!(!effective_allows(a, &key, &sc("proxy:anthropic")));
    assert!(!effective_allows(a, &key, &Scope::Admin));
    assert!(!effective_allows(a, &key, &sc("vault:read:openai-main")));
    assert!(effective_allows(a, &set(&["admin"]), &Scope::Admin));
}

#[test]
fn effective_is_the_intersection_for_every_combination() {
    let scopes = [
        "admin",
        "keys:manage",
        "proxy:*",
        "proxy:a",
        "connections:*",
        "connections:a",
        "agent:*",
        "agent:a",
        "vault:read:*",
        "vault:read:a",
        "vault:write:*",
        "vault:write:a",
    ];
    for role in Role::ALL {
        for granted in scopes {
            for needed in scopes {
                let key = set(&[granted]);
                let n = sc(needed);
                assert_eq!(
                    effective_allows(role, &key, &n),
                    role.may_exercise(&n) && sc(granted).allows(&n),
                    "{role} {granted} {needed}"
                );
                if effective_allows(role, &key, &n) {
                    assert!(role.may_exercise(&n));
                }
            }
        }
    }
}

#[test]
fn grantable_scopes_follow_the_role() {
    assert!(set(&["admin"]).check_grantable(Role::Admin).is_ok());
    let err = set(&["proxy:*", "admin"])
        .check_grantable(Role::User)
        .unwrap_err();
    assert_eq!(
        err,
        ScopeError::ExceedsRole {
            role: Role::User,
            scope: "admin".into()
        }
    );
    assert!(err.to_string().contains("user"));
    assert!(
        set(&["proxy:*", "keys:manage", "vault:read:mine"])
            .check_grantable(Role::User)
            .is_ok()
    );
    assert!(set(&["vault:read:*"]).check_grantable(Role::User).is_err());
    assert!(
        set(&["proxy:openai", "keys:manage"])
            .check_grantable(Role::Guest)
            .is_ok()
    );
    assert!(set(&["vault:read:x"]).check_grantable(Role::Guest).is_err());
    assert!(
        set(&["connections:*"])
            .check_grantable(Role::Guest)
            .is_err()
    );
}

#[test]
fn the_step_up_class_is_every_scope_that_reaches_a_secret() {
    for s in [
        "admin",
        "vault:read:*",
        "vault:read:a",
        "vault:write:*",
        "vault:write:a",
        "connections:*",
        "connections:a",
    ] {
        assert!(sc(s).needs_step_up(), "{s}");
    }
    for s in [
        "keys:manage",
        "proxy:*",
        "proxy:a",
        "agent:*",
        "agent:a",
        "livekit:*",
        "livekit:a",
    ] {
        assert!(!sc(s).needs_step_up(), "{s}");
    }
}

#[test]
fn keys_do_not_outlive_the_role_they_were_made_under() {
    use Role::*;
    let keeps = |s: &str, old, new| sc(s).survives_role_change(old, new);
    // Unchanged roles change nothing.
    for r in Role::ALL {
        assert!(keeps("admin", r, r));
        assert!(keeps("vault:read:a", r, r));
    }
    // Demotion: what the new role cannot grant ends.
    assert!(!keeps("admin", Admin, User));
    assert!(!keeps("vault:read:*", Admin, User));
    assert!(!keeps("vault:write:*", Admin, Guest));
    assert!(!keeps("connections:a", User, Guest));
    assert!(keeps("proxy:*", Admin, Guest));
    assert!(keeps("keys:manage", User, Guest));
    assert!(keeps("agent:a", Admin, User));
    assert!(keeps("livekit:a", Admin, Guest));
    // A named vault scope means "own entry" for a user and "the
    // household's entry" for an admin: it ends either way.
    assert!(!keeps("vault:read:a", User, Admin));
    assert!(!keeps("vault:read:a", Admin, User));
    assert!(!keeps("vault:write:a", User, Admin));
    // Promotion widens nothing else.
    assert!(keeps("connections:a", User, Admin));
    assert!(keeps("proxy:a", Guest, Admin));
    assert!(keeps("keys:manage", Guest, User));
}

#[test]
fn roles_round_trip_in_lower_case() {
    for r in Role::ALL {
        assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{}\"", r.as_str()));
        assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), r);
    }
    assert!("Admin".parse::<Role>().is_err());
    assert!(serde_json::from_str::<Role>("\"owner\"").is_err());
}
#[test]
fn scopes_built_directly_match_parsed_ones() {
    let long = "a".repeat(65);
    let longer = "a".repeat(200);
    for name in [
        "openai",
        "*",
        "",
        "Open",
        "a.b_c-d",
        "-x",
        "x y",
        "a:b",
        "proxy:x",
        long.as_str(),
        longer.as_str(),
        "é",
    ] {
        assert_eq!(
            Scope::agent(name),
            format!("agent:{name}").parse::<Scope>(),
            "{name:?}"
        );
        assert_eq!(
            Scope::vault_read(name),
            format!("vault:read:{name}").parse::<Scope>(),
            "{name:?}"
        );
        assert_eq!(
            Scope::proxy(name),
            format!("proxy:{name}").parse::<Scope>(),
            "{name:?}"
        );
        assert_eq!(
            Scope::livekit(name),
            format!("livekit:{name}").parse::<Scope>(),
            "{name:?}"
        );
    }
}
