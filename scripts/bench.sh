#!/usr/bin/env bash
# Throughput benchmark: the relay end to end against the broker's own ceiling,
# measured in the same run on the same machine.
#
#   scripts/bench.sh [events] [batch]     defaults: 50000 events, 50 per transaction
#
#  a. broker ceiling: examples/bench_broker publishes `events` persistent messages shaped
#     like the relay's (mandatory, publisher confirms, window 1000 = max_in_flight) to a
#     durable topic exchange bound to a durable queue, with a consumer attached as in b
#     (RabbitMQ then confirms a message once it is consumed, without waiting for the
#     disk); the queue is purged afterwards. It runs again after b (a'), since the
#     machine may be shared, and once without a consumer (a'', the backlog ceiling:
#     every message is written to disk before its confirm).
#  b. relay: a fresh database `bench` (default outbox table as `outbox-relay setup
#     --print-sql` prints it), slot and publication `bench`, `outbox-relay setup`, then
#     `outbox-relay run` in the background (log: target/bench/relay.log) and
#     examples/bench_drain consuming the queue (attached before t0, so its start-up is
#     not measured). t0; one psql session inserts the events, `batch` rows per
#     transaction (INSERT ... SELECT generate_series), nothing pre-loaded. End to end =
#     t0 to the arrival of the last of the `events` distinct message_ids. Meanwhile,
#     every ~0.5s: CPU of relay, RabbitMQ and walsender, and the relay's confirmed /
#     in-flight counts from /metrics. Then the commit-to-confirm histogram from /metrics.
#  c. a table of the figures, and the command.
#  d. cleanup: SIGTERM the relay (bounded), drop slot and database `bench`, delete the
#     exchange and queue. PostgreSQL and RabbitMQ stay running (`scripts/services.sh
#     down` stops them).
#
# About 1 minute at the defaults on 2 cores once built (plus the build); every wait is
# bounded. Files: target/bench/ (results.txt, samples.txt, relay.log, relay.toml, ...).
#
# Environment (optional): BENCH_TIMEOUT (seconds for each measured phase,
# default 30 + events/500), BENCH_WINDOW (default 1000), BENCH_DIR (default target/bench).
# Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
EVENTS=${1:-50000}
BATCH=${2:-50}
for n in "$EVENTS" "$BATCH"; do
  case "$n" in '' | *[!0-9]* | 0*) printf 'usage: %s [events] [batch]   (positive integers)\n' "$0" >&2; exit 2 ;; esac
done
COMMAND="scripts/bench.sh $EVENTS $BATCH"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DIR=${BENCH_DIR:-$TARGET_DIR/bench}
WINDOW=${BENCH_WINDOW:-1000}
PHASE_TIMEOUT=${BENCH_TIMEOUT:-$((30 + EVENTS / 500))}
EXCHANGE=bench.events
QUEUE=bench.events
SLOT=bench
DB=bench
RELAY_LOG="$DIR/relay.log"
CONFIG="$DIR/relay.toml"

BENCH_TAG=bench
# shellcheck source=scripts/bench-lib.sh
. "$REPO/scripts/bench-lib.sh"

relay_pid=""
drain_pid=""
insert_pid=""
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
  if [ -n "$insert_pid" ] && kill -0 "$insert_pid" 2>/dev/null; then
    pkill -TERM -P "$insert_pid" 2>/dev/null || true # its `timeout`, which passes it on to psql
    kill -TERM "$insert_pid" 2>/dev/null || true
    wait_exit "$insert_pid" 5 || true
  fi
  if [ -n "$relay_pid" ] && kill -0 "$relay_pid" 2>/dev/null; then
    log "SIGTERM to the relay (pid $relay_pid)"
    kill -TERM "$relay_pid" 2>/dev/null || true
    if ! wait_exit "$relay_pid" 20; then
      log "the relay did not exit within 20s of SIGTERM; SIGKILL"
      kill -KILL "$relay_pid" 2>/dev/null || true
      wait_exit "$relay_pid" 5 || true
    fi
    local relay_rc=0
    wait "$relay_pid" 2>/dev/null || relay_rc=$?
    log "relay exited with status $relay_rc"
  fi
  if [ "$created_db" = 1 ]; then
    drop_slot_and_db || log "could not drop slot/database $DB (see above); drop them by hand"
  fi
  if [ "$created_broker" = 1 ]; then
    timeout 30 "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" --count 0 --delete --timeout 20 >&2 ||
      log "could not delete exchange/queue $EXCHANGE"
  fi
  log "PostgreSQL and RabbitMQ are left running; stop them with: scripts/services.sh down"
  [ "$rc" = 0 ] || printf '[bench] failed (exit %s). Logs in %s\n' "$rc" "$DIR" >&2
  exit "$rc"
}
trap 'exit 130' INT
trap 'exit 143' TERM

psql_su() { timeout 60 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_TEST_PG_URL" "$@"; }

# the slot first (a database with a logical slot cannot be dropped); the walsender of a
# relay that just exited may take a moment to release it
drop_slot_and_db() {
  local deadline=$((SECONDS + 15))
  until psql_su -tA -c "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_name = '$SLOT'" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      psql_su -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT'" || return 1
    fi
    sleep 0.5
  done
  psql_su -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
}

say "Services (scripts/services.sh up)"
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
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
beam_pid=$(tr -dc '0-9' <"$OUTBOX_STATE_DIR/rabbit/rabbit.pid" 2>/dev/null || true)
hz=$(getconf CLK_TCK)
trap cleanup EXIT

# ------------------------------------------------------------ a. the broker's ceiling
# bench_broker [--consume]: prints its result line; the queue is purged afterwards
ceiling() {
  local b0
  b0=$(cpu_ticks "$beam_pid")
  timeout $((PHASE_TIMEOUT + 30)) "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" \
    --count "$EVENTS" --window "$WINDOW" --purge --timeout "$PHASE_TIMEOUT" "$@" >"$DIR/broker.out" 2>&1 ||
    { show_tail "$DIR/broker.out"; die "bench_broker $* failed"; }
  cat "$DIR/broker.out" >&2
  # with the CPU ticks RabbitMQ used meanwhile (declare, publish, consume, purge)
  printf '%s beam_ticks=%s\n' "$(grep '^bench_broker count=' "$DIR/broker.out")" "$(($(cpu_ticks "$beam_pid") - b0))"
}
# "N µs per message (P% of one core)" from ticks $1, messages $2, seconds $3
per_msg() { awk -v t="$1" -v n="$2" -v s="$3" -v hz="$hz" 'BEGIN { if (n > 0 && s > 0) printf "%.0f µs/msg (%.0f%% of one core)", 1e6 * t / hz / n, 100 * t / hz / s; else print "n/a" }'; }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "a. Broker ceiling: $EVENTS persistent mandatory messages, confirms, window $WINDOW, a consumer attached (as in b)"
created_broker=1
broker_line=$(ceiling --consume)
BROKER_RATE_1=$(kv "$broker_line" msgs_per_s)
BROKER_ELAPSED_1=$(kv "$broker_line" elapsed_s)
BEAM_1=$(per_msg "$(kv "$broker_line" beam_ticks)" "$EVENTS" "$BROKER_ELAPSED_1")

# ------------------------------------------------------------ b. the relay
say "b. Relay: database $DB, slot and publication $SLOT, outbox-relay setup + run"
psql_su -c "SET client_min_messages = warning" \
  -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT'" \
  -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB OWNER relay" >/dev/null
created_db=1

free_port 19187 19287
port=$PORT
METRICS_URL="http://127.0.0.1:$port/metrics"

cat >"$CONFIG" <<EOF
# written by scripts/bench.sh
[source]
url = "$BENCH_URL"
slot = "$SLOT"
publication = "$SLOT"
create_slot = false
status_interval = "1s"

[broker]
url = "$AMQP_URL"
max_in_flight = $WINDOW
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

outbox_ddl "$RELAY" "$CONFIG" "$DIR/outbox.sql"
timeout 60 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_URL" -f "$DIR/outbox.sql"
timeout 60 "$RELAY" setup --config "$CONFIG" >"$DIR/setup.log" 2>&1 || { show_tail "$DIR/setup.log"; die "outbox-relay setup failed"; }

# the insert script, written before t0 so that only the inserts are timed
awk -v n="$EVENTS" -v b="$BATCH" -v q="'" 'BEGIN {
  for (s = 1; s <= n; s += b) {
    e = s + b - 1; if (e > n) e = n
    printf "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) SELECT %sbench%s, %sacct-%s || (g %% 100), %sBenchEvent%s, jsonb_build_object(%sseq%s, g, %snote%s, %sbenchmark event%s, %saccount%s, %sacct-%s || (g %% 100), %samount_cents%s, g * 7 %% 10000) FROM generate_series(%d, %d) g;\n", q,q,q,q,q,q,q,q,q,q,q,q,q,q,q,q,q,q, s, e
  }
}' >"$DIR/insert.sql"

: >"$RELAY_LOG"
"$RELAY" run --config "$CONFIG" </dev/null >"$RELAY_LOG" 2>&1 &
relay_pid=$!
deadline=$((SECONDS + 30))
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/readyz" 2>/dev/null)" = 200 ]; do
  kill -0 "$relay_pid" 2>/dev/null || { show_tail "$RELAY_LOG"; die "the relay exited during startup"; }
  [ "$SECONDS" -lt "$deadline" ] || { show_tail "$RELAY_LOG"; die "the relay was not ready within 30s"; }
  sleep 0.2
done
log "relay streaming (pid $relay_pid, metrics $METRICS_URL, log $RELAY_LOG)"
walsender_pid=$(psql_su -tA -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$SLOT'")

# the consumer attaches before t0, so its start-up is not part of the measurement
# (it times from t0 itself: bench.sh reads its first_unix_ns / last_unix_ns)
"$BENCH_DRAIN" --url "$AMQP_URL" --queue "$QUEUE" --count "$EVENTS" --timeout $((PHASE_TIMEOUT + 15)) --ready-line \
  </dev/null >"$DIR/drain.out" 2>&1 &
drain_pid=$!
deadline=$((SECONDS + 20))
until grep -q '^ready' "$DIR/drain.out"; do
  kill -0 "$drain_pid" 2>/dev/null || { show_tail "$DIR/drain.out"; die "bench_drain exited before consuming"; }
  [ "$SECONDS" -lt "$deadline" ] || die "bench_drain was not ready within 20s"
  sleep 0.1
done

say "Inserting $EVENTS events, $BATCH per transaction, one psql session"
read -r m_busy0 m_total0 < <(machine_ticks)
relay_t0=$(cpu_ticks "$relay_pid")
beam_t0=$(cpu_ticks "$beam_pid")
wal_t0=$(cpu_ticks "$walsender_pid")
drain_t0=$(cpu_ticks "$drain_pid")
drain_t1=$drain_t0
rm -f "$DIR/insert.end"
t0=$(now_ns)
# in the background so that the samples below cover the inserts too; the subshell
# writes psql's status and the end time when psql exits
(
  rc=0
  timeout $((PHASE_TIMEOUT + 30)) "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_URL" -f "$DIR/insert.sql" </dev/null || rc=$?
  echo "$rc $(date +%s%N)" >"$DIR/insert.end"
) >"$DIR/insert.log" 2>&1 &
insert_pid=$!
t_ins=""

# wait for the drain; meanwhile note when the relay's confirmed count reaches $EVENTS,
# and take one `top` snapshot a second after the inserts ended
t_confirmed=""
top_taken=0
cpu_samples="$DIR/samples.txt"
: >"$cpu_samples"
prev_relay=$relay_t0 prev_beam=$beam_t0 prev_wal=$wal_t0 prev_ns=$t0
deadline=$((SECONDS + PHASE_TIMEOUT + 20))
while kill -0 "$drain_pid" 2>/dev/null || [ -z "$t_ins" ]; do
  [ "$SECONDS" -lt "$deadline" ] || die "bench_drain did not finish in time"
  if [ -z "$t_ins" ] && [ -s "$DIR/insert.end" ]; then
    read -r ins_rc t_ins <"$DIR/insert.end"
    wait "$insert_pid" || true
    insert_pid=""
    [ "$ins_rc" = 0 ] || { show_tail "$DIR/insert.log"; die "the inserts failed (psql status $ins_rc)"; }
    log "inserts done in $(span "$t0" "$t_ins")s"
  fi
  # confirmed so far, in flight, WAL not yet confirmed to PostgreSQL
  read -r published in_flight lag_bytes < <(curl -s --max-time 2 "$METRICS_URL" | awk '
    /^outbox_relay_events_published_total/ { p += $NF }
    /^outbox_relay_in_flight / { f = $NF }
    /^outbox_relay_replication_lag_bytes / { l = $NF }
    END { print p + 0, f + 0, l + 0 }')
  if [ -z "$t_confirmed" ] && [ "${published:-0}" -ge "$EVENTS" ]; then t_confirmed=$(now_ns); fi
  if [ "$top_taken" = 0 ] && [ -n "$t_ins" ] && [ $(($(now_ns) - t_ins)) -ge 1000000000 ]; then
    top -b -n1 -w 200 >"$DIR/top.txt" 2>&1 || true
    top_taken=1
  fi
  ns=$(now_ns) r=$(cpu_ticks "$relay_pid") bm=$(cpu_ticks "$beam_pid") w=$(cpu_ticks "$walsender_pid")
  d=$(cpu_ticks "$drain_pid")
  [ "$d" -gt 0 ] && drain_t1=$d
  awk -v dt="$((ns - prev_ns))" -v r="$((r - prev_relay))" -v b="$((bm - prev_beam))" -v w="$((w - prev_wal))" -v hz="$hz" -v t="$(span "$t0" "$ns")" \
    -v p="$published" -v f="$in_flight" -v l="$lag_bytes" \
    'BEGIN { s = dt / 1e9; if (s > 0) printf "  t=%6.2fs  cpu: relay %4.0f%%  rabbit %4.0f%%  walsender %4.0f%%   relay: confirmed %7d  in_flight %4d  unconfirmed WAL %9d B\n", t, 100*r/hz/s, 100*b/hz/s, 100*w/hz/s, p, f, l }' >>"$cpu_samples"
  prev_ns=$ns prev_relay=$r prev_beam=$bm prev_wal=$w
  sleep 0.5
done
drain_rc=0
wait "$drain_pid" || drain_rc=$?
drain_pid=""
t_end=$(now_ns)
read -r m_busy1 m_total1 < <(machine_ticks)
relay_t1=$(cpu_ticks "$relay_pid")
beam_t1=$(cpu_ticks "$beam_pid")
wal_t1=$(cpu_ticks "$walsender_pid")
# the relay's last confirm may come just after the consumer got the last message
deadline=$((SECONDS + 10))
while [ -z "$t_confirmed" ] && [ "$SECONDS" -lt "$deadline" ]; do
  published=$(curl -s --max-time 2 "$METRICS_URL" | awk '/^outbox_relay_events_published_total/ { s += $NF } END { print s + 0 }')
  if [ "${published:-0}" -ge "$EVENTS" ]; then t_confirmed=$(now_ns); else sleep 0.2; fi
done
drain_line=$(grep '^bench_drain ' "$DIR/drain.out" || true)
printf '%s\n' "$drain_line" >&2
[ -n "$drain_line" ] || { show_tail "$DIR/drain.out"; die "bench_drain printed no result"; }
[ "$drain_rc" = 0 ] || { show_tail "$RELAY_LOG"; die "bench_drain timed out: $(kv "$drain_line" distinct) of $EVENTS distinct ids arrived"; }

INSERT_S=$(span "$t0" "$t_ins")
t_last=$(kv "$drain_line" last_unix_ns)
t_first=$(kv "$drain_line" first_unix_ns)
E2E_S=$(span "$t0" "$t_last")
DISTINCT=$(kv "$drain_line" distinct)
DELIVERIES=$(kv "$drain_line" deliveries)
DUPLICATES=$((DELIVERIES - DISTINCT))
curl -s --max-time 5 "$METRICS_URL" >"$DIR/metrics.txt" || true

say "a'. Broker ceiling again, after the relay (the machine is shared: this brackets b in time)"
broker_line=$(ceiling --consume)
BROKER_RATE_2=$(kv "$broker_line" msgs_per_s)
BROKER_ELAPSED_2=$(kv "$broker_line" elapsed_s)
BEAM_2=$(per_msg "$(kv "$broker_line" beam_ticks)" "$EVENTS" "$BROKER_ELAPSED_2")
BROKER_RATE=$(((BROKER_RATE_1 + BROKER_RATE_2) / 2))
say "a''. Broker ceiling for a backlog: no consumer, every message written to disk before its confirm"
broker_line=$(ceiling)
BACKLOG_RATE=$(kv "$broker_line" msgs_per_s)
BACKLOG_ELAPSED=$(kv "$broker_line" elapsed_s)
BEAM_3=$(per_msg "$(kv "$broker_line" beam_ticks)" "$EVENTS" "$BACKLOG_ELAPSED")

rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "n/a" }'; }
INSERT_RATE=$(rate "$EVENTS" "$INSERT_S")
E2E_RATE=$(rate "$EVENTS" "$E2E_S")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
RATIO="$(ratio "$E2E_RATE" "$BROKER_RATE")  (against the two: $(ratio "$E2E_RATE" "$BROKER_RATE_1") and $(ratio "$E2E_RATE" "$BROKER_RATE_2"))"
CONFIRMED_S="n/a"
[ -n "$t_confirmed" ] && CONFIRMED_S="$(span "$t0" "$t_confirmed")s (polled every 0.5s)"

# CPU over [t0, end of drain], in % of one core
wall=$(span "$t0" "$t_end")
pct() { awk -v d="$1" -v hz="$hz" -v w="$wall" 'BEGIN { if (w > 0) printf "%.0f%%", 100 * d / hz / w; else print "n/a" }'; }
CPU_RELAY="$(pct $((relay_t1 - relay_t0))) of one core, $(per_msg $((relay_t1 - relay_t0)) "$EVENTS" "$wall" | cut -d' ' -f1-2)"
BEAM_RELAY=$(per_msg $((beam_t1 - beam_t0)) "$EVENTS" "$wall")
CPU_BEAM=$(pct $((beam_t1 - beam_t0)))
CPU_WAL=$(pct $((wal_t1 - wal_t0)))
CPU_DRAIN=$(pct $((drain_t1 - drain_t0)))
CPU_OTHER=$(awk -v b="$((m_busy1 - m_busy0))" -v ours="$((relay_t1 - relay_t0 + beam_t1 - beam_t0 + wal_t1 - wal_t0 + drain_t1 - drain_t0))" -v hz="$hz" -v w="$wall" \
  'BEGIN { if (w > 0) printf "%.0f%%", 100 * (b - ours) / hz / w; else print "n/a" }')
CPU_MACHINE=$(awk -v b="$((m_busy1 - m_busy0))" -v t="$((m_total1 - m_total0))" -v n="$(nproc)" 'BEGIN { if (t > 0) printf "%.0f%% of %d cores", 100 * b / t, n; else print "n/a" }')

# commit-to-confirm histogram -> p50 / p99, linear within the bucket like Prometheus'
# histogram_quantile, but never above $2 (no event can be older than t0 -> last confirm)
quantile() {
  awk -v q="$1" -v cap="$2" '
    /^outbox_relay_commit_to_confirm_seconds_bucket/ {
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      n++; les[n] = le; cum[n] = $NF + 0
    }
    /^outbox_relay_commit_to_confirm_seconds_count/ { count = $NF + 0 }
    END {
      if (count == 0) { print "n/a"; exit }
      rank = q * count; prev_le = 0; prev_cum = 0
      for (i = 1; i <= n; i++) {
        if (cum[i] >= rank) {
          if (les[i] == "+Inf") { printf ">%ss", prev_le; exit }
          hi = les[i] + 0; note = ""
          if (cap > prev_le && cap < hi) { hi = cap; note = sprintf(", interpolated up to %.1fs, the longest possible here", cap) }
          inb = cum[i] - prev_cum
          v = (inb > 0) ? prev_le + (hi - prev_le) * (rank - prev_cum) / inb : hi
          printf "%.3fs (bucket %s-%ss%s)", v, prev_le, les[i], note; exit
        }
        if (les[i] != "+Inf") prev_le = les[i]
        prev_cum = cum[i]
      }
      print "n/a"
    }' "$DIR/metrics.txt"
}
AGE_CAP=$E2E_S
[ -n "$t_confirmed" ] && AGE_CAP=$(span "$t0" "$t_confirmed")
P50=$(quantile 0.5 "$AGE_CAP")
P99=$(quantile 0.99 "$AGE_CAP")
C2C_COUNT=$(awk '/^outbox_relay_commit_to_confirm_seconds_count/ { print $NF }' "$DIR/metrics.txt")
C2C_MEAN=$(awk '/^outbox_relay_commit_to_confirm_seconds_sum/ { s = $NF } /^outbox_relay_commit_to_confirm_seconds_count/ { c = $NF }
  END { if (c > 0) printf "%.3fs", s / c; else print "n/a" }' "$DIR/metrics.txt")

# ------------------------------------------------------------ c. the figures
say "c. Results"
{
  printf 'command: %s   (events=%s, batch=%s rows/transaction, window=%s, %s cores)\n' "$COMMAND" "$EVENTS" "$BATCH" "$WINDOW" "$(nproc)"
  printf '%-44s %s\n' \
    "broker ceiling, consumer attached (mean)" "$BROKER_RATE msgs/s  (before: $BROKER_RATE_1 in ${BROKER_ELAPSED_1}s, after: $BROKER_RATE_2 in ${BROKER_ELAPSED_2}s)" \
    "broker ceiling, backlog (no consumer)" "$BACKLOG_RATE msgs/s  ($EVENTS in ${BACKLOG_ELAPSED}s)" \
    "insert rate (psql, $BATCH rows/txn)" "$INSERT_RATE events/s  ($EVENTS in ${INSERT_S}s)" \
    "relay end to end (t0 -> last distinct id)" "$E2E_RATE events/s  ($EVENTS in ${E2E_S}s)" \
    "ratio relay / broker ceiling" "$RATIO" \
    "relay: t0 -> all confirmed (/metrics poll)" "$CONFIRMED_S" \
    "consumer: first -> last distinct id" "$(kv "$drain_line" first_to_last_s)s  (first at +$(span "$t0" "$t_first")s)" \
    "commit-to-confirm p50" "$P50" \
    "commit-to-confirm p99" "$P99  (count $C2C_COUNT, mean $C2C_MEAN)" \
    "deliveries / distinct / duplicates" "$DELIVERIES / $DISTINCT / $DUPLICATES" \
    "RabbitMQ CPU: ceiling before / after" "$BEAM_1 / $BEAM_2" \
    "RabbitMQ CPU: backlog ceiling" "$BEAM_3" \
    "RabbitMQ CPU: relay run (t0 -> drain end)" "$BEAM_RELAY" \
    "CPU t0 -> drain end: relay" "$CPU_RELAY" \
    "CPU t0 -> drain end: rabbitmq (beam)" "$CPU_BEAM of one core" \
    "CPU t0 -> drain end: walsender (pgoutput)" "$CPU_WAL of one core" \
    "CPU t0 -> drain end: bench_drain" "$CPU_DRAIN of one core" \
    "CPU t0 -> drain end: everything else" "$CPU_OTHER of one core (psql backend, this script, other users of the machine)" \
    "CPU t0 -> drain end: whole machine" "$CPU_MACHINE  (load average at start: $LOAD_START)"
  printf 'samples every ~0.5s from t0 (CPU in %% of one core over the interval; /metrics of the relay):\n'
  if [ "$(wc -l <"$cpu_samples")" -le 24 ]; then cat "$cpu_samples"; else head -n 12 "$cpu_samples"; echo "  ..."; tail -n 8 "$cpu_samples"; fi
  printf 'files: %s (relay.log, relay.toml, metrics.txt, samples.txt, top.txt one second after the inserts)\n' "$DIR"
} | tee "$DIR/results.txt"
