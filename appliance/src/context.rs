//! What every command needs first: the data directory, the configuration,
//! and (for commands that work offline) the data directory opened through
//! the core's [`App`], unsealed when the command needs the vault's keys.

use crate::cli::GlobalArgs;
use crate::prompt;
use anyhow::bail;
use latchkey_core::app::{App, OpenOptions};
use latchkey_core::config::{CONFIG_FILE, MasterKeyKind, Settings};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::vault::MasterKeySource;
use std::path::PathBuf;

/// Shortest passphrase accepted for a new vault passphrase.
pub const MIN_PASSPHRASE: usize = 12;

pub struct Context {
    pub data_dir: PathBuf,
    pub settings: Settings,
    pub global: GlobalArgs,
}

/// The default data directory: systemd's `StateDirectory=` when run as a
/// service, otherwise the XDG data directory.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        if !first.is_empty() {
            return Ok(PathBuf::from(first));
        }
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("latchkey"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(h).join(".local/share/latchkey"));
    }
    bail!("cannot choose a data directory: set --data-dir or LATCHKEY_DATA_DIR")
}

impl Context {
    pub fn load(global: &GlobalArgs) -> anyhow::Result<Context> {
        let data_dir = match &global.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir()?,
        };
        let (file, explicit) = match &global.config {
            Some(f) => (f.clone(), true),
            None => (data_dir.join(CONFIG_FILE), false),
        };
        let settings = Settings::load(&file, explicit, std::env::vars())?;
        Ok(Context {
            data_dir,
            settings,
            global: global.clone(),
        })
    }

    pub fn source(&self) -> MasterKeySource {
        self.settings.master_key_source(&self.data_dir)
    }

    /// Opens this data directory through the core for `role` (`serve`, or
    /// `cli` for a one-shot command; see [`OpenOptions`]).
    pub fn open_app(&self, role: &'static str, unseal: bool) -> anyhow::Result<App> {
        Ok(App::open(
            self.settings.clone(),
            &self.data_dir,
            self.source(),
            OpenOptions { role, unseal },
        )?)
    }

    /// Opens the data directory for a one-shot command that needs no key:
    /// metadata, removal, users, the audit log.
    pub fn open_sealed(&self) -> anyhow::Result<App> {
        self.open_app("cli", false)
    }

    /// The vault passphrase, from `--passphrase-file` or a prompt.
    pub fn vault_passphrase(&self) -> anyhow::Result<SecretString> {
        match &self.global.passphrase_file {
            Some(f) => prompt::from_file(f),
            // The prompt reads /dev/tty, so stdin stays free for the secret.
            None => prompt::prompt_tty("Vault passphrase: "),
        }
    }

    /// Opens the data directory with the vault unsealed, for a one-shot
    /// command: a stored key is read (finishing an interrupted master-key
    /// rotation); in passphrase mode the passphrase is asked for.
    pub fn open_unsealed(&self) -> anyhow::Result<App> {
        let app = self.open_app("cli", true)?;
        if self.settings.vault.master_key == MasterKeyKind::Passphrase {
            if !app.vault().is_initialized()? {
                bail!("the vault has no passphrase yet; run `latchkey vault init` to choose one");
            }
            app.unseal_with_passphrase(self.vault_passphrase()?)?;
        }
        Ok(app)
    }
}

/// Asks for a new passphrase twice on a terminal, or once from stdin.
pub fn new_passphrase(from_stdin: bool) -> anyhow::Result<SecretString> {
    let pass = if from_stdin {
        prompt::line_from_stdin("the new passphrase")?
    } else {
        let a = prompt::prompt_tty("New vault passphrase: ")?;
        let b = prompt::prompt_tty("Repeat it: ")?;
        if a.expose_secret() != b.expose_secret() {
            bail!("the passphrases do not match");
        }
        a
    };
    if pass.expose_secret().chars().count() < MIN_PASSPHRASE {
        bail!("the passphrase must be at least {MIN_PASSPHRASE} characters");
    }
    Ok(pass)
}
