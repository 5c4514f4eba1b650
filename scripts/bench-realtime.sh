#!/usr/bin/env bash
# The realtime (WebSocket) benchmark (docs/PERFORMANCE.md, "Realtime"):
# builds the release `latchkey` and `realtime-bench`, then runs the bench
# with the given arguments, e.g.
#   scripts/bench-realtime.sh                 # full run: 3 interleaved rounds, ~3 minutes
#   scripts/bench-realtime.sh --quick         # ~40 s smoke run
#   scripts/bench-realtime.sh --route agent   # through /agent/<name>/… instead of /proxy/<name>/…
# Direct vs nginx vs Latchkey: per-message latency, frames per second, and
# memory per open session (1,000 idle sessions). Needs 2 CPUs, taskset,
# curl and nginx (scripts/install-deps.sh installs them). Everything runs on
# 127.0.0.1; the bench stops every process it starts. Not part of
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
for tool in nginx taskset curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "bench-realtime: needs $tool; run scripts/install-deps.sh" >&2
    exit 1
  fi
done
# 1,000 sessions hold ~4,000 descriptors between the bench and the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked -p latchkey -p latchkey-e2e --bin latchkey --bin realtime-bench
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ working tree changes)')"
echo "date:   $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
echo "nginx:  $(nginx -v 2>&1 | sed 's/^nginx version: //')"
exec target/release/realtime-bench "$@"
