//! Putting a verified build in place and proving it works, or putting the
//! previous one back.
//!
//! The swap: the running binary is hard-linked (or copied) to
//! `latchkey.previous`, the new one renamed over it — one rename, so the
//! path always holds a whole binary. Then the new build at that path must
//! pass `latchkey self-check` (its version the feed's, its data schema no
//! older than ours), and, when `latchkey.service` is running under
//! systemd, `systemctl restart` must succeed within [`READY_TIMEOUT`]
//! (the unit is `Type=notify`: restart returns once the server said
//! READY) and the unit be active after it. Otherwise `latchkey.previous`
//! goes back the same way and the service is restarted on it.
//!
//! Test seams, documented in docs/UPDATES.md: `LATCHKEY_SYSTEMCTL` (the
//! systemctl to run; default `systemctl`, only when systemd is running)
//! and `LATCHKEY_DPKG` (default `dpkg`).

use super::fetch::Staged;
use crate::context::Context;
use anyhow::{Context as _, anyhow, bail};
use latchkey_core::store::SCHEMA_VERSION;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The main unit the updater restarts.
pub const SERVICE: &str = "latchkey.service";
/// Longest a restart may take to reach readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest the new build's self-check may take.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a `systemctl is-active` or `dpkg -S` may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a swap that did not end well ended.
#[derive(Debug)]
pub enum Failure {
    /// The previous build is back (and the service runs on it, if it ran).
    RolledBack(String),
    /// It could not be put back: the owner must act.
    Failed(String),
}

/// The binary to replace: this process's own, symlinks resolved.
pub fn current_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this binary")?;
    std::fs::canonicalize(&exe).with_context(|| format!("resolving {}", exe.display()))
}

/// A binary the package manager owns is not replaced behind its back.
pub fn refuse_if_packaged(binary: &Path) -> anyhow::Result<()> {
    let dpkg = std::env::var_os("LATCHKEY_DPKG").unwrap_or_else(|| OsString::from("dpkg"));
    let mut cmd = Command::new(&dpkg);
    cmd.arg("-S").arg(binary);
    match run_bounded(cmd, QUERY_TIMEOUT) {
        // dpkg -S: "package: path" when a package owns it.
        Ok(out) if out.success => {
            let package = out
                .stdout
                .split(':')
                .next()
                .unwrap_or("latchkey")
                .trim()
                .to_string();
            bail!(
                "refused: {} belongs to the Debian package `{}`: install the release's .deb \
                 with apt or dpkg instead (docs/UPDATES.md, \"Installed from the .deb\")",
                binary.display(),
                crate::term::safe(&package)
            )
        }
        // Not owned, or no dpkg on this system.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("asking dpkg who owns {}: {e}", binary.display())),
    }
}

/// `binary` + `.previous`, in the same directory.
fn previous_of(binary: &Path) -> PathBuf {
    let mut name = binary.file_name().map(OsString::from).unwrap_or_default();
    name.push(".previous");
    binary.with_file_name(name)
}

/// Puts `staged` in place of `binary` and proves it (see the module docs).
pub fn swap_and_prove(
    binary: &Path,
    staged: &Staged,
    version: &semver::Version,
    ctx: &Context,
) -> Result<(), Failure> {
    let previous = previous_of(binary);
    // Nothing has changed yet if this fails.
    if let Err(e) = keep_previous(binary, &previous) {
        return Err(Failure::RolledBack(format!(
            "could not keep the running build as {}: {e}",
            previous.display()
        )));
    }
    if let Err(e) = place(&staged.binary, binary, staged.dir.path()) {
        return Err(Failure::RolledBack(format!(
            "could not put the new build in place: {e}"
        )));
    }
    let systemctl = systemctl();
    let service_ran = systemctl.as_ref().is_some_and(is_active);
    let proof = self_check(binary, version, ctx).and_then(|()| match &systemctl {
        Some(s) if service_ran => restart(s),
        _ => Ok(()),
    });
    let Err(why) = proof else {
        return Ok(());
    };
    let why = format!("{why:#}");
    if let Err(e) = place_copy_of(&previous, binary, staged.dir.path()) {
        return Err(Failure::Failed(format!(
            "{why}; restoring {} failed too: {e}",
            previous.display()
        )));
    }
    if let Some(s) = &systemctl
        && service_ran
        && let Err(e) = restart(s)
    {
        return Err(Failure::Failed(format!(
            "{why}; the previous build is back but the service did not restart on it: {e:#}"
        )));
    }
    Err(Failure::RolledBack(why))
}

/// `previous` becomes the running build: a hard link (same bytes, no copy)
/// where the file system allows, else a copy; renamed into place whole.
fn keep_previous(binary: &Path, previous: &Path) -> std::io::Result<()> {
    let tmp = previous.with_extension("previous.tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(binary, &tmp).is_err() {
        std::fs::copy(binary, &tmp)?;
    }
    std::fs::rename(&tmp, previous)?;
    sync_dir(previous)
}

/// Renames `new` (in the staging directory, same file system) over `dest`,
/// executable.
fn place(new: &Path, dest: &Path, _staging: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(new, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(new)?.sync_all()?;
    std::fs::rename(new, dest)?;
    sync_dir(dest)
}

/// A copy of `from` (kept) renamed over `dest`.
fn place_copy_of(from: &Path, dest: &Path, staging: &Path) -> std::io::Result<()> {
    let tmp = staging.join("restore");
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(from, &tmp)?;
    place(&tmp, dest, staging)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Runs `binary self-check` with this command's data directory and
/// configuration; its line must name `version` and a schema we can hand
/// our data to.
fn self_check(binary: &Path, version: &semver::Version, ctx: &Context) -> anyhow::Result<()> {
    let mut cmd = Command::new(binary);
    cmd.arg("--data-dir").arg(&ctx.data_dir);
    if let Some(c) = &ctx.global.config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("self-check");
    let out = run_bounded(cmd, SELF_CHECK_TIMEOUT)
        .map_err(|e| anyhow!("the new build did not run: {e}"))?;
    if !out.success {
        let said = out.stderr.lines().next().unwrap_or("").trim();
        bail!(
            "the new build failed its self-check{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {}", crate::term::safe(said))
            }
        );
    }
    let field = |name: &str| {
        out.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name).map(str::to_string))
    };
    let claimed = field("version=").unwrap_or_default();
    if claimed != version.to_string() {
        bail!(
            "the new build says it is version `{}`, the feed said {version}",
            crate::term::safe(&claimed)
        );
    }
    let schema: u32 = field("schema=").and_then(|s| s.parse().ok()).unwrap_or(0);
    if schema < SCHEMA_VERSION {
        bail!(
            "the new build reads data schema {schema}, older than this installation's {SCHEMA_VERSION}"
        );
    }
    Ok(())
}

/// The systemctl to use: `LATCHKEY_SYSTEMCTL`, or `systemctl` when systemd
/// runs this machine; none otherwise.
fn systemctl() -> Option<OsString> {
    if let Some(s) = std::env::var_os("LATCHKEY_SYSTEMCTL").filter(|s| !s.is_empty()) {
        return Some(s);
    }
    Path::new("/run/systemd/system")
        .is_dir()
        .then(|| OsString::from("systemctl"))
}

fn is_active(systemctl: &OsString) -> bool {
    let mut cmd = Command::new(systemctl);
    cmd.args(["is-active", "--quiet", SERVICE]);
    run_bounded(cmd, QUERY_TIMEOUT).is_ok_and(|o| o.success)
}

/// Restarts the service and requires it active afterwards, within
/// [`READY_TIMEOUT`].
fn restart(systemctl: &OsString) -> anyhow::Result<()> {
    let mut cmd = Command::new(systemctl);
    cmd.args(["restart", SERVICE]);
    let out = run_bounded(cmd, READY_TIMEOUT).map_err(|e| anyhow!("restarting {SERVICE}: {e}"))?;
    if !out.success {
        bail!(
            "{SERVICE} did not become ready within {} s after the restart",
            READY_TIMEOUT.as_secs()
        );
    }
    if !is_active(systemctl) {
        bail!("{SERVICE} is not active after the restart");
    }
    Ok(())
}

/// What a bounded child printed and how it ended.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` (stdin closed), killing it past `limit`; at most 64 KiB of
/// each stream is kept.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let read = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = s {
                let mut s = s.take(64 * 1024);
                let _ = s.read_to_end(&mut buf);
                // Drain the rest so the child never blocks on a full pipe.
                let _ = std::io::copy(&mut s.into_inner(), &mut std::io::sink());
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        // The readers are left to end on their own: a grandchild may hold
        // the pipes open, and joining would wait for it.
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", limit.as_secs()),
        ));
    };
    Ok(Output {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
