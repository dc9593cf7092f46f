#!/usr/bin/env bash
# Builds the one file a cluster user copies: dist/llmgw-x86_64-linux-gnu, linked against
# glibc 2.17 (CentOS 7 and anything newer: RHEL/Rocky 8 and 9, Ubuntu, Debian, SLES),
# stripped, with its SHA-256 next to it and the line tables in a separate .debug file
# (for `addr2line -e llmgw-x86_64-linux-gnu.debug ADDRESS` on a user's crash report).
#
#   scripts/release.sh            # build dist/ and check it (size, glibc floor, --version)
#   scripts/release.sh --smoke    # ... and run it: `serve` must answer /health/liveness
#
# The glibc floor comes from cargo-zigbuild, which links with Zig against glibc 2.17's
# symbol versions; both come from PyPI (`pip install ziglang cargo-zigbuild`) and are
# installed here when missing. The Rust target is the host's own, so no extra standard
# library is needed. LLMGW_RELEASE_PROFILE picks another cargo profile (default: dist).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
GLIBC=2.17
PROFILE=${LLMGW_RELEASE_PROFILE:-dist}
NAME=llmgw-x86_64-linux-gnu
OUT=dist/$NAME
# The size budget: 24 MiB. It was 20 MiB until batches, retention and scale to zero
# (issues 24, 27, 29) landed together and the stripped binary went from 17.9 to 21.1 MiB;
# `connect`'s spill gateway instantiates `serve::run` and `proxy_for` a second time, the
# first place to look when shrinking it again.
MAX_BYTES=$((24 * 1024 * 1024))

smoke=0
case ${1:-} in
  --smoke) smoke=1 ;;
  "") ;;
  *)
    echo "usage: $0 [--smoke]" >&2
    exit 2
    ;;
esac

say() { printf 'release: %s\n' "$*"; }
die() {
  printf 'release: %s\n' "$*" >&2
  exit 1
}

# --- tools ---------------------------------------------------------------------------
if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
  say "installing Zig and cargo-zigbuild from PyPI (pip install ziglang cargo-zigbuild)"
  python3 -m pip install --quiet --disable-pip-version-check ziglang cargo-zigbuild
  hash -r
fi
command -v cargo-zigbuild >/dev/null 2>&1 ||
  die "cargo-zigbuild is installed but not on PATH; add pip's script directory to PATH"
if ! command -v objcopy >/dev/null 2>&1 || ! command -v objdump >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || die "objcopy/objdump missing; install binutils (apt-get install binutils)"
  say "installing binutils (objcopy, objdump)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends binutils >/dev/null
fi
host=$(rustc -vV | sed -n 's/^host: //p')
[ "$host" = "$TARGET" ] ||
  die "this builds on an $TARGET host (this is $host); see README \"Other architectures\""

# --- build ---------------------------------------------------------------------------
# The version stamp (build.rs): the commit, marked -dirty when tracked files differ from
# it, and today's date (or SOURCE_DATE_EPOCH's, for a reproducible build).
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then
  commit="$commit-dirty"
fi
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  built=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
else
  built=$(date -u +%Y-%m-%d)
fi

say "cargo zigbuild --profile $PROFILE --target $TARGET.$GLIBC (commit $commit, built $built)"
start=$(date +%s)
LLMGW_GIT_COMMIT=$commit LLMGW_BUILD_DATE=$built \
  cargo zigbuild --locked --profile "$PROFILE" --target "$TARGET.$GLIBC" --bin llmgw
say "built in $(($(date +%s) - start)) s"
bin=${CARGO_TARGET_DIR:-target}/$TARGET/$PROFILE/llmgw
[ -x "$bin" ] || die "cargo zigbuild finished but $bin is missing"

# --- package -------------------------------------------------------------------------
mkdir -p dist
rm -f "$OUT" "$OUT.debug" "$OUT.sha256"
objcopy --only-keep-debug "$bin" "$OUT.debug"
# The debug link stores the .debug file's base name and CRC: gdb finds it beside the binary.
objcopy --strip-all "$bin" "$OUT"
(cd dist && objcopy --add-gnu-debuglink="$NAME.debug" "$NAME")
chmod 0755 "$OUT"
chmod 0644 "$OUT.debug"
(cd dist && sha256sum "$NAME" >"$NAME.sha256")

# --- checks --------------------------------------------------------------------------
size=$(stat -c %s "$OUT")
say "$OUT: $((size / 1024 / 1024)) MiB ($size bytes)"
[ "$size" -le "$MAX_BYTES" ] || die "$OUT is $size bytes, over the 24 MiB budget"

# Every versioned glibc symbol must be at most GLIBC_$GLIBC.
newest=$(objdump -T "$OUT" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n1)
[ -n "$newest" ] || die "objdump -T shows no GLIBC symbol versions in $OUT: is it dynamically linked?"
if [ "$(printf '%s\n%s\n' "$newest" "$GLIBC" | sort -V | tail -n1)" != "$GLIBC" ]; then
  objdump -T "$OUT" | grep "GLIBC_$newest" | head -n5 >&2
  die "$OUT needs GLIBC_$newest, newer than the $GLIBC floor"
fi
say "newest glibc symbol version: GLIBC_$newest (floor $GLIBC)"

version=$("$OUT" --version)
say "$version"
case $version in
  "llmgw "*"(commit $commit, built $built)") ;;
  *) die "--version printed \"$version\", expected commit $commit and date $built" ;;
esac

if [ $smoke -eq 1 ]; then
  # `serve` with the built-in config on a free loopback port; it writes endpoint.json
  # (with the port) into its state directory once it listens.
  state=$(mktemp -d)
  "$OUT" serve --host 127.0.0.1 --port 0 --state-dir "$state" >"$state/serve.log" 2>&1 &
  pid=$!
  cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$state"
  }
  trap cleanup EXIT
  port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/.*"port": *\([0-9]*\).*/\1/p' "$state/endpoint.json" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || {
    cat "$state/serve.log" >&2
    die "$OUT serve did not come up"
  }
  live=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/health/liveness") || {
    cat "$state/serve.log" >&2
    die "$OUT serve did not answer /health/liveness on port $port"
  }
  say "serve answered /health/liveness on port $port: $live"
fi

say "ready: $OUT ($(cut -d' ' -f1 "$OUT.sha256"))"
