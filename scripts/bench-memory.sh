#!/usr/bin/env bash
# Memory benchmark (issue 10, point 1): the relay's peak resident memory in three
# scenarios that used to grow it without bound, measured by sampling /proc (not a
# timed test).
#
#   scripts/bench-memory.sh [--rows N] [--quick] [--scenario NAME] [--timeout S]
#
#   big-txn      one transaction of N small outbox rows (default 1,000,000;
#                INSERT ... SELECT FROM generate_series), routed to a bound queue.
#                Ends when the relay has N events confirmed (/metrics
#                outbox_relay_events_published_total); the queue depth is then
#                checked with `scripts/services.sh ctl list_queues`.      target 64 MiB
#   unroutable   U = 100,000 unroutable events of ~2 KiB (routing key mem.Unroutable,
#                which no queue is bound to) interleaved with U small routable ones
#                (mem.Routable, bound), 100 rows per transaction, under
#                on_unroutable = "block" (the default: the relay holds its position
#                and keeps retrying; it must keep running). Ends when all routable
#                events are confirmed and at least U returns were counted
#                (outbox_relay_events_unroutable_total), or 60 s after the inserts
#                committed. Also prints the relay's log line count (repeated returns
#                should be logged once per interval, not once per attempt).
#                                                                           target 64 MiB
#   big-payload  one row whose payload is a 50 MiB JSON string
#                (jsonb_build_object('blob', repeat('x', 50 MiB))). Ends when the
#                relay has it confirmed; the queue depth is then checked.
#                                                                           target 4 x size
#
# --quick: 10x smaller (big-txn 100,000 rows, unroutable U = 10,000, a 10 MiB
# payload; the targets stay 64 MiB, and 4 x 10 MiB): about a minute on 2 cores once
# built (the full run: about 6 minutes, most of it big-txn). --rows N overrides big-txn's row count (also with --quick). --scenario NAME
# runs one scenario (big-txn, unroutable, big-payload). --timeout S caps each
# scenario's wait for its end condition once the inserts committed (default: big-txn
# 120 + N/2000 s, unroutable 60 s, big-payload 180 s; the inserts have their own cap).
#
# For each scenario: a fresh database `benchmem` (the default outbox table, as
# `outbox-relay setup --print-sql` prints it), slot and publication `benchmem`, a
# durable topic exchange `benchmem.events` and queue `benchmem.events` declared by
# examples/bench_broker (--count 0), `outbox-relay setup`, then `outbox-relay run` in
# the background. Once it is ready, one psql session inserts the data (in the
# background) while this script reads the relay's resident set size (VmRSS's figure,
# from /proc/PID/statm) every 100 ms; at the end condition it reads VmHWM (the kernel's own peak, which the table shows),
# stops the relay by its pid (SIGTERM, 20 s, then SIGKILL), drops the slot and the
# database, and deletes the exchange and the queue. "seconds" is from the start of the
# inserts to the end condition. Last, one line per scenario:
#
#   scenario | peak RSS MiB | target | ok/over | seconds | notes
#
# PostgreSQL and RabbitMQ are the project's own (`scripts/services.sh up`, done here);
# they stay running (`scripts/services.sh down` stops them). The relay is built with
# `cargo build --release` and taken from ${CARGO_TARGET_DIR:-target}/release. Files:
# target/bench-memory/ (results.txt; per scenario: relay.log, relay.toml, the RSS
# samples `rss.txt` as "seconds-since-inserts-began KiB", metrics.txt).
# Environment (optional): BENCH_MEM_DIR (default target/bench-memory).
# Every wait is bounded; everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
ROWS=""
QUICK=0
ONLY=""
TIMEOUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=${2:-}; shift 2 || usage ;;
    --rows=*) ROWS=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --scenario) ONLY=${2:-}; shift 2 || usage ;;
    --scenario=*) ONLY=${1#*=}; shift ;;
    --timeout) TIMEOUT=${2:-}; shift 2 || usage ;;
    --timeout=*) TIMEOUT=${1#*=}; shift ;;
    -h | --help) usage ;;
    *) printf 'unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done
positive() { case "$1" in '' | *[!0-9]* | 0*) return 1 ;; esac; }
if [ "$QUICK" = 1 ]; then
  : "${ROWS:=100000}"
  UNROUTABLE=10000
  PAYLOAD_MIB=10
else
  : "${ROWS:=1000000}"
  UNROUTABLE=100000
  PAYLOAD_MIB=50
fi
positive "$ROWS" || { printf -- '--rows: a positive integer, not %s\n' "$ROWS" >&2; exit 2; }
[ -z "$TIMEOUT" ] || positive "$TIMEOUT" || { printf -- '--timeout: a positive integer, not %s\n' "$TIMEOUT" >&2; exit 2; }
case "$ONLY" in '' | big-txn | unroutable | big-payload) ;; *) printf 'unknown scenario %s (big-txn, unroutable, big-payload)\n' "$ONLY" >&2; exit 2 ;; esac

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DIR=${BENCH_MEM_DIR:-$TARGET_DIR/bench-memory}
DB=benchmem
SLOT=benchmem
EXCHANGE=benchmem.events
QUEUE=benchmem.events
SCENARIO_TARGET_MIB=64

BENCH_TAG=bench-memory
# shellcheck source=scripts/bench-lib.sh
. "$REPO/scripts/bench-lib.sh"
# microseconds since the epoch, into NOW_US (no fork)
now_us() { NOW_US=${EPOCHREALTIME//[!0-9]/}; }
# seconds between two microsecond stamps, 1 decimal
span_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# resident KiB of process $1 into KIB (empty when it is gone or a zombie), from
# /proc/PID/statm: one short line, so one read() sees a consistent snapshot (reading
# /proc/PID/status line by line from bash can skip lines while the figures above
# VmRSS change length); the same count as VmRSS. No fork.
PAGE_KIB=$(($(getconf PAGESIZE) / 1024))
rss_kib() {
  local size res rest
  KIB=""
  { read -r size res rest <"/proc/$1/statm"; } 2>/dev/null || return 0
  [ "${size:-0}" != 0 ] || return 0 # a zombie's statm is all zeros
  KIB=$((res * PAGE_KIB))
}
# the kernel's peak resident KiB of process $1 (VmHWM), read in one go; empty when gone
hwm_kib() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

relay_pid=""
insert_pid=""
scenario_live=0 # a database / exchange of the current scenario may exist
RESULTS=()

stop_relay() {
  [ -n "$relay_pid" ] || return 0
  if kill -0 "$relay_pid" 2>/dev/null; then
    log "SIGTERM to the relay (pid $relay_pid)"
    kill -TERM "$relay_pid" 2>/dev/null || true
    if ! wait_exit "$relay_pid" 20; then
      log "the relay did not exit within 20s of SIGTERM; SIGKILL"
      kill -KILL "$relay_pid" 2>/dev/null || true
      wait_exit "$relay_pid" 5 || true
    fi
  fi
  local rc=0
  wait "$relay_pid" 2>/dev/null || rc=$?
  log "relay exited with status $rc"
  relay_pid=""
}

stop_inserts() {
  [ -n "$insert_pid" ] || return 0
  if kill -0 "$insert_pid" 2>/dev/null; then
    pkill -TERM -P "$insert_pid" 2>/dev/null || true # its `timeout`, which passes it on to psql
    kill -TERM "$insert_pid" 2>/dev/null || true
    wait_exit "$insert_pid" 10 || true
  fi
  wait "$insert_pid" 2>/dev/null || true
  insert_pid=""
}

psql_su() { timeout "${PSQL_TIMEOUT:-60}" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_TEST_PG_URL" "$@"; }


broker() { timeout 60 "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" --count 0 --timeout 45 "$@"; }

teardown() {
  stop_inserts
  stop_relay
  [ "$scenario_live" = 1 ] || return 0
  drop_slot_and_db >&2 || log "could not drop slot/database $DB (see above); drop them by hand"
  broker --delete >/dev/null || log "could not delete exchange/queue $EXCHANGE"
  scenario_live=0
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  teardown
  log "PostgreSQL and RabbitMQ are left running; stop them with: scripts/services.sh down"
  [ "$rc" = 0 ] || printf '[bench-memory] failed (exit %s). Logs in %s\n' "$rc" "$DIR" >&2
  exit "$rc"
}
trap 'exit 130' INT
trap 'exit 143' TERM

say "Services (scripts/services.sh up)"
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
PSQL="$OUTBOX_TEST_PG_BIN/psql"
AMQP_URL="$OUTBOX_TEST_AMQP_URL"
PG_HOSTPORT=$(sed -E 's|^postgres://[^@]*@([^/]*)/.*$|\1|' <<<"$OUTBOX_TEST_PG_URL")
DB_URL="postgres://relay:relay@$PG_HOSTPORT/$DB"
[ -x "$PSQL" ] || die "$PSQL not found (OUTBOX_TEST_PG_BIN)"

say "Build (cargo build --release --bin outbox-relay --example bench_broker)"
cargo build --release --bin outbox-relay --example bench_broker
RELAY="$TARGET_DIR/release/outbox-relay"
BENCH_BROKER="$TARGET_DIR/release/examples/bench_broker"
for b in "$RELAY" "$BENCH_BROKER"; do [ -x "$b" ] || die "$b was not built"; done
mkdir -p "$DIR"
trap cleanup EXIT

# messages in $QUEUE, from rabbitmqctl (empty if it cannot say)
queue_depth() {
  { timeout 60 scripts/services.sh ctl -q list_queues --no-table-headers name messages 2>/dev/null || true; } |
    awk -v q="$QUEUE" '$1 == q { print $2 }'
}
# sum of the samples of metric $1 in $2 (a saved /metrics page)
metric() { awk -v m="$1" 'index($0, m) == 1 && (substr($0, length(m) + 1, 1) == "{" || substr($0, length(m) + 1, 1) == " ") { s += $NF } END { printf "%d", s }' "$2"; }

# ---------------------------------------------------------------- one scenario
# scenario NAME TARGET_MIB BINDING CAP_S, with the functions insert_sql (writes the
# insert script) and done_yet (0 when the end condition holds; reads $SD/metrics.txt)
# defined; fills RESULTS
scenario() {
  local name=$1 target_mib=$2 binding=$3 cap=$4
  SD="$DIR/$name"
  rm -rf "$SD"
  mkdir -p "$SD"
  say "Scenario $name: $DESC"
  psql_su -c "SET client_min_messages = warning" \
    -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT'" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB OWNER relay" >/dev/null
  scenario_live=1
  broker --delete >/dev/null 2>&1 || true # leftovers of an interrupted run
  broker --binding "$binding" >"$SD/broker.out" 2>&1 || { show_tail "$SD/broker.out"; die "could not declare $EXCHANGE / $QUEUE"; }

  local port
  free_port 19387 19487
  port=$PORT
  METRICS_URL="http://127.0.0.1:$port/metrics"
  cat >"$SD/relay.toml" <<EOF
# written by scripts/bench-memory.sh (scenario $name)
[source]
url = "$DB_URL"
slot = "$SLOT"
publication = "$SLOT"
create_slot = false
status_interval = "1s"

[broker]
url = "$AMQP_URL"
shutdown_timeout = "10s"
on_unroutable = "block"

[[routes]]
name = "mem"
table = "public.outbox"
exchange = "$EXCHANGE"
routing_key = "{aggregate_type}.{event_type}"

[http]
listen = "127.0.0.1:$port"

[log]
level = "info"
EOF
  outbox_ddl "$RELAY" "$SD/relay.toml" "$SD/outbox.sql"
  timeout 60 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$DB_URL" -f "$SD/outbox.sql"
  timeout 60 "$RELAY" setup --config "$SD/relay.toml" >"$SD/setup.log" 2>&1 || { show_tail "$SD/setup.log"; die "outbox-relay setup failed"; }
  insert_sql >"$SD/insert.sql"

  "$RELAY" run --config "$SD/relay.toml" </dev/null >"$SD/relay.log" 2>&1 &
  relay_pid=$!
  local deadline=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/readyz" 2>/dev/null)" = 200 ]; do
    kill -0 "$relay_pid" 2>/dev/null || { show_tail "$SD/relay.log"; die "the relay exited during startup"; }
    [ "$SECONDS" -lt "$deadline" ] || { show_tail "$SD/relay.log"; die "the relay was not ready within 30s"; }
    sleep 0.2
  done
  rss_kib "$relay_pid"
  local idle_kib=${KIB:-0}
  log "relay streaming (pid $relay_pid, RSS $(mib "$idle_kib") MiB, metrics $METRICS_URL); inserting"

  local t0 t_ins="" ins_rc="" end_how="" peak=0 n=0 el
  now_us
  t0=$NOW_US
  rm -f "$SD/insert.end"
  (
    rc=0
    timeout "$INSERT_TIMEOUT" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$DB_URL" -f "$SD/insert.sql" </dev/null || rc=$?
    echo "$rc ${EPOCHREALTIME//[!0-9]/}" >"$SD/insert.end"
  ) >"$SD/insert.log" 2>&1 &
  insert_pid=$!
  : >"$SD/rss.txt"
  local cap_at=$((SECONDS + INSERT_TIMEOUT + 10)) # until the inserts end; then $cap from there
  while :; do
    rss_kib "$relay_pid"
    if [ -z "$KIB" ] || ! kill -0 "$relay_pid" 2>/dev/null; then end_how="the relay exited"; break; fi
    now_us
    el=$(((NOW_US - t0) / 1000))
    printf '%d.%03d %s\n' $((el / 1000)) $((el % 1000)) "$KIB" >>"$SD/rss.txt"
    [ "$KIB" -le "$peak" ] || peak=$KIB
    if [ -z "$t_ins" ] && [ -s "$SD/insert.end" ]; then
      read -r ins_rc t_ins <"$SD/insert.end"
      wait "$insert_pid" || true
      insert_pid=""
      [ "$ins_rc" = 0 ] || { show_tail "$SD/insert.log"; die "the inserts failed (psql status $ins_rc)"; }
      log "inserts committed after $(span_us "$t0" "$t_ins")s (relay RSS now $(mib "$KIB") MiB)"
      cap_at=$((SECONDS + cap))
    fi
    n=$((n + 1))
    if [ $((n % 5)) = 0 ]; then # every ~0.5 s
      if curl -s --max-time 2 "$METRICS_URL" >"$SD/metrics.tmp" 2>/dev/null; then mv "$SD/metrics.tmp" "$SD/metrics.txt"; fi
      if [ -n "$t_ins" ] && [ -s "$SD/metrics.txt" ] && done_yet; then end_how="end condition"; break; fi
      if [ $((n % 50)) = 0 ]; then log "+$(span_us "$t0" "$NOW_US")s RSS $(mib "$KIB") MiB (peak $(mib "$peak")); $(progress)"; fi
    fi
    if [ "$SECONDS" -ge "$cap_at" ]; then
      if [ -z "$t_ins" ]; then end_how="timeout: the inserts did not end within ${INSERT_TIMEOUT}s"; else end_how="cap: ${cap}s after the inserts"; fi
      break
    fi
    sleep 0.1
  done
  now_us
  local t_end=$NOW_US
  local hwm
  hwm=$(hwm_kib "$relay_pid")
  local secs
  secs=$(span_us "$t0" "$t_end")
  log "end: $end_how after ${secs}s; $(progress)"
  if curl -s --max-time 2 "$METRICS_URL" >"$SD/metrics.tmp" 2>/dev/null; then mv "$SD/metrics.tmp" "$SD/metrics.txt"; fi
  local notes=""
  notes=$(finish_notes)
  stop_relay
  local lines
  lines=$(wc -l <"$SD/relay.log")
  [ "$name" != unroutable ] || notes="log lines $lines ($(grep -c 'unroutable message' "$SD/relay.log" || true) about unroutable messages); $notes"
  teardown

  # VmHWM is the kernel's peak; without it (the relay died) the highest sample
  local peak_kib=${hwm:-$peak} verdict
  verdict=$(awk -v k="$peak_kib" -v t="$target_mib" 'BEGIN { print (k / 1024 <= t) ? "ok" : "over" }')
  [ "$end_how" = "end condition" ] || notes="$end_how; $notes"
  [ -n "$hwm" ] || notes="no VmHWM (relay gone), highest 100 ms sample; $notes"
  notes="$notes; idle $(mib "$idle_kib") MiB, highest sample $(mib "$peak") MiB"
  RESULTS+=("$(printf '%-30s | %12s | %6s | %-7s | %7s | %s' "$name ($DESC_SHORT)" "$(mib "$peak_kib")" "$target_mib" "$verdict" "$secs" "$notes")")
  printf '%s\n' "${RESULTS[-1]}" >&2
}

# ---------------------------------------------------------------- the scenarios

# 1. one transaction of $ROWS small rows
big_txn() {
  DESC="one transaction of $ROWS small rows"
  DESC_SHORT="$ROWS rows, 1 txn"
  INSERT_TIMEOUT=$((60 + ROWS / 2000))
  insert_sql() {
    printf "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) SELECT 'mem', 'acct-' || (g %% 100), 'Small', jsonb_build_object('seq', g, 'note', 'memory benchmark', 'amount_cents', g * 7 %% 10000) FROM generate_series(1, %d) g;\n" "$ROWS"
  }
  progress() { [ -s "$SD/metrics.txt" ] && printf 'confirmed %s of %s' "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" "$ROWS"; true; }
  done_yet() { [ "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" -ge "$ROWS" ]; }
  finish_notes() { printf 'confirmed %s of %s, queue depth %s' "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" "$ROWS" "$(queue_depth)"; }
  scenario big-txn "$SCENARIO_TARGET_MIB" '#' "${TIMEOUT:-$((120 + ROWS / 2000))}"
}

# 2. $UNROUTABLE unroutable ~2 KiB events interleaved with as many routable ones,
# 100 rows per transaction (odd g: unroutable, even g: routable)
unroutable() {
  DESC="$UNROUTABLE unroutable ~2 KiB events + $UNROUTABLE routable, 100 rows per transaction, on_unroutable = block"
  DESC_SHORT="$UNROUTABLE x 2 KiB"
  INSERT_TIMEOUT=300
  insert_sql() {
    local s e n=$((2 * UNROUTABLE))
    for ((s = 1; s <= n; s += 100)); do
      e=$((s + 99 < n ? s + 99 : n))
      printf "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) SELECT 'mem', 'acct-' || (g %% 100), CASE WHEN g %% 2 = 1 THEN 'Unroutable' ELSE 'Routable' END, CASE WHEN g %% 2 = 1 THEN jsonb_build_object('seq', g, 'blob', repeat('u', 2020)) ELSE jsonb_build_object('seq', g, 'note', 'routable') END FROM generate_series(%d, %d) g;\n" "$s" "$e"
    done
  }
  progress() {
    [ -s "$SD/metrics.txt" ] && printf 'routable confirmed %s of %s, unroutable returns %s' \
      "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" "$UNROUTABLE" "$(metric outbox_relay_events_unroutable_total "$SD/metrics.txt")"
    true
  }
  done_yet() {
    [ "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" -ge "$UNROUTABLE" ] &&
      [ "$(metric outbox_relay_events_unroutable_total "$SD/metrics.txt")" -ge "$UNROUTABLE" ]
  }
  finish_notes() { progress; }
  scenario unroutable "$SCENARIO_TARGET_MIB" 'mem.Routable' "${TIMEOUT:-60}"
}

# 3. one row with a $PAYLOAD_MIB MiB JSON string
big_payload() {
  DESC="one row with a $PAYLOAD_MIB MiB JSON payload"
  DESC_SHORT="$PAYLOAD_MIB MiB payload"
  INSERT_TIMEOUT=120
  insert_sql() {
    printf "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('mem', 'acct-1', 'Big', jsonb_build_object('blob', repeat('x', %d * 1024 * 1024)));\n" "$PAYLOAD_MIB"
  }
  progress() { [ -s "$SD/metrics.txt" ] && printf 'confirmed %s of 1' "$(metric outbox_relay_events_published_total "$SD/metrics.txt")"; true; }
  done_yet() { [ "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" -ge 1 ]; }
  finish_notes() { printf 'confirmed %s of 1, queue depth %s' "$(metric outbox_relay_events_published_total "$SD/metrics.txt")" "$(queue_depth)"; }
  scenario big-payload $((4 * PAYLOAD_MIB)) '#' "${TIMEOUT:-180}"
}

COMMAND="scripts/bench-memory.sh"
[ "$QUICK" = 0 ] || COMMAND="$COMMAND --quick"
COMMAND="$COMMAND --rows $ROWS"
[ -z "$ONLY" ] || COMMAND="$COMMAND --scenario $ONLY"
if [ -z "$ONLY" ] || [ "$ONLY" = big-txn ]; then big_txn; fi
if [ -z "$ONLY" ] || [ "$ONLY" = unroutable ]; then unroutable; fi
if [ -z "$ONLY" ] || [ "$ONLY" = big-payload ]; then big_payload; fi

say "Results"
{
  printf 'command: %s   (%s cores, %s, relay %s)\n' "$COMMAND" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  printf '%-30s | %12s | %6s | %-7s | %7s | %s\n' scenario "peak RSS MiB" target ok/over seconds notes
  printf '%s\n' "${RESULTS[@]}"
  printf 'peak RSS = VmHWM at the end; seconds = start of the inserts to the end condition; files: %s\n' "$DIR"
} | tee "$DIR/results.txt"
