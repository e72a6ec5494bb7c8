# shellcheck shell=bash
# Helpers shared by scripts/bench.sh, bench-polling.sh and bench-memory.sh (sourced, not run).
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
# a TCP port free on 127.0.0.1 in $1..$2, into PORT (dies when there is none)
# shellcheck disable=SC2034 # PORT is read by the sourcing script
free_port() {
  local p
  PORT=""
  for p in $(seq "$1" "$2"); do
    if ! port_open "$p"; then PORT=$p; return 0; fi
  done
  die "no free port in 127.0.0.1:$1-$2 for http.listen"
}
# the default outbox table and its index, as the relay itself prints them (one copy:
# deploy/sql/outbox.sql), from CREATE TABLE to the blank line after the block;
# $1 the relay binary, $2 a config file, $3 where to write the SQL
outbox_ddl() {
  "$1" setup --config "$2" --print-sql | awk '/^CREATE TABLE/ { on = 1 } on && /^$/ { exit } on { print }' >"$3"
  grep -q 'CREATE INDEX' "$3" || die "could not get the default outbox table and index from 'outbox-relay setup --print-sql'"
}
