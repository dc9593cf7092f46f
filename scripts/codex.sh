#!/usr/bin/env bash
# Installs the pinned OpenAI Codex CLI from npm (once) for the Codex compatibility test
# (tests/codex.rs) and prints the path of its `codex` command. Used by scripts/test.sh,
# and by the test itself when the command is missing and npm is there.
#
#   scripts/codex.sh            # prints e.g. target/codex-0.171.0/node_modules/.bin/codex
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.171.0
dir=${CARGO_TARGET_DIR:-target}/codex-$version
bin=$dir/node_modules/.bin/codex
if [ ! -x "$bin" ]; then
  command -v npm >/dev/null 2>&1 || { echo "scripts/codex.sh: npm is not installed (apt-get install npm)" >&2; exit 2; }
  mkdir -p "$dir"
  echo "scripts/codex.sh: installing @openai/codex@$version into $dir" >&2
  npm install --prefix "$dir" --no-audit --no-fund --no-update-notifier --loglevel=error \
    "@openai/codex@$version" >&2
fi
"$bin" --version >&2
echo "$(cd "$(dirname "$bin")" && pwd)/codex"
