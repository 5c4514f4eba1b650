#!/usr/bin/env bash
# The agent proxy benchmark (docs/PERFORMANCE.md, "Agent proxy"): builds the
# release `latchkey` and `proxy-bench`, then runs the bench with the given
# arguments, e.g.
#   scripts/bench-proxy.sh              # full run: 3 interleaved rounds, ~9 minutes
#   scripts/bench-proxy.sh --quick      # ~30 s smoke run
#   scripts/bench-proxy.sh --soak 600   # 10 minutes at 1,000 req/s, RSS sampled
# Needs 2 CPUs, taskset and nginx (scripts/install-deps.sh installs nginx).
# Everything runs on 127.0.0.1; the bench stops every process it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! command -v nginx >/dev/null || ! command -v taskset >/dev/null; then
  echo "bench-proxy: needs nginx and taskset; run scripts/install-deps.sh" >&2
  exit 1
fi
cargo build --release --locked -p latchkey -p latchkey-e2e --bin latchkey --bin proxy-bench
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ working tree changes)')"
echo "date:   $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
exec target/release/proxy-bench "$@"
