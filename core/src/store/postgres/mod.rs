//! The PostgreSQL backend: the store's byte tables as rows of one SQL
//! table, shared by every replica (`docs/SCALE.md`).
//!
//! [`PgStore`] owns a runtime thread of its own that drives every
//! connection; callers wait for each statement's answer on their own
//! thread (`pool::wait`), so the app's workers never run the database's
//! I/O and a full set of blocked workers cannot stall it. Dropping it
//! shuts that runtime down without waiting (safe inside async code).
//!
//! Opening applies the SQL files of `latchkey_migrations::postgres` and
//! checks the logical schema version, in one transaction under an advisory
//! lock, so replicas starting together cannot race.

mod config;
mod feed;
mod peek;
mod pool;
mod schema;
mod tls;
mod txn;

pub(crate) use config::{check_url, describe_url};
pub(crate) use feed::HeldLock;
pub use peek::{PgPeek, peek};
pub(crate) use txn::{Pager, Txn};

use crate::duration_str;
use crate::store::settings::StoreSettings;
use crate::store::{Changed, StoreError};
use pool::{Connector, Pool};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Why a PostgreSQL operation failed. Never holds the connection URL's
/// password: targets are shown as `postgres://user@host:port/database`.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {}", detail(.source))]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL: {}", detail(.0))]
    Db(tokio_postgres::Error),
    #[error(
        "no PostgreSQL connection became free within {} (all {size} of store.pool_size are in \
         use); raise store.pool_size or store.timeout, or look for slow statements",
        duration_str::format(.waited)
    )]
    PoolTimeout { waited: Duration, size: usize },
    #[error(
        "another write transaction held the store for longer than store.timeout ({})",
        duration_str::format(.0)
    )]
    WriteLockTimeout(Duration),
    #[error(
        "another process held the shared lock `{name}` for longer than store.timeout ({})",
        duration_str::format(.waited)
    )]
    SharedLockTimeout { name: String, waited: Duration },
    #[error(
        "the store's change feed did not start listening within store.timeout ({})",
        duration_str::format(.0)
    )]
    FeedTimeout(Duration),
    #[error(
        "the PostgreSQL database's SQL schema is version {found}, newer than this build of \
         Latchkey understands ({supported}); upgrade Latchkey"
    )]
    SqlTooNew { found: u32, supported: u32 },
    #[error(
        "the PostgreSQL database holds rows but no Latchkey schema version (`meta`/`schema_version`); \
         it is damaged, or it is not Latchkey's: point store.url at an empty database"
    )]
    NoVersion,
    #[error("a write to a table opened in a read transaction")]
    ReadOnly,
    #[error("the PostgreSQL connection is closed")]
    Closed,
    #[error("cannot start the store's runtime thread: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("store.url: {0}")]
    Url(String),
    #[error("store.ca_file: {0}")]
    Tls(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        PgError::Db(e)
    }
}

/// The server's own words when it said something (message and SQLSTATE),
/// else the driver's. A server message never echoes parameters (keys and
/// values are sent as parameters, never in SQL text).
fn detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

impl PgError {
    /// Whether the server gave up waiting for a lock or a statement
    /// (`lock_timeout`, `statement_timeout`).
    fn is_timeout(&self) -> bool {
        use tokio_postgres::error::SqlState;
        let code = match self {
            PgError::Db(e) | PgError::Connect { source: e, .. } => e.code(),
            _ => None,
        };
        code.is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED)
    }

    /// Whether the connection under the failed call is gone (closed, or
    /// ended by the server: a restart, a failover, an administrator).
    fn is_lost_connection(&self) -> bool {
        let PgError::Db(e) = self else {
            return matches!(self, PgError::Closed);
        };
        e.is_closed()
            || e.code().is_some_and(|c| {
                let code = c.code();
                // 57P01-57P05: the server is shutting the session down;
                // class 08: connection exception.
                code.starts_with("57P") || code.starts_with("08")
            })
    }

    /// Names the shared lock a timeout was waiting for.
    fn waiting_for(self, name: &str, waited: Duration) -> PgError {
        if self.is_timeout() {
            PgError::SharedLockTimeout {
                name: name.to_string(),
                waited,
            }
        } else {
            self
        }
    }
}

/// One write transaction at a time per process, as redb has: the others
/// wait here rather than each holding a pooled connection while they wait
/// for the cluster-wide lock.
struct WriterGate {
    busy: Mutex<bool>,
    freed: Condvar,
}

/// This process's turn to write; the next waiter's on drop.
pub(crate) struct WriterTicket(Arc<WriterGate>);

impl WriterGate {
    fn acquire(self: &Arc<Self>, timeout: Duration) -> Result<WriterTicket, PgError> {
        let deadline = Instant::now() + timeout;
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            let now = Instant::now();
            if now >= deadline {
                return Err(PgError::WriteLockTimeout(timeout));
            }
            busy = self
                .freed
                .wait_timeout(busy, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *busy = true;
        Ok(WriterTicket(Arc::clone(self)))
    }
}

impl Drop for WriterTicket {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.freed.notify_one();
    }
}

/// An open PostgreSQL store: the pool, this process's writer slot, and the
/// runtime thread under both.
pub(crate) struct PgStore {
    pool: Arc<Pool>,
    writer: Arc<WriterGate>,
    /// This open's id in change notices (its own are not reported back).
    origin: Arc<str>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.pool.connector().target)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, brings the schema up to date, starts the change feed
    /// (changes by others go to `feed`). Returns the store and the logical
    /// schema version the database had (0: it was empty).
    pub(crate) fn open(
        settings: &StoreSettings,
        feed: broadcast::Sender<Changed>,
    ) -> Result<(PgStore, u32), StoreError> {
        let url = settings.url.as_ref().ok_or_else(|| {
            PgError::Url("store.url is required when store.backend = \"postgres\"".into())
        })?;
        let origin: Arc<str> = hex::encode(rand::random::<[u8; 16]>()).into();
        let config = config::connection_config(url, settings, &origin)?;
        let tls = tls::make_tls(settings, &config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("latchkey-store")
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let connector = Connector {
            config,
            tls,
            runtime: runtime.handle().clone(),
            target: url.redacted().into(),
        };
        let store = PgStore {
            pool: Pool::new(connector.clone(), settings.pool_size, settings.timeout),
            writer: Arc::new(WriterGate {
                busy: Mutex::new(false),
                freed: Condvar::new(),
            }),
            origin,
            runtime: Some(runtime),
        };
        let from = schema::migrate(
            store.pool.get()?,
            Arc::clone(&store.origin),
            latchkey_migrations::MIGRATIONS,
        )?;
        feed::start(connector, Arc::clone(&store.origin), feed, settings.timeout)?;
        Ok((store, from))
    }

    /// The schema migration opening ran, again, with `migrations` (tests:
    /// `Store::migrate_again_with`).
    #[cfg(test)]
    pub(crate) fn migrate_again_with(
        &self,
        migrations: &[latchkey_migrations::Migration],
    ) -> Result<u32, StoreError> {
        schema::migrate(self.pool.get()?, Arc::clone(&self.origin), migrations)
    }

    /// `postgres://user@host:port/database`.
    pub(crate) fn target(&self) -> &str {
        &self.pool.connector().target
    }

    /// A snapshot to read from. A pooled connection the server closed
    /// meanwhile (a restart, a failover) is replaced once.
    pub(crate) fn begin_read(&self) -> Result<Txn, PgError> {
        self.retry_lost(|| Txn::begin_read(self.pool.get()?))
    }

    /// Runs `begin` again while it fails because its pooled connection
    /// had been lost (nothing was done on it yet, so trying again is
    /// safe): after a restart every idle connection may be dead.
    fn retry_lost(&self, begin: impl Fn() -> Result<Txn, PgError>) -> Result<Txn, PgError> {
        let mut left = self.pool.size() + 1;
        loop {
            match begin() {
                Err(e) if e.is_lost_connection() && left > 0 => {
                    left -= 1;
                    tracing::debug!(error = %e, "a pooled PostgreSQL connection was lost; retrying");
                }
                other => return other,
            }
        }
    }

    /// The one write transaction across every process sharing the
    /// database.
    pub(crate) fn begin_write(&self) -> Result<Txn, PgError> {
        let timeout = self.pool.timeout();
        let begin = || {
            let ticket = self.writer.acquire(timeout)?;
            Txn::begin_write(self.pool.get()?, ticket, Arc::clone(&self.origin))
        };
        self.retry_lost(begin).map_err(|e| {
            if e.is_timeout() {
                PgError::WriteLockTimeout(timeout)
            } else {
                e
            }
        })
    }

    /// Holds `name` across every process sharing the database.
    pub(crate) async fn lock_shared(&self, name: &str) -> Result<HeldLock, PgError> {
        feed::lock(self.pool.connector(), name)
            .await
            .map_err(|e| e.waiting_for(name, self.pool.timeout()))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, and panics inside async code.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
