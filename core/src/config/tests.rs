use super::*;

fn load_str(toml_text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(CONFIG_FILE);
    std::fs::write(&path, toml_text).expect("write");
    Settings::load(
        &path,
        true,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_without_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Settings::load(&dir.path().join("none.toml"), false, Vec::new()).expect("defaults");
    assert_eq!(
        s.server.listen,
        vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))]
    );
    assert_eq!(s.vault.master_key, MasterKeyKind::Keyfile);
}

#[test]
fn explicit_missing_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Settings::load(&dir.path().join("none.toml"), true, Vec::new()).expect_err("missing");
    assert!(err.to_string().contains("none.toml"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let err = load_str("[server]\nlisten = \"127.0.0.1:1\"\nlisn = 3\n", &[]).expect_err("unknown");
    let msg = err.to_string();
    assert!(msg.contains("server.lisn") || msg.contains("lisn"), "{msg}");
}

#[test]
fn wrong_type_is_named() {
    let err = load_str("[server]\nmax_body_bytes = \"big\"\n", &[]).expect_err("type");
    assert!(err.to_string().contains("server.max_body_bytes"), "{err}");
}

#[test]
fn bad_address_is_named() {
    let err = load_str("[server]\nlisten = [\"localhost\"]\n", &[]).expect_err("addr");
    let msg = err.to_string();
    assert!(
        msg.contains("server.listen") && msg.contains("localhost"),
        "{msg}"
    );
}

#[test]
fn syntax_error_names_the_file() {
    let err = load_str("[server\n", &[]).expect_err("syntax");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn env_overrides_file() {
    let s = load_str(
        "[server]\nlisten = \"127.0.0.1:1000\"\n",
        &[
            ("LATCHKEY_SERVER__LISTEN", "[::1]:2000"),
            ("LATCHKEY_VAULT__MASTER_KEY", "passphrase"),
            ("LATCHKEY_TLS__RENEW_BEFORE", "30s"),
            ("LATCHKEY_DATA_DIR", "/ignored/here"),
        ],
    )
    .expect("load");
    assert_eq!(
        s.server.listen,
        vec!["[::1]:2000".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(s.vault.master_key, MasterKeyKind::Passphrase);
    assert_eq!(s.tls.renew_before, Duration::from_secs(30));
}

#[test]
fn env_unknown_key_is_named() {
    let err = load_str("", &[("LATCHKEY_SERVER__LISTN", "1")]).expect_err("unknown");
    assert!(err.to_string().contains("listn"), "{err}");
}

#[test]
fn cross_field_rules() {
    let err = load_str("[tls]\ncert_file = \"/x.pem\"\n", &[]).expect_err("pair");
    assert!(err.to_string().contains("tls.key_file"), "{err}");
    let err = load_str("[tls]\nrenew_before = \"100d\"\n", &[]).expect_err("renew");
    assert!(err.to_string().contains("tls.renew_before"), "{err}");
    let err = load_str("[metrics]\naccess = \"token\"\n", &[]).expect_err("token");
    assert!(err.to_string().contains("metrics.token"), "{err}");
}

#[test]
fn token_is_redacted_everywhere() {
    let s = load_str(
        "[metrics]\naccess = \"token\"\ntoken = \"metrics-token-0123456789\"\n",
        &[],
    )
    .expect("load");
    let shown = toml::to_string(&s).expect("ser");
    assert!(!shown.contains("metrics-token-0123456789"), "{shown}");
    assert!(!format!("{s:?}").contains("metrics-token-0123456789"));
}

#[test]
fn durations() {
    assert_eq!(
        duration_str::parse("90d"),
        Ok(Duration::from_secs(90 * 86400))
    );
    assert_eq!(duration_str::parse("15"), Ok(Duration::from_secs(15)));
    assert!(duration_str::parse("15y").is_err());
    assert!(duration_str::parse("").is_err());
    assert_eq!(duration_str::format(&Duration::from_secs(7200)), "2h");
}

#[test]
fn key_errors_are_one_line() {
    // toml's Display adds "\nin `server.listen`"; the message must not.
    for text in [
        "[server]\nlisten = \"localhost\"\n",
        "[server]\nmax_body_bytes = \"big\"\n",
        "[server]\nlisten_addr = \"x\"\n",
    ] {
        let msg = load_str(text, &[]).expect_err("bad").to_string();
        assert!(!msg.contains('\n'), "{msg:?}");
    }
}

#[test]
fn server_cert_lifetime_range_is_named() {
    for lifetime in ["30m", "826d"] {
        let text = format!("[tls]\nserver_cert_lifetime = \"{lifetime}\"\nrenew_before = \"1m\"\n");
        let msg = load_str(&text, &[]).expect_err("range").to_string();
        assert!(
            msg.contains("tls.server_cert_lifetime") && msg.contains(lifetime),
            "{msg}"
        );
    }
    load_str(
        "[tls]\nserver_cert_lifetime = \"1h\"\nrenew_before = \"59m\"\n",
        &[],
    )
    .expect("1h is the minimum");
}

#[test]
fn auth_rules_name_their_keys() {
    let err = load_str("[auth]\naccess_token_lifetime = \"1h\"\n", &[]).expect_err("too long");
    assert!(
        err.to_string().contains("auth.access_token_lifetime"),
        "{err}"
    );
    let err = load_str("[auth]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", &[]).expect_err("cidr");
    assert!(err.to_string().contains("auth.trusted_proxies"), "{err}");
    let s = load_str(
        "[auth]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nlockout_threshold = 3\n",
        &[],
    )
    .expect("ok");
    assert_eq!(s.auth.lockout_threshold, 3);
}

#[test]
fn providers_and_proxy() {
    let s = load_str(
        "[proxy]\nkey_rpm = 60\n[providers.openai]\nsecret = \"openai-main\"\n[providers.ollama]\n",
        &[("LATCHKEY_PROVIDERS__ANTHROPIC__SECRET", "anthropic-main")],
    )
    .expect("providers");
    assert_eq!(s.proxy.key_rpm, 60);
    assert_eq!(s.providers.len(), 3);
    assert_eq!(
        s.providers["anthropic"].secret.as_deref(),
        Some("anthropic-main")
    );
    let err = load_str("[providers.openai]\n", &[]).expect_err("no secret");
    assert!(
        err.to_string().contains("`providers.openai.secret`"),
        "{err}"
    );
    let err =
        load_str("[providers.openai]\nsecret = \"x\"\ncolour = 1\n", &[]).expect_err("unknown key");
    assert!(err.to_string().contains("providers.openai"), "{err}");
    let err = load_str("[providers.x]\nupstream = \"ftp://x\"\n", &[]).expect_err("scheme");
    assert!(err.to_string().contains("`providers.x.upstream`"), "{err}");
    let err = load_str("[proxy]\nmax_body_bytes = 0\n", &[]).expect_err("zero");
    assert!(err.to_string().contains("proxy.max_body_bytes"), "{err}");
}

#[test]
fn a_provider_backed_by_a_connection_needs_that_connection_section() {
    let err = load_str("[providers.spotify]\n", &[]).expect_err("no connection section");
    assert!(
        err.to_string().contains("`providers.spotify.connection`")
            && err.to_string().contains("[connections.spotify]"),
        "{err}"
    );
    let s = load_str(
        "[connections.spotify]\nclient_id = \"abc\"\n[providers.spotify]\n",
        &[],
    )
    .expect("spotify API through the user's connection");
    assert!(s.providers.contains_key("spotify"));
}

#[test]
fn connection_limits_are_typed_validated_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Settings::load(&dir.path().join("none.toml"), false, Vec::new()).expect("defaults");
    assert_eq!(s.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.server.max_connections, 4096);
    assert_eq!(s.server.max_connections_per_ip, 256);

    let s = load_str(
        "[server]\nidle_timeout = \"5s\"\nmax_connections = 100\n",
        &[("LATCHKEY_SERVER__MAX_CONNECTIONS_PER_IP", "10")],
    )
    .expect("valid");
    assert_eq!(s.server.idle_timeout, Duration::from_secs(5));
    assert_eq!(s.server.max_connections, 100);
    assert_eq!(s.server.max_connections_per_ip, 10);
    let s = load_str("", &[("LATCHKEY_SERVER__IDLE_TIMEOUT", "2m")]).expect("env");
    assert_eq!(s.server.idle_timeout, Duration::from_secs(120));

    for (text, key) in [
        ("[server]\nidle_timeout = \"0s\"\n", "server.idle_timeout"),
        ("[server]\nidle_timeout = \"2d\"\n", "server.idle_timeout"),
        ("[server]\nidle_timeout = \"soon\"\n", "server.idle_timeout"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nmax_connections = 2000000\n",
            "server.max_connections",
        ),
        ("[server]\nmax_connections = -1\n", "server.max_connections"),
        (
            "[server]\nmax_connections_per_ip = 0\n",
            "server.max_connections_per_ip",
        ),
        (
            "[server]\nmax_connections = 10\nmax_connections_per_ip = 11\n",
            "server.max_connections_per_ip",
        ),
    ] {
        let err = load_str(text, &[]).expect_err(text);
        assert!(err.to_string().contains(key), "{text}: {err}");
    }
}

#[test]
fn plain_http_only_on_loopback_or_behind_a_trusted_proxy() {
    let s = load_str("", &[]).expect("defaults");
    assert!(s.server.tls, "HTTPS by default");
    let s = load_str(
        "[server]\ntls = false\nlisten = [\"127.0.0.1:1\", \"[::1]:2\"]\n",
        &[],
    )
    .expect("loopback is fine");
    assert!(!s.server.tls);
    let s = load_str("", &[("LATCHKEY_SERVER__TLS", "false")]).expect("env");
    assert!(!s.server.tls);

    for listen in ["0.0.0.0:1", "192.168.1.2:1", "[::]:1"] {
        let err = load_str(
            &format!("[server]\ntls = false\nlisten = [\"127.0.0.1:2\", \"{listen}\"]\n"),
            &[],
        )
        .expect_err("plain on the network");
        let msg = err.to_string();
        assert!(
            msg.contains("`server.tls`")
                && msg.contains("auth.trusted_proxies")
                && msg.contains(listen),
            "{msg}"
        );
    }
    load_str(
        "[server]\ntls = false\nlisten = \"0.0.0.0:1\"\n[auth]\ntrusted_proxies = [\"10.0.0.5\"]\n",
        &[],
    )
    .expect("behind a trusted proxy");
    // TLS on: any address, as before.
    load_str("[server]\nlisten = \"0.0.0.0:1\"\n", &[]).expect("https");

    let err = load_str(
        "[server]\ntls = false\nhttp_redirect_listen = \"127.0.0.1:80\"\n",
        &[],
    )
    .expect_err("redirect without https");
    assert!(
        err.to_string().contains("`server.http_redirect_listen`"),
        "{err}"
    );
}

// `[update]` is read by config (update sits beside config in the layer
// order, so its own tests cannot load `Settings`).
#[test]
fn update_public_keys_come_from_the_environment_as_one_string() {
    use base64::Engine;
    let k1 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let k2 = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    let both = format!("{k1},{k2}");
    let s = load_str("", &[("LATCHKEY_UPDATE__PUBLIC_KEYS", &both)]).expect("load");
    assert_eq!(s.update.public_keys, vec![k1, k2]);
    let err = load_str("", &[("LATCHKEY_UPDATE__PUBLIC_KEYS", "AAAA")]).expect_err("a short key");
    assert!(err.to_string().contains("update.public_keys"), "{err}");
    let err = load_str("[update]\nfeed = \"http://192.0.2.1/latest.json\"\n", &[])
        .expect_err("plain http off loopback");
    assert!(err.to_string().contains("update.feed"), "{err}");
}

#[test]
fn realtime_limits_are_checked_and_named() {
    let s = load_str("", &[]).expect("defaults");
    assert_eq!(s.proxy.realtime_sessions_per_key, 8);
    assert_eq!(s.proxy.realtime_max_session, Duration::from_secs(3600));
    let s = load_str(
        "[proxy]\nrealtime_max_session = \"30m\"\nrealtime_idle_timeout = \"10s\"\nrealtime_max_message_bytes = 1024\n",
        &[("LATCHKEY_PROXY__REALTIME_SESSIONS_PER_KEY", "2")],
    )
    .expect("set");
    assert_eq!(s.proxy.realtime_sessions_per_key, 2);
    assert_eq!(s.proxy.realtime_idle_timeout, Duration::from_secs(10));
    for (text, key) in [
        (
            "realtime_max_session = \"0s\"",
            "proxy.realtime_max_session",
        ),
        (
            "realtime_idle_timeout = \"2d\"",
            "proxy.realtime_idle_timeout",
        ),
        (
            "realtime_max_message_bytes = 10",
            "proxy.realtime_max_message_bytes",
        ),
    ] {
        let err = load_str(&format!("[proxy]\n{text}\n"), &[]).expect_err(text);
        assert!(err.to_string().contains(key), "{text}: {err}");
    }
}

#[test]
fn store_postgres_needs_a_url_and_names_the_key() {
    let err = load_str("[store]\nbackend = \"postgres\"\n", &[]).expect_err("no url");
    let msg = err.to_string();
    assert!(
        msg.contains("store.url is required when store.backend = \"postgres\""),
        "{msg}"
    );
    let err = load_str("[store]\npool_size = 1\n", &[]).expect_err("pool");
    assert!(err.to_string().contains("store.pool_size"), "{err}");
    let err = load_str(
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://db.internal/lk\"\n",
        &[],
    )
    .expect_err("no user");
    assert!(err.to_string().contains("store.url"), "{err}");
    let s = load_str("", &[]).expect("default");
    assert_eq!(s.store.backend, StoreBackend::Redb);
}

#[test]
fn store_url_from_the_environment_is_redacted_everywhere() {
    let canary = "pg-pw-canary-0123";
    let s = load_str(
        "",
        &[
            ("LATCHKEY_STORE__BACKEND", "postgres"),
            (
                "LATCHKEY_STORE__URL",
                &format!("postgres://lk:{canary}@db.internal:5432/latchkey?sslmode=require"),
            ),
            ("PGPASSWORD", "pgpassword-canary-4567"),
        ],
    )
    .expect("load");
    assert_eq!(s.store.backend, StoreBackend::Postgres);
    assert!(s.store.env_password.is_some(), "PGPASSWORD is kept");
    for shown in [
        format!("{s:?}"),
        toml::to_string(&s).expect("toml"),
        serde_json::to_string(&s).expect("json"),
    ] {
        assert!(!shown.contains(canary), "{shown}");
        assert!(!shown.contains("pgpassword-canary-4567"), "{shown}");
        assert!(
            shown.contains("postgres://lk@db.internal:5432/latchkey"),
            "{shown}"
        );
    }
    // A bad URL's error names the key and does not echo the password.
    let err = load_str(
        "",
        &[
            ("LATCHKEY_STORE__BACKEND", "postgres"),
            ("LATCHKEY_STORE__URL", &format!("postgres://lk:{canary}@/")),
        ],
    )
    .expect_err("bad url");
    let msg = err.to_string();
    assert!(msg.contains("store.url"), "{msg}");
    assert!(!msg.contains(canary), "{msg}");
}
