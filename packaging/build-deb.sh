#!/usr/bin/env bash
# Builds the release binary and the .deb (cargo-deb; metadata in
# appliance/Cargo.toml, maintainer scripts in packaging/debian/). Prints
# exactly one line on stdout: the absolute path of the .deb it wrote
# (scripts rely on it); everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-deb: cargo-deb is missing; run scripts/install-deps.sh" >&2
  exit 1
fi

cargo build --release --locked -p latchkey >&2
out_dir="$PWD/target/debian"
mkdir -p "$out_dir"
# cargo-deb prints the path of the package it wrote as its last line.
deb=$(cargo deb -p latchkey --no-build --locked --output "$out_dir" 2>&2 | tail -n 1)
deb=$(realpath "$deb")
if [ ! -f "$deb" ]; then
  echo "build-deb: cargo-deb wrote no package ($deb)" >&2
  exit 1
fi
echo "$deb"
