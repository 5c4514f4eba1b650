//! Files and directories only their owner may read, on every platform the
//! core is built for.
//!
//! The data directory, the key file, the admin token and restored
//! databases hold key material or capabilities, so they are created
//! private and a key file others can read is refused. How "private" is
//! expressed differs per platform; this module is the one place that knows:
//!
//! - **Unix (Linux, macOS)**: directories `0700`, files `0600`, created with
//!   that mode (never widened then narrowed). A key file with any group or
//!   other bit set is refused ([`loose_mode`]). Durability of a rename needs
//!   an fsync of the containing directory ([`sync_dir`]).
//! - **Windows**: there are no mode bits. Files created under the user's
//!   profile (`%LOCALAPPDATA%`, where the desktop app keeps its data)
//!   inherit that directory's ACL, which grants only the user, SYSTEM and
//!   Administrators; nothing is narrowed further here and no file is
//!   refused for its permissions ([`loose_mode`] is always `None`). A
//!   directory cannot be opened as a file to fsync it; NTFS journals the
//!   rename itself, so [`sync_dir`] does nothing. Not built or tried here
//!   (no Windows toolchain on the build machine).

use std::fs::{self, File, Metadata};
use std::io;
use std::path::Path;

/// Creates `path` for writing, failing if it exists; owner-only on Unix.
pub fn create_new(path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates `dir` and its parents; the ones created are owner-only on Unix.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes an existing file owner-only (Unix); nothing to do on Windows.
pub fn restrict(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// The permission bits of a file that group or others may access, or
/// `None` when only its owner can (always `None` where there are no mode
/// bits; see the module docs).
pub fn loose_mode(meta: &Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Makes a rename or creation inside `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn created_files_and_directories_are_owner_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        create_dir_all(&dir).expect("create dir");
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("secret");
        create_new(&file).expect("create file");
        assert_eq!(mode(&file), 0o600);
        assert!(
            create_new(&file).is_err(),
            "an existing file is never reopened for writing"
        );
        sync_dir(&dir).expect("sync dir");
    }

    #[test]
    fn loose_mode_reports_group_and_other_bits_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("key");
        fs::write(&file, b"x").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        let meta = fs::metadata(&file).expect("metadata");
        assert_eq!(loose_mode(&meta), Some(0o644));
        restrict(&file).expect("restrict");
        let meta = fs::metadata(&file).expect("metadata");
        assert_eq!(loose_mode(&meta), None);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).expect("chmod");
        let meta = fs::metadata(&file).expect("metadata");
        assert_eq!(loose_mode(&meta), None, "owner-only read is private");
    }
}
