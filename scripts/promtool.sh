#!/usr/bin/env bash
# Finds promtool (Prometheus's rule and metrics checker), installing it when
# missing, and prints its path.
#
#   scripts/promtool.sh                  print the path (installing first if needed)
#   "$(scripts/promtool.sh)" test rules deploy/prometheus/alerts.test.yml
#
# Looks for $PROMTOOL, then promtool on PATH, then $TARGET/tools/promtool
# ($TARGET is $CARGO_TARGET_DIR, else target/). When none is there it takes
# promtool out of Debian's `prometheus` package (`apt-get download` and
# `dpkg -x`, bounded), into $TARGET/tools/promtool, and nothing else: the
# package is not installed, so no Prometheus server is set up or started.
# The integration test `promtool_check_metrics_accepts_the_live_metrics` looks
# in the same places; scripts/services.sh, scripts/lint-ops.sh and .ci/run
# call this script.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DEST=$TARGET_DIR/tools/promtool

works() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

for p in "${PROMTOOL:-}" "$(command -v promtool || true)" "$DEST"; do
  if works "$p"; then
    printf '%s\n' "$p"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "promtool.sh: promtool is missing and there is no apt-get/dpkg: install Prometheus's promtool and set PROMTOOL" >&2
  exit 1
fi
echo "promtool.sh: promtool is missing: extracting it from Debian's prometheus package into $DEST" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download needs no root, only a package list that knows the package
download() { (cd "$tmp" && timeout 300 apt-get download -q prometheus </dev/null >"$tmp/download.log" 2>&1); }
if ! download; then
  if [ "$(id -u)" = 0 ]; then
    timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -q </dev/null >/dev/null 2>&1 || true
  fi
  download || {
    echo "promtool.sh: apt-get download prometheus failed (as root, run apt-get update first):" >&2
    cat "$tmp/download.log" >&2
    exit 1
  }
fi
dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p "$(dirname "$DEST")"
install -m 755 "$tmp/x/usr/bin/promtool" "$DEST.new"
mv -f "$DEST.new" "$DEST"
works "$DEST" || { echo "promtool.sh: $DEST does not run" >&2; exit 1; }
echo "promtool.sh: $("$DEST" --version 2>&1 | head -n1)" >&2
printf '%s\n' "$DEST"
