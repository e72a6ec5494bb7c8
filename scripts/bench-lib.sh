# shellcheck shell=bash
# Helpers shared by scripts/bench.sh, bench-polling.sh and bench-memory.sh (sourced, not run).
# The sourcing script sets BENCH_TAG (the log prefix) first.

say() { printf '\n==> %s\n' "$*" >&2; }
log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_TAG" "$*" >&2; exit 1; }
show_tail() { [ -f "$1" ] && { printf -- '---- last lines of %s ----\n' "$1" >&2; tail -n 30 "$1" >&2; }; true; }
# wall clock in Unix nanoseconds (bash's own clock, microseconds, without a fork of date)
now_ns() { local t=${EPOCHREALTIME//[!0-9]/}; echo "${t}000"; }
# seconds between two nanosecond stamps, 3 decimals
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# value of key $2 in a "k=v k=v" line $1
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print substr($0, length(k) + 2); exit }'; }
# our child $1 gone within $2 seconds? (false on timeout); $3 the polling interval
# (default 0.2 s)
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep "${3:-0.2}"
  done
}
# user+system CPU ticks of process $1, all its threads, exited ones included (0 when
# gone); in bash alone, since it is sampled while the measured processes run
cpu_ticks() {
  local line f
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
  # the fields after the command name, which may hold spaces: state is the 1st,
  # utime the 12th and stime the 13th
  read -ra f <<<"${line##*) }"
  echo $((f[11] + f[12]))
}
# a memory figure of process $1 from /proc/PID/status in KiB ($2: VmHWM, VmRSS, ...;
# empty when the process is gone)
vm_kib() { awk -v k="$2:" '$1 == k { print $2; exit }' "/proc/$1/status" 2>/dev/null || true; }
# stop our child $1 (named $2 in the log): SIGTERM, up to $3 seconds, then SIGKILL;
# its exit status is left for the caller's `wait`
stop_pid() {
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  if ! wait_exit "$1" "$3"; then
    log "$2 (pid $1) did not exit within $3s of SIGTERM; SIGKILL"
    kill -KILL "$1" 2>/dev/null || true
    wait_exit "$1" 5 || true
  fi
}
# wait until file $1 has a line matching the ERE $2, while our child $3 lives, at most
# $4 seconds (false on timeout or when the child exited first)
wait_line() {
  local deadline=$((SECONDS + $4))
  until grep -qE "$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || grep -qE "$2" "$1" 2>/dev/null || return 1
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}
# median, min and max of the numbers on stdin, one a line ("n/a" when none): "MED MIN MAX N"
stats() {
  sort -g | awk '{ v[++n] = $1 } END {
    if (n == 0) { print "n/a n/a n/a 0"; exit }
    m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    print m, v[1], v[n], n }'
}
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
# the slot first (a database with a logical slot cannot be dropped); the walsender of a
# relay that just exited may take a moment to release it. Uses the sourcing script's
# psql_su (superuser psql), SLOT and DB.
drop_slot_and_db() {
  local deadline=$((SECONDS + 15))
  until psql_su -tA -c "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_name = '$SLOT'" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      psql_su -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT'" || return 1
    fi
    sleep 0.5
  done
  psql_su -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
}

# SQL appended to the outbox DDL by the catch-up benchmarks (bench.sh, bench-cluster.sh):
# autovacuum off for the outbox (no vacuum of the backlog inside a measurement);
# bench_payload(seq, size), a JSON object whose text (jsonb's output, what the relay
# sends as the body) is exactly `size` bytes, padded by its "pad" field
# (examples/bench_broker.rs builds the same text); and bench_fill(first, last, batch,
# size), which inserts rows first..last and COMMITs every `batch` rows (each COMMIT a
# transaction of its own in the WAL, as a client's would be).
bench_backlog_sql() {
  cat <<'EOF'
ALTER TABLE outbox SET (autovacuum_enabled = off);
CREATE FUNCTION bench_payload(seq bigint, size int) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('pad', repeat('x', greatest(0, size - length(b::text))), 'seq', seq,
           'note', 'benchmark event', 'account', 'acct-' || (seq % 100), 'amount_cents', seq * 7 % 10000)
  FROM (SELECT jsonb_build_object('pad', '', 'seq', seq, 'note', 'benchmark event',
          'account', 'acct-' || (seq % 100), 'amount_cents', seq * 7 % 10000) AS b) AS s
$$;
CREATE PROCEDURE bench_fill(first bigint, last bigint, batch int, size int) LANGUAGE plpgsql AS $$
DECLARE
  i bigint := first;
BEGIN
  WHILE i <= last LOOP
    INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
      SELECT 'bench', 'acct-' || (g % 100), 'BenchEvent', bench_payload(g, size)
      FROM generate_series(i, least(i + batch - 1, last)) AS g;
    COMMIT;
    i := i + batch;
  END LOOP;
END $$;
EOF
}

# ---------------------------------------------------------------- catch-up benchmarks
# Shared by bench.sh and bench-cluster.sh; they read those scripts' globals (PSQL,
# BENCH_URL, RELAY, CONFIG, hz, INSERT_SESSIONS, PHASE_TIMEOUT, ...).

# awk arithmetic on named values: calc 'a / b' a=1 b=2 (prints "n/a" on division by zero)
calc() {
  local expr=$1
  shift
  local vars=() v
  for v in "$@"; do vars+=(-v "$v"); done
  awk "${vars[@]}" "BEGIN { x = $expr; print x }" 2>/dev/null || echo n/a
}

# padded to $2 characters, counting characters, not bytes (µ, –)
pad() { local LC_ALL=C.UTF-8 s=$1; printf '%s%*s' "$s" $(($2 > ${#s} ? $2 - ${#s} : 0)) ''; }

# events the relay has confirmed, from /metrics
published() { curl -s --max-time 2 "$METRICS_URL" | awk '/^outbox_relay_events_published_total/ { s += $NF } END { print s + 0 }'; }

# `outbox-relay run` in the background, log $1; sets relay_pid
start_relay() {
  "$RELAY" run --config "$CONFIG" </dev/null >"$1" 2>&1 &
  relay_pid=$!
}

# CPU ticks $1 as µs per event over $2 events, and as % of one core over $2 seconds
# shellcheck disable=SC2154 # hz: the sourcing script's (getconf CLK_TCK)
ticks_us() { calc "1e6 * t / hz / n" "t=$1" "hz=$hz" "n=$2"; }
# shellcheck disable=SC2154
ticks_pct() { calc "100 * t / hz / s" "t=$1" "hz=$hz" "s=$2"; }

# WAL_PID: the walsender serving the slot, once the relay has started streaming (30 s)
walsender() {
  local deadline=$((SECONDS + 30))
  while :; do
    WAL_PID=$(psql_su -tA -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$SLOT' AND active_pid IS NOT NULL")
    [ -z "$WAL_PID" ] || return 0
    kill -0 "$relay_pid" 2>/dev/null || { show_tail "$1"; die "the relay exited before streaming"; }
    [ "$SECONDS" -lt "$deadline" ] || { show_tail "$1"; die "no walsender for slot $SLOT within 30s"; }
    sleep 0.1
  done
}

# the backlog: $1 events, $2 per transaction, $3 bytes, by INSERT_SESSIONS sessions
fill_backlog() {
  local n=$1 batch=$2 size=$3 log=$4 s lo=1 hi chunk rc=0 p
  # each session's range a multiple of the batch, so that every transaction is full
  chunk=$(((n + INSERT_SESSIONS - 1) / INSERT_SESSIONS))
  chunk=$(((chunk + batch - 1) / batch * batch))
  fill_pids=()
  : >"$log"
  for ((s = 0; s < INSERT_SESSIONS && lo <= n; s++)); do
    hi=$((lo + chunk - 1))
    [ "$hi" -le "$n" ] || hi=$n
    timeout "$PHASE_TIMEOUT" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_URL" \
      -c "SET synchronous_commit = off" -c "CALL bench_fill($lo, $hi, $batch, $size)" </dev/null >>"$log" 2>&1 &
    fill_pids+=("$!")
    lo=$((hi + 1))
  done
  for p in "${fill_pids[@]}"; do wait "$p" || rc=$?; done
  fill_pids=()
  [ "$rc" = 0 ] || { show_tail "$log"; die "the backlog inserts failed (status $rc)"; }
  local got
  got=$(psql_bench -tA -c "SELECT count(*) FROM outbox")
  [ "$got" = "$n" ] || die "the backlog has $got rows, not $n"
  psql_su -c CHECKPOINT
}
