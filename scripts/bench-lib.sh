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
