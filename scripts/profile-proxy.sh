#!/usr/bin/env bash
# Instructions per proxied request, by callgrind: the repeatable figure
# behind docs/PERFORMANCE.md's per-change tables (wall-clock on a shared
# host moves ±10 %, this moves < 1 %).
#
# The peer bench's max-throughput cell (../shared/bench/peers: its mock,
# its request body, its `targets/latchkey.sh` set-up, `wrk -t1 -c64`),
# with `latchkey serve` run under `valgrind --tool=callgrind
# --instr-atstart=no`: instrumentation is switched on for WINDOW seconds
# after WARM seconds of load, and the instructions counted are divided by
# the requests inside the window: the mean of the calls of `Front::call`
# (requests begun) and `UsageBook::record_request` (requests finished;
# `UsageBook::record` in builds before it) that the
# profile records. (The mock's own count over the window is printed too,
# but `callgrind_control` takes a moment to act, so it runs high.)
#
#   scripts/profile-proxy.sh BIN [BIN…]    # one line per binary
#
# Build the binaries with symbols, e.g.
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#     cargo build --release --locked --target-dir target/prof -p latchkey
# Environment: PEERS (the peer bench kit, default ../shared/bench/peers),
# MOCK_BIN (its mock, built with `cargo build --release` in PEERS/mock),
# OUT (profiles and logs, default /tmp/profile-proxy), WARM (4), WINDOW (4),
# REPEATS (1). Needs valgrind, wrk, curl, python3, oathtool. Everything
# listens on 127.0.0.1; every process started is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$HERE/../shared/bench/peers}
MOCK_BIN=${MOCK_BIN:-$PEERS/mock/target/release/mock-upstream}
OUT=${OUT:-/tmp/profile-proxy}
WARM=${WARM:-4}
WINDOW=${WINDOW:-4}
REPEATS=${REPEATS:-1}
MOCK_KEY=sk-test
[ $# -ge 1 ] || { echo "usage: $0 LATCHKEY_BIN [LATCHKEY_BIN…]" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "no mock at $MOCK_BIN (cargo build --release in $PEERS/mock)" >&2; exit 1; }
mkdir -p "$OUT"

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
chats() { curl -fs "$MOCK_BASE/stats" | python3 -c 'import json,sys;print(json.load(sys.stdin)["chat"])'; }

MOCK_PORT=$(free_port)
MOCK_BASE="http://127.0.0.1:$MOCK_PORT"
taskset -c 0 "$MOCK_BIN" --port "$MOCK_PORT" --threads 1 --require-key "$MOCK_KEY" >"$OUT/mock.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do curl -fs "$MOCK_BASE/health" >/dev/null && break; sleep 0.1; done

# One data directory and client key for all binaries, made by the first
# one through the peer bench's own target file.
DATA=$OUT/run
rm -rf "$DATA"; mkdir -p "$DATA"
KEY=$(
  set +u
  # shellcheck disable=SC1091
  . "$PEERS/targets/latchkey.sh"
  LATCHKEY_BIN=$1 PORT=$(free_port) RUNDIR=$DATA MOCK_BASE=$MOCK_BASE MOCK_KEY=$MOCK_KEY
  export LATCHKEY_BIN PORT RUNDIR MOCK_BASE MOCK_KEY
  PRESTART >&2 && printf '%s' "$KEY"
)
[ -n "$KEY" ] || { echo "could not set up Latchkey's data directory" >&2; exit 1; }
BODY_FILE=$OUT/body.json
printf '%s' '{"model":"mock-model","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"temperature":0}' >"$BODY_FILE"

for rep in $(seq 1 "$REPEATS"); do
  for bin in "$@"; do
    tag=$(basename "$bin")-$rep
    port=$(free_port)
    prof=$OUT/callgrind.$tag.out
    rm -f "$prof"
    taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$prof" \
      "$bin" serve --data-dir "$DATA/data" --listen "127.0.0.1:$port" >"$OUT/serve.$tag.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    url="https://127.0.0.1:$port/proxy/openai/v1/chat/completions"
    for _ in $(seq 1 300); do curl -skf "https://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.2; done
    BODY_FILE=$BODY_FILE KEY=$KEY taskset -c 0 wrk -t1 -c64 -d "$((WARM + WINDOW + 3))s" --timeout 20s \
      -s "$PEERS/tools/post.lua" "$url" >"$OUT/wrk.$tag.log" 2>&1 &
    wrk_pid=$!
    sleep "$WARM"
    before=$(chats)
    callgrind_control -i on "$vg" >/dev/null 2>&1
    sleep "$WINDOW"
    callgrind_control -i off "$vg" >/dev/null 2>&1
    after=$(chats)
    wait "$wrk_pid" || true
    kill "$vg"; wait "$vg" 2>/dev/null || true
    total=$(callgrind_annotate "$prof" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    n=$(python3 - "$prof" <<'PY'
import re, sys
names, calls, cfn = {}, {"begun": 0, "done": 0}, None
def name(spec):
    m = re.match(r"\((\d+)\)(?: (.*))?", spec)
    if not m:
        return spec
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), "?")
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("fn="):
        name(line[3:].strip())
    elif line.startswith("cfn="):
        cfn = name(line[4:].strip())
    elif line.startswith("calls=") and cfn:
        k = int(line[6:].split()[0])
        if cfn.endswith("::http::front::Front::call"):
            calls["begun"] += k
        elif cfn.endswith(("::proxy::usage::UsageBook::record",
                           "::proxy::usage::UsageBook::record_request")):
            calls["done"] += k
print((calls["begun"] + calls["done"]) // 2)
PY
)
    printf '%s\trequests %d (mock %d)\tinstructions %s\tper request %d\n' \
      "$tag" "$n" "$((after - before))" "$total" "$((total / (n > 0 ? n : 1)))"
  done
done
