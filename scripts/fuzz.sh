#!/usr/bin/env bash
# Builds every fuzz target in core/fuzz once and runs each for a bounded
# time (default 20 s; the first argument, or FUZZ_SECONDS, changes it).
# Fails if any target finds a crash, a failed property or a leak; the
# input that did it is printed (hex) with the command that replays it.
#
# New corpus entries go to a temporary directory: the committed corpus
# (core/fuzz/corpus/<target>) is read, never written. Builds land in
# target/fuzz, beside the workspace's own target directory.
#
# cargo-fuzz needs a nightly compiler (sanitizer flags); without one,
# the stable toolchain is run with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-${FUZZ_SECONDS:-20}}
case $secs in '' | *[!0-9]*) echo "fuzz.sh: seconds must be a number, not '$secs'" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; run scripts/install-deps.sh" >&2
  exit 1
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly)
else
  echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo)
fi
target_dir=$root/target/fuzz
host=$(rustc -vV | sed -n 's/^host: //p')

cd core
start=$(date +%s)
# `--dev -s none`: see core/fuzz/Cargo.toml (a cold build in minutes).
"${cargo[@]}" fuzz build --dev -s none --target-dir "$target_dir"
built=$(date +%s)
echo "fuzz: built in $((built - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $("${cargo[@]}" fuzz list); do
  bin=$target_dir/$host/debug/$t
  mkdir -p "$work/$t/new" "$work/$t/artifacts"
  dict=()
  case $t in
    proxy_path) dict=(-dict=fuzz/dict/proxy_path.dict) ;;
    json_scan | usage | update_feed) dict=(-dict=fuzz/dict/json.dict) ;;
    scope) dict=(-dict=fuzz/dict/scope.dict) ;;
    config) dict=(-dict=fuzz/dict/config.dict) ;;
  esac
  log=$work/$t/log
  # The first corpus directory receives new inputs; the committed one is
  # only read.
  if "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" "${dict[@]}" \
    "$work/$t/new" "fuzz/corpus/$t" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz: $t: ok (${runs:-?} runs in ${secs} s, $(find "$work/$t/new" -type f | wc -l) new inputs)"
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED" >&2
    # The failed property (panic message) and libFuzzer's verdict; the
    # whole log is long (stack traces).
    grep -A6 'panicked at' "$log" | head -24 >&2 || true
    grep -E '^(SUMMARY|==[0-9]+== ERROR|Base64)' "$log" >&2 || true
    for a in "$work/$t/artifacts"/*; do
      [ -f "$a" ] || continue
      echo "fuzz: $t: input (hex): $(od -An -v -tx1 "$a" | tr -d ' \n' | head -c 4096)" >&2
      echo "fuzz: replay: save it and run \`cargo +nightly fuzz run --dev -s none --target-dir ../target/fuzz $t FILE\` in core/" >&2
    done
  fi
done
echo "fuzz: total $(($(date +%s) - start)) s (build $((built - start)) s)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
