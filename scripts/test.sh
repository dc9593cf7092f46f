#!/usr/bin/env bash
# Runs every check llmgw has: formatting, clippy, unit and integration tests (including
# the OpenAI Python SDK against a real gateway and the tests on a real local SLURM
# cluster). On a fresh Debian machine (as root) it first installs what the tests need,
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

# --- a real single-node SLURM cluster for the launcher tests ---------------------------
if [ -x scripts/local-slurm.sh ]; then
  log "local SLURM cluster"
  bash scripts/local-slurm.sh up
fi

if [ $quick -eq 0 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --all-targets --quiet -- -D warnings
fi

log "cargo test"
cargo test --lib --bins --tests -- --test-threads=2
log "benchmarks, once each as smoke tests"
cargo test --bench '*'
