# shellcheck shell=bash
# Helpers shared by scripts/bench.sh and scripts/bench-polling.sh (sourced, not run).
# The sourcing script sets BENCH_TAG (the log prefix) first.

say() { printf '\n==> %s\n' "$*" >&2; }
log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_TAG" "$*" >&2; exit 1; }
show_tail() { [ -f "$1" ] && { printf -- '---- last lines of %s ----\n' "$1" >&2; tail -n 30 "$1" >&2; }; true; }
now_ns() { date +%s%N; }
# seconds between two nanosecond stamps, 3 decimals
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# value of key $2 in a "k=v k=v" line $1
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print substr($0, length(k) + 2); exit }'; }
# our child $1 gone within $2 seconds? (false on timeout)
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
# user+system CPU ticks of process $1 (0 when gone)
cpu_ticks() { { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; } 2>/dev/null || echo 0; }
# busy and total ticks of the whole machine
machine_ticks() { awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit }' /proc/stat; }
port_open() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }
