//! What the host (the `latchkey` commands on this machine) does to the
//! vault while no server runs. Each operation records the same audit
//! entry the API's handler records for the same change
//! ([`crate::audit::vault_events`]), with the actor the admin token has
//! over the API (`host`) and no address: a vault change is audited the
//! same way from every entry point.

use super::{App, AppError};
use crate::audit::{self, AuditEvent, vault_events};
use crate::backup::{self, BackupRecipient, BackupSummary};
use crate::vault::{NewRecord, RecordMeta};
use secrecy::SecretString;

impl App {
    /// The actor the host's changes are recorded as.
    fn host_actor(&self) -> String {
        self.auth.host_principal().actor()
    }

    /// Records an entry after its change committed, as the API does: a
    /// failure to record is logged, the change stands.
    fn record_after(&self, e: AuditEvent) {
        if let Err(err) = audit::append(&self.store, e) {
            tracing::error!(error = %err, "could not write an audit entry");
        }
    }

    /// Stores a secret (`vault.put`, `created` or `replaced`).
    pub fn put_as_host(
        &self,
        new: &NewRecord,
        secret: &SecretString,
        replace: bool,
    ) -> Result<RecordMeta, AppError> {
        let existed = self.vault.meta(&new.name).is_ok();
        let meta = self.vault.put(new, secret, replace)?;
        self.record_after(vault_events::put(
            &self.host_actor(),
            &meta.name,
            existed,
            None,
        ));
        Ok(meta)
    }

    /// Deletes an entry (`vault.delete`); works on a sealed vault.
    pub fn remove_as_host(&self, name: &str) -> Result<RecordMeta, AppError> {
        let meta = self.vault.remove(name)?;
        self.record_after(vault_events::delete(&self.host_actor(), &meta.name, None));
        Ok(meta)
    }

    /// Reads a value (`vault.reveal`). As over the API, the value is
    /// returned only once its reading is recorded; its last-used time is
    /// written before returning (no flusher runs in a one-shot command).
    pub fn reveal_as_host(&self, name: &str) -> Result<SecretString, AppError> {
        let secret = self.vault.reveal(name)?;
        audit::append(
            &self.store,
            vault_events::reveal(&self.host_actor(), name, None),
        )?;
        self.vault.flush_last_used()?;
        Ok(secret)
    }

    /// An encrypted backup (`backup.create`), recorded before the bytes
    /// are returned: no backup goes unaudited.
    pub fn backup_as_host(
        &self,
        to: &BackupRecipient,
    ) -> Result<(Vec<u8>, BackupSummary), AppError> {
        let made = backup::create(&self.vault, to)?;
        audit::append(
            &self.store,
            vault_events::backup(
                &self.host_actor(),
                &vault_events::backup_to(to),
                made.1.vault_records,
                None,
            ),
        )?;
        Ok(made)
    }
}
