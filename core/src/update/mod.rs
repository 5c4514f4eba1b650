//! The update channel's transport-neutral half (docs/UPDATES.md): the
//! `[update]` settings and trusted keys ([`settings`]), the feed format
//! and version rules ([`feed`]), and the server's periodic look at the
//! feed ([`Updates`]) behind an [`UpdateSource`], with what it found in
//! `/api/status` and one audit entry per newly seen version.
//!
//! Installing is the appliance's (`latchkey update`): it downloads,
//! checks size, SHA-256 and signature, replaces the binary and rolls back
//! a build that fails. It cannot write the audit log while the server
//! holds the data directory, so it leaves an [`InstallReport`] in the
//! data directory ([`write_report`]); the server audits it once and shows
//! it in its status.

pub mod feed;
pub mod settings;
#[cfg(test)]
mod tests;

pub use feed::{Artifact, Feed, FeedError};
pub use settings::{RELEASE_KEYS, UpdateSettings, VerifyingKey};

use crate::audit::{AuditEvent, Outcome};
use crate::store::{META, Store};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The version this build calls itself: `LATCHKEY_VERSION` at build time,
/// else the crate's version (see `core/build.rs`). Read at run time from
/// [`VERSION_SLOT`], never folded into the code.
pub fn version() -> &'static str {
    // black_box: the compiler must read the slot, not its known contents.
    let slot: &'static [u8; SLOT_LEN] = std::hint::black_box(&VERSION_SLOT);
    let rest = slot.get(SLOT_MARKER.len()..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(rest.get(..end).unwrap_or_default()).unwrap_or("0.0.0-invalid")
}

/// Length of [`VERSION_SLOT`].
pub const SLOT_LEN: usize = 96;
/// What [`VERSION_SLOT`] starts with, found nowhere else in the binary.
pub const SLOT_MARKER: &[u8] = b"LATCHKEY_VERSION_SLOT=";

/// The version, in one marked place in the binary: the marker, the
/// version, NUL padding. End-to-end tests copy the real binary and write
/// another version here to get a "newer build" of the same code without a
/// second compile (`tests/src/update.rs`); any such change alters the
/// bytes a release signature covers.
#[used]
static VERSION_SLOT: [u8; SLOT_LEN] = fill_slot(env!("LATCHKEY_VERSION").as_bytes());

const fn fill_slot(version: &[u8]) -> [u8; SLOT_LEN] {
    assert!(
        SLOT_MARKER.len() + version.len() < SLOT_LEN,
        "LATCHKEY_VERSION is too long"
    );
    let mut out = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < SLOT_MARKER.len() {
        out[i] = SLOT_MARKER[i];
        i += 1;
    }
    let mut j = 0;
    while j < version.len() {
        out[SLOT_MARKER.len() + j] = version[j];
        j += 1;
    }
    out
}
/// The platform this build was made for (a target triple): the feed
/// artifact it takes.
pub const TARGET: &str = env!("LATCHKEY_TARGET");
/// The install report the appliance leaves for the server.
pub const REPORT_FILE: &str = "update-report.json";
/// The report once the server has audited it (kept for the status).
pub const REPORT_SEEN_FILE: &str = "update-report.seen.json";
/// Key in `meta`: the newest version already audited as available.
const META_SEEN_VERSION: &[u8] = b"update.seen_version";
/// Largest report read.
const MAX_REPORT_BYTES: u64 = 16 * 1024;

/// A boxed future, as the trait object needs.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the feed's bytes come from. The server's is [`HttpSource`];
/// tests may hand in their own.
pub trait UpdateSource: Send + Sync + std::fmt::Debug {
    /// The feed document (at most [`feed::MAX_FEED_BYTES`] are parsed), or
    /// a one-line reason.
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, String>>;
}

/// The feed over HTTPS (or HTTP to loopback), through the client the
/// OAuth connections use: time limits, size cap, no redirects followed.
#[derive(Debug)]
pub struct HttpSource {
    url: String,
    client: crate::connections::client::HttpClient,
}

impl HttpSource {
    /// `url` must pass [`settings::check_feed_url`] (the settings did).
    pub fn new(url: &str) -> Result<HttpSource, String> {
        settings::check_feed_url(url)?;
        Ok(HttpSource {
            url: url.to_string(),
            client: crate::connections::client::HttpClient::new(&[])?,
        })
    }
}

impl UpdateSource for HttpSource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let req = axum::http::Request::get(&self.url)
                .header(axum::http::header::ACCEPT, "application/json")
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            let resp = self.client.send(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("the feed answered HTTP {}", resp.status().as_u16()));
            }
            Ok(resp.into_body())
        })
    }
}

/// How an install attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallOutcome {
    /// The new build runs (and, under systemd, became ready).
    Installed,
    /// The new build failed its self-check or readiness; the previous one
    /// was put back.
    RolledBack,
    /// The new build failed and the previous one could not be restored
    /// either: the owner must act.
    Failed,
}

/// What `latchkey update` leaves for the server to audit and show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    /// Unix seconds.
    pub at: i64,
    pub from: String,
    pub to: String,
    pub outcome: InstallOutcome,
    /// One line, for `rolled_back` and `failed`.
    pub reason: Option<String>,
}

/// Writes `report` into `data_dir` (replacing an older one, atomically).
pub fn write_report(data_dir: &Path, report: &InstallReport) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    let tmp = data_dir.join(format!("{REPORT_FILE}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(REPORT_FILE))
}

fn read_report(path: &Path) -> Option<InstallReport> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_REPORT_BYTES).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

/// What the server knows about updates (`/api/status`'s `update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateStatus {
    /// The running version.
    pub current: String,
    /// This build's platform.
    pub target: String,
    /// Whether `update.feed` is set (the URL itself is not shown).
    pub feed_configured: bool,
    pub auto_install: bool,
    /// When the feed was last read successfully (unix seconds).
    pub checked_at: Option<i64>,
    /// The feed's version at that time.
    pub latest: Option<String>,
    /// `latest` is newer than `current` and has an artifact for `target`.
    pub available: bool,
    pub notes: Option<String>,
    /// Why the last check failed, if it did.
    pub error: Option<String>,
    /// The last install attempt `latchkey update` reported.
    pub last_install: Option<InstallReport>,
}

/// The server's periodic look at the feed.
#[derive(Debug)]
pub struct Updates {
    store: Arc<Store>,
    source: Option<Arc<dyn UpdateSource>>,
    interval: Duration,
    status: Mutex<UpdateStatus>,
}

impl Updates {
    /// `source` is `None` when no feed is configured: nothing is fetched,
    /// but install reports are still picked up.
    pub fn new(
        store: Arc<Store>,
        settings: &UpdateSettings,
        source: Option<Arc<dyn UpdateSource>>,
    ) -> Arc<Updates> {
        Arc::new(Updates {
            store,
            interval: settings.check_interval,
            status: Mutex::new(UpdateStatus {
                current: version().to_string(),
                target: TARGET.to_string(),
                feed_configured: source.is_some(),
                auto_install: settings.auto_install,
                ..UpdateStatus::default()
            }),
            source,
        })
    }

    /// A copy of the current status.
    pub fn status(&self) -> UpdateStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UpdateStatus> {
        // A panic while holding this lock leaves plain data: keep going.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the feed once and updates the status; a newly seen newer
    /// version is audited (`update.available`), once per version across
    /// restarts.
    pub async fn check(&self) {
        let Some(source) = &self.source else {
            return;
        };
        let now = crate::auth::service::now();
        let found = source
            .fetch()
            .await
            .and_then(|bytes| feed::parse(&bytes).map_err(|e| e.to_string()));
        let feed = match found {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "update check failed");
                self.lock().error = Some(crate::audit::clean(&e, 300));
                return;
            }
        };
        let available =
            feed.artifacts.contains_key(TARGET) && feed::is_newer(&feed.version, version());
        {
            let mut s = self.lock();
            s.checked_at = Some(now);
            s.latest = Some(feed.version.to_string());
            s.available = available;
            s.notes = feed.notes.clone();
            s.error = None;
        }
        if available {
            let store = Arc::clone(&self.store);
            let version = feed.version.to_string();
            let res = tokio::task::spawn_blocking(move || audit_once(&store, &version)).await;
            match res {
                Ok(Ok(true)) => tracing::info!(version = %feed.version, "an update is available"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not audit the available update"),
                Err(e) => tracing::warn!(error = %e, "update audit task failed"),
            }
        }
    }

    /// Audits and shows an install report `latchkey update` left, once.
    pub async fn pick_up_report(&self) {
        let store = Arc::clone(&self.store);
        let res = tokio::task::spawn_blocking(move || take_report(&store)).await;
        match res {
            Ok(Ok(report)) => self.lock().last_install = report,
            Ok(Err(e)) => tracing::warn!(error = %e, "could not audit the update report"),
            Err(e) => tracing::warn!(error = %e, "update report task failed"),
        }
    }

    /// At start: the install report, then the feed; then the feed every
    /// `update.check_interval` until `stop` turns true.
    pub fn spawn(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            self.pick_up_report().await;
            let mut ticker = tokio::time::interval(self.interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                tokio::select! {
                    () = self.check() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    }
}

/// Audits `version` as available unless it already was; true if it was
/// written now.
fn audit_once(store: &Store, version: &str) -> Result<bool, crate::store::StoreError> {
    let txn = store.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let seen = meta
            .get(META_SEEN_VERSION)?
            .is_some_and(|v| v.value() == version.as_bytes());
        if seen {
            drop(meta);
            txn.abort()?;
            return Ok(false);
        }
        meta.insert(META_SEEN_VERSION, version.as_bytes())?;
    }
    crate::audit::append_in(
        &txn,
        AuditEvent::new("system", "update.available", Outcome::Success)
            .target(version)
            .detail(format!("running {}", self::version())),
    )?;
    txn.commit()?;
    Ok(true)
}

/// The report `latchkey update` left: audited (`update.install`) and
/// renamed to [`REPORT_SEEN_FILE`] in one go, so it is audited once; with
/// none pending, the last one already seen.
fn take_report(store: &Store) -> Result<Option<InstallReport>, crate::store::StoreError> {
    let dir = store.dir();
    let pending = dir.join(REPORT_FILE);
    let Some(report) = read_report(&pending) else {
        return Ok(read_report(&dir.join(REPORT_SEEN_FILE)));
    };
    let outcome = match report.outcome {
        InstallOutcome::Installed => Outcome::Success,
        InstallOutcome::RolledBack | InstallOutcome::Failed => Outcome::Failure,
    };
    let mut event = AuditEvent::new("host", "update.install", outcome)
        .target(report.to.clone())
        .detail(match &report.reason {
            Some(r) => format!("{:?} from {}: {r}", report.outcome, report.from),
            None => format!("{:?} from {}", report.outcome, report.from),
        });
    event.at = report.at;
    crate::audit::append(store, event)?;
    if let Err(e) = std::fs::rename(&pending, dir.join(REPORT_SEEN_FILE)) {
        tracing::warn!(error = %e, "could not mark the update report as seen");
    }
    Ok(Some(report))
}
