//! `latchkey backup` and `latchkey restore`.
//!
//! `backup` asks a running server for the snapshot when there is one;
//! `restore` needs the data directory to itself.

use crate::cli::{BackupArgs, RestoreArgs};
use crate::context::Context;
use crate::prompt;
use crate::remote::Remote;
use anyhow::{Context as _, bail};
use latchkey_core::backup::signing::{self, Fingerprint, Origin, Trust};
use latchkey_core::backup::{self, BackupIdentity, BackupRecipient};
use latchkey_core::config::MasterKeyKind;
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::vault::{MasterKey, master::write_private_file};

const MIN_BACKUP_PASSPHRASE: usize = 12;

pub fn backup(ctx: &Context, a: BackupArgs) -> anyhow::Result<()> {
    let to = match (&a.recipient, a.passphrase_stdin) {
        (Some(r), _) => BackupRecipient::parse_recipient(r)?,
        (None, true) => {
            let p = prompt::line_from_stdin("the backup passphrase")?;
            if p.expose_secret().chars().count() < MIN_BACKUP_PASSPHRASE {
                bail!("the backup passphrase must be at least {MIN_BACKUP_PASSPHRASE} characters");
            }
            BackupRecipient::Passphrase(p)
        }
        (None, false) => bail!("give --recipient AGE_RECIPIENT or --passphrase-stdin"),
    };
    if a.out.exists() {
        bail!(
            "{} already exists; choose another file name",
            a.out.display()
        );
    }
    // A running server makes the snapshot itself (it holds the database).
    let (bytes, records, schema) = match Remote::detect(ctx)? {
        Some(remote) => {
            let b = match &to {
                BackupRecipient::Recipient(r) => remote.backup(Some(&r.to_string()), None)?,
                BackupRecipient::Passphrase(p) => remote.backup(None, Some(p))?,
            };
            (b.bytes, b.vault_records, b.schema_version)
        }
        None => {
            let (bytes, summary) = ctx.open_unsealed()?.backup_as_host(&to)?;
            (
                bytes,
                summary.vault_records.to_string(),
                summary.schema_version.to_string(),
            )
        }
    };
    // Written like a key: 0600, atomically, durably.
    write_private_file(&a.out, &bytes)?;
    eprintln!(
        "Wrote {} ({records} vault entries, schema v{schema}).",
        a.out.display(),
    );
    // Read back from the file itself (whoever made it: this process or the
    // server), so what is shown is what a restore will check.
    match signing::unwrap(&bytes)?.signer {
        Some(fp) => eprintln!(
            "Signed with this installation's backup key {fp}\n\
             Keep this fingerprint apart from the backup: restoring it into a new data \
             directory asks for it (--trust)."
        ),
        None => bail!("the server returned an unsigned backup; is it an older Latchkey?"),
    }
    Ok(())
}

pub fn restore(ctx: &Context, a: RestoreArgs) -> anyhow::Result<()> {
    if ctx.settings.store.backend == latchkey_core::store::Backend::Postgres {
        // A restore builds a redb file in the data directory: on a
        // PostgreSQL deployment it would report success and change nothing
        // the replicas read.
        bail!(
            "restore writes a redb data directory, and store.backend = \"postgres\": restoring \
             into PostgreSQL is not supported yet (docs/SCALE.md); restore into a data directory \
             without [store] instead"
        );
    }
    let identity = match (&a.identity, a.passphrase_stdin) {
        (Some(path), _) => BackupIdentity::from_identity_file(path)?,
        (None, true) => {
            BackupIdentity::Passphrase(prompt::line_from_stdin("the backup passphrase")?)
        }
        (None, false) => bail!("give --identity KEYFILE or --passphrase-stdin"),
    };
    let trust = Trust {
        fingerprint: a.trust.as_deref().map(Fingerprint::parse).transpose()?,
        allow_unsigned: a.allow_unsigned,
    };
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    // Everything is decrypted and checked before the data directory is touched.
    let verified = backup::open(&bytes, &identity)?;
    let source = ctx.source();
    let vault_pass = if ctx.settings.vault.master_key == MasterKeyKind::Passphrase {
        Some(ctx.vault_passphrase()?)
    } else {
        None
    };
    let (summary, origin) = backup::restore(
        &verified,
        &ctx.data_dir,
        &source,
        vault_pass.clone().map(MasterKey::Passphrase),
        a.force,
        &trust,
    )?;
    match origin {
        Origin::ThisInstallation(fp) => {
            eprintln!("The backup is signed by this installation's backup key {fp}.")
        }
        Origin::Trusted(fp) => eprintln!("The backup is signed by the trusted backup key {fp}."),
        Origin::Passphrase(_) => {
            eprintln!("The backup opened with its passphrase, which vouches for its origin.")
        }
        Origin::UnsignedAllowed => eprintln!(
            "WARNING: restored an UNSIGNED backup (--allow-unsigned). Anyone holding its age \
             recipient could have made it: check the users (`latchkey user list`) and the \
             vault before relying on it, and make a new, signed backup."
        ),
    }
    let master = vault_pass.map(MasterKey::Passphrase);
    let checked = backup::verify_restored(&ctx.data_dir, &source, master.as_ref())?;
    eprintln!(
        "Restored {} vault entries (backup of {}) into {}; all {checked} verified.",
        summary.vault_records,
        summary.created_at,
        ctx.data_dir.display()
    );
    Ok(())
}
