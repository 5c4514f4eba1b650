//! Where the master key comes from.
//!
//! `core` does not decide which source to use; the shell (appliance or desktop
//! app) hands it a [`MasterKeySource`] built from configuration.
//!
//! - [`MasterKeySource::KeyFile`]: an age identity in a 0600 file, created on
//!   first run. A file readable by group or others is refused.
//! - [`MasterKeySource::SystemdCredential`]: the same identity text, read from
//!   `$CREDENTIALS_DIRECTORY/<name>` (so `LoadCredentialEncrypted=` can keep it
//!   TPM-sealed on disk).
//! - [`MasterKeySource::Passphrase`]: nothing stored; the vault stays sealed
//!   until someone supplies the passphrase.
//! - [`MasterKeySource::Keyring`]: the identity text in the OS keychain (see
//!   [`crate::vault::keychain`]).

use super::keychain::{self, KeyringBackend};
use super::keys::{KeyError, MasterKey};
use age::secrecy::ExposeSecret;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The configured origin of the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    KeyFile {
        path: PathBuf,
    },
    SystemdCredential {
        name: String,
    },
    Passphrase,
    Keyring {
        service: String,
        account: String,
        backend: KeyringBackend,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error(
        "the master key file {path} is readable by group or others (mode {mode:03o}); \
         run `chmod 600 {path}` and start again"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error(
        "the master key file {path} is missing, but the vault already holds data wrapped by it; \
         put the file back or restore a backup with `latchkey restore`"
    )]
    KeyFileMissing { path: PathBuf },
    #[error("cannot read the master key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the master key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a master key: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error(
        "systemd credential `{name}` not found: $CREDENTIALS_DIRECTORY is not set \
         (add `LoadCredentialEncrypted={name}:…` to the service unit)"
    )]
    NoCredentialsDirectory { name: String },
    #[error("the OS keychain: {0}")]
    Keychain(#[from] keychain::KeychainError),
    #[error(
        "the master key source `{0}` needs a passphrase; the vault stays sealed until one is given"
    )]
    NeedsPassphrase(&'static str),
}

impl MasterKeySource {
    /// Stable name, stored next to the wrapped data key.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MasterKeySource::KeyFile { .. } => "keyfile",
            MasterKeySource::SystemdCredential { .. } => "systemd-credential",
            MasterKeySource::Passphrase => "passphrase",
            MasterKeySource::Keyring { .. } => "keyring",
        }
    }

    /// Loads the existing master key. Passphrase sources cannot load alone.
    pub fn load(&self) -> Result<MasterKey, MasterKeyError> {
        match self {
            MasterKeySource::KeyFile { path } => {
                if !path.exists() {
                    return Err(MasterKeyError::KeyFileMissing { path: path.clone() });
                }
                read_private_key_file(path)
            }
            MasterKeySource::SystemdCredential { name } => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| MasterKeyError::NoCredentialsDirectory { name: name.clone() })?;
                // systemd makes credential files 0400 and owned by the
                // service user; still refuse anything looser.
                read_private_key_file(&Path::new(&dir).join(name))
            }
            MasterKeySource::Passphrase => Err(MasterKeyError::NeedsPassphrase("passphrase")),
            MasterKeySource::Keyring {
                service,
                account,
                backend,
            } => {
                let text = keychain::get(*backend, service, account)?;
                MasterKey::parse_identity(text.expose_secret()).map_err(|source| {
                    MasterKeyError::Parse {
                        path: PathBuf::from(format!("keychain entry {service}/{account}")),
                        source,
                    }
                })
            }
        }
    }

    /// Stores a newly generated master key where this source keeps it.
    /// Used on first run and by master-key rotation.
    pub fn store_new(&self, key: &MasterKey) -> Result<(), MasterKeyError> {
        let Some(text) = key.expose_identity_string() else {
            return Ok(()); // passphrases are never stored
        };
        match self {
            MasterKeySource::KeyFile { path } => {
                let line = zeroize::Zeroizing::new(format!("{}\n", text.expose_secret()));
                write_private_file(path, line.as_bytes())
            }
            MasterKeySource::Keyring {
                service,
                account,
                backend,
            } => Ok(keychain::set(*backend, service, account, &text)?),
            MasterKeySource::SystemdCredential { .. } | MasterKeySource::Passphrase => Ok(()),
        }
    }

    /// The master key for a new vault: one this source already holds is
    /// used, never replaced (it may belong to another installation sharing
    /// the key file or keychain entry, or be ours from a first run that
    /// crashed before the database write); otherwise a new one is made and
    /// stored — a key file only if it is still absent, so of two creators
    /// racing the loser uses the winner's key.
    pub fn load_or_create(&self) -> Result<MasterKey, MasterKeyError> {
        match self.load() {
            Err(MasterKeyError::KeyFileMissing { .. })
            | Err(MasterKeyError::Keychain(keychain::KeychainError::NotFound { .. })) => {}
            other => return other,
        }
        let key = MasterKey::generate();
        match self {
            MasterKeySource::KeyFile { path } => {
                let Some(text) = key.expose_identity_string() else {
                    return Err(MasterKeyError::NeedsPassphrase("keyfile"));
                };
                let line = zeroize::Zeroizing::new(format!("{}\n", text.expose_secret()));
                if create_private_file(path, line.as_bytes())? {
                    Ok(key)
                } else {
                    read_private_key_file(path)
                }
            }
            _ => {
                self.store_new(&key)?;
                Ok(key)
            }
        }
    }

    /// Whether a key can be created for this source on first run.
    pub fn can_generate(&self) -> bool {
        matches!(
            self,
            MasterKeySource::KeyFile { .. } | MasterKeySource::Keyring { .. }
        )
    }
}

fn read_private_key_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
    let read_err = |source| MasterKeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if let Some(mode) = crate::private_fs::loose_mode(&meta) {
        return Err(MasterKeyError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(read_err)?);
    MasterKey::parse_identity(&text).map_err(|source| MasterKeyError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// A temporary file beside `path`, unique to this process and call, so two
/// writers never share (and clobber) one.
fn temp_beside(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to a new 0600 temporary file beside `path`, durably.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, MasterKeyError> {
    let tmp = temp_beside(path);
    let write_err = |source| MasterKeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut f = crate::private_fs::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(write_err(e))
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), MasterKeyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_fs::sync_dir(dir).map_err(|source| MasterKeyError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file + rename),
/// durably (fsync of file and directory).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), MasterKeyError> {
    let tmp = write_temp(path, bytes)?;
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(MasterKeyError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    sync_parent(path)
}

/// Creates `path` (mode 0600) holding `bytes` only if it does not exist
/// yet, atomically: the complete file appears under its name in one step
/// (a hard link of a finished temporary file), and of two creators racing
/// exactly one wins. `false` when the file already existed (it is left
/// alone; read it instead).
pub fn create_private_file(path: &Path, bytes: &[u8]) -> Result<bool, MasterKeyError> {
    let tmp = write_temp(path, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(MasterKeyError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // Mode bits are what these tests check; see `private_fs` for other
    // platforms.
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let src = MasterKeySource::KeyFile { path: path.clone() };
        assert!(matches!(
            src.load(),
            Err(MasterKeyError::KeyFileMissing { .. })
        ));
        let key = MasterKey::generate();
        src.store_new(&key).expect("store");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        src.load().expect("load");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = src.load().expect_err("world-readable must be refused");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains("644"), "{msg}");
    }

    /// A new vault never replaces a key the source already holds (another
    /// installation's, sharing the key file).
    #[test]
    fn first_run_uses_an_existing_key_and_never_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let src = MasterKeySource::KeyFile { path: path.clone() };
        let first = src.load_or_create().expect("create");
        let bytes = fs::read(&path).expect("read");
        let again = src.load_or_create().expect("reuse");
        assert_eq!(
            fs::read(&path).expect("read"),
            bytes,
            "the key file was replaced"
        );
        let wrapped = first
            .wrap(&crate::vault::DataKey::generate())
            .expect("wrap");
        again.unwrap(&wrapped).expect("the same key");
        // A key file it cannot use is an error, not a reason to replace it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            src.load_or_create(),
            Err(MasterKeyError::LoosePermissions { .. })
        ));
        assert_eq!(fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn create_private_file_has_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        let wins: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || create_private_file(path, &[b'a' + i; 40]).expect("create"))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("join")).collect()
        });
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
        let body = fs::read(&path).expect("read");
        assert_eq!(body.len(), 40);
        assert!(
            body.iter().all(|b| *b == body[0]),
            "a whole file, one writer's"
        );
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Only the token is left: no temporary files.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn garbage_key_file_is_a_parse_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        write_private_file(&path, b"not a key").expect("write");
        let err = MasterKeySource::KeyFile { path }
            .load()
            .expect_err("garbage");
        assert!(matches!(err, MasterKeyError::Parse { .. }), "{err}");
    }
}
