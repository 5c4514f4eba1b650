#!/usr/bin/env bash
# Builds and runs the appliance on its embedded defaults: HTTPS on
# https://localhost:8443, data in ~/.local/share/latchkey (or --data-dir).
# Extra arguments go to `latchkey serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
exec cargo run --release --locked -p latchkey -- serve "$@"
