//! A peer program a test runs beside Latchkey (nginx, Caddy): spawned with
//! a cleared environment (only `PATH`, plus what the caller adds), its
//! standard output and error into one file in the test's folder, and
//! killed (SIGKILL) and reaped on drop. A program that is not installed
//! fails the test with the line that says how to install it.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// A free TCP port on 127.0.0.1 (bound, then released: a tiny race with
/// other tests is accepted, as in the other helpers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// A running peer program. Killed and reaped on drop.
pub struct Peer {
    child: Child,
    exit: Option<ExitStatus>,
}

impl Peer {
    /// Runs `cmd` (its environment cleared but for `PATH` and whatever
    /// `cmd` sets after this call's `env_clear` — so set the environment
    /// through `env`), writing its output to `output`. `package` names the
    /// Debian package `scripts/install-deps.sh` installs it from.
    pub fn spawn(mut cmd: Command, env: &[(&str, &Path)], output: &Path, package: &str) -> Peer {
        let out =
            File::create(output).unwrap_or_else(|e| panic!("create {}: {e}", output.display()));
        let err = out.try_clone().expect("clone log file");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let program = cmd.get_program().to_string_lossy().into_owned();
        match cmd.spawn() {
            Ok(child) => Peer { child, exit: None },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{program}` is not installed; run scripts/install-deps.sh (Debian's `{package}`)"
            ),
            Err(e) => panic!("cannot run {program}: {e}"),
        }
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
