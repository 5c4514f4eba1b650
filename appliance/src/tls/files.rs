//! File handling for the TLS directory: the private (0700) directory itself,
//! the lock that makes creating key material single-writer, atomic writes
//! with fixed permissions, the private-key permission check, and PEM
//! decoding with errors that name the file.
//!
//! Unix only (the appliance runs on Linux).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Result, TlsError};

/// Local CA certificate file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// Local CA private key file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// Generated server certificate file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Generated server private key file name.
pub const SERVER_KEY_FILE: &str = "server.key";

/// Lock file of the TLS directory (see [`lock_dir`]).
pub const LOCK_FILE: &str = ".lock";

/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files (public data).
pub const CERT_FILE_MODE: u32 = 0o644;
/// Mode of the TLS directory.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` with mode 0700 if missing; tightens it to 0700 if it is
/// accessible by group or others.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(TlsError::NotADirectory {
                    path: dir.to_path_buf(),
                });
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format!("{mode:03o}"),
                    "TLS directory is accessible by group or others; setting mode 700"
                );
                fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(
                    |source| TlsError::Write {
                        path: dir.to_path_buf(),
                        source,
                    },
                )?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| TlsError::Write {
                path: dir.to_path_buf(),
                source,
            }),
        Err(source) => Err(TlsError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// An exclusive hold on the TLS directory's key material; released when
/// dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// Waits for the exclusive lock on `dir`'s key material (`flock` on
/// `<dir>/.lock`). Everything that checks for a key pair and creates it
/// when missing (the CA, the server certificate) holds it from the check
/// to the last write, so two processes (`serve` starting while
/// `tls export-ca` runs) can never both create one and leave a key beside
/// another pair's certificate. Readers of a single file need no lock: each
/// file is replaced atomically.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(KEY_FILE_MODE)
        .open(&path)
        .map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
    file.lock()
        .map_err(|source| TlsError::Write { path, source })?;
    Ok(DirLock { _file: file })
}

/// Writes `contents` to `path` atomically (temporary file in the same
/// directory, fsync, rename) with permission bits `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let write_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TlsError::Write { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(write_err(&tmp))?;
        // The umask may have removed bits; never add any beyond `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write_err(&tmp))?;
        file.write_all(contents).map_err(write_err(&tmp))?;
        file.sync_all().map_err(write_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(write_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename; failure here only weakens crash safety.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a whole file, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `path` exists (errors other than "not found" are reported).
pub fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Permission bits (`0o777` part) of `path`.
pub fn mode_of(path: &Path) -> Result<u32> {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Refuses a key file that group or others may access in any way.
pub fn check_private_key_mode(path: &Path) -> Result<()> {
    let mode = mode_of(path)?;
    if mode & 0o077 != 0 {
        return Err(TlsError::InsecureKeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a key file that others (not owner, not group) may access.
/// Used for administrator-supplied keys, which are commonly group-readable
/// by a dedicated group such as `ssl-cert`.
pub fn check_private_key_mode_lenient(path: &Path) -> Result<()> {
    let mode = mode_of(path)?;
    if mode & 0o007 != 0 {
        return Err(TlsError::InsecureKeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Decodes every `CERTIFICATE` block of a PEM file (other blocks are skipped).
pub fn parse_pem_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<std::result::Result<Vec<_>, pem::Error>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Decodes the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn parse_pem_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Decodes a PEM file as UTF-8 text (for rcgen, which takes `&str`).
pub fn as_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| TlsError::Pem {
        path: path.to_path_buf(),
        reason: "file is not text".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_created_0700_and_tightened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/tls");
        ensure_private_dir(&dir).expect("create");
        assert_eq!(mode_of(&dir).expect("mode"), 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&dir).expect("tighten");
        assert_eq!(mode_of(&dir).expect("mode"), 0o700);
    }

    #[test]
    fn not_a_directory_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        fs::write(&file, b"x").expect("write");
        let err = ensure_private_dir(&file).expect_err("must fail");
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("k.key");
        write_atomic(&path, b"one", KEY_FILE_MODE).expect("write");
        assert_eq!(mode_of(&path).expect("mode"), 0o600);
        write_atomic(&path, b"two", KEY_FILE_MODE).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("readdir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn key_mode_checks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("k.key");
        write_atomic(&path, b"k", 0o640).expect("write");
        let err = check_private_key_mode(&path).expect_err("group-readable refused");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        check_private_key_mode_lenient(&path).expect("group-readable ok when lenient");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        check_private_key_mode_lenient(&path).expect_err("world-readable refused");
    }

    #[test]
    fn pem_errors_name_the_file() {
        let path = Path::new("/x/y.pem");
        let err = parse_pem_certs(path, b"hello").expect_err("no cert");
        assert!(err.to_string().contains("/x/y.pem"), "{err}");
        let err = parse_pem_key(path, b"hello").expect_err("no key");
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    }
}
