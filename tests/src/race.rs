//! Helpers for the tests that attack races and resource bounds: run
//! operations truly at once, and read the server's memory.

use std::sync::Barrier;

/// `n` threads released together by a barrier, each running `op(i)`;
/// their results in order.
pub fn at_once<T: Send>(n: usize, op: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let gate = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (gate, op) = (&gate, &op);
                s.spawn(move || {
                    gate.wait();
                    op(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

/// A process's resident memory in KiB (`VmRSS` in `/proc/<pid>/status`);
/// 0 if it cannot be read.
pub fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
