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

# Every heading says how long the run has taken so far, so a slow step shows in CI's log.
log() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

# --- system packages (apt-get only when something is missing) ----------------------
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Issue 25: the dashboard test scrapes a real gateway with Prometheus.
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# npm installs the pinned Codex CLI for tests/codex.rs (scripts/codex.sh).
command -v npm >/dev/null 2>&1 || missing+=(npm)
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
# The LiteLLM SDK as a client of llmgw (tests/users.rs), pinned.
if ! python3 -c "import litellm" >/dev/null 2>&1; then
  log "installing the LiteLLM Python SDK (pip install litellm==1.81.16)"
  python3 -m pip install --quiet --disable-pip-version-check litellm==1.81.16
fi

# --- The pinned SGLang release's wheel (no dependencies, ~40 MB), whose source
# tests/sglang_compat.rs checks llmgw's launch lines and load readings against ------------
sglang_wheel_dir=target/sglang-wheel
if ! ls "$sglang_wheel_dir"/sglang-0.5.23-*.whl >/dev/null 2>&1; then
  log "fetching the SGLang 0.5.23 wheel for the compatibility test (pip download --no-deps)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$sglang_wheel_dir" sglang==0.5.23
fi
# --- the OpenAI Codex CLI used by the compatibility test (tests/codex.rs) --------------
log "the Codex CLI (scripts/codex.sh: npm install @openai/codex, pinned)"
bash scripts/codex.sh >/dev/null

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

# Everything the tests create (state directories, configs, logs of the SLURM jobs they
# submit) lives under one directory of this run, so that on any exit, failure or Ctrl-C,
# everything the run started can be found and stopped: processes named by a path in it
# (gateways, `llmgw connect`) and SLURM jobs whose output goes there (a renewing chain
# included: its successors log there too).
run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/llmgw-test-run.XXXXXX")
# Like /tmp: tests run servers as other users (PostgreSQL as `postgres`), who must reach it.
chmod 1777 "$run_tmp"
export TMPDIR=$run_tmp
failures=()

# Steps that run in the background beside the rest (each in its own process group, so
# that everything it starts can be stopped with it), collected in order at the end.
bg_names=()
bg_pids=()
bg_logs=()
bg_filters=()
# background NAME FILTER COMMAND...: FILTER "requests" leaves out the gateways' request
# log lines when the step's output is shown.
background() {
  local name=$1 filter=$2
  shift 2
  local out=$run_tmp/background-${#bg_pids[@]}.log
  log "starting $name in the background"
  setsid "$@" >"$out" 2>&1 &
  bg_pids+=($!)
  bg_names+=("$name")
  bg_logs+=("$out")
  bg_filters+=("$filter")
}
collect_background() {
  local i status
  for i in "${!bg_pids[@]}"; do
    [ -n "${bg_pids[$i]}" ] || continue
    log "${bg_names[$i]}"
    status=0
    wait "${bg_pids[$i]}" || status=$?
    bg_pids[$i]=
    if [ "${bg_filters[$i]}" = requests ]; then
      grep -v ' INFO request ' "${bg_logs[$i]}" || true
    else
      cat "${bg_logs[$i]}"
    fi
    [ $status -eq 0 ] || failures+=("${bg_names[$i]}")
  done
}

stop_everything() {
  local rc=$?
  set +e
  local pid
  for pid in "${bg_pids[@]}"; do
    [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null
  done
  # Jobs first (a gateway in a job may be about to submit its successor): scancel
  # what logs under this run, again until none is left (a successor submitted meanwhile).
  if command -v squeue >/dev/null 2>&1; then
    local round ids
    for round in 1 2 3 4 5 6 7 8 9 10; do
      ids=$(squeue -h -O "JobID:20,StdOut:1000" 2>/dev/null | awk -v d="$run_tmp" 'index($2, d) == 1 {print $1}')
      [ -n "$ids" ] || break
      echo "test.sh: cancelling SLURM jobs this run started: $(echo $ids)" >&2
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null
      sleep 2
    done
  fi
  pkill -TERM -f -- "$run_tmp" 2>/dev/null && sleep 1
  pkill -KILL -f -- "$run_tmp" 2>/dev/null
  rm -rf -- "$run_tmp"
  exit "$rc"
}
trap stop_everything EXIT
trap 'exit 130' INT TERM

# Runs one step of the suite; a failure is noted and the suite goes on.
step() {
  local name=$1
  shift
  log "$name"
  if ! "$@"; then
    failures+=("$name")
  fi
}

# A fresh CI clone gains nothing from incremental build state (it only costs disk).
[ "${CI:-}" = "true" ] && export CARGO_INCREMENTAL=0

log "building the tests"
cargo test --workspace --no-run --lib --bins --tests --quiet
test_bin() {
  cargo test --test "$1" --no-run --message-format=json 2>/dev/null |
    grep "\"name\":\"$1\"" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1
}
# The five-minute handover test (tests/renew_long.rs) waits on SLURM time limits more
# than it computes: start it now, collect it at the end.
long_bin=$(test_bin renew_long)
[ -z "$long_bin" ] ||
  background "the five-minute handover test (tests/renew_long.rs)" all \
    "$long_bin" --nocapture --test-threads=1
# The chain's fault scenarios (tests/renew_faults.rs) wait on SLURM time limits too, a
# minute or two each: all at once, beside the rest.
faults_bin=$(test_bin renew_faults)
[ -z "$faults_bin" ] ||
  background "the chain fault scenarios (tests/renew_faults.rs)" requests \
    "$faults_bin" --nocapture --test-threads=8 chain_fault_
# Scale to zero (tests/idle.rs, tests/on_demand.rs): an idle stop waits a minute, so both
# files run side by side (about two minutes).
idle_bin=$(test_bin idle)
demand_bin=$(test_bin on_demand)
if [ -n "$idle_bin" ] && [ -n "$demand_bin" ]; then
  background "the scale-to-zero tests (tests/idle.rs, tests/on_demand.rs)" requests \
    bash -c '"$1" --nocapture --test-threads=2 scale_zero_ & a=$!
      "$2" --nocapture --test-threads=4 scale_zero_ & b=$!
      wait $a; ra=$?; wait $b; rb=$?; exit $((ra | rb))' _ "$idle_bin" "$demand_bin"
fi
# The release build (fat LTO, one codegen unit: the longest compile of the run) uses the
# CPU the tests leave while they wait on SLURM, niced so that it never slows them much.
# Its own profile (target/*/dist), so it holds no lock the test builds need.
background "release binary (scripts/release.sh --smoke): glibc floor 2.17, at most 24 MiB, --version, serve" all \
  nice -n 10 bash scripts/release.sh --smoke

if [ $quick -eq 0 ]; then
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

# Every test file runs even after a failure (--no-fail-fast); the failures are listed at
# the end.
test_log=$run_tmp/cargo-test.log
run_tests() {
  cargo test --workspace --no-fail-fast --lib --bins --tests -- --test-threads=2 \
    --skip five_minutes_under_load --skip chain_fault_ --skip scale_zero_ 2>&1 | tee "$test_log"
  return "${PIPESTATUS[0]}"
}
step "cargo test" run_tests
step "benchmarks, once each as smoke tests" cargo test --no-fail-fast --bench '*'

collect_background

if [ ${#failures[@]} -gt 0 ]; then
  printf '\n== FAILED: %d step(s)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  if [ -f "$test_log" ]; then
    echo "  failing tests:"
    grep -E '^    [A-Za-z0-9_:]+$|^error: .*test' "$test_log" | sed 's/^ */      /' | sort -u
  fi
  exit 1
fi
log "all passed"
