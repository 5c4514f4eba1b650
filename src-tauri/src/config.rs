//! Where the desktop app keeps its data and how it is configured.
//!
//! The same [`Settings`] as the appliance (`DATA_DIR/latchkey.toml`, then
//! `LATCHKEY_<SECTION>__<KEY>` variables), with the desktop's own defaults
//! underneath: the master key in the OS keychain (on Linux the Secret
//! Service, never the kernel's session keyring, which a reboot empties),
//! plain HTTP on loopback port [`DESKTOP_PORT`] for local agents. A
//! default applies only where neither the file nor the environment names
//! the key, so every one of them can still be changed.

use latchkey_core::config::{CONFIG_FILE, ConfigError, Settings};
use std::path::{Path, PathBuf};

/// The loopback proxy's default address (`server.listen` changes it):
/// port 7823 is unprivileged, away from the appliance's 8443 so both can
/// run on one machine, and from the common development ports.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7823";

/// The desktop's defaults, `(section, key, value)`, each applied only when
/// neither the file nor the environment sets its key.
fn defaults() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut d = vec![
        ("vault", "master_key", "keyring"),
        ("server", "tls", "false"),
        ("server", "listen", DEFAULT_LISTEN),
    ];
    if cfg!(target_os = "linux") {
        d.push(("vault", "keyring_backend", "secret-service"));
    }
    d
}

#[derive(Debug, thiserror::Error)]
pub enum DesktopConfigError {
    #[error("cannot choose a data directory: set LATCHKEY_DATA_DIR")]
    NoDataDir,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// `LATCHKEY_DATA_DIR` when set; otherwise on Linux the directory the
/// `latchkey` CLI uses by default (`$XDG_DATA_HOME/latchkey`, else
/// `~/.local/share/latchkey`), so the CLI finds the running app without
/// flags; elsewhere the OS app-data directory Tauri names
/// (`~/Library/Application Support/org.latchkey.desktop`,
/// `%APPDATA%\org.latchkey.desktop`), passed in as `os_app_data`.
pub fn data_dir(
    env: &dyn Fn(&str) -> Option<String>,
    os_app_data: Option<PathBuf>,
) -> Result<PathBuf, DesktopConfigError> {
    if let Some(d) = env("LATCHKEY_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if cfg!(target_os = "linux") {
        if let Some(d) = env("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d).join("latchkey"));
        }
        if let Some(h) = env("HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(h).join(".local/share/latchkey"));
        }
    }
    os_app_data.ok_or(DesktopConfigError::NoDataDir)
}

/// The settings file: `LATCHKEY_CONFIG`, else `DATA_DIR/latchkey.toml`.
pub fn config_file(data_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> (PathBuf, bool) {
    match env("LATCHKEY_CONFIG").filter(|f| !f.is_empty()) {
        Some(f) => (PathBuf::from(f), true),
        None => (data_dir.join(CONFIG_FILE), false),
    }
}

/// Loads the settings with the desktop's defaults under the file and the
/// environment.
pub fn load(
    file: &Path,
    explicit: bool,
    env: Vec<(String, String)>,
) -> Result<Settings, DesktopConfigError> {
    let table = read_table(file)?;
    let mut all = env;
    all.extend(defaults_for(&table, &all));
    Ok(Settings::load(file, explicit, all)?)
}

/// The desktop defaults not already set by `table` or `env`, as
/// environment entries (which [`Settings::load`] applies over the file:
/// harmless, since the file does not name them).
fn defaults_for(table: &toml::Table, env: &[(String, String)]) -> Vec<(String, String)> {
    defaults()
        .into_iter()
        .filter(|(section, key, _)| {
            let in_file = table
                .get(*section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(*key));
            let var = env_name(section, key);
            let in_env = env.iter().any(|(k, _)| k.eq_ignore_ascii_case(&var));
            !in_file && !in_env
        })
        .map(|(section, key, value)| (env_name(section, key), value.to_string()))
        .collect()
}

fn env_name(section: &str, key: &str) -> String {
    format!(
        "LATCHKEY_{}__{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

fn read_table(file: &Path) -> Result<toml::Table, DesktopConfigError> {
    match std::fs::read_to_string(file) {
        // A syntax error is reported by `Settings::load`, naming the file.
        Ok(text) => Ok(text.parse().unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(DesktopConfigError::Read {
            path: file.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Sets `vault.master_key = "passphrase"` in the settings file, keeping
/// everything else in it (the person chose passphrase mode on the
/// keychain screen). Written to a temporary file and renamed into place.
pub fn choose_passphrase_mode(file: &Path) -> Result<(), DesktopConfigError> {
    let write_err = |e: std::io::Error| DesktopConfigError::Write {
        path: file.display().to_string(),
        message: e.to_string(),
    };
    let mut table = match std::fs::read_to_string(file) {
        Ok(text) => text
            .parse::<toml::Table>()
            .map_err(|e| DesktopConfigError::Read {
                path: file.display().to_string(),
                message: e.to_string().trim().replace('\n', " "),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => {
            return Err(DesktopConfigError::Read {
                path: file.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    let vault = table
        .entry("vault")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(vault) = vault.as_table_mut() else {
        return Err(DesktopConfigError::Read {
            path: file.display().to_string(),
            message: "`vault` is not a section".into(),
        });
    };
    vault.insert(
        "master_key".into(),
        toml::Value::String("passphrase".into()),
    );
    let text = toml::to_string(&table).map_err(|e| DesktopConfigError::Write {
        path: file.display().to_string(),
        message: e.to_string(),
    })?;
    let tmp = file.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(write_err)?;
    std::fs::rename(&tmp, file).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::config::MasterKeyKind;

    #[test]
    fn desktop_defaults_apply_only_where_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(CONFIG_FILE);
        let s = load(&file, false, Vec::new()).expect("defaults");
        assert_eq!(s.vault.master_key, MasterKeyKind::Keyring);
        assert!(!s.server.tls);
        assert_eq!(
            s.server.listen,
            vec!["127.0.0.1:7823".parse().expect("addr")]
        );

        std::fs::write(
            &file,
            "[vault]\nmaster_key = \"passphrase\"\n[server]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .expect("write");
        let s = load(&file, false, Vec::new()).expect("file");
        assert_eq!(s.vault.master_key, MasterKeyKind::Passphrase);
        assert_eq!(
            s.server.listen,
            vec!["127.0.0.1:9000".parse().expect("addr")]
        );
        assert!(!s.server.tls, "the unset key keeps the desktop default");

        let env = vec![(
            "LATCHKEY_SERVER__LISTEN".to_string(),
            "127.0.0.1:9100".to_string(),
        )];
        let s = load(&file, false, env).expect("env");
        assert_eq!(
            s.server.listen,
            vec!["127.0.0.1:9100".parse().expect("addr")]
        );
    }

    #[test]
    fn a_listener_off_loopback_is_still_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(&file, "[server]\nlisten = \"0.0.0.0:7823\"\n").expect("write");
        // The desktop's `server.tls = false` default applies, and plain
        // HTTP off loopback is refused, naming the key.
        let err = load(&file, false, Vec::new()).expect_err("plain HTTP off loopback");
        assert!(err.to_string().contains("server.tls"), "{err}");
    }

    #[test]
    fn passphrase_mode_keeps_the_rest_of_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\n").expect("write");
        choose_passphrase_mode(&file).expect("choose");
        let s = load(&file, false, Vec::new()).expect("load");
        assert_eq!(s.vault.master_key, MasterKeyKind::Passphrase);
        assert_eq!(
            s.server.listen,
            vec!["127.0.0.1:9000".parse().expect("addr")]
        );
    }

    #[test]
    fn data_dir_order() {
        let env = |k: &str| match k {
            "LATCHKEY_DATA_DIR" => Some("/d".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(data_dir(&env, None).expect("dir"), PathBuf::from("/d"));
        let env = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        let got = data_dir(&env, Some(PathBuf::from("/os"))).expect("dir");
        if cfg!(target_os = "linux") {
            assert_eq!(got, PathBuf::from("/home/u/.local/share/latchkey"));
        } else {
            assert_eq!(got, PathBuf::from("/os"));
        }
    }
}
