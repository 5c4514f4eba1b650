#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and
# lints, builds the binary the end-to-end tests drive, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the real `latchkey` binary: build it first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
