//! `latchkey service install | uninstall | status`: the hardened systemd
//! unit for a binary installed without the .deb (docs/PACKAGING.md).
//!
//! The unit is `packaging/systemd/latchkey.service`, embedded at build time,
//! with `ExecStart=` pointing at this binary and a marker line saying who
//! wrote it: `uninstall` removes only a unit carrying that marker, and
//! `install` refuses to shadow the package's unit. The unit's sandbox
//! hides `/home`, `/root` and `/tmp` from the service, so a binary there
//! is refused with the reason instead of a unit that cannot start.
//!
//! `--systemctl` and `--unit-dir` (or `LATCHKEY_SYSTEMCTL`,
//! `LATCHKEY_SYSTEMD_UNIT_DIR`) point elsewhere, for tests and unusual
//! layouts; without `--systemctl`, systemd must be running
//! (`/run/systemd/system`). Changing the system needs root.

use crate::cli::{ServiceArgs, ServiceCommand};
use anyhow::{Context as _, bail};
use latchkey_core::config::{CONFIG_FILE, Settings};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit, as shipped in the .deb.
pub const UNIT: &str = include_str!("../../../packaging/systemd/latchkey.service");
/// The unit's name.
pub const UNIT_NAME: &str = "latchkey.service";
/// The `ExecStart=` line of [`UNIT`], replaced by `install`.
const PACKAGED_EXEC_START: &str = "ExecStart=/usr/bin/latchkey serve";
/// First line of a unit `install` wrote.
const MARKER: &str =
    "# Written by `latchkey service install`; `latchkey service uninstall` removes it.";
/// Where the .deb puts its unit.
const PACKAGE_UNITS: &[&str] = &[
    "/lib/systemd/system/latchkey.service",
    "/usr/lib/systemd/system/latchkey.service",
];
/// Places `ProtectHome=` and `PrivateTmp=` hide from the service.
const HIDDEN_FROM_SERVICE: &[&str] = &["/home", "/root", "/run/user", "/tmp", "/var/tmp"];

pub fn run(cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Install(args) => install(&args),
        ServiceCommand::Uninstall(args) => uninstall(&args),
        ServiceCommand::Status(args) => status(&args),
    }
}

/// [`UNIT`] for the binary at `exe`, with the marker line.
pub fn render_unit(exe: &Path) -> anyhow::Result<String> {
    let path = exe
        .to_str()
        .filter(|p| {
            p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
        })
        .with_context(|| {
            format!(
                "the binary's path {} has characters a unit file would need quoted; install it \
                 as /usr/local/bin/latchkey",
                exe.display()
            )
        })?;
    if let Some(hidden) = HIDDEN_FROM_SERVICE
        .iter()
        .find(|h| Path::new(path).starts_with(h))
    {
        bail!(
            "the binary is under {hidden}, which the hardened service cannot see (ProtectHome=, \
             PrivateTmp=); copy it to /usr/local/bin/latchkey and run the install from there"
        );
    }
    let mut replaced = 0;
    let mut out = format!("{MARKER}\n");
    for line in UNIT.lines() {
        if line == PACKAGED_EXEC_START {
            out.push_str(&format!("ExecStart={path} serve\n"));
            replaced += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if replaced != 1 {
        bail!("the embedded unit has {replaced} `{PACKAGED_EXEC_START}` lines, not one");
    }
    Ok(out)
}

fn install(args: &ServiceArgs) -> anyhow::Result<()> {
    let systemctl = systemctl(args)?;
    require_root("install the service")?;
    if args.systemctl.is_none()
        && let Some(p) = PACKAGE_UNITS.iter().find(|p| Path::new(p).exists())
    {
        bail!(
            "the latchkey package is installed ({p}): it runs the service already; manage it \
             with apt, or remove the package first"
        );
    }
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding this binary's path")?;
    let unit = render_unit(&exe)?;
    let target = args.unit_dir.join(UNIT_NAME);
    if let Ok(existing) = std::fs::read_to_string(&target)
        && !existing.starts_with(MARKER)
    {
        bail!(
            "{} exists and was not written by `latchkey service install`; not replacing it",
            target.display()
        );
    }
    write_unit(&args.unit_dir, &target, &unit)?;
    systemctl.run(&["daemon-reload"])?;
    systemctl.run(&["enable", "--now", UNIT_NAME])?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Installed {} (ExecStart={} serve).",
        target.display(),
        exe.display()
    )?;
    writeln!(
        out,
        "The service is enabled and started: it runs at every boot."
    )?;
    write_where_to_open(&mut out, &args.state_dir)?;
    writeln!(out, "  Check it:      latchkey service status")?;
    writeln!(out, "  Its log:       journalctl -u latchkey")?;
    Ok(())
}

fn uninstall(args: &ServiceArgs) -> anyhow::Result<()> {
    let systemctl = systemctl(args)?;
    require_root("uninstall the service")?;
    let target = args.unit_dir.join(UNIT_NAME);
    let existing = match std::fs::read_to_string(&target) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist: nothing to uninstall", target.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    if !existing.starts_with(MARKER) {
        bail!(
            "{} was not written by `latchkey service install`; not removing it (a package's \
             unit goes with the package)",
            target.display()
        );
    }
    systemctl.run(&["disable", "--now", UNIT_NAME])?;
    std::fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))?;
    systemctl.run(&["daemon-reload"])?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "Stopped, disabled and removed {}.", target.display())?;
    writeln!(
        out,
        "The data is kept in {} (with DynamicUser=, under /var/lib/private/latchkey); remove it \
         yourself when you no longer need it.",
        args.state_dir.display()
    )?;
    Ok(())
}

fn status(args: &ServiceArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let target = args.unit_dir.join(UNIT_NAME);
    let package = PACKAGE_UNITS.iter().find(|p| Path::new(p).exists());
    match std::fs::read_to_string(&target) {
        Ok(text) if text.starts_with(MARKER) => {
            let exec = text
                .lines()
                .find_map(|l| l.strip_prefix("ExecStart="))
                .unwrap_or("?");
            writeln!(
                out,
                "Unit:     {} (written by `latchkey service install`; runs {exec})",
                target.display()
            )?;
        }
        Ok(_) => writeln!(
            out,
            "Unit:     {} (written by someone else: an override of the package's unit?)",
            target.display()
        )?,
        Err(_) => match package {
            Some(p) => writeln!(out, "Unit:     {p} (from the latchkey package)")?,
            None => writeln!(
                out,
                "Unit:     none — `sudo latchkey service install` sets the service up"
            )?,
        },
    }
    let systemctl = match systemctl(args) {
        Ok(s) => s,
        Err(e) => {
            writeln!(out, "systemd:  {e:#}")?;
            writeln!(
                out,
                "Without systemd, run the server directly: latchkey serve"
            )?;
            return Ok(());
        }
    };
    let enabled = systemctl.query(&["is-enabled", UNIT_NAME]);
    let active = systemctl.query(&["is-active", UNIT_NAME]);
    writeln!(out, "Enabled:  {} — {}", enabled, explain_enabled(&enabled))?;
    writeln!(out, "Running:  {} — {}", active, explain_active(&active))?;
    if active == "active" {
        write_where_to_open(&mut out, &args.state_dir)?;
    }
    writeln!(out, "Log:      journalctl -u latchkey")?;
    Ok(())
}

fn explain_enabled(state: &str) -> &'static str {
    match state {
        "enabled" | "enabled-runtime" => "starts at boot",
        "disabled" => "does not start at boot (sudo systemctl enable latchkey)",
        "masked" | "masked-runtime" => "masked: cannot be started (sudo systemctl unmask latchkey)",
        "not-found" | "" => "systemd knows no such unit",
        _ => "see `systemctl status latchkey`",
    }
}

fn explain_active(state: &str) -> &'static str {
    match state {
        "active" => "serving, and ready (it tells systemd only once /ready holds)",
        "activating" => {
            "starting, or waiting to be ready: a passphrase vault waits for `latchkey unseal`"
        }
        "reloading" => "re-reading its configuration",
        "deactivating" => "stopping",
        "failed" => "stopped after an error: journalctl -u latchkey says why",
        "inactive" => "not running (sudo systemctl start latchkey)",
        _ => "see `systemctl status latchkey`",
    }
}

/// The address the service serves on, from its configuration (defaults
/// when it has none yet), and how the first owner is made.
fn write_where_to_open(out: &mut impl Write, state_dir: &Path) -> anyhow::Result<()> {
    let file = state_dir.join(CONFIG_FILE);
    // Unreadable or broken: the server itself will say so; show defaults.
    let settings =
        Settings::load(&file, false, std::iter::empty::<(String, String)>()).unwrap_or_default();
    let scheme = if settings.server.tls { "https" } else { "http" };
    let urls: Vec<String> = settings
        .server
        .listen
        .iter()
        .map(|a| {
            if a.ip().is_loopback() || a.ip().is_unspecified() {
                format!("{scheme}://localhost:{}/", a.port())
            } else {
                format!("{scheme}://{a}/")
            }
        })
        .collect();
    writeln!(out, "  Open:          {}", urls.join(", "))?;
    if let Some(public) = &settings.server.public_url {
        writeln!(out, "  Public URL:    {public}")?;
    }
    writeln!(
        out,
        "  First run:     the one-time setup link is in the log (journalctl -u latchkey | grep \
         setup), or make the owner here: sudo latchkey --data-dir {} setup --username NAME \
         --password-stdin",
        state_dir.display()
    )?;
    if settings.server.tls {
        writeln!(
            out,
            "  Trust the CA:  sudo latchkey --data-dir {} tls export-ca > latchkey-ca.pem",
            state_dir.display()
        )?;
    }
    Ok(())
}

/// Writes the unit file atomically, mode 0644.
fn write_unit(dir: &Path, target: &Path, unit: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{UNIT_NAME}.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(unit.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    Ok(())
}

/// The effective user id, from `/proc/self/status` (no libc needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    match effective_uid() {
        Some(0) => Ok(()),
        Some(uid) => bail!("only root can {what} (running as uid {uid}): use sudo"),
        None => bail!("cannot tell who is running this (no /proc/self/status); run as root"),
    }
}

/// The `systemctl` to run.
struct Systemctl {
    program: PathBuf,
}

fn systemctl(args: &ServiceArgs) -> anyhow::Result<Systemctl> {
    match &args.systemctl {
        Some(p) => Ok(Systemctl { program: p.clone() }),
        None => {
            if !Path::new("/run/systemd/system").is_dir() {
                bail!(
                    "systemd is not running on this machine (no /run/systemd/system); run \
                     `latchkey serve` under your own supervisor instead"
                );
            }
            Ok(Systemctl {
                program: PathBuf::from("systemctl"),
            })
        }
    }
}

impl Systemctl {
    /// Runs `systemctl ARGS`; its failure is an error naming the command.
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.program.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "`systemctl {}` failed ({}): {}",
                args.join(" "),
                out.status,
                stderr.trim()
            );
        }
        Ok(())
    }

    /// The first line `systemctl ARGS` prints (its exit status only says
    /// "not in that state"), or `unknown`.
    fn query(&self, args: &[&str]) -> String {
        Command::new(&self.program)
            .args(args)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(|l| crate::term::safe(l.trim()).into_owned())
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exec_start_and_marker() {
        let unit = render_unit(Path::new("/usr/local/bin/latchkey")).expect("render");
        assert!(unit.starts_with(MARKER));
        assert!(unit.contains("\nExecStart=/usr/local/bin/latchkey serve\n"));
        assert!(!unit.contains("ExecStart=/usr/bin/latchkey"));
        assert_eq!(unit.lines().count(), UNIT.lines().count() + 1);
    }

    #[test]
    fn refuses_paths_the_service_cannot_run() {
        for bad in [
            "/home/me/bin/latchkey",
            "/root/latchkey",
            "/tmp/x/latchkey",
            "/opt/my apps/latchkey",
            "/opt/50%/latchkey",
            "relative/latchkey",
        ] {
            assert!(render_unit(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(render_unit(Path::new("/opt/latchkey-1.2/latchkey")).is_ok());
    }
}
