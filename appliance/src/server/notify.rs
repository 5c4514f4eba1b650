//! systemd's notification protocol (`sd_notify`), from the serving loop.
//!
//! Under `Type=notify` systemd hands the service `NOTIFY_SOCKET` (a datagram
//! socket: a path, or `@name` in the abstract namespace) and, with
//! `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). The protocol is one
//! datagram of `KEY=value` lines; it carries no secret and needs no crate.
//!
//! [`spawn_supervisor`] is what the server tells systemd:
//! - `READY=1` once, when the core's readiness (what `GET /ready` answers,
//!   [`Monitor::readiness`]) first holds — not at start: a sealed vault
//!   (passphrase mode) is not ready until it is unsealed;
//! - `STATUS=` whenever the one-line readiness summary changes;
//! - `WATCHDOG=1` only while every accept loop has beaten recently
//!   ([`Monitor::serving`]): a stuck server stops pinging and systemd
//!   restarts it, although this task itself still runs;
//! - `STOPPING=1` from [`Supervisor::stopping`], when shutdown begins.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use latchkey_core::app::Monitor;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long after its last beat an accept loop still counts as serving.
const BEAT_GRACE: Duration = Duration::from_secs(3);

/// Where notifications go: systemd's socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if it is set.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        use std::os::unix::ffi::OsStrExt;
        let bytes = raw.as_bytes();
        let target = match bytes.first() {
            Some(b'/') => Target::Path(PathBuf::from(&raw)),
            Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is neither an absolute path nor an abstract socket (@name)",
                ));
            }
        };
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        }))
    }

    /// Sends one notification (`KEY=value` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let sent = match &self.target {
            Target::Path(p) => self.socket.send_to(message.as_bytes(), p)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(name) => {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                self.socket.send_to_addr(message.as_bytes(), &addr)?
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Target::Abstract(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets exist only on Linux",
                ));
            }
        };
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification truncated",
            ));
        }
        Ok(())
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), when it is
/// meant for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().filter(|p| !p.is_empty())
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The running supervisor task; see the module docs.
pub struct Supervisor {
    notifier: Arc<Notifier>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Shutdown begins: `STOPPING=1`, and the task ends (dropping its
    /// [`Monitor`], so the store can close).
    pub async fn stopping(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        send_logged(&self.notifier, "STOPPING=1\nSTATUS=stopping");
    }
}

/// Starts telling systemd about readiness and liveness (module docs).
/// `None` without `NOTIFY_SOCKET`.
pub fn spawn_supervisor(monitor: Monitor) -> Option<Supervisor> {
    let notifier = match Notifier::from_env() {
        Ok(Some(n)) => Arc::new(n),
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd");
            return None;
        }
    };
    let watchdog = watchdog_interval();
    // Pinging at a third of the interval leaves room for one late tick;
    // readiness is looked at every second (an unseal makes it ready).
    let tick = watchdog.map_or(Duration::from_secs(1), |w| {
        (w / 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
    });
    let ping_every = watchdog.map(|w| w / 3);
    if let Some(w) = watchdog {
        tracing::info!(
            interval_ms = w.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    let (stop, mut stop_rx) = watch::channel(false);
    let task = {
        let notifier = Arc::clone(&notifier);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ready_sent = false;
            let mut last_status = String::new();
            let mut last_ping: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                let readiness = monitor.readiness();
                let status = readiness.summary();
                let mut message = String::new();
                if readiness.is_ready() && !ready_sent {
                    message.push_str("READY=1\n");
                    ready_sent = true;
                }
                if status != last_status {
                    message.push_str(&format!("STATUS={status}\n"));
                    tracing::info!(status = %status, "readiness");
                    last_status = status;
                }
                if let Some(every) = ping_every
                    && last_ping.is_none_or(|t| t.elapsed() >= every)
                {
                    if monitor.serving(BEAT_GRACE.max(tick * 2)) {
                        message.push_str("WATCHDOG=1\n");
                        last_ping = Some(Instant::now());
                    } else {
                        tracing::error!(
                            "an accept loop has stopped beating; not pinging the watchdog"
                        );
                    }
                }
                if !message.is_empty() {
                    send_logged(&notifier, message.trim_end());
                }
            }
        })
    };
    Some(Supervisor {
        notifier,
        stop,
        task,
    })
}

fn send_logged(notifier: &Notifier, message: &str) {
    if let Err(e) = notifier.send(message) {
        tracing::warn!(error = %e, "notifying systemd failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            socket: UnixDatagram::unbound().expect("socket"),
            target: Target::Path(path),
        };
        n.send("READY=1\nSTATUS=ready").expect("send");
        let mut buf = [0u8; 128];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ready");
    }
}
