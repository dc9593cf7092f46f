#!/usr/bin/env bash
# A bursty day on the local SLURM cluster (issue 24, acceptance 4): burst, idle, burst,
# idle, through `llmgw connect` with [slurm] on_demand = true and idle_stop = "1m", the
# launched mock as backend. Reports the job-minutes used (SLURM RUNNING time, sampled by
# squeue every 2 s) against an always-on gateway (the whole span), and failed requests.
#
#   scripts/bench-idle.sh            # 20-request bursts, 5 minutes idle after each
#   IDLE_GAP=60 scripts/bench-idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE_GAP=${IDLE_GAP:-300}
BURST=${BURST:-20}
# LLMGW_BIN: a binary to use as is (one that no build replaces while the day runs).
if [ -z "${LLMGW_BIN:-}" ]; then
  cargo build --quiet
fi
BIN=${LLMGW_BIN:-$PWD/target/debug/llmgw}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/llmgw-bench-idle.XXXXXX")
name=bursty-$$
state=$tmp/state
cat >"$tmp/cfg.toml" <<EOF
[server]
host = "0.0.0.0"
port = 0
shutdown_grace = "5s"

[[models]]
name = "local"
provider = "sglang"
model = "mock-qwen"
launch = { command = ["{llmgw}", "mock-upstream", "--port", "{port}", "--model", "mock-qwen"], load_timeout = "60s" }

[slurm]
job_name = "$name"
time = "30"
on_demand = true
idle_stop = "1m"
EOF

"$BIN" connect --name "$name" --state-dir "$state" --port 0 -c "$tmp/cfg.toml" \
  >"$tmp/connect.out" 2>"$tmp/connect.err" &
cpid=$!
cleanup() {
  kill -INT "$cpid" 2>/dev/null || true
  [ -n "${spid:-}" ] && kill "$spid" 2>/dev/null
  scancel --name "$name" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\) .*|\1|p' "$tmp/connect.out" | head -n1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "connect did not start: $(cat "$tmp/connect.err")" >&2; exit 1; }
key=$(cat "$state/key")

# Seconds some job of ours is RUNNING, sampled every 2 s.
(
  n=0
  while kill -0 "$cpid" 2>/dev/null; do
    if squeue -h -n "$name" -t RUNNING -o %i | grep -q .; then n=$((n + 2)); fi
    echo "$n" >"$tmp/running"
    sleep 2
  done
) &
spid=$!

fails=0
burst() {
  local pids=() i
  for i in $(seq 1 "$BURST"); do
    curl -s -o /dev/null -w '%{http_code}\n' -m 600 "http://127.0.0.1:$port/v1/chat/completions" \
      -H "authorization: Bearer $key" -H 'content-type: application/json' \
      -d '{"model":"local","messages":[{"role":"user","content":"hi"}]}' >>"$tmp/codes" &
    pids+=($!)
    sleep 0.5
  done
  wait "${pids[@]}"
}
t0=$(date +%s)
echo "burst 1"; burst
echo "idle ${IDLE_GAP} s"; sleep "$IDLE_GAP"
echo "burst 2"; burst
echo "idle ${IDLE_GAP} s"; sleep "$IDLE_GAP"
t1=$(date +%s)
kill -INT "$cpid"; wait "$cpid" 2>/dev/null || true
sleep 2
running=$(cat "$tmp/running" 2>/dev/null || echo 0)
total=$(wc -l <"$tmp/codes")
fails=$(grep -vc '^200$' "$tmp/codes" || true)
starts=$(grep -c 'on demand (' "$tmp/connect.err" || true)
span=$((t1 - t0))
printf 'bursty day: %d requests, %d failed; %d job start(s) on demand\n' "$total" "$fails" "$starts"
printf 'job-minutes used: %.1f (on demand + idle_stop 1m) vs %.1f always on (%.0f%% saved)\n' \
  "$(echo "$running / 60" | bc -l)" "$(echo "$span / 60" | bc -l)" \
  "$(echo "100 * ($span - $running) / $span" | bc -l)"
grep -E 'released|ready|submitted|stopped' "$tmp/connect.err" | sed 's/^/  /'
