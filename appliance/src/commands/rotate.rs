//! `latchkey vault rotate-master`: a new master key, the data key re-wrapped
//! in one write transaction.
//!
//! For stored keys (key file, keychain) the new key is written beside the old
//! one *before* the database commit and promoted after it. A crash between
//! the two leaves both; the next open notices that the old key no longer
//! fits, tries the pending one, and finishes the promotion.

use crate::cli::RotateArgs;
use crate::context::{self, Context};
use crate::prompt;
use anyhow::{Context as _, bail};
use latchkey_core::config::MasterKeyKind;
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::vault::{MasterKey, MasterKeySource, keychain, master::write_private_file};
use std::path::PathBuf;

fn pending_path(path: &std::path::Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

fn pending_account(account: &str) -> String {
    format!("{account}.next")
}

/// The not-yet-promoted key of an interrupted rotation, if any.
pub fn pending_key(source: &MasterKeySource) -> anyhow::Result<Option<MasterKey>> {
    match source {
        MasterKeySource::KeyFile { path } => {
            let p = pending_path(path);
            if !p.exists() {
                return Ok(None);
            }
            Ok(Some(MasterKeySource::KeyFile { path: p }.load()?))
        }
        MasterKeySource::Keyring {
            service,
            account,
            backend,
        } => {
            let next = MasterKeySource::Keyring {
                service: service.clone(),
                account: pending_account(account),
                backend: *backend,
            };
            Ok(next.load().ok())
        }
        _ => Ok(None),
    }
}

/// Makes the pending key the current one.
pub fn promote_pending(source: &MasterKeySource) -> anyhow::Result<()> {
    match source {
        MasterKeySource::KeyFile { path } => {
            std::fs::rename(pending_path(path), path)
                .with_context(|| format!("replacing {}", path.display()))?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir).and_then(|d| d.sync_all())?;
            }
        }
        MasterKeySource::Keyring {
            service,
            account,
            backend,
        } => {
            let next = keychain::get(*backend, service, &pending_account(account))?;
            keychain::set(*backend, service, account, &next)?;
            keychain::delete(*backend, service, &pending_account(account))?;
        }
        _ => {}
    }
    Ok(())
}

pub fn run(ctx: &Context, a: RotateArgs) -> anyhow::Result<()> {
    let source = ctx.source();
    match ctx.settings.vault.master_key {
        MasterKeyKind::Passphrase => {
            let vault = latchkey_core::vault::Vault::new(ctx.open_store()?);
            let current = if a.passphrase_stdin {
                prompt::line_from_stdin("the current passphrase")?
            } else {
                ctx.vault_passphrase()?
            };
            vault.unseal(&MasterKey::Passphrase(current), source.kind_name())?;
            let new = context::new_passphrase(a.passphrase_stdin)?;
            vault.rewrap(&MasterKey::Passphrase(new), source.kind_name())?;
            eprintln!("The vault passphrase was changed.");
        }
        MasterKeyKind::SystemdCredential => {
            let Some(file) = a.new_key_file else {
                bail!(
                    "systemd-credential mode: create a new key with `latchkey keygen`, encrypt it \
                     with `systemd-creds encrypt`, and pass the plain key with --new-key-file FILE"
                );
            };
            let vault = ctx.open_vault()?;
            let new = MasterKeySource::KeyFile { path: file.clone() }.load()?;
            vault.rewrap(&new, source.kind_name())?;
            eprintln!(
                "The data key is now wrapped by the key in {}. Install it as the `{}` credential \
                 before the service next starts, then delete the plain file.",
                file.display(),
                ctx.settings.vault.credential_name
            );
        }
        MasterKeyKind::Keyfile | MasterKeyKind::Keyring => {
            let vault = ctx.open_vault()?;
            let new = MasterKey::generate();
            let text = new
                .expose_identity_string()
                .ok_or_else(|| anyhow::anyhow!("generated key has no text form"))?;
            match &source {
                MasterKeySource::KeyFile { path } => {
                    let line = zeroize::Zeroizing::new(format!("{}\n", text.expose_secret()));
                    write_private_file(&pending_path(path), line.as_bytes())?;
                }
                MasterKeySource::Keyring {
                    service,
                    account,
                    backend,
                } => {
                    keychain::set(*backend, service, &pending_account(account), &text)?;
                }
                _ => unreachable_source()?,
            }
            vault.rewrap(&new, source.kind_name())?;
            promote_pending(&source)?;
            eprintln!("The master key was rotated; the data key is re-wrapped.");
        }
    }
    Ok(())
}

fn unreachable_source() -> anyhow::Result<()> {
    bail!("internal error: unexpected master-key source")
}
