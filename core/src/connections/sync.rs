//! Keeping this process's copies in step with rows other replicas change.
//!
//! Each replica caches access tokens (per connection) and the providers'
//! client settings (from `meta`). When another replica refreshes,
//! reconnects or disconnects a connection, or an administrator changes a
//! provider's client there, the store's change feed names the table and
//! the app's reload task calls [`Connections::on_store_change`]: a cached
//! token whose row no longer holds the sealed tokens it came from is
//! dropped (the next request reads the row again: once per change, not per
//! request), and client settings are read again. Rows are compared by a
//! digest of their sealed bytes, so the scan decrypts nothing and a mere
//! last-used write drops no token.

use super::store::{self, Status};
use super::{Connections, load_override, row_digest};
use crate::store::{Changed, StoreError};
use latchkey_migrations::v3::CONNECTIONS;
use std::collections::HashMap;

impl Connections {
    /// Brings the caches up to date with `change` (blocking: reads the
    /// store). How many cached tokens were dropped.
    pub fn on_store_change(&self, change: &Changed) -> Result<usize, StoreError> {
        if change.touches_table(crate::store::META) {
            self.reload_clients()?;
        }
        if change.touches_table(CONNECTIONS) {
            return self.drop_stale_tokens();
        }
        Ok(0)
    }

    /// Drops every cached token whose row changed, went or needs a
    /// reconnect.
    fn drop_stale_tokens(&self) -> Result<usize, StoreError> {
        let rows: HashMap<_, _> = store::list(self.vault.store(), None)?
            .into_iter()
            .map(|(u, p, row)| ((u, p), row))
            .collect();
        let Ok(slots) = self.slots.read() else {
            return Ok(0);
        };
        let mut dropped = 0;
        for (key, slot) in slots.iter() {
            let stale = match slot.cached.read() {
                Ok(c) => c.as_ref().is_some_and(|c| match rows.get(key) {
                    Some(row) => {
                        row.status != Status::Connected || row_digest(&row.sealed) != c.row
                    }
                    None => true,
                }),
                Err(_) => true,
            };
            if stale {
                slot.set(None);
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Reads every provider's client settings again (an administrator may
    /// have changed them on another replica).
    fn reload_clients(&self) -> Result<(), StoreError> {
        for rt in self.providers.values() {
            let ov = load_override(self.vault.store(), &rt.configured.name)?;
            let wanted = ov.apply(&rt.configured);
            let now = rt.provider();
            // Only these two come from the override.
            if now.client_id != wanted.client_id
                || now.client_secret_entry != wanted.client_secret_entry
            {
                rt.set_current(wanted);
            }
        }
        Ok(())
    }
}
