//! [`TlsManager`]: owns the local CA, the current server certificate (or
//! the user-provided one) and the [`CertResolver`], and keeps them fresh.
//!
//! On start it ensures the CA exists and loads or issues the server
//! certificate (or loads the user-provided pair; a bad user-provided pair is
//! then a startup error). [`TlsManager::refresh`] repeats the check:
//! generated certificates are reissued when needed, user-provided files are
//! reloaded when their contents change, and a bad replacement is logged
//! while the previous certificate stays in service.
//! [`TlsManager::spawn_maintenance`] runs `refresh` periodically.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ca::LocalCa;
use super::certinfo::{self, CertFacts, CertSource};
use super::resolver::CertResolver;
use super::server_cert::{self, IssuePolicy, MAX_SERVER_CERT_LIFETIME, ReissueReason};
use super::status::{self, TlsStatus};
use super::user_cert::{self, ContentDigest, UserCertFiles};
use super::{Result, TlsError, TlsSettings, config};

/// What a [`TlsManager::refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The certificate in service is still good.
    Unchanged,
    /// A new server certificate was issued.
    Reissued(ReissueReason),
    /// The generated certificate on disk changed and was loaded.
    LoadedFromDisk,
    /// The user-provided files changed and were reloaded.
    Reloaded,
}

struct State {
    facts: CertFacts,
    /// Digest of the user-provided files in service.
    user_digest: Option<ContentDigest>,
    /// Digest of user-provided files that failed to load (not retried
    /// until they change again).
    failed_digest: Option<ContentDigest>,
}

/// Manages the appliance's TLS certificates.
pub struct TlsManager {
    settings: TlsSettings,
    user_files: Option<UserCertFiles>,
    provider: Arc<CryptoProvider>,
    ca: LocalCa,
    resolver: Arc<CertResolver>,
    state: Mutex<State>,
}

impl std::fmt::Debug for TlsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsManager")
            .field("dir", &self.settings.dir)
            .field("user_files", &self.user_files)
            .finish_non_exhaustive()
    }
}

impl TlsManager {
    /// Ensures the CA and a usable server certificate exist. Blocking (file
    /// I/O, key generation): call before starting the runtime's work or
    /// inside `spawn_blocking`.
    pub fn new(settings: TlsSettings) -> Result<Arc<Self>> {
        validate(&settings)?;
        let user_files = UserCertFiles::from_settings(&settings)?;
        let provider = config::crypto_provider();
        let ca = LocalCa::load_or_create(&settings.dir)?;
        let (certified_key, facts, user_digest) = match &user_files {
            Some(files) => {
                let loaded = user_cert::load(files, &provider)?;
                tracing::info!(
                    cert = %files.cert_file.display(),
                    subject = %loaded.facts.subject,
                    "using user-provided TLS certificate"
                );
                (loaded.certified_key, loaded.facts, Some(loaded.digest))
            }
            None => {
                let wanted = server_cert::wanted_sans(&settings)?;
                let (cert, reason) = server_cert::load_or_issue(
                    &settings.dir,
                    &ca,
                    &provider,
                    policy(&settings, &wanted),
                )?;
                if let Some(reason) = reason {
                    log_issued(&cert.facts, &reason);
                }
                (cert.certified_key, cert.facts, None)
            }
        };
        Ok(Arc::new(Self {
            resolver: Arc::new(CertResolver::new(certified_key)),
            state: Mutex::new(State {
                facts,
                user_digest,
                failed_digest: None,
            }),
            settings,
            user_files,
            provider,
            ca,
        }))
    }

    /// The resolver to put into a `ServerConfig`.
    pub fn resolver(&self) -> Arc<CertResolver> {
        Arc::clone(&self.resolver)
    }

    /// A hardened server configuration using this manager's certificates.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        config::build_server_config(self.resolver())
    }

    /// The local CA.
    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    /// SHA-256 fingerprint of the local CA certificate (`AB:CD:...`).
    pub fn ca_fingerprint_sha256(&self) -> String {
        self.ca().fingerprint_sha256()
    }

    /// Whether the certificate in service is user-provided or generated.
    pub fn source(&self) -> CertSource {
        if self.user_files.is_some() {
            CertSource::UserProvided
        } else {
            CertSource::Generated
        }
    }

    /// Readiness check: the certificate in service (and, for generated
    /// certificates, the CA) is valid right now.
    pub fn check_valid_now(&self) -> std::result::Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let facts = self.lock().facts.clone();
        check_window("server certificate", &facts, now)?;
        if self.source() == CertSource::Generated {
            check_window("local CA certificate", self.ca.facts(), now)?;
        }
        Ok(())
    }

    /// Status of the CA and the certificate in service (read from disk).
    pub fn status(&self) -> Result<TlsStatus> {
        status::status(
            &self.settings.dir,
            self.user_files.as_ref().map(|f| f.cert_file.as_path()),
        )
    }

    /// Checks the certificate in service once: reissues a generated one when
    /// needed, reloads user-provided files when they changed. Blocking.
    ///
    /// On error the certificate in service is left unchanged.
    pub fn refresh(&self) -> Result<RefreshOutcome> {
        match &self.user_files {
            Some(files) => self.refresh_user(files),
            None => self.refresh_generated(),
        }
    }

    fn refresh_generated(&self) -> Result<RefreshOutcome> {
        let wanted = server_cert::wanted_sans(&self.settings)?;
        let (cert, reason) = server_cert::load_or_issue(
            &self.settings.dir,
            &self.ca,
            &self.provider,
            policy(&self.settings, &wanted),
        )?;
        let changed = self.resolver.current().cert.first() != cert.leaf();
        if !changed && reason.is_none() {
            return Ok(RefreshOutcome::Unchanged);
        }
        self.resolver.set(Arc::clone(&cert.certified_key));
        self.lock().facts = cert.facts.clone();
        Ok(match reason {
            Some(reason) => {
                log_issued(&cert.facts, &reason);
                RefreshOutcome::Reissued(reason)
            }
            None => {
                tracing::info!("server certificate changed on disk; loaded it");
                RefreshOutcome::LoadedFromDisk
            }
        })
    }

    fn refresh_user(&self, files: &UserCertFiles) -> Result<RefreshOutcome> {
        let digest = user_cert::current_digest(files)?;
        {
            let state = self.lock();
            if Some(digest) == state.user_digest || Some(digest) == state.failed_digest {
                return Ok(RefreshOutcome::Unchanged);
            }
        }
        match user_cert::load(files, &self.provider) {
            Ok(loaded) => {
                self.resolver.set(Arc::clone(&loaded.certified_key));
                let mut state = self.lock();
                state.facts = loaded.facts;
                state.user_digest = Some(loaded.digest);
                state.failed_digest = None;
                tracing::info!(
                    cert = %files.cert_file.display(),
                    subject = %state.facts.subject,
                    "reloaded user-provided TLS certificate"
                );
                Ok(RefreshOutcome::Reloaded)
            }
            Err(e) => {
                self.lock().failed_digest = Some(digest);
                Err(e)
            }
        }
    }

    /// Runs [`refresh`](Self::refresh) every `interval` on a blocking
    /// thread until `shutdown` becomes `true` or its sender is dropped.
    /// Errors are logged; the certificate in service stays in place.
    pub fn spawn_maintenance(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate; startup already checked
            loop {
                if *shutdown.borrow() {
                    break;
                }
                tokio::select! {
                    _ = ticker.tick() => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            break;
                        }
                        continue;
                    }
                }
                let this = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || this.refresh()).await {
                    Ok(Ok(RefreshOutcome::Unchanged)) => {}
                    Ok(Ok(outcome)) => tracing::debug!(?outcome, "TLS certificate updated"),
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "TLS certificate check failed; keeping the current certificate"
                    ),
                    Err(e) => tracing::error!(error = %e, "TLS maintenance task failed"),
                }
            }
            tracing::debug!("TLS maintenance stopped");
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn validate(settings: &TlsSettings) -> Result<()> {
    let lifetime = settings.server_cert_lifetime;
    if lifetime < Duration::from_secs(3600) || lifetime > MAX_SERVER_CERT_LIFETIME {
        return Err(TlsError::Settings(format!(
            "server certificate lifetime must be between 1 hour and 825 days, got {} hours",
            lifetime.as_secs() / 3600
        )));
    }
    if settings.renew_before >= lifetime {
        tracing::warn!(
            "TLS renew_before is not shorter than the server certificate lifetime; \
             the certificate will be reissued on every check"
        );
    }
    Ok(())
}

fn policy<'a>(
    settings: &TlsSettings,
    wanted: &'a std::collections::BTreeSet<certinfo::San>,
) -> IssuePolicy<'a> {
    IssuePolicy {
        wanted,
        lifetime: settings.server_cert_lifetime,
        renew_before: settings.renew_before,
        now: OffsetDateTime::now_utc(),
    }
}

fn log_issued(facts: &CertFacts, reason: &ReissueReason) {
    tracing::info!(
        %reason,
        not_after = %certinfo::rfc3339(facts.not_after),
        names = %facts.sans.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        "issued new server certificate"
    );
}

fn check_window(
    what: &str,
    facts: &CertFacts,
    now: OffsetDateTime,
) -> std::result::Result<(), String> {
    if now < facts.not_before {
        return Err(format!(
            "{what} is not valid before {} (check the system clock)",
            certinfo::rfc3339(facts.not_before)
        ));
    }
    if now >= facts.not_after {
        return Err(format!(
            "{what} expired at {}",
            certinfo::rfc3339(facts.not_after)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::tls::files::{SERVER_CERT_FILE, SERVER_KEY_FILE};
    use crate::tls::test_util::{self_signed_pair, self_signed_pair_with, settings};

    fn write_user_pair(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let c = dir.join("user.pem");
        let k = dir.join("user.key");
        fs::write(&c, cert).expect("write cert");
        fs::write(&k, key).expect("write key");
        fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).expect("chmod");
        (c, k)
    }

    #[test]
    fn generated_flow_and_readiness() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mgr = TlsManager::new(settings(&tmp.path().join("tls"))).expect("manager");
        assert_eq!(mgr.source(), CertSource::Generated);
        mgr.check_valid_now().expect("valid");
        assert_eq!(mgr.refresh().expect("refresh"), RefreshOutcome::Unchanged);
        assert!(tmp.path().join("tls").join(SERVER_CERT_FILE).exists());
        assert_eq!(mgr.ca_fingerprint_sha256().len(), 95);
        // Server certificate in service is served with the CA as second element.
        let current = mgr.resolver().current();
        assert_eq!(current.cert.len(), 2);
        assert_eq!(&current.cert[1], mgr.ca().cert_der());
    }

    #[test]
    fn refresh_reissues_and_swaps_when_near_expiry() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = settings(tmp.path());
        s.server_cert_lifetime = Duration::from_secs(2 * 24 * 3600);
        s.renew_before = Duration::from_secs(3 * 24 * 3600);
        let mgr = TlsManager::new(s).expect("manager");
        let before = mgr.resolver().current();
        let outcome = mgr.refresh().expect("refresh");
        assert!(
            matches!(
                outcome,
                RefreshOutcome::Reissued(ReissueReason::ExpiringSoon { .. })
            ),
            "{outcome:?}"
        );
        let after = mgr.resolver().current();
        assert_ne!(before.cert[0], after.cert[0]);
    }

    #[test]
    fn refresh_picks_up_deleted_server_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mgr = TlsManager::new(settings(tmp.path())).expect("manager");
        fs::remove_file(tmp.path().join(SERVER_KEY_FILE)).expect("rm");
        let outcome = mgr.refresh().expect("refresh");
        assert_eq!(outcome, RefreshOutcome::Reissued(ReissueReason::Missing));
    }

    #[test]
    fn user_cert_reload_and_bad_replacement_kept_out() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (c1, k1) = self_signed_pair("first.example");
        let (cert_path, key_path) = write_user_pair(tmp.path(), &c1, &k1);
        let mut s = settings(&tmp.path().join("tls"));
        s.cert_file = Some(cert_path.clone());
        s.key_file = Some(key_path.clone());
        let mgr = TlsManager::new(s).expect("manager");
        assert_eq!(mgr.source(), CertSource::UserProvided);
        let first = mgr.resolver().current();
        assert_eq!(mgr.refresh().expect("refresh"), RefreshOutcome::Unchanged);
        // No generated server certificate when a user one is configured.
        assert!(!tmp.path().join("tls").join(SERVER_CERT_FILE).exists());

        // A replacement with an Ed25519 key is loaded.
        let (c2, k2) = self_signed_pair_with("second.example", &rcgen::PKCS_ED25519);
        write_user_pair(tmp.path(), &c2, &k2);
        assert_eq!(mgr.refresh().expect("reload"), RefreshOutcome::Reloaded);
        let second = mgr.resolver().current();
        assert_ne!(first.cert[0], second.cert[0]);
        let st = mgr.status().expect("status");
        let server = st.server.expect("server status");
        assert_eq!(server.source, CertSource::UserProvided);
        assert!(
            server.subject.contains("second.example"),
            "{}",
            server.subject
        );

        // A broken replacement: error reported once, old cert kept.
        fs::write(&cert_path, "not a certificate").expect("write");
        let err = mgr.refresh().expect_err("bad file");
        assert!(
            err.to_string().contains(&cert_path.display().to_string()),
            "{err}"
        );
        assert_eq!(
            mgr.refresh().expect("same bad file not retried"),
            RefreshOutcome::Unchanged
        );
        assert_eq!(mgr.resolver().current().cert[0], second.cert[0]);
        mgr.check_valid_now().expect("still valid");

        // Mismatched pair (cert from one, key from another) is refused too.
        let (c3, _) = self_signed_pair("third.example");
        fs::write(&cert_path, &c3).expect("write");
        let err = mgr.refresh().expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert_eq!(mgr.resolver().current().cert[0], second.cert[0]);
    }

    #[test]
    fn bad_user_cert_at_startup_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cert_path, key_path) = write_user_pair(tmp.path(), "junk", "junk");
        let mut s = settings(&tmp.path().join("tls"));
        s.cert_file = Some(cert_path);
        s.key_file = Some(key_path);
        let err = TlsManager::new(s).expect_err("startup error");
        assert!(err.to_string().contains("user.pem"), "{err}");
    }

    #[test]
    fn lifetime_validated() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = settings(tmp.path());
        s.server_cert_lifetime = Duration::from_secs(1000 * 24 * 3600);
        let err = TlsManager::new(s).expect_err("too long");
        assert!(matches!(err, TlsError::Settings(_)), "{err}");
    }

    #[tokio::test]
    async fn maintenance_reloads_and_stops() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (c1, k1) = self_signed_pair("first.example");
        let (cert_path, key_path) = write_user_pair(tmp.path(), &c1, &k1);
        let mut s = settings(&tmp.path().join("tls"));
        s.cert_file = Some(cert_path);
        s.key_file = Some(key_path);
        let mgr = tokio::task::spawn_blocking(move || TlsManager::new(s))
            .await
            .expect("join")
            .expect("manager");
        let first = mgr.resolver().current();
        let (tx, rx) = watch::channel(false);
        let handle = Arc::clone(&mgr).spawn_maintenance(Duration::from_millis(50), rx);
        let (c2, k2) = self_signed_pair("second.example");
        write_user_pair(tmp.path(), &c2, &k2);
        let mut swapped = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if mgr.resolver().current().cert[0] != first.cert[0] {
                swapped = true;
                break;
            }
        }
        assert!(swapped, "maintenance did not reload the certificate");
        tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("maintenance stops")
            .expect("join");
    }
}
