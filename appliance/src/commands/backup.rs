//! `latchkey backup` and `latchkey restore`.
//!
//! `backup` asks a running server for the snapshot when there is one;
//! `restore` needs the data directory to itself — and, on PostgreSQL, the
//! database: it refuses while any replica has it open
//! (`latchkey_core::backup::restore_into_store`).

use crate::cli::{BackupArgs, RestoreArgs};
use crate::context::Context;
use crate::prompt;
use crate::remote::Remote;
use crate::term::safe;
use anyhow::{Context as _, bail};
use latchkey_core::audit::{self, AuditEvent};
use latchkey_core::backup::signing::{self, Fingerprint, Origin, Trust};
use latchkey_core::backup::{self, BackupIdentity, BackupRecipient, BackupSummary};
use latchkey_core::config::MasterKeyKind;
use latchkey_core::secrecy::ExposeSecret;
use latchkey_core::store::{Backend, Store};
use latchkey_core::vault::{MasterKey, master::write_private_file};

const MIN_BACKUP_PASSPHRASE: usize = 12;

/// Who the audit log names for the commands on this machine.
const HOST_ACTOR: &str = "host";

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
    // Everything is decrypted and checked before the store is touched.
    let verified = backup::open(&bytes, &identity)?;
    let source = ctx.source();
    let vault_pass = if ctx.settings.vault.master_key == MasterKeyKind::Passphrase {
        Some(ctx.vault_passphrase()?)
    } else {
        None
    };
    let master = || vault_pass.clone().map(MasterKey::Passphrase);
    let file = a.file.display().to_string();
    let (summary, origin, checked, into) = match ctx.settings.store.backend {
        // Shared by replicas: copied into the database in one write
        // transaction, refused while any replica has it open.
        Backend::Postgres => {
            let done = backup::restore_into_store(
                &verified,
                &ctx.data_dir,
                &ctx.settings.store,
                &source,
                master(),
                a.force,
                &trust,
            )?;
            let checked = backup::verify_store(done.store.clone(), &source, master().as_ref())?;
            audit::append(
                &done.store,
                restored_event(&done.summary, &done.origin, &file),
            )?;
            (done.summary, done.origin, checked, done.target)
        }
        Backend::Redb => {
            let (summary, origin) =
                backup::restore(&verified, &ctx.data_dir, &source, master(), a.force, &trust)?;
            let checked = backup::verify_restored(&ctx.data_dir, &source, master().as_ref())?;
            let store = Store::open(&ctx.data_dir, "restore")?;
            audit::append(&store, restored_event(&summary, &origin, &file))?;
            (summary, origin, checked, ctx.data_dir.display().to_string())
        }
    };
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
    eprintln!(
        "Restored {} vault entries (backup of {}) into {}; all {checked} verified.",
        summary.vault_records,
        summary.created_at,
        safe(&into)
    );
    Ok(())
}

/// `backup.restore`, recorded in the restored store's audit log (which is
/// the backup's, so the entry says when it came back and from what).
fn restored_event(summary: &BackupSummary, origin: &Origin, file: &str) -> AuditEvent {
    let by = match origin {
        Origin::ThisInstallation(fp) => format!("signed by this installation's key {fp}"),
        Origin::Trusted(fp) => format!("signed by the trusted key {fp}"),
        Origin::Passphrase(_) => "opened with its passphrase".to_string(),
        Origin::UnsignedAllowed => "UNSIGNED, allowed with --allow-unsigned".to_string(),
    };
    AuditEvent::new(HOST_ACTOR, "backup.restore", audit::Outcome::Success)
        .target(file.to_string())
        .detail(format!(
            "backup of {}, {} vault record(s), {by}",
            summary.created_at, summary.vault_records
        ))
}
