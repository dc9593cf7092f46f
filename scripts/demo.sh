#!/usr/bin/env bash
# The whole product on one machine, no GPU and no cloud account needed:
#   1. a real single-node SLURM cluster (scripts/local-slurm.sh up; needs root),
#   2. llmgw built from this checkout: a debug build, target/debug/llmgw, quicker to build
#      than the release one (`cargo install --locked --path .` puts a release build on PATH),
#   3. `llmgw start -c configs/demo-local-slurm.toml`: a SLURM job running the gateway,
#      which launches a mock SGLang backend and a mock "cloud" fallback,
#   4. one chat completion through the printed URL with the generated key.
#
#   scripts/demo.sh           # leaves the gateway running (stop: llmgw stop --name demo)
#   scripts/demo.sh --stop    # stops it at the end
set -euo pipefail
cd "$(dirname "$0")/.."

stop_at_end=0
[ "${1:-}" = "--stop" ] && stop_at_end=1
name=demo

step() { printf '\n== %s\n' "$*"; }

step "local SLURM cluster"
bash scripts/local-slurm.sh up

step "build llmgw (debug build: target/debug/llmgw)"
command -v cargo >/dev/null 2>&1 || {
  echo "demo: cargo not found; install Rust (https://rustup.rs) and run again" >&2
  exit 1
}
command -v curl >/dev/null 2>&1 || {
  echo "demo: curl not found; apt-get install curl" >&2
  exit 1
}
cargo build --quiet --bin llmgw
llmgw=$PWD/target/debug/llmgw

# A gateway left over from an earlier demo run would block the name.
"$llmgw" stop --name "$name" >/dev/null 2>&1 || true

step "llmgw start -c configs/demo-local-slurm.toml --name $name"
"$llmgw" start -c configs/demo-local-slurm.toml --name "$name"

status=$("$llmgw" status --name "$name" --json)
url=$(printf '%s' "$status" | grep -o '"url":"[^"]*"' | head -n1 | cut -d'"' -f4)
dir=$(printf '%s' "$status" | grep -o '"state_dir":"[^"]*"' | head -n1 | cut -d'"' -f4)
[ -n "$url" ] || {
  echo "demo: the gateway reports no URL: $status" >&2
  exit 1
}

step "a chat completion through $url (model \"local\", the mock SGLang backend)"
curl -sS --fail-with-body "$url/chat/completions" \
  -H "Authorization: Bearer $(cat "$dir/key")" \
  -H 'Content-Type: application/json' \
  -d '{"model": "local", "messages": [{"role": "user", "content": "Hello!"}]}'
echo

step "without the key"
curl -sS -o /dev/null -w 'HTTP %{http_code} (the key is required)\n' "$url/chat/completions" \
  -H 'Content-Type: application/json' -d '{"model": "local", "messages": []}'

step "llmgw status --name $name"
"$llmgw" status --name "$name"

if [ $stop_at_end -eq 1 ]; then
  step "llmgw stop --name $name"
  "$llmgw" stop --name "$name"
else
  printf '\nThe gateway keeps running. Try:\n'
  printf '  %s logs --name %s -f\n' "$llmgw" "$name"
  printf '  %s logs --name %s --backend local\n' "$llmgw" "$name"
  printf '  %s stop --name %s\n' "$llmgw" "$name"
fi
if ! command -v llmgw >/dev/null 2>&1; then
  printf '\nThis demo ran its debug build, %s. For `llmgw` by name, as in the README:\n' "$llmgw"
  printf '  cargo install --locked --path .    # a release build into ~/.cargo/bin\n'
fi
