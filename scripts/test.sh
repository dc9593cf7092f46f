#!/usr/bin/env bash
# Runs every check llmgw has: formatting, clippy, unit and integration tests (including
# the OpenAI Python SDK against a real gateway and the tests on a real local SLURM
# cluster), then builds the portable release binary and checks it (scripts/release.sh
# --smoke). On a fresh Debian machine (as root) it first installs what the tests need,
# and only what is missing.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # skip fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

log() { printf '\n== %s\n' "$*"; }

# --- system packages (apt-get only when something is missing) ----------------------
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# A real PostgreSQL server for the shared key/spend store tests (tests/common/postgres.rs
# runs initdb + postgres from /usr/lib/postgresql/*/bin as the postgres user).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v objdump >/dev/null 2>&1 || missing+=(binutils)
# `llmgw connect --login` is tested against a real sshd on a loopback port.
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing ${missing[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python SDKs used by the compatibility tests ------------------------------------
for sdk in openai anthropic; do
  if ! python3 -c "import $sdk" >/dev/null 2>&1; then
    log "installing the $sdk Python SDK (pip install $sdk)"
    python3 -m pip install --quiet --disable-pip-version-check "$sdk"
  fi
done

# --- Rust components -----------------------------------------------------------------
if [ $quick -eq 0 ]; then
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  fi
fi

# --- a real SLURM cluster for the launcher tests (one node in `debug`, two in `multi`) ---
if [ -x scripts/local-slurm.sh ]; then
  log "local SLURM cluster"
  bash scripts/local-slurm.sh up
fi

# The five-minute handover test (tests/renew_long.rs) waits on SLURM time limits more
# than it computes: build it, start it now in the background, collect it at the end.
# A fresh CI clone gains nothing from incremental build state (it only costs disk).
[ "${CI:-}" = "true" ] && export CARGO_INCREMENTAL=0

log "building the tests"
cargo test --no-run --lib --bins --tests --quiet
long_bin=$(cargo test --test renew_long --no-run --message-format=json 2>/dev/null |
  grep '"name":"renew_long"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
long_log=$(mktemp)
long_pid=
if [ -n "$long_bin" ]; then
  log "starting the five-minute handover test in the background"
  "$long_bin" --nocapture --test-threads=1 >"$long_log" 2>&1 &
  long_pid=$!
  trap 'if [ -n "$long_pid" ]; then kill "$long_pid" 2>/dev/null || true; fi' EXIT
fi

if [ $quick -eq 0 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --all-targets --quiet -- -D warnings
fi

log "cargo test"
cargo test --lib --bins --tests -- --test-threads=2 --skip five_minutes_under_load
log "benchmarks, once each as smoke tests"
cargo test --bench '*'

log "release binary (scripts/release.sh --smoke): glibc floor 2.17, at most 20 MiB, --version, serve"
bash scripts/release.sh --smoke

if [ -n "$long_pid" ]; then
  log "the five-minute handover test (tests/renew_long.rs)"
  status=0
  wait "$long_pid" || status=$?
  long_pid=
  cat "$long_log"
  rm -f "$long_log"
  [ $status -eq 0 ] || exit $status
fi
