//! `latchkey vault rotate-master`: a new master key, the data key re-wrapped
//! in one write transaction.
//!
//! Stored keys (key file, keychain) go through
//! `latchkey_core::vault::rotation`, which survives a crash at any point.
//! While a server holds the data directory, the rotation happens inside it
//! through the admin API.

use crate::cli::RotateArgs;
use crate::context::{self, Context};
use crate::prompt;
use crate::remote::Remote;
use anyhow::bail;
use latchkey_core::config::MasterKeyKind;
use latchkey_core::vault::{MasterKey, MasterKeySource, rotation};

pub fn run(ctx: &Context, a: RotateArgs) -> anyhow::Result<()> {
    let source = ctx.source();
    let remote = Remote::detect(ctx)?;
    match ctx.settings.vault.master_key {
        MasterKeyKind::Passphrase => {
            let current = if a.passphrase_stdin {
                prompt::line_from_stdin("the current passphrase")?
            } else {
                ctx.vault_passphrase()?
            };
            match remote {
                Some(remote) => {
                    let new = context::new_passphrase(a.passphrase_stdin)?;
                    remote.rotate_master(Some((&current, &new)))?;
                }
                None => {
                    let app = ctx.open_sealed()?;
                    app.unseal_with_passphrase(current)?;
                    let new = context::new_passphrase(a.passphrase_stdin)?;
                    app.vault()
                        .rewrap(&MasterKey::Passphrase(new), source.kind_name())?;
                }
            }
            eprintln!("The vault passphrase was changed.");
        }
        MasterKeyKind::SystemdCredential => {
            let Some(file) = a.new_key_file else {
                bail!(
                    "systemd-credential mode: create a new key with `latchkey keygen`, encrypt it \
                     with `systemd-creds encrypt`, and pass the plain key with --new-key-file FILE"
                );
            };
            if remote.is_some() {
                bail!(
                    "systemd-credential mode: stop the server first; the new credential is \
                     installed by systemd when the service starts again"
                );
            }
            let app = ctx.open_unsealed()?;
            let new = MasterKeySource::KeyFile { path: file.clone() }.load()?;
            app.vault().rewrap(&new, source.kind_name())?;
            eprintln!(
                "The data key is now wrapped by the key in {}. Install it as the `{}` credential \
                 before the service next starts, then delete the plain file.",
                file.display(),
                ctx.settings.vault.credential_name
            );
        }
        MasterKeyKind::Keyfile | MasterKeyKind::Keyring => {
            match remote {
                Some(remote) => remote.rotate_master(None)?,
                None => rotation::rotate_stored(ctx.open_unsealed()?.vault(), &source)?,
            }
            eprintln!("The master key was rotated; the data key is re-wrapped.");
        }
    }
    Ok(())
}
