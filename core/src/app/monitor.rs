//! What a supervisor asks a serving app: is it ready, is it alive.
//!
//! [`Monitor`] is a cheap handle taken from [`super::Running::monitor`]
//! before the shell awaits `run_until`. [`Monitor::readiness`] is the same
//! rule `GET /ready` answers with ([`crate::http::ops::readiness`]);
//! [`Monitor::serving`] holds only while every HTTPS/HTTP listener's accept
//! loop has beaten recently ([`crate::serve::heartbeat`]), so a watchdog
//! that pings on it stops pinging when the server is stuck, and when it
//! has stopped serving.

use crate::http::AppState;
use crate::http::ops::{Readiness, readiness};
use crate::serve::Heartbeat;
use std::sync::Arc;
use std::time::Duration;

/// Readiness and liveness of a serving app (see the module docs).
#[derive(Clone)]
pub struct Monitor {
    pub(super) state: AppState,
    pub(super) heartbeats: Vec<Arc<Heartbeat>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("listeners", &self.heartbeats.len())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// What `GET /ready` would answer now.
    pub fn readiness(&self) -> Readiness {
        readiness(&self.state)
    }

    /// Whether every listener's accept loop beat within `within` and none
    /// has ended.
    pub fn serving(&self, within: Duration) -> bool {
        !self.heartbeats.is_empty() && self.heartbeats.iter().all(|h| h.is_fresh(within))
    }
}
