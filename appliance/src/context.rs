//! What every command needs first: the data directory, the configuration,
//! and (for vault commands) an unsealed vault.

use crate::cli::GlobalArgs;
use crate::prompt;
use anyhow::bail;
use latchkey_core::config::{CONFIG_FILE, MasterKeyKind, Settings};
use latchkey_core::secrecy::{ExposeSecret, SecretString};
use latchkey_core::store::Store;
use latchkey_core::vault::{MasterKey, MasterKeySource, Vault};
use std::path::PathBuf;
use std::sync::Arc;

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

    /// Opens the database of this data directory for a one-shot command.
    pub fn open_store(&self) -> anyhow::Result<Arc<Store>> {
        Ok(Store::open(&self.data_dir, "cli")?)
    }

    /// The vault passphrase, from `--passphrase-file` or a prompt.
    pub fn vault_passphrase(&self) -> anyhow::Result<SecretString> {
        match &self.global.passphrase_file {
            Some(f) => prompt::from_file(f),
            // The prompt reads /dev/tty, so stdin stays free for the secret.
            None => prompt::prompt_tty("Vault passphrase: "),
        }
    }

    /// Opens and unseals the vault for a one-shot command.
    pub fn open_vault(&self) -> anyhow::Result<Vault> {
        let store = self.open_store()?;
        let vault = Vault::new(store);
        let source = self.source();
        if self.settings.vault.master_key == MasterKeyKind::Passphrase {
            if !vault.is_initialized()? {
                bail!("the vault has no passphrase yet; run `latchkey vault init` to choose one");
            }
            let pass = self.vault_passphrase()?;
            vault.unseal(&MasterKey::Passphrase(pass), source.kind_name())?;
            return Ok(vault);
        }
        // Finishes a master-key rotation interrupted after its commit.
        latchkey_core::vault::rotation::open_recovering(&vault, &source)?;
        Ok(vault)
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
