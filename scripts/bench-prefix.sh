#!/usr/bin/env bash
# Prefix-cache-aware routing against load-based routing (issue 28), with the mock standing
# in for four SGLang replicas that each keep a prefix cache: every replica runs 4 requests
# at once, caches the prefix keys of 512 prompt chunks (256 bytes each, about 32,000
# tokens: every conversation a quarter of the replicas serve fits, all of them do not),
# prefills each uncached chunk in 2 ms (64 tokens: ~32,000 tokens a second) after a 10 ms
# base, and answers 10 events 5 ms apart. For each strategy a fresh set of replicas and a fresh gateway, then
# scripts/prefix_load.py:
#
#   shared:  32 conversations, 4 kinds of ~2,000-token system prompts, 10 turns each
#            (questions of ~250 tokens), 16 at a time (each turn carries the whole history);
#   unique:  the same number and size of requests, nothing shared between them.
#
# Prints, per workload and strategy, the mean/p50/p99 time to first token, requests a
# second, failures, and the replicas' prefix-cache hit rate (from the mocks' /get_load).
#
#   scripts/bench-prefix.sh              # ~3 minutes after the build
#   scripts/bench-prefix.sh --no-build   # use the existing target/release/llmgw
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
case "${1:-}" in
  --no-build) build=0 ;;
  "") ;;
  -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "bench-prefix.sh: unknown argument $1" >&2; exit 2 ;;
esac
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

replicas=()
start_replicas() {
  replicas=()
  for i in 0 1 2 3; do
    "$bin" mock-upstream --port 0 --name "r$i" --model m --max-running 4 \
      --prefix-cache-chunks 512 --prefill-us-per-chunk 2000 --first-byte-delay-ms 10 \
      --chunks 10 --chunk-delay-ms 5 >"$work/r$i.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do grep -q 'listening on' "$work/r$i.log" 2>/dev/null && break; sleep 0.1; done
    local url
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/r$i.log" | head -n1) ||
      { echo "bench-prefix.sh: replica $i did not start" >&2; cat "$work/r$i.log" >&2; exit 1; }
    replicas+=("$url")
  done
}
hit_rate() {
  python3 - "${replicas[@]}" <<'EOF'
import json, sys, urllib.request
hit = miss = 0
for base in sys.argv[1:]:
    v = json.load(urllib.request.urlopen(base + "/get_load"))[0]
    hit += v["prefix_hit_chunks"]; miss += v["prefix_miss_chunks"]
print(f"   replicas' prefix-cache hits: {hit} of {hit + miss} prompt chunks ({100 * hit / max(1, hit + miss):.1f} %)")
EOF
}

export LLMGW_BENCH_MASTER=bench-master-key-0123456789
run() { # strategy, prefix_load.py arguments...
  local strategy=$1
  shift
  start_replicas
  {
    echo "[server]"
    echo "port = 0"
    echo "master_key = \"env:LLMGW_BENCH_MASTER\""
    for r in "${replicas[@]}"; do
      printf '[[models]]\nname = "m"\nprovider = "sglang"\nmodel = "m"\napi_base = "%s/v1"\n' "$r"
    done
    printf '[router]\nstrategy = "%s"\n[store]\npath = "%s"\n' "$strategy" "$work/keys-$strategy-$RANDOM.db"
  } >"$work/gw.toml"
  "$bin" serve -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
  local gw_pid=$!
  pids+=("$gw_pid")
  for _ in $(seq 1 100); do grep -q 'ready on' "$work/gw.log" 2>/dev/null && break; sleep 0.1; done
  local gw
  gw=$(grep 'ready on' "$work/gw.log" | grep -o 'http://127\.0\.0\.1:[0-9]*' | head -n1)
  [ -n "$gw" ] || { echo "bench-prefix.sh: the gateway did not start" >&2; cat "$work/gw.log" >&2; exit 1; }
  local key
  key=$(curl -sS --retry 5 --retry-connrefused -X POST "$gw/key/generate" \
    -H "authorization: Bearer $LLMGW_BENCH_MASTER" -H 'content-type: application/json' \
    -d '{"key_alias":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') ||
    { echo "bench-prefix.sh: cannot create a key" >&2; cat "$work/gw.log" >&2; exit 1; }
  printf '   %-13s ' "$strategy"
  python3 scripts/prefix_load.py "$gw" --key "$key" "$@"
  hit_rate
  kill "$gw_pid" "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
}

echo "== shared prefixes: 32 conversations x 10 turns, 4 system prompts, 16 at a time"
run prefix-aware
run load-based
echo "== unique prompts: the same number and size of requests, nothing shared"
run prefix-aware --unique
run load-based --unique
