//! What the benchmark programs share (`proxy-bench`, `realtime-bench`,
//! included with `#[path]`): reading a process's memory and CPU time from
//! `/proc`, pinning to CPUs, finding the release `latchkey`, and the
//! children they start — registered, so that a signal or the run limit
//! stops every one, and stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a child gets to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid` (all its threads) so far.
pub fn cpu_time(pid: u32, ticks_per_sec: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command name, utime and stime are the 12th
    // and 13th fields.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / ticks_per_sec.max(1) as f64)
}

pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Process ids whose parent is `pid` (nginx's workers).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (it may then raise priorities).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// Niceness of the bench when run as root, inherited by the proxies it
/// starts: ahead of other work on a shared machine (builds), all alike.
pub const NICE: &str = "-10";

/// `taskset -c 1 PROGRAM` (the niceness is inherited).
pub fn on_cpu1(program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "1"]).arg(program);
    c
}

/// Sets the CPU affinity of every thread of this process; threads created
/// later inherit it.
pub fn pin_self(cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {cpus} failed");
}

/// `latchkey` next to this executable, unless `LATCHKEY_BIN` names one.
pub fn latchkey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the bench executable");
    let bin = exe
        .parent()
        .expect("the bench executable lives in a directory")
        .join("latchkey");
    assert!(
        bin.exists(),
        "{} not found: `cargo build --release -p latchkey`, or set LATCHKEY_BIN",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------
// Children: registered so a signal can stop them; stopped on drop.

#[derive(Default)]
pub struct Registry {
    /// (pid, is nginx master)
    pub pids: Vec<(u32, bool)>,
    pub dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});

pub fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills `pid` (and, for an nginx master, its workers).
pub fn kill_tree(pid: u32, nginx: bool) {
    if nginx {
        // SIGTERM makes the master stop its workers; SIGKILL would orphan
        // them, so that is only the fallback, and covers the workers too.
        signal(pid, "-TERM");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3)
            && std::fs::metadata(format!("/proc/{pid}")).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in children_of(pid) {
            signal(w, "-KILL");
        }
    }
    signal(pid, "-KILL");
}

/// On SIGINT/SIGTERM, or after `max_run`: stop every registered child,
/// remove the temporary directories, exit 130. `bench` names the program
/// in its messages.
pub fn install_signal_handler(bench: &'static str, max_run: Duration) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                () = tokio::time::sleep(max_run) => eprintln!("{bench}: run limit reached"),
            }
        });
        let reg = std::mem::take(&mut *registry());
        for (pid, nginx) in reg.pids {
            kill_tree(pid, nginx);
        }
        for d in reg.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        eprintln!("{bench}: interrupted; children stopped");
        std::process::exit(130);
    });
}

/// A child process, stopped when dropped (also on panic).
pub struct Proc {
    child: Child,
    nginx: bool,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, nginx: bool, log: PathBuf) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        registry().pids.push((child.id(), nginx));
        Proc { child, nginx, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; true on a clean exit.
    pub fn stop(&mut self) -> bool {
        if self.exited().is_some() {
            return true;
        }
        signal(self.pid(), "-TERM");
        let t = Instant::now();
        while t.elapsed() < STOP_TIMEOUT {
            if let Some(s) = self.exited() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        kill_tree(self.pid(), self.nginx);
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            kill_tree(self.pid(), self.nginx);
            let _ = self.child.wait();
        }
        let pid = self.pid();
        registry().pids.retain(|(p, _)| *p != pid);
    }
}
