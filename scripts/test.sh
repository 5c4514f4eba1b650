#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and
# lints, builds the binary the end-to-end tests drive, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real `latchkey` binary: build it first
# (the default members: the desktop app is built in release below).
cargo build --bins --locked
# The desktop app's release binary and .deb, which tests/it/desktop.rs
# drives under Xvfb and unpacks.
./scripts/build-desktop.sh
# The .deb, built once; tests/it/deb.rs installs it in a scratch root (a
# path that does not exist fails them rather than skipping).
LATCHKEY_DEB=$(./packaging/build-deb.sh)
export LATCHKEY_DEB
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The desktop crate's unit tests in release: they reuse the dependencies
# build-desktop.sh just built, instead of a second (debug) build of Tauri.
{
  cargo test --workspace --exclude latchkey-desktop --locked &&
    cargo test --release -p latchkey-desktop --locked &&
    ./scripts/test-postgres.sh
} 2>&1 | tee "$log"
# Every fuzz target for a bounded time (core/fuzz, docs/security/fuzzing.md).
./scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
# Many test binaries (benchmark bins, doc-tests) hold no tests; one total
# line says what ran.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
