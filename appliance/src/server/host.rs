//! What the appliance tells `core`'s router about itself (certificate
//! readiness and TLS details), and the admin token file.

use crate::tls::TlsManager;
use anyhow::{Context as _, bail};
use latchkey_core::http::{HostInfo, ReadyCheck};
use latchkey_core::secrecy::SecretString;
use latchkey_core::vault::master::create_private_file;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The admin token's file name inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// Reads `DATA_DIR/admin.token`, creating it (32 random bytes, hex, mode
/// 0600) if missing. A token file other users can read is refused: anyone
/// holding it controls the vault. Created only if absent, in one step
/// (never replacing a token another process made meanwhile), so a reader
/// never sees a partial token and every process ends up with the same one.
pub fn ensure_admin_token(data_dir: &Path) -> anyhow::Result<SecretString> {
    let path = admin_token_path(data_dir);
    if !path.exists() {
        let bytes: [u8; 32] = rand::random();
        let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(bytes)));
        create_private_file(&path, text.as_bytes())?;
    }
    read_admin_token(&path)
}

/// Reads an existing admin token file, refusing loose permissions.
pub fn read_admin_token(path: &Path) -> anyhow::Result<SecretString> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the admin token file {} is readable by group or others (mode {mode:03o}); \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let token = text.trim();
    if token.len() < 32 {
        bail!(
            "the admin token file {} is empty or too short; delete it and restart the server \
             to make a new one",
            path.display()
        );
    }
    Ok(SecretString::from(token.to_string()))
}

/// [`HostInfo`] backed by the TLS manager.
pub struct ApplianceHost {
    pub tls: Arc<TlsManager>,
}

impl HostInfo for ApplianceHost {
    fn readiness_checks(&self) -> Vec<ReadyCheck> {
        vec![match self.tls.check_valid_now() {
            Ok(()) => ReadyCheck::pass("certificates"),
            Err(e) => ReadyCheck::fail("certificates", e),
        }]
    }

    fn tls_info(&self) -> Option<serde_json::Value> {
        let mut info = serde_json::json!({
            "ca_fingerprint_sha256": self.tls.ca_fingerprint_sha256(),
            "ca_certificate": self.tls.ca().cert_path().display().to_string(),
        });
        match self.tls.status() {
            Ok(status) => {
                if let Some(server) = status.server {
                    info["server"] = serde_json::json!({
                        "source": server.source,
                        "subject": server.subject,
                        "names": server.sans,
                        "not_after": server.not_after,
                        "fingerprint_sha256": server.fingerprint_sha256,
                    });
                }
                if let Some(ca) = status.ca {
                    info["ca_not_after"] = serde_json::Value::String(ca.not_after);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read certificate status"),
        }
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::secrecy::ExposeSecret;

    #[test]
    fn token_created_once_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ensure_admin_token(dir.path()).expect("create");
        assert_eq!(a.expose_secret().len(), 64);
        let path = admin_token_path(dir.path());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = ensure_admin_token(dir.path()).expect("reuse");
        assert_eq!(a.expose_secret(), b.expose_secret());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ensure_admin_token(dir.path()).expect_err("loose");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
