#!/usr/bin/env bash
# Instructions the gateway executes per proxied request, under callgrind: deterministic
# and user space only, so unaffected by a busy machine (wall-clock figures are bench.sh's).
# Every change to the hot path in BENCHMARKS.md (issue 13) was measured with this.
#
#   scripts/instructions.sh [BINARY] [--stream] [--keys] [--traces] [-n REQUESTS]
#
# --traces: OpenTelemetry traces on (`[telemetry]`, every request sampled), exported to the
# mock upstream's address (it answers 404 to `/v1/traces`: the spans are built, encoded and
# POSTed, then counted as failed), so the count includes the exporter's work too.
# --keys: the production shape: a master key, priced deployments, and every request sent
# with a virtual key that has every limit set (none reached), so admission, the spend row
# (SQLite) and the request log are all in the count.
#
# Starts `BINARY mock-upstream` and `BINARY serve` under `valgrind --tool=callgrind` on
# loopback, sends 200 warm-up requests (the bench's chat body) through one keep-alive
# connection with curl, zeroes the counters, sends REQUESTS more (default 1000), dumps,
# and prints the instructions per request. The callgrind file stays in the printed
# directory for `callgrind_annotate --inclusive=yes`.
set -euo pipefail

bin=target/release/llmgw stream=false keys=false traces=false n=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --stream) stream=true ;;
    --keys) keys=true ;;
    --traces) traces=true ;;
    -n) n=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) bin=$1 ;;
  esac
  shift
done
die() { echo "instructions.sh: $*" >&2; exit 1; }
[ -x "$bin" ] || die "no binary at $bin; build it (cargo build --release) or name one"
for tool in valgrind callgrind_control callgrind_annotate curl; do
  command -v "$tool" >/dev/null || die "$tool is missing; install it (apt-get install valgrind curl)"
done
bin=$(realpath "$bin")
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
cd "$work"

"$bin" mock-upstream --host 127.0.0.1 --port 0 --name bench --model mock-model --chunks 20 \
  >mock.log 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q 'listening on' mock.log 2>/dev/null && break; sleep 0.1; done
mock=$(grep -o 'http://127\.0\.0\.1:[0-9]*' mock.log | head -n1)
[ -n "$mock" ] || die "the mock upstream did not start (see $work/mock.log)"
master_line="" price_lines=""
if [ "$keys" = true ]; then
  LLMGW_BENCH_MASTER="bench-master-$RANDOM$RANDOM"
  export LLMGW_BENCH_MASTER
  master_line='master_key = "env:LLMGW_BENCH_MASTER"'
  price_lines=$'input_cost_per_mtok = 0.5\noutput_cost_per_mtok = 1.5'
fi
printf '[server]\nhost = "127.0.0.1"\nport = 0\n%s\n\n[[models]]\nname = "bench"\nprovider = "openai"\nmodel = "mock-model"\napi_base = "%s/v1"\n%s\n' \
  "$master_line" "$mock" "$price_lines" >llmgw.toml
if [ "$traces" = true ]; then
  printf '\n[telemetry]\notlp_endpoint = "%s"\n' "$mock" >>llmgw.toml
fi
cat >body.json <<EOB
{"model":"bench","stream":$stream,"messages":[{"role":"system","content":"You are a careful research assistant. Answer briefly and call a tool when you need data you do not have."},{"role":"user","content":"What is the mean of column 'energy' in runs/2024-06-01/results.csv?"}],"tools":[{"type":"function","function":{"name":"read_csv","description":"Read selected columns of a CSV file under the project directory.","parameters":{"type":"object","properties":{"path":{"type":"string"},"columns":{"type":"array","items":{"type":"string"}}},"required":["path"]}}}],"temperature":0.2,"max_tokens":256}
EOB

valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$bin" serve --config llmgw.toml --port 0 --state-dir state >gateway.log 2>&1 &
gw=$!
pids+=("$gw")
for _ in $(seq 1 300); do grep -q '"port"' state/endpoint.json 2>/dev/null && break; sleep 0.1; done
port=$(grep -o '"port": *[0-9]*' state/endpoint.json 2>/dev/null | grep -o '[0-9]*$' || true)
[ -n "$port" ] || die "the gateway did not start under valgrind (see $work/gateway.log)"
url="http://127.0.0.1:$port/v1/chat/completions"
auth=()
if [ "$keys" = true ]; then
  key_json=$(curl -sf -H "Authorization: Bearer $LLMGW_BENCH_MASTER" -H 'Content-Type: application/json' \
    -d '{"key_alias":"bench","models":["bench"],"max_budget":1000000,"budget_duration":"30d","rpm_limit":100000000,"tpm_limit":100000000000,"max_parallel_requests":100000}' \
    "http://127.0.0.1:$port/key/generate") || die "cannot create a virtual key"
  bench_key=$(printf '%s' "$key_json" | grep -o '"key":"sk-llmgw-[A-Za-z0-9]*"' | cut -d'"' -f4)
  [ -n "$bench_key" ] || die "no key in the /key/generate answer"
  # In a header file, so the key is not in ps output.
  printf 'Authorization: Bearer %s\n' "$bench_key" >auth.txt
  chmod 600 auth.txt
  auth=(-H @auth.txt)
fi
send() {
  local args=() i
  for i in $(seq 1 "$1"); do args+=(-o /dev/null "$url"); done
  curl -sf -H 'Content-Type: application/json' "${auth[@]}" --data-binary @body.json "${args[@]}" \
    || die "a request failed (see $work/gateway.log)"
}
send 200
callgrind_control -z "$gw" >/dev/null 2>&1
send "$n"
callgrind_control -d "$gw" >/dev/null 2>&1
sleep 1
total=$(callgrind_annotate "$work/callgrind.out.1" 2>/dev/null \
  | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
[ -n "$total" ] || die "no callgrind dump in $work"
echo "$(basename "$bin"): $((total / n)) instructions per $( [ "$stream" = true ] && echo streamed || echo non-streaming) request$( [ "$keys" = true ] && echo ' with a virtual key')$( [ "$traces" = true ] && echo ', traced') ($n requests; $work/callgrind.out.1)"
