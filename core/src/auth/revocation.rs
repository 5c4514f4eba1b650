//! A signal that credentials may have ended.
//!
//! Long-lived connections (a WebSocket through `/agent/…`) were
//! authenticated once, at the upgrade; without this they would outlive
//! logout, a revoked session or key, a disabled account or a changed role.
//! [`Auth`](super::Auth) bumps an epoch after every change that can end or
//! narrow a credential; each such connection watches the epoch and, when
//! it moves, authenticates its credential again and closes if it no longer
//! passes. The epoch says only "something was revoked", never what: the
//! re-check is the one source of truth, so a missed or extra bump costs at
//! most a re-check, never a wrong answer.

use tokio::sync::watch;

/// The revocation epoch; see the module docs.
#[derive(Debug)]
pub struct Revocations {
    epoch: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Self {
        let (epoch, _) = watch::channel(0);
        Revocations { epoch }
    }

    /// Says that a credential may have ended or lost rights. Cheap, never
    /// blocks, works with no one watching.
    pub fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// A receiver that wakes on every later [`Revocations::bump`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_wake_on_bump() {
        let r = Revocations::new();
        r.bump(); // before anyone watches: not seen by later subscribers
        let mut rx = r.subscribe();
        assert!(!rx.has_changed().expect("open"));
        r.bump();
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed())
            .await
            .expect("woken")
            .expect("open");
    }
}
