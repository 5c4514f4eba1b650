//! `store.url` to a connection configuration, and the redacted form every
//! message shows instead of it.
//!
//! Both libpq forms are accepted (`postgres://…` and `key=value …`). The
//! password comes from the URL, else from `PGPASSWORD`. Every connection
//! starts with the session limits that bound each store call
//! (`statement_timeout`, `lock_timeout`) and a limit on an idle open
//! transaction, so a stuck process cannot hold the writer lock forever.

use super::PgError;
use crate::store::settings::{DatabaseUrl, StoreSettings};
use secrecy::ExposeSecret;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::{Config, Host, SslMode};

/// libpq's `verify-ca`/`verify-full`, which the driver's parser does not
/// know: TLS here always verifies the certificate and the host name (see
/// `tls.rs`), so both mean `require`.
fn normalize(raw: &str) -> String {
    raw.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

fn parse(raw: &str) -> Result<Config, String> {
    Config::from_str(&normalize(raw)).map_err(|e| {
        // The driver's parse errors name an option or a position, never a
        // value; still, say it our way.
        format!(
            "not a PostgreSQL connection string ({e}); expected \
             postgres://user[:password]@host[:port]/database[?sslmode=require] or libpq's \
             key=value form"
        )
    })
}

/// Checks `store.url` as `Settings::load` does; the parsed configuration.
pub(crate) fn check_url(url: &DatabaseUrl, settings: &StoreSettings) -> Result<Config, String> {
    let config = parse(url.expose())?;
    if config.get_user().is_none_or(str::is_empty) {
        return Err(format!(
            "{} names no user (postgres://USER@host/database)",
            url.redacted()
        ));
    }
    if config.get_hosts().is_empty() {
        return Err(format!(
            "{} names no host (postgres://user@HOST/database, or host=/run/postgresql for a Unix socket)",
            url.redacted()
        ));
    }
    if config.get_dbname().is_none_or(str::is_empty) {
        return Err(format!(
            "{} names no database (postgres://user@host/DATABASE)",
            url.redacted()
        ));
    }
    let sockets = config
        .get_hosts()
        .iter()
        .filter(|h| matches!(h, Host::Unix(_)))
        .count();
    if sockets > 0 && sockets < config.get_hosts().len() {
        return Err(format!(
            "{} mixes Unix sockets and TCP hosts; name one kind",
            url.redacted()
        ));
    }
    if settings.ca_file.is_some() && config.get_ssl_mode() == SslMode::Disable {
        return Err("store.ca_file is set but store.url says sslmode=disable".into());
    }
    Ok(config)
}

/// The application name of every connection of the store opened as
/// `origin`: operators see Latchkey's sessions in `pg_stat_activity`, and
/// a restore counts the other open stores by it.
pub(super) fn application_name(origin: &str) -> String {
    format!("latchkey/{origin}")
}

/// The configuration every connection of the store opened as `origin`
/// uses.
pub(super) fn connection_config(
    url: &DatabaseUrl,
    settings: &StoreSettings,
    origin: &str,
) -> Result<Config, PgError> {
    let mut config = check_url(url, settings).map_err(PgError::Url)?;
    if config
        .get_hosts()
        .iter()
        .all(|h| matches!(h, Host::Unix(_)))
    {
        // libpq never uses TLS on a Unix socket either.
        config.ssl_mode(SslMode::Disable);
    }
    if config.get_password().is_none()
        && let Some(pw) = &settings.env_password
    {
        config.password(pw.0.expose_secret());
    }
    let ms = settings.timeout.as_millis();
    // An open transaction idle this long is ended by the server (and with
    // it the writer lock): a process that froze mid-transaction cannot
    // stop every replica from writing.
    let idle_ms = settings.timeout.max(Duration::from_secs(30)).as_millis() * 2;
    let mut options = config.get_options().unwrap_or_default().to_string();
    for (name, value) in [
        ("statement_timeout", ms),
        ("lock_timeout", ms),
        ("idle_in_transaction_session_timeout", idle_ms),
    ] {
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!("-c {name}={value}"));
    }
    config
        .options(&options)
        .application_name(application_name(origin))
        .connect_timeout(settings.timeout)
        // A peer that vanished (a failover, a cut cable) is noticed within
        // about 30 s even on an idle connection.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(15))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok(config)
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `postgres://user@host:port/database[?sslmode=…]` for `raw`: what a
/// message may show of a connection string (no password, no other
/// parameter). Itself a valid connection string naming the same server and
/// database.
pub(crate) fn describe_url(raw: &str) -> String {
    let Ok(config) = parse(raw) else {
        return "<unreadable connection string>".into();
    };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                Host::Tcp(name) => encode(name),
                Host::Unix(path) => encode(&path.display().to_string()),
            };
            match ports.get(i).or(ports.first()) {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    let user = config.get_user().map(encode).unwrap_or_default();
    let db = config.get_dbname().map(encode).unwrap_or_default();
    let at = if user.is_empty() { "" } else { "@" };
    // Not secret, and what an operator checks first.
    let tls = match config.get_ssl_mode() {
        SslMode::Disable => "?sslmode=disable",
        SslMode::Require => "?sslmode=require",
        _ => "",
    };
    format!("postgres://{user}{at}{}/{db}{tls}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::settings::Backend;

    fn settings(url: &str) -> StoreSettings {
        StoreSettings {
            backend: Backend::Postgres,
            url: Some(DatabaseUrl::new(url)),
            ..StoreSettings::default()
        }
    }

    #[test]
    fn the_password_never_shows() {
        for raw in [
            "postgres://lk:s3cret-pw@db.internal:5433/latchkey?sslmode=require",
            "postgres://lk@db.internal/latchkey?password=s3cret-pw",
            "host=db.internal user=lk password=s3cret-pw dbname=latchkey",
        ] {
            let url = DatabaseUrl::new(raw);
            for shown in [url.redacted(), format!("{url:?}"), format!("{url}")] {
                assert!(!shown.contains("s3cret-pw"), "{shown}");
                assert!(shown.contains("db.internal"), "{shown}");
            }
            let s = settings(raw);
            assert!(!format!("{s:?}").contains("s3cret-pw"));
        }
    }

    #[test]
    fn the_redacted_form_is_stable_and_parses() {
        for raw in [
            "postgres://lk:pw@db.internal:5433/latchkey",
            "host=/run/postgresql port=5432 user=lk dbname=latchkey",
            "postgres://lk@[::1]:5432/latchkey",
            "postgres://lk@a:1,b:2/latchkey",
            "postgres://lk:pw@db/latchkey?sslmode=verify-full&application_name=x",
        ] {
            let once = describe_url(raw);
            assert_eq!(describe_url(&once), once, "{raw}");
            assert!(parse(&once).is_ok(), "{once}");
        }
        assert_eq!(
            describe_url("host=/run/postgresql port=5432 user=lk dbname=latchkey"),
            "postgres://lk@%2Frun%2Fpostgresql:5432/latchkey"
        );
        assert_eq!(
            describe_url("postgres://lk:pw@db:5433/latchkey?sslmode=verify-full"),
            "postgres://lk@db:5433/latchkey?sslmode=require"
        );
    }

    #[test]
    fn incomplete_urls_name_what_is_missing() {
        let s = StoreSettings::default();
        let err = |raw: &str| check_url(&DatabaseUrl::new(raw), &s).expect_err(raw);
        assert!(err("postgres://db.internal/latchkey").contains("no user"));
        assert!(err("postgres://lk@db.internal").contains("no database"));
        assert!(err("not a url at all =").contains("not a PostgreSQL connection string"));
        let ok = check_url(
            &DatabaseUrl::new("postgres://lk@db.internal/latchkey?sslmode=verify-full"),
            &s,
        )
        .expect("verify-full is accepted");
        assert_eq!(ok.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn session_limits_and_pgpassword() {
        let mut s = settings("postgres://lk@db.internal/latchkey?options=-c%20search_path%3Dlk");
        s.env_password = Some(crate::store::settings::Password(
            "from-env".to_string().into(),
        ));
        let url = s.url.clone().expect("url");
        let c = connection_config(&url, &s, "o").expect("config");
        assert_eq!(c.get_password(), Some(&b"from-env"[..]));
        let options = c.get_options().expect("options");
        assert!(options.starts_with("-c search_path=lk "), "{options}");
        assert!(options.contains("-c lock_timeout=30000"), "{options}");
        // A password in the URL wins over PGPASSWORD.
        let s2 = StoreSettings {
            env_password: s.env_password.clone(),
            ..settings("postgres://lk:in-url@db.internal/latchkey")
        };
        let url = s2.url.clone().expect("url");
        let c = connection_config(&url, &s2, "o").expect("config");
        assert_eq!(c.get_password(), Some(&b"in-url"[..]));
    }
}
