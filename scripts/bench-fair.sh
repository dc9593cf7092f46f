#!/usr/bin/env bash
# Fair sharing under a flood (issue 23), with the mock standing in for SGLang: a backend
# that runs 4 requests at once (`--max-running 4`) for 200 ms each (a first byte after
# 200 ms), so its capacity is 20 requests a second. For each scenario a fresh gateway
# (a `provider = "sglang"` group, virtual keys on) and scripts/fair_load.py:
#
#   1. fairness "key":  key A keeps 150 requests in flight, key B sends 2 a second
#                       (measured after a 10 s warm-up: a fresh gateway holds nothing
#                       until it has seen the backend full once);
#   2. fairness "off":  the same, requests straight to the backend (as before issue 23);
#   3. priority:        A's flood in class batch, B's requests interactive;
#   4. two floods:      A and C, equal weights, 100 in flight each: each one's share.
#
# Prints one JSON line per phase (B's p50/p99 against the idle gateway, A's throughput
# against the backend's capacity, failures). Figures go to BENCHMARKS.md.
#
#   scripts/bench-fair.sh               # ~5 minutes after the build (60 s per flood)
#   scripts/bench-fair.sh --seconds 20  # shorter floods
#   scripts/bench-fair.sh --no-build    # use the existing target/release/llmgw
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-fair.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$seconds" in ''|*[!0-9]*|0) echo "bench-fair.sh: --seconds wants whole seconds > 0" >&2; exit 2 ;; esac
python3 -c 'import httpx' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check httpx

[ $build -eq 1 ] && cargo build --release --quiet --bin llmgw
bin=$(pwd)/target/release/llmgw
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" mock-upstream --port 0 --name local --model m --max-running 4 --first-byte-delay-ms 200 \
  >"$work/mock.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q 'listening on' "$work/mock.log" 2>/dev/null && break; sleep 0.1; done
mock=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/mock.log" | head -n1)
[ -n "$mock" ] || { echo "bench-fair.sh: the mock did not start" >&2; cat "$work/mock.log" >&2; exit 1; }

export LLMGW_BENCH_MASTER=bench-master-key-0123456789
gw_pid=
start_gateway() { # fairness
  [ -n "$gw_pid" ] && { kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; }
  cat >"$work/gw.toml" <<EOF
[server]
port = 0
master_key = "env:LLMGW_BENCH_MASTER"
[[models]]
name = "m"
provider = "sglang"
model = "m"
api_base = "$mock/v1"
[router]
fairness = "$1"
[store]
path = "$work/keys-$1-$RANDOM.db"
EOF
  "$bin" serve -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
  gw_pid=$!
  pids+=("$gw_pid")
  for _ in $(seq 1 100); do grep -q 'ready on' "$work/gw.log" 2>/dev/null && break; sleep 0.1; done
  gw=$(grep 'ready on' "$work/gw.log" | grep -o 'http://127\.0\.0\.1:[0-9]*' | head -n1)
  [ -n "$gw" ] || { echo "bench-fair.sh: the gateway did not start" >&2; cat "$work/gw.log" >&2; exit 1; }
}
new_key() { # alias
  curl -sf -X POST "$gw/key/generate" -H "authorization: Bearer $LLMGW_BENCH_MASTER" \
    -H 'content-type: application/json' -d "{\"key_alias\":\"$1\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
run() { # label, fairness, fair_load.py arguments...
  local label=$1 fairness=$2
  shift 2
  start_gateway "$fairness"
  local a b c
  a=$(new_key flood) b=$(new_key probe) c=$(new_key second)
  local args=("$@")
  args=("${args[@]//@A/$a}") args=("${args[@]//@B/$b}") args=("${args[@]//@C/$c}")
  echo "== $label (fairness = \"$fairness\")"
  python3 scripts/fair_load.py "$gw" --seconds "$seconds" "${args[@]}"
  curl -sf "$gw/metrics" -H "authorization: Bearer $LLMGW_BENCH_MASTER" |
    grep -E '^llmgw_queue_(capacity|refused_total)' | sed 's/^/   /' || true
}

echo "backend: 4 at once, 200 ms each (capacity 20 requests/s); floods of $seconds s"
run "1. flood vs. probe" key --flood @A --probe @B --in-flight 150
run "2. flood vs. probe, no fair sharing" off --flood @A --probe @B --in-flight 150
run "3. batch flood vs. interactive probe" key --flood @A --probe @B --in-flight 150 \
  --flood-class batch --probe-class interactive
run "4. two equal floods" key --flood @A --second-flood @C --in-flight 100
