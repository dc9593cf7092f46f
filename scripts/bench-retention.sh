#!/usr/bin/env bash
# Spend-row retention under steady load (issue 29). Two gateways in front of one mock
# upstream, virtual keys on, each with its own SQLite file: A with `[store] retention =
# "1m"` (pruning every 6 s), B with "forever". scripts/retention_load.py sends a steady
# rate of small chat completions alternating between them (the same load at the same
# moments), samples both databases' size every minute, and prints:
#   - the size per minute, A next to B (A levels off, B grows),
#   - p50/p99 client latency of each (pruning adds no latency: A against B, one run),
#   - each one's /spend/report over the whole run against the requests it answered.
# Figures go to BENCHMARKS.md.
#
#   scripts/bench-retention.sh                  # 5 minutes at 200 requests/s, debug build
#   scripts/bench-retention.sh --seconds 120 --rate 100
#   scripts/bench-retention.sh --release        # build and use target/release/llmgw
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=300
rate=200
profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift ;;
    --rate) rate=$2; shift ;;
    --release) profile=release ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-retention.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$seconds" in ''|*[!0-9]*|0) echo "bench-retention.sh: --seconds wants whole seconds > 0" >&2; exit 2 ;; esac
case "$rate" in ''|*[!0-9.]*) echo "bench-retention.sh: --rate wants requests per second" >&2; exit 2 ;; esac
python3 -c 'import httpx' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check httpx

if [ "$profile" = release ]; then cargo build --release --quiet --bin llmgw; else cargo build --quiet --bin llmgw; fi
bin=$(pwd)/target/$profile/llmgw
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" mock-upstream --port 0 --name local --model m >"$work/mock.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q 'listening on' "$work/mock.log" 2>/dev/null && break; sleep 0.1; done
mock=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/mock.log" | head -n1)
[ -n "$mock" ] || { echo "bench-retention.sh: the mock did not start" >&2; cat "$work/mock.log" >&2; exit 1; }

export LLMGW_BENCH_MASTER=bench-master-key-0123456789
start_gateway() { # name, retention -> sets gw
  cat >"$work/$1.toml" <<EOF
[server]
port = 0
master_key = "env:LLMGW_BENCH_MASTER"
[[models]]
name = "m"
provider = "openai"
model = "m"
api_base = "$mock/v1"
input_cost_per_mtok = 100.0
output_cost_per_mtok = 300.0
[store]
path = "$work/$1.db"
retention = "$2"
EOF
  "$bin" serve -c "$work/$1.toml" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q 'ready on' "$work/$1.log" 2>/dev/null && break; sleep 0.1; done
  gw=$(grep 'ready on' "$work/$1.log" | grep -o 'http://127\.0\.0\.1:[0-9]*' | head -n1)
  [ -n "$gw" ] || { echo "bench-retention.sh: gateway $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1; }
}
new_key() { # base
  curl -sf -X POST "$1/key/generate" -H "authorization: Bearer $LLMGW_BENCH_MASTER" \
    -H 'content-type: application/json' -d '{"key_alias":"bench"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

start_gateway a 1m; a=$gw
start_gateway b forever; b=$gw
echo "binary: $profile; $rate requests/s for $seconds s, alternating A (retention 1m) and B (forever)"
python3 scripts/retention_load.py --a "$a" --a-key "$(new_key "$a")" --a-db "$work/a.db" \
  --b "$b" --b-key "$(new_key "$b")" --b-db "$work/b.db" \
  --master "$LLMGW_BENCH_MASTER" --rate "$rate" --seconds "$seconds"
