#!/usr/bin/env bash
# Builds the desktop app's Linux bundle: `tauri build --bundles deb` (which
# runs `cargo build --release -p latchkey-desktop` into the workspace's
# target/), then prints the path of the .deb it wrote. Build output goes to
# stderr, so `deb=$(scripts/build-desktop.sh)` works.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/src-tauri"
if [ ! -x node_modules/.bin/tauri ]; then
  npm ci --no-audit --no-fund >&2
fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# --ci: no prompts; no updater artifacts (signing happens at release,
# docs/DESKTOP.md).
node_modules/.bin/tauri build --ci --bundles deb >&2
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
deb="$root/target/release/bundle/deb/Latchkey_${version}_$(dpkg --print-architecture).deb"
if [ ! -f "$deb" ]; then
  echo "build-desktop.sh: expected $deb, not found" >&2
  exit 1
fi
echo "$deb"
