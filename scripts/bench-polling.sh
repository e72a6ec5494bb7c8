#!/usr/bin/env bash
# Polling benchmark: how fast the relay in polling mode drains a backlog.
#
#   scripts/bench-polling.sh [--rows N] [--batch N]    defaults: 1000000 rows, batch_size 500
#
#  1. a fresh database `bench_polling` with the default outbox table and its index (the
#     block `outbox-relay setup --print-sql` prints), filled with N small rows by one
#     `INSERT ... SELECT generate_series` (not timed), then VACUUM ANALYZE;
#  2. a durable exchange and queue `bench.polling` (examples/bench_broker --count 0) and
#     examples/bench_drain consuming it, attached before t0;
#  3. t0: `outbox-relay run` in polling mode (source.mode = "polling", after_publish =
#     "delete", the given batch_size, poll_interval 200ms); the end is when the consumer
#     has all N distinct message_ids and the table is empty (every published row deleted);
#  4. rows/s = N / (end - t0); relay CPU = utime + stime of /proc/<pid>/stat over the
#     run, per row; peak RSS = VmHWM of /proc/<pid>/status;
#  5. cleanup: SIGTERM the relay (bounded), drop the database, delete exchange and queue.
#
# About 2 minutes at the defaults on 2 cores once built (`--rows 100000` for a quick
# run); every wait is bounded. Uses the project's services (scripts/services.sh: the
# ones OUTBOX_SERVICES_SH names when they run, else `up`); PostgreSQL and RabbitMQ stay
# running. Files: target/bench-polling/ (results.txt, relay.log, relay.toml, ...).
# Environment (optional): BENCH_TIMEOUT (seconds for the drain, default 60 + rows/2000),
# BENCH_DIR. Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
ROWS=1000000
BATCH=500
usage() { printf 'usage: %s [--rows N] [--batch N]   (positive integers)\n' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS=${2:-}; shift 2 || usage ;;
    --batch) BATCH=${2:-}; shift 2 || usage ;;
    *) usage ;;
  esac
done
for n in "$ROWS" "$BATCH"; do
  case "$n" in '' | *[!0-9]* | 0*) usage ;; esac
done
COMMAND="scripts/bench-polling.sh --rows $ROWS --batch $BATCH"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DIR=${BENCH_DIR:-$TARGET_DIR/bench-polling}
PHASE_TIMEOUT=${BENCH_TIMEOUT:-$((60 + ROWS / 2000))}
EXCHANGE=bench.polling
QUEUE=bench.polling
DB=bench_polling
RELAY_LOG="$DIR/relay.log"
CONFIG="$DIR/relay.toml"

BENCH_TAG=bench-polling
# shellcheck source=scripts/bench-lib.sh
. "$REPO/scripts/bench-lib.sh"
# peak resident set of process $1, in KiB
peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

relay_pid=""
drain_pid=""
created_db=0
created_broker=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "Cleanup"
  if [ -n "$drain_pid" ] && kill -0 "$drain_pid" 2>/dev/null; then
    kill -TERM "$drain_pid" 2>/dev/null || true
    wait_exit "$drain_pid" 5 || kill -KILL "$drain_pid" 2>/dev/null || true
  fi
  if [ -n "$relay_pid" ] && kill -0 "$relay_pid" 2>/dev/null; then
    kill -TERM "$relay_pid" 2>/dev/null || true
    if ! wait_exit "$relay_pid" 20; then
      log "the relay did not exit within 20s of SIGTERM; SIGKILL"
      kill -KILL "$relay_pid" 2>/dev/null || true
      wait_exit "$relay_pid" 5 || true
    fi
    wait "$relay_pid" 2>/dev/null || true
  fi
  if [ "$created_db" = 1 ]; then
    psql_su -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || log "could not drop database $DB; drop it by hand"
  fi
  if [ "$created_broker" = 1 ]; then
    timeout 30 "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" --count 0 --delete --timeout 20 >/dev/null 2>&1 ||
      log "could not delete exchange/queue $EXCHANGE"
  fi
  [ "$rc" = 0 ] || printf '[bench-polling] failed (exit %s). Logs in %s\n' "$rc" "$DIR" >&2
  exit "$rc"
}
trap 'exit 130' INT
trap 'exit 143' TERM

psql_su() { timeout 120 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_TEST_PG_URL" "$@"; }
psql_bench() { timeout "${T:-120}" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_URL" "$@"; }

say "Services"
SERVICES=${OUTBOX_SERVICES_SH:-scripts/services.sh}
if ! "$SERVICES" status >/dev/null 2>&1; then
  SERVICES=scripts/services.sh
  "$SERVICES" up >/dev/null
fi
eval "$("$SERVICES" env)"
PSQL="$OUTBOX_TEST_PG_BIN/psql"
AMQP_URL="$OUTBOX_TEST_AMQP_URL"
PG_HOSTPORT=$(sed -E 's|^postgres://[^@]*@([^/]*)/.*$|\1|' <<<"$OUTBOX_TEST_PG_URL")
BENCH_URL="postgres://relay:relay@$PG_HOSTPORT/$DB"
[ -x "$PSQL" ] || die "$PSQL not found (OUTBOX_TEST_PG_BIN)"

say "Build (cargo build --release --bin outbox-relay --examples)"
cargo build --release --bin outbox-relay --examples
RELAY="$TARGET_DIR/release/outbox-relay"
BENCH_BROKER="$TARGET_DIR/release/examples/bench_broker"
BENCH_DRAIN="$TARGET_DIR/release/examples/bench_drain"
for b in "$RELAY" "$BENCH_BROKER" "$BENCH_DRAIN"; do [ -x "$b" ] || die "$b was not built"; done
mkdir -p "$DIR"
hz=$(getconf CLK_TCK)
trap cleanup EXIT

free_port 19288 19388
port=$PORT

cat >"$CONFIG" <<EOF
# written by scripts/bench-polling.sh
[source]
url = "$BENCH_URL"
mode = "polling"
slot = "bench_polling"
batch_size = $BATCH
poll_interval = "200ms"

[broker]
url = "$AMQP_URL"
shutdown_timeout = "15s"

[[routes]]
name = "bench"
table = "public.outbox"
exchange = "$EXCHANGE"
routing_key = "{aggregate_type}.{event_type}"

[http]
listen = "127.0.0.1:$port"

[log]
level = "info"
EOF

say "Backlog: database $DB, $ROWS rows in one INSERT ... SELECT generate_series"
psql_su -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
  -c "CREATE DATABASE $DB OWNER relay" >/dev/null
created_db=1
outbox_ddl "$RELAY" "$CONFIG" "$DIR/outbox.sql"
psql_bench -f "$DIR/outbox.sql"
fill0=$(now_ns)
T=300 psql_bench -c "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
  SELECT 'bench', 'acct-' || (g % 100), 'BenchEvent', jsonb_build_object('seq', g, 'amount_cents', g * 7 % 10000)
  FROM generate_series(1, $ROWS) g" -c "VACUUM ANALYZE outbox"
log "filled in $(span "$fill0" "$(now_ns)")s"

created_broker=1
timeout 60 "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" --count 0 --timeout 30 >"$DIR/declare.out" 2>&1 ||
  { show_tail "$DIR/declare.out"; die "could not declare $EXCHANGE"; }
"$BENCH_DRAIN" --url "$AMQP_URL" --queue "$QUEUE" --count "$ROWS" --timeout $((PHASE_TIMEOUT + 15)) --ready-line \
  </dev/null >"$DIR/drain.out" 2>&1 &
drain_pid=$!
deadline=$((SECONDS + 20))
until grep -q '^ready' "$DIR/drain.out"; do
  kill -0 "$drain_pid" 2>/dev/null || { show_tail "$DIR/drain.out"; die "bench_drain exited before consuming"; }
  [ "$SECONDS" -lt "$deadline" ] || die "bench_drain was not ready within 20s"
  sleep 0.1
done

say "Draining: outbox-relay run, polling, batch_size $BATCH"
: >"$RELAY_LOG"
t0=$(now_ns)
"$RELAY" run --config "$CONFIG" </dev/null >"$RELAY_LOG" 2>&1 &
relay_pid=$!
deadline=$((SECONDS + PHASE_TIMEOUT))
left=$ROWS
while :; do
  kill -0 "$relay_pid" 2>/dev/null || { show_tail "$RELAY_LOG"; die "the relay exited"; }
  [ "$SECONDS" -lt "$deadline" ] || { show_tail "$RELAY_LOG"; die "the backlog did not drain within ${PHASE_TIMEOUT}s ($left rows left)"; }
  if ! kill -0 "$drain_pid" 2>/dev/null; then
    left=$(T=10 psql_bench -tA -c "SELECT count(*) FROM outbox")
    [ "$left" = 0 ] && break
  fi
  sleep 0.2
done
t_end=$(now_ns)
relay_ticks=$(cpu_ticks "$relay_pid")
rss_kib=$(peak_rss_kib "$relay_pid")
drain_rc=0
wait "$drain_pid" || drain_rc=$?
drain_pid=""
drain_line=$(grep '^bench_drain ' "$DIR/drain.out" || true)
[ "$drain_rc" = 0 ] || { show_tail "$DIR/drain.out"; die "bench_drain did not get every id"; }
DISTINCT=$(kv "$drain_line" distinct)
DELIVERIES=$(kv "$drain_line" deliveries)

WALL=$(span "$t0" "$t_end")
RATE=$(awk -v n="$ROWS" -v s="$WALL" 'BEGIN { printf "%.0f", n / s }')
US_PER_ROW=$(awk -v t="$relay_ticks" -v hz="$hz" -v n="$ROWS" 'BEGIN { printf "%.1f", 1e6 * t / hz / n }')
CORE=$(awk -v t="$relay_ticks" -v hz="$hz" -v s="$WALL" 'BEGIN { printf "%.0f", 100 * t / hz / s }')
RSS=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')

say "Results"
{
  printf 'command: %s   (%s cores)\n' "$COMMAND" "$(nproc)"
  printf '%-34s %s\n' \
    "backlog drained (start -> empty)" "$RATE rows/s  ($ROWS rows in ${WALL}s, relay start-up included)" \
    "relay CPU (utime + stime)" "$US_PER_ROW µs/row  ($CORE% of one core)" \
    "relay peak RSS (VmHWM)" "$RSS MiB" \
    "messages" "$DISTINCT distinct, $DELIVERIES deliveries"
} | tee "$DIR/results.txt"
