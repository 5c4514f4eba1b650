//! Connections to PostgreSQL: how one is made (on the store's own runtime)
//! and the small bounded pool transactions borrow them from.
//!
//! Each connection's driver (`tokio_postgres::Connection`, the socket I/O)
//! runs as a task on the store's runtime thread; the `Client` half only
//! sends requests and waits for answers over channels, so any thread can
//! wait on it with `block_on` (`docs/SCALE.md`, "Calls block"). Waiting for
//! a free connection is bounded by `store.timeout`.

use super::PgError;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Connection, Socket};

use super::tls::MakeTls;

/// Waits on the calling thread for `fut` (a client future: channels only).
pub(super) fn wait<F: Future>(fut: F) -> F::Output {
    futures_executor::block_on(fut)
}

/// What a new connection needs.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: MakeTls,
    pub(super) runtime: tokio::runtime::Handle,
    /// `postgres://user@host:port/db`, for errors (no password).
    pub(super) target: Arc<str>,
}

type Raw = (
    Client,
    Connection<Socket, <MakeTls as tokio_postgres::tls::MakeTlsConnect<Socket>>::Stream>,
);

impl Connector {
    /// Opens a connection on the store's runtime and hands back both
    /// halves (the change feed drives its connection itself).
    pub(super) async fn connect_raw(&self) -> Result<Raw, PgError> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let task = self.runtime.spawn(async move { config.connect(tls).await });
        match task.await {
            Ok(Ok(raw)) => Ok(raw),
            Ok(Err(source)) => Err(PgError::Connect {
                target: self.target.to_string(),
                source,
            }),
            Err(_) => Err(PgError::Closed),
        }
    }

    /// A connection whose driver runs on the store's runtime.
    pub(super) async fn connect(&self) -> Result<Client, PgError> {
        let (client, conn) = self.connect_raw().await?;
        self.runtime.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

/// A bounded set of connections for transactions.
pub(super) struct Pool {
    connector: Connector,
    size: usize,
    timeout: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Client>,
    /// Connections that exist, idle or lent out (or being opened).
    open: usize,
}

impl Pool {
    pub(super) fn new(connector: Connector, size: usize, timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            size,
            timeout,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave `State` torn
        // (every change is one statement).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lends a connection: an idle one, a new one while fewer than `size`
    /// exist, or the first one given back within `store.timeout`.
    pub(super) fn get(self: &Arc<Self>) -> Result<Pooled, PgError> {
        let deadline = Instant::now() + self.timeout;
        let mut state = self.lock();
        loop {
            while let Some(client) = state.idle.pop() {
                if client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(self.lend(client));
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match wait(self.connector.connect()) {
                    Ok(client) => Ok(self.lend(client)),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PgError::PoolTimeout {
                    waited: self.timeout,
                    size: self.size,
                });
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn lend(self: &Arc<Self>, client: Client) -> Pooled {
        Pooled {
            client: Some(client),
            pool: Arc::clone(self),
            broken: false,
        }
    }

    fn give_back(&self, client: Option<Client>) {
        let mut state = self.lock();
        match client {
            Some(c) if !c.is_closed() => state.idle.push(c),
            _ => state.open -= 1,
        }
        drop(state);
        self.freed.notify_one();
    }
}

/// A borrowed connection; back to the pool on drop, or closed if it was
/// left in an unknown state.
pub(super) struct Pooled {
    client: Option<Client>,
    pool: Arc<Pool>,
    broken: bool,
}

impl Pooled {
    pub(super) fn client(&self) -> Result<&Client, PgError> {
        self.client.as_ref().ok_or(PgError::Closed)
    }

    /// Closes this connection instead of lending it again (its
    /// transaction state is unknown).
    pub(super) fn discard(&mut self) {
        self.broken = true;
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let client = self.client.take().filter(|_| !self.broken);
        self.pool.give_back(client);
    }
}
