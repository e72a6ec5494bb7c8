#!/usr/bin/env bash
# The benchmark of issue 11: every figure it sets a target for, beside its target.
#
#   scripts/bench.sh [--quick] [events]
#
#   events    backlog per catch-up cell (default 200000; BENCH_EVENTS too)
#   --quick   for development: 20000 events, 1 run, a 10 s steady run (about 2 min)
#
# 1. Catch-up matrix. For each payload size in BENCH_SIZES (default "1024 200": the
#    bytes of the row's payload as jsonb prints it, which is the message body) and each
#    batch in BENCH_BATCHES (default "1 50" events per transaction), BENCH_RUNS times
#    (default 3), one cell:
#    a. a fresh database, slot and publication `bench` (`outbox-relay setup`; the default
#       outbox table from `setup --print-sql`, autovacuum off for it, so that no vacuum of
#       the backlog runs inside a measurement; a function bench_payload(seq, size) that
#       pads the JSON object to exactly `size` bytes, and a procedure bench_fill that
#       inserts and COMMITs `batch` rows at a time);
#    b. the backlog: `events` rows inserted while the relay is not running, by
#       BENCH_INSERT_SESSIONS (default: one per core) psql sessions calling bench_fill,
#       one transaction per `batch` rows (a COMMIT in the procedure is a transaction of
#       its own in the WAL, as a client's would be), synchronous_commit off; then a
#       CHECKPOINT. Not measured;
#    c. the broker's ceiling before: examples/bench_broker publishes BENCH_CEILING_EVENTS
#       (default `events`) messages of the relay's exact shape (mandatory, persistent,
#       message_id, type, content_type, timestamp, app_id "outbox-relay", the headers
#       x-outbox-table, x-outbox-lsn and x-outbox-commit-time) with a body of the cell's
#       size, confirms, window BENCH_WINDOW (default 1000, the relay's max_in_flight), a
#       consumer attached; the queue is purged afterwards;
#    d. the relay: examples/bench_drain attached to the queue first, then t0 and
#       `outbox-relay run`; catch-up time = t0 to the arrival of the last of the `events`
#       distinct message_ids (the relay's start-up is inside it). CPU from
#       /proc/PID/stat (user + sys, all threads): the relay process's whole life up to
#       then, the slot's walsender (active_pid) likewise, RabbitMQ's beam from t0; the
#       relay's peak RSS is VmHWM from /proc/PID/status once all are confirmed
#       (/metrics); then SIGTERM;
#    e. the broker's ceiling after (c again). Ceiling = mean of before and after (both
#       printed); ratio = relay rate / ceiling, per run.
# 2. Steady run, BENCH_RUNS times: a fresh database and a relay started on it and
#    ready (nothing to catch up); BENCH_IDLE_SECONDS (default 3) of its idle CPU; then
#    examples/bench_writer: BENCH_STEADY_WRITERS (4) connections at BENCH_STEADY_RATE
#    (1000) events/s together for BENCH_STEADY_SECONDS (20), one event per transaction
#    (synchronous_commit on, as in a service), BENCH_STEADY_SIZE (1024) byte payloads.
#    bench_drain --latency takes, for each id's first delivery, the receive time minus
#    the x-outbox-commit-time header (PostgreSQL's commit timestamp): p50/p99/max. The
#    relay's and the walsender's CPU over the writers' window (first insert due ->
#    writer exited), the relay's VmRSS at the end and its VmHWM.
# 3. Message shape, BENCH_RUNS times: what each part of the message costs the broker
#    (issue 11 asks it measured): bench_broker's ceiling and RabbitMQ's CPU per message
#    for each size with the relay's shape, without the x-outbox-* headers, and plain
#    (persistent with a message_id, not mandatory). Reported, no target.
# 4. The table: each figure's median (min-max over the runs) beside its target, and met
#    or not met, with the command at the top. Targets (issue 11): catch-up ratio >= 0.95
#    and relay CPU <= 5 µs/event in every cell; steady relay CPU <= 2 % of one core,
#    commit-to-consume p50 <= 2 ms, relay RSS (VmHWM) <= 16 MiB; duplicates 0. Reported
#    without a target: walsender CPU, RabbitMQ's CPU per message under the relay beside
#    the same under bench_broker (the relay's stream should cost the broker no more),
#    p99, the catch-up's peak RSS (shown against the same 16 MiB), and "others' CPU": the
#    whole machine's CPU besides RabbitMQ per message, in the relay's run (relay,
#    walsender, bench_drain, ...) beside the ceiling's (bench_broker publishing and
#    consuming): on two cores, CPU the broker cannot have.
# 5. Cleanup (trap): every process this script started, by its pid (SIGTERM, bounded,
#    then SIGKILL); slot and database `bench`; exchange and queue `bench.events`.
#    PostgreSQL and RabbitMQ stay running (`scripts/services.sh down` stops them).
#
# Duration once built, on the 2-core machine (2026-12-06, shared with other work, the
# broker's ceiling about 25,000 msgs/s): --quick 35 s; the default (200000 events, 3 runs,
# 4 cells, 20 s steady) 8.5 minutes. Most of it is the broker: 2 ceilings and 1 relay run
# of 200000 messages per cell and run, so a broker at 7,000 msgs/s makes it about 20
# minutes (BENCH_CEILING_EVENTS=100000 saves a quarter). Every wait is bounded:
# BENCH_TIMEOUT seconds per measured phase (default 60 + events/500).
#
# Files in BENCH_DIR (default target/bench): results.txt (the table), figures.tsv (every
# figure of every run), runs.txt (each run's raw lines), and per cell and run a
# directory with relay.log, drain.out, broker-*.out, samples.txt (CPU and /metrics
# every ~1 s), metrics.txt (the relay's /metrics at the end), fill.log.
#
# Other environment (optional): BENCH_PHASES (default "catchup steady shape"); BENCH_RELAY,
# a relay binary to measure instead of this checkout's (an older build, for a before /
# after comparison in the same window; the examples are still this checkout's). Names used:
# database, slot and publication `bench`, exchange and queue `bench.events`.
# Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BENCH_TAG=bench
# shellcheck source=scripts/bench-lib.sh
. "$REPO/scripts/bench-lib.sh"

usage() { printf 'usage: %s [--quick] [events]\n' "$0" >&2; exit 2; }
QUICK=0
ARG_EVENTS=""
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    '' | *[!0-9]* | 0*) usage ;;
    *)
      # the old `scripts/bench.sh [events] [batch]`: the batches are BENCH_BATCHES now
      [ -z "$ARG_EVENTS" ] || die "one number only (events); batches: BENCH_BATCHES=\"1 50\""
      ARG_EVENTS=$a
      ;;
  esac
done
if [ "$QUICK" = 1 ]; then q_events=20000 q_runs=1 q_steady=10; else q_events=200000 q_runs=3 q_steady=20; fi
EVENTS=${ARG_EVENTS:-${BENCH_EVENTS:-$q_events}}
RUNS=${BENCH_RUNS:-$q_runs}
STEADY_SECONDS=${BENCH_STEADY_SECONDS:-$q_steady}
CEILING_EVENTS=${BENCH_CEILING_EVENTS:-$EVENTS}
SIZES=${BENCH_SIZES:-1024 200}
BATCHES=${BENCH_BATCHES:-1 50}
STEADY_RATE=${BENCH_STEADY_RATE:-1000}
STEADY_WRITERS=${BENCH_STEADY_WRITERS:-4}
STEADY_SIZE=${BENCH_STEADY_SIZE:-1024}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-3}
WINDOW=${BENCH_WINDOW:-1000}
INSERT_SESSIONS=${BENCH_INSERT_SESSIONS:-$(nproc)}
PHASES=${BENCH_PHASES:-catchup steady shape}
PHASE_TIMEOUT=${BENCH_TIMEOUT:-$((60 + EVENTS / 500))}
# shellcheck disable=SC2086 # the lists are split on purpose
for n in "$EVENTS" "$RUNS" "$STEADY_SECONDS" "$CEILING_EVENTS" "$STEADY_RATE" "$STEADY_WRITERS" "$STEADY_SIZE" \
  "$IDLE_SECONDS" "$WINDOW" "$INSERT_SESSIONS" "$PHASE_TIMEOUT" $SIZES $BATCHES; do
  case "$n" in '' | *[!0-9]* | 0*) die "not a positive integer: '$n' (see the header of $0)" ;; esac
done
# the command as given, with the BENCH_* settings that shaped it
COMMAND="scripts/bench.sh${*:+ $*}"
for v in $(compgen -e BENCH_ | sort -r); do
  COMMAND="$v=${!v} $COMMAND"
done

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DIR=${BENCH_DIR:-$TARGET_DIR/bench}
EXCHANGE=bench.events
QUEUE=bench.events
SLOT=bench
DB=bench
CONFIG="$DIR/relay.toml"
FIGS="$DIR/figures.tsv"
RUNLOG="$DIR/runs.txt"

# pids of what we started (for the cleanup)
relay_pid="" drain_pid="" writer_pid="" fill_pids=()
created_db=0 created_broker=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  say "Cleanup"
  for p in "$drain_pid" "$writer_pid" "${fill_pids[@]}"; do
    [ -n "$p" ] && stop_pid "$p" "pid $p" 5
  done
  stop_relay
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

psql_su() { PGOPTIONS="-c client_min_messages=warning" timeout 60 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_TEST_PG_URL" "$@"; }
psql_bench() { timeout 120 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_URL" "$@"; }

# ------------------------------------------------------------------ set-up
start_services() {
  say "Services (scripts/services.sh up)"
  scripts/services.sh up >/dev/null
  eval "$(scripts/services.sh env)"
  PSQL="$OUTBOX_TEST_PG_BIN/psql"
  [ -x "$PSQL" ] || die "$PSQL not found (OUTBOX_TEST_PG_BIN)"
  AMQP_URL="$OUTBOX_TEST_AMQP_URL"
  PG_HOSTPORT=$(sed -E 's|^postgres://[^@]*@([^/]*)/.*$|\1|' <<<"$OUTBOX_TEST_PG_URL")
  BENCH_URL="postgres://relay:relay@$PG_HOSTPORT/$DB"
  beam_pid=$(tr -dc '0-9' <"$OUTBOX_STATE_DIR/rabbit/rabbit.pid" 2>/dev/null || true)
  [ -r "/proc/${beam_pid:-none}/stat" ] || die "no RabbitMQ pid in $OUTBOX_STATE_DIR/rabbit/rabbit.pid"
  hz=$(getconf CLK_TCK)
}

build() {
  say "Build (cargo build --release --bin outbox-relay --examples)"
  cargo build --release --bin outbox-relay --examples
  RELAY="${BENCH_RELAY:-$TARGET_DIR/release/outbox-relay}"
  BENCH_BROKER="$TARGET_DIR/release/examples/bench_broker"
  BENCH_DRAIN="$TARGET_DIR/release/examples/bench_drain"
  BENCH_WRITER="$TARGET_DIR/release/examples/bench_writer"
  local b
  for b in "$RELAY" "$BENCH_BROKER" "$BENCH_DRAIN" "$BENCH_WRITER"; do [ -x "$b" ] || die "$b was not built"; done
}

write_config() {
  free_port 19187 19287
  METRICS_URL="http://127.0.0.1:$PORT/metrics"
  READY_URL="http://127.0.0.1:$PORT/readyz"
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
listen = "127.0.0.1:$PORT"

[log]
level = "info"
EOF
  outbox_ddl "$RELAY" "$CONFIG" "$DIR/outbox.sql"
  # the payload of bench row `seq` and the backlog's inserts (bench-lib.sh)
  bench_backlog_sql >>"$DIR/outbox.sql"
}

# a fresh database with the outbox table, the bench functions, slot and publication
fresh_db() {
  drop_slot_and_db >/dev/null
  created_db=1
  psql_su -c "CREATE DATABASE $DB OWNER relay" >/dev/null
  psql_bench -f "$DIR/outbox.sql" >/dev/null
  timeout 60 "$RELAY" setup --config "$CONFIG" >"$1/setup.log" 2>&1 || { show_tail "$1/setup.log"; die "outbox-relay setup failed"; }
}

# ------------------------------------------------------------------ processes
stop_relay() {
  [ -n "$relay_pid" ] || return 0
  stop_pid "$relay_pid" "the relay" 20
  local relay_rc=0
  wait "$relay_pid" 2>/dev/null || relay_rc=$?
  [ "$relay_rc" = 0 ] || log "the relay (pid $relay_pid) exited with status $relay_rc"
  relay_pid=""
}
# until /readyz says 200 (30 s at most); $1 the relay's log
wait_ready() {
  local deadline=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$READY_URL" 2>/dev/null)" = 200 ]; do
    kill -0 "$relay_pid" 2>/dev/null || { show_tail "$1"; die "the relay exited during startup"; }
    [ "$SECONDS" -lt "$deadline" ] || { show_tail "$1"; die "the relay was not ready within 30s"; }
    sleep 0.1
  done
}
# bench_drain for $1 distinct ids, output to $2, extra options after; sets drain_pid
start_drain() {
  local n=$1 out=$2
  shift 2
  "$BENCH_DRAIN" --url "$AMQP_URL" --queue "$QUEUE" --count "$n" --timeout $((PHASE_TIMEOUT + 30)) --ready-line "$@" \
    </dev/null >"$out" 2>&1 &
  drain_pid=$!
  wait_line "$out" '^ready' "$drain_pid" 20 || { show_tail "$out"; die "bench_drain was not consuming within 20s"; }
}
# DRAIN_LINE: the result line of bench_drain (output $1), once it has exited (at most
# $2 seconds)
finish_drain() {
  local out=$1 rc=0
  wait_exit "$drain_pid" "$2" || { show_tail "$out"; die "bench_drain did not finish within $2s"; }
  wait "$drain_pid" || rc=$?
  drain_pid=""
  DRAIN_LINE=$(grep '^bench_drain ' "$out" || true)
  [ -n "$DRAIN_LINE" ] || { show_tail "$out"; die "bench_drain printed no result"; }
  [ "$rc" = 0 ] || { show_tail "$out"; die "bench_drain timed out: $(kv "$DRAIN_LINE" distinct) distinct ids arrived"; }
}

# the relay's bodies are $2 bytes, as bench_broker's (bench_drain's line $1)?
check_body() {
  [ "$(kv "$1" body_min) $(kv "$1" body_max)" = "$2 $2" ] ||
    log "WARNING: the relay's bodies were $(kv "$1" body_min)-$(kv "$1" body_max) bytes, not $2: the ceiling's shape differs"
}

# ------------------------------------------------------------------ figures
# one figure of one run: section, cell, run, name, value
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$FIGS"; }

# ------------------------------------------------------------------ 1. catch-up

# bench_broker with a consumer, $1 messages of $2 bytes, output $3, shape $4 (default
# relay); sets CEILING to "RATE ELAPSED BEAM_US_PER_MSG OTHERS_US_PER_MSG" (OTHERS: the
# whole machine's CPU besides RabbitMQ: bench_broker publishing and consuming, ...)
ceiling() {
  local n=$1 size=$2 out=$3 shape=${4:-relay} b0 b1 m0 m1 _t
  read -r m0 _t < <(machine_ticks)
  b0=$(cpu_ticks "$beam_pid")
  created_broker=1
  timeout $((PHASE_TIMEOUT + 30)) "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" \
    --count "$n" --body-size "$size" --window "$WINDOW" --shape "$shape" --consume --purge --timeout "$PHASE_TIMEOUT" >"$out" 2>&1 ||
    { show_tail "$out"; die "bench_broker failed"; }
  b1=$(cpu_ticks "$beam_pid")
  read -r m1 _t < <(machine_ticks)
  local line
  line=$(grep '^bench_broker count=' "$out")
  [ "$(kv "$line" body_bytes)" = "$size" ] || log "bench_broker's body is $(kv "$line" body_bytes) bytes, not $size"
  CEILING="$(kv "$line" msgs_per_s) $(kv "$line" elapsed_s) $(ticks_us $((b1 - b0)) "$n") $(ticks_us $((m1 - m0 - b1 + b0)) "$n")"
}

# until bench_drain exits (checked every 0.05 s, so that the figures read after it are
# taken at the end), a sample every ~1 s: CPU of relay, walsender, beam (% of one core
# over the interval) and the relay's confirmed / in-flight counts; $1 file, $2 t0,
# $3 walsender pid
sample_until_drained() {
  local file=$1 t0=$2 wal=$3 deadline=$((SECONDS + PHASE_TIMEOUT)) ns r w b p f
  local pns=$t0 pr=0 pw=0 pb
  pb=$(cpu_ticks "$beam_pid")
  pw=$(cpu_ticks "$wal")
  while kill -0 "$drain_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { show_tail "$RELAY_LOG"; die "the relay did not catch up within ${PHASE_TIMEOUT}s (BENCH_TIMEOUT)"; }
    kill -0 "$relay_pid" 2>/dev/null || { show_tail "$RELAY_LOG"; die "the relay exited during the catch-up"; }
    sleep 0.05
    ns=${EPOCHREALTIME//[!0-9]/}000
    [ $((ns - pns)) -ge 1000000000 ] || continue
    read -r p f < <(curl -s --max-time 1 "$METRICS_URL" | awk '
      /^outbox_relay_events_published_total/ { p += $NF } /^outbox_relay_in_flight / { f = $NF }
      END { print p + 0, f + 0 }')
    ns=$(now_ns) r=$(cpu_ticks "$relay_pid") w=$(cpu_ticks "$wal") b=$(cpu_ticks "$beam_pid")
    awk -v dt="$((ns - pns))" -v r="$((r - pr))" -v b="$((b - pb))" -v w="$((w - pw))" -v hz="$hz" -v t="$(span "$t0" "$ns")" \
      -v p="$p" -v f="$f" 'BEGIN { s = dt / 1e9; if (s > 0) printf "  t=%6.2fs  cpu: relay %4.0f%%  rabbit %4.0f%%  walsender %4.0f%%   relay: confirmed %7d  in_flight %4d\n", t, 100*r/hz/s, 100*b/hz/s, 100*w/hz/s, p, f }' >>"$file"
    pns=$ns pr=$r pw=$w pb=$b
  done
}

# one cell of the matrix: run $1, payload $2 bytes, $3 events per transaction
catchup_cell() {
  local run=$1 size=$2 batch=$3 cell="$2/$3"
  local cd="$DIR/catchup/run$run-${size}B-${batch}txn"
  mkdir -p "$cd"
  RELAY_LOG="$cd/relay.log"
  say "catch-up $(cell_label "$cell"), run $run of $RUNS: backlog of $EVENTS events"
  fresh_db "$cd"
  local t_fill=$SECONDS
  fill_backlog "$EVENTS" "$batch" "$size" "$cd/fill.log"
  log "backlog inserted in $((SECONDS - t_fill))s; broker ceiling before"
  local before after
  ceiling "$CEILING_EVENTS" "$size" "$cd/broker-before.out"
  before=$CEILING
  log "ceiling before: ${before%% *} msgs/s; the relay"

  start_drain "$EVENTS" "$cd/drain.out"
  local b0 t0 wal m_busy0 m_busy1 _total
  read -r m_busy0 _total < <(machine_ticks)
  b0=$(cpu_ticks "$beam_pid")
  t0=$(now_ns)
  start_relay "$RELAY_LOG"
  walsender "$RELAY_LOG"
  wal=$WAL_PID
  sample_until_drained "$cd/samples.txt" "$t0" "$wal"
  # the figures at the arrival of the last id (the drain has just exited)
  local relay_t wal_t b1 line
  relay_t=$(cpu_ticks "$relay_pid") wal_t=$(cpu_ticks "$wal") b1=$(cpu_ticks "$beam_pid")
  read -r m_busy1 _total < <(machine_ticks)
  finish_drain "$cd/drain.out" 10
  line=$DRAIN_LINE
  check_body "$line" "$size"
  # the last confirms may come just after the last delivery
  local deadline=$((SECONDS + 15)) confirmed
  until confirmed=$(published) && [ "$confirmed" -ge "$EVENTS" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { log "only $confirmed of $EVENTS confirmed 15s after the last delivery"; break; }
    sleep 0.1
  done
  local hwm
  hwm=$(vm_kib "$relay_pid" VmHWM)
  curl -s --max-time 5 "$METRICS_URL" >"$cd/metrics.txt" || true
  stop_relay
  log "relay done; broker ceiling after"
  ceiling "$CEILING_EVENTS" "$size" "$cd/broker-after.out"
  after=$CEILING

  local secs rate c_before c_after ceil beam_before beam_after others_before others_after
  secs=$(span "$t0" "$(kv "$line" last_unix_ns)")
  rate=$(calc "n / s" "n=$EVENTS" "s=$secs")
  read -r c_before _ beam_before others_before <<<"$before"
  read -r c_after _ beam_after others_after <<<"$after"
  ceil=$(calc "(a + b) / 2" "a=$c_before" "b=$c_after")
  record catchup "$cell" "$run" ceiling "$ceil"
  record catchup "$cell" "$run" ceiling_before "$c_before"
  record catchup "$cell" "$run" ceiling_after "$c_after"
  record catchup "$cell" "$run" rate "$rate"
  record catchup "$cell" "$run" seconds "$secs"
  record catchup "$cell" "$run" ratio "$(calc "r / c" "r=$rate" "c=$ceil")"
  record catchup "$cell" "$run" relay_us "$(ticks_us "$relay_t" "$EVENTS")"
  record catchup "$cell" "$run" relay_pct "$(ticks_pct "$relay_t" "$secs")"
  record catchup "$cell" "$run" wal_us "$(ticks_us "$wal_t" "$EVENTS")"
  record catchup "$cell" "$run" beam_relay_us "$(ticks_us $((b1 - b0)) "$EVENTS")"
  record catchup "$cell" "$run" beam_ceiling_us "$(calc "(a + b) / 2" "a=$beam_before" "b=$beam_after")"
  # what everything but RabbitMQ cost the machine per message: the relay, the walsender,
  # bench_drain, ... beside bench_broker publishing and consuming (CPU the broker could
  # not have: on two cores it is what separates the relay's rate from the ceiling)
  record catchup "$cell" "$run" others_relay_us "$(ticks_us $((m_busy1 - m_busy0 - b1 + b0)) "$EVENTS")"
  record catchup "$cell" "$run" others_ceiling_us "$(calc "(a + b) / 2" "a=$others_before" "b=$others_after")"
  record catchup "$cell" "$run" hwm_mib "$(calc "k / 1024" "k=${hwm:-0}")"
  record catchup "$cell" "$run" duplicates "$(kv "$line" duplicates)"
  # the machine's CPU besides relay, walsender and RabbitMQ (bench_drain, this script,
  # PostgreSQL's other processes, other users of the machine): how quiet the run was
  record catchup "$cell" "$run" other_pct "$(ticks_pct $((m_busy1 - m_busy0 - relay_t - wal_t - b1 + b0)) "$secs")"
  record catchup "$cell" "$run" start_to_first_s "$(span "$t0" "$(kv "$line" first_unix_ns)")"
  {
    printf 'catch-up %s run %s: t0 -> last id %ss, %s events/s; relay %s ticks, walsender %s, beam %s (hz %s), VmHWM %s kB, confirmed %s\n' \
      "$(cell_label "$cell")" "$run" "$secs" "$rate" "$relay_t" "$wal_t" $((b1 - b0)) "$hz" "$hwm" "$confirmed"
    printf '  %s\n' "$line" "$(grep '^bench_broker count=' "$cd/broker-before.out")" "$(grep '^bench_broker count=' "$cd/broker-after.out")"
  } >>"$RUNLOG"
  log "$(cell_label "$cell"): relay $(calc 'sprintf("%.0f", r)' "r=$rate") events/s in ${secs}s, ceiling $c_before / $c_after msgs/s, ratio $(calc 'sprintf("%.2f", r / c)' "r=$rate" "c=$ceil")"
}

# ------------------------------------------------------------------ 2. steady
steady_run() {
  local run=$1 cell="$STEADY_RATE/s"
  local cd="$DIR/steady/run$run"
  local total=$((STEADY_RATE * STEADY_SECONDS))
  mkdir -p "$cd"
  RELAY_LOG="$cd/relay.log"
  say "steady: $STEADY_WRITERS writers, $STEADY_RATE events/s for ${STEADY_SECONDS}s, $STEADY_SIZE B, 1/txn; run $run of $RUNS"
  fresh_db "$cd"
  # the queue, declared and empty
  timeout 30 "$BENCH_BROKER" --url "$AMQP_URL" --exchange "$EXCHANGE" --queue "$QUEUE" --count 0 --purge --timeout 20 >/dev/null
  created_broker=1
  start_relay "$RELAY_LOG"
  wait_ready "$RELAY_LOG"
  local wal
  walsender "$RELAY_LOG"
  wal=$WAL_PID
  start_drain "$total" "$cd/drain.out" --latency
  # idle: streaming, nothing to do
  local i0 i1 it0 it1
  sleep 0.5
  it0=$(now_ns) i0=$(cpu_ticks "$relay_pid")
  sleep "$IDLE_SECONDS"
  it1=$(now_ns) i1=$(cpu_ticks "$relay_pid")

  "$BENCH_WRITER" --url "$BENCH_URL" --writers "$STEADY_WRITERS" --rate "$STEADY_RATE" --seconds "$STEADY_SECONDS" \
    --size "$STEADY_SIZE" --timeout $((STEADY_SECONDS + 60)) </dev/null >"$cd/writer.out" 2>&1 &
  writer_pid=$!
  wait_line "$cd/writer.out" '^started' "$writer_pid" 30 || { show_tail "$cd/writer.out"; die "bench_writer did not start within 30s"; }
  local ta r0 w0 tb r1 w1 rc=0 m0 m1 _total
  ta=$(now_ns) r0=$(cpu_ticks "$relay_pid") w0=$(cpu_ticks "$wal")
  read -r m0 _total < <(machine_ticks)
  wait_exit "$writer_pid" $((STEADY_SECONDS + 60)) 0.02 || { show_tail "$cd/writer.out"; die "bench_writer did not finish"; }
  tb=$(now_ns) r1=$(cpu_ticks "$relay_pid") w1=$(cpu_ticks "$wal")
  read -r m1 _total < <(machine_ticks)
  wait "$writer_pid" || rc=$?
  writer_pid=""
  [ "$rc" = 0 ] || { show_tail "$cd/writer.out"; die "bench_writer failed (status $rc)"; }
  local wline line
  wline=$(grep '^bench_writer ' "$cd/writer.out")
  finish_drain "$cd/drain.out" 30
  line=$DRAIN_LINE
  check_body "$line" "$STEADY_SIZE"
  local rss hwm
  rss=$(vm_kib "$relay_pid" VmRSS) hwm=$(vm_kib "$relay_pid" VmHWM)
  curl -s --max-time 5 "$METRICS_URL" >"$cd/metrics.txt" || true
  stop_relay

  local committed window
  committed=$(kv "$wline" committed)
  window=$(span "$ta" "$tb")
  record steady "$cell" "$run" p50_ms "$(kv "$line" latency_p50_ms)"
  record steady "$cell" "$run" p99_ms "$(kv "$line" latency_p99_ms)"
  record steady "$cell" "$run" max_ms "$(kv "$line" latency_max_ms)"
  record steady "$cell" "$run" relay_pct "$(ticks_pct $((r1 - r0)) "$window")"
  record steady "$cell" "$run" relay_us "$(ticks_us $((r1 - r0)) "$committed")"
  record steady "$cell" "$run" wal_pct "$(ticks_pct $((w1 - w0)) "$window")"
  record steady "$cell" "$run" wal_us "$(ticks_us $((w1 - w0)) "$committed")"
  record steady "$cell" "$run" idle_pct "$(ticks_pct $((i1 - i0)) "$(span "$it0" "$it1")")"
  record steady "$cell" "$run" rss_mib "$(calc "k / 1024" "k=${rss:-0}")"
  record steady "$cell" "$run" hwm_mib "$(calc "k / 1024" "k=${hwm:-0}")"
  record steady "$cell" "$run" duplicates "$(kv "$line" duplicates)"
  record steady "$cell" "$run" machine_pct "$(ticks_pct $((m1 - m0)) "$window")"
  record steady "$cell" "$run" writer_rate "$(kv "$wline" achieved_rate)"
  {
    printf 'steady run %s: window %ss, relay %s ticks, walsender %s, idle %s ticks in %ss (hz %s), VmRSS %s kB, VmHWM %s kB\n' \
      "$run" "$window" $((r1 - r0)) $((w1 - w0)) $((i1 - i0)) "$(span "$it0" "$it1")" "$hz" "$rss" "$hwm"
    printf '  %s\n' "$wline" "$line"
  } >>"$RUNLOG"
  log "steady: p50 $(kv "$line" latency_p50_ms) ms, p99 $(kv "$line" latency_p99_ms) ms, relay $(calc 'sprintf("%.1f", 100 * t / hz / s)' "t=$((r1 - r0))" "hz=$hz" "s=$window") % of a core"
}

# ------------------------------------------------------------------ 3. message shape
# what the message's parts cost the broker: bench_broker's ceiling with the relay's
# shape, without the x-outbox-* headers, and plain (persistent, message_id only, not
# mandatory), one after the other, per size; $1 run
shape_run() {
  local run=$1 size shape rate beam d
  for size in $SIZES; do
    d="$DIR/shape/$size/run$run"
    mkdir -p "$d"
    for shape in relay no-headers plain; do
      ceiling "$CEILING_EVENTS" "$size" "$d/$shape.out" "$shape"
      read -r rate _ beam _ <<<"$CEILING"
      record shape "$size/$shape" "$run" rate "$rate"
      record shape "$size/$shape" "$run" beam_us "$beam"
      log "shape $size B $shape: $rate msgs/s, RabbitMQ $beam µs/msg"
    done
  done
}

# ------------------------------------------------------------------ 4. the table
cell_label() {
  local size=${1%/*} batch=${1#*/}
  if [ "$size" = 1024 ]; then size="1 KiB"; else size="$size B"; fi
  printf '%s, %s/txn' "$size" "$batch"
}
# "MED MIN MAX N" of one figure over the runs
fig() { awk -F'\t' -v s="$1" -v c="$2" -v m="$3" '$1 == s && $2 == c && $4 == m && $5 != "n/a" { print $5 }' "$FIGS" | stats; }
# a figure as "median (min-max)" with $4 decimals (just the value for one run)
show() {
  local med min max n
  read -r med min max n < <(fig "$1" "$2" "$3")
  [ "$n" != 0 ] || { echo n/a; return; }
  if [ "$n" = 1 ]; then printf "%.${4}f" "$med"; else printf "%.${4}f (%.${4}f–%.${4}f)" "$med" "$min" "$max"; fi
}
med() { local m _r; read -r m _r < <(fig "$1" "$2" "$3"); echo "$m"; }
# met / not met: median of the figure $1 $2 $3, compared by $4 (<= or >=) with $5
judge() {
  local m
  m=$(med "$1" "$2" "$3")
  [ "$m" != n/a ] || { echo "n/a"; return; }
  if awk -v m="$m" -v op="$4" -v t="$5" 'BEGIN { exit !((op == "<=") ? m <= t : m >= t) }'; then echo met; else echo "not met"; fi
}
row() {
  local line
  line="$(pad "$1" 30) $(pad "$2" 34) $(pad "$3" 28) $(pad "$4" 18) $5"
  printf '%s\n' "${line%"${line##*[! ]}"}"
  case "$5" in met) MET=$((MET + 1)) ;; "not met") NOT_MET=$((NOT_MET + 1)) ;; esac
}

report() {
  MET=0 NOT_MET=0
  local size batch cell label c
  printf 'command: %s\n' "$COMMAND"
  printf '  relay %s; %s cores, load average at start %s; PostgreSQL %s; %s\n' "$REVISION" "$(nproc)" "$LOAD_START" "$PG_VERSION" "$(date -u +%Y-%m-%dT%H:%MZ)"
  printf '  median (min–max) of %s run(s); every run'"'"'s figures in %s\n' "$RUNS" "$FIGS"
  if [[ " $PHASES " == *" catchup "* ]]; then
    printf '\ncatch-up of a %s-event backlog (slot before the backlog, relay started after; t0 = relay start -> last distinct id); ceiling = bench_broker with the relay'"'"'s message shape, %s messages, before and after; CPU from /proc in ticks of 1/%s s, so µs/event is within %s\n' \
      "$EVENTS" "$CEILING_EVENTS" "$hz" "$(calc 'sprintf("%.2g", 1e6 / hz / n)' "hz=$hz" "n=$EVENTS")"
    for size in $SIZES; do
      for batch in $BATCHES; do
        cell="$size/$batch"
        label="catch-up $(cell_label "$cell")"
        row "$label" "broker ceiling, msgs/s (mean)" "$(show catchup "$cell" ceiling 0)" "" ""
        row "$label" "  before / after" "$(show catchup "$cell" ceiling_before 0) / $(show catchup "$cell" ceiling_after 0)" "" ""
        row "$label" "relay, events/s" "$(show catchup "$cell" rate 0)" "" ""
        row "$label" "ratio relay / ceiling" "$(show catchup "$cell" ratio 2)" ">= 0.95" "$(judge catchup "$cell" ratio '>=' 0.95)"
        row "$label" "relay CPU, µs/event" "$(show catchup "$cell" relay_us 1)" "<= 5" "$(judge catchup "$cell" relay_us '<=' 5)"
        row "$label" "  relay CPU, % of one core" "$(show catchup "$cell" relay_pct 0)" "" "reported"
        row "$label" "walsender CPU, µs/event" "$(show catchup "$cell" wal_us 1)" "" "reported"
        c=$(calc 'sprintf("%.2fx", r / b)' "r=$(med catchup "$cell" beam_relay_us)" "b=$(med catchup "$cell" beam_ceiling_us)")
        row "$label" "RabbitMQ µs/msg: relay | alone" "$(show catchup "$cell" beam_relay_us 0) | $(show catchup "$cell" beam_ceiling_us 0)" "" \
          "reported (relay/alone $c)"
        row "$label" "others' CPU, µs/msg: relay | alone" "$(show catchup "$cell" others_relay_us 0) | $(show catchup "$cell" others_ceiling_us 0)" "" "reported"
        row "$label" "relay peak RSS (VmHWM), MiB" "$(show catchup "$cell" hwm_mib 1)" "<= 16" "$(judge catchup "$cell" hwm_mib '<=' 16)"
        row "$label" "duplicates" "$(show catchup "$cell" duplicates 0)" "0" "$(judge catchup "$cell" duplicates '<=' 0)"
        row "$label" "  relay start -> first id, s" "$(show catchup "$cell" start_to_first_s 2)" "" ""
        row "$label" "  rest of the machine, % of 1 core" "$(show catchup "$cell" other_pct 0)" "" ""
      done
    done
  fi
  if [[ " $PHASES " == *" steady "* ]]; then
    cell="$STEADY_RATE/s"
    label="steady $STEADY_RATE/s"
    printf '\nsteady: %s writers, %s events/s together for %ss, 1 event per transaction, %s B payloads; relay running and caught up\n' \
      "$STEADY_WRITERS" "$STEADY_RATE" "$STEADY_SECONDS" "$STEADY_SIZE"
    row "$label" "commit-to-consume p50, ms" "$(show steady "$cell" p50_ms 2)" "<= 2" "$(judge steady "$cell" p50_ms '<=' 2)"
    row "$label" "commit-to-consume p99, ms" "$(show steady "$cell" p99_ms 2)" "" "reported"
    row "$label" "commit-to-consume max, ms" "$(show steady "$cell" max_ms 1)" "" "reported"
    row "$label" "relay CPU, % of one core" "$(show steady "$cell" relay_pct 1)" "<= 2" "$(judge steady "$cell" relay_pct '<=' 2)"
    row "$label" "relay CPU, µs/event" "$(show steady "$cell" relay_us 0)" "" "reported"
    row "$label" "walsender CPU, % of one core" "$(show steady "$cell" wal_pct 1)" "" "reported"
    row "$label" "walsender CPU, µs/event" "$(show steady "$cell" wal_us 0)" "" "reported"
    row "$label" "relay RSS at the end, MiB" "$(show steady "$cell" rss_mib 1)" "" "reported"
    row "$label" "relay peak RSS (VmHWM), MiB" "$(show steady "$cell" hwm_mib 1)" "<= 16" "$(judge steady "$cell" hwm_mib '<=' 16)"
    row "$label" "duplicates" "$(show steady "$cell" duplicates 0)" "0" "$(judge steady "$cell" duplicates '<=' 0)"
    row "$label" "  writers' rate, events/s" "$(show steady "$cell" writer_rate 0)" "" ""
    row "$label" "  relay idle CPU, % of one core" "$(show steady "$cell" idle_pct 2)" "" ""
    row "$label" "  whole machine, % of one core" "$(show steady "$cell" machine_pct 0)" "" ""
  fi
  if [[ " $PHASES " == *" shape "* ]]; then
    printf '\nmessage shape: the broker alone (bench_broker, %s messages, consumer attached), one shape after the other\n' "$CEILING_EVENTS"
    for size in $SIZES; do
      for shape in relay no-headers plain; do
        label="shape $size B, $shape"
        row "$label" "broker ceiling, msgs/s" "$(show shape "$size/$shape" rate 0)" "" "reported"
        row "$label" "RabbitMQ µs/msg" "$(show shape "$size/$shape" beam_us 0)" "" "reported"
      done
    done
  fi
  # bench_drain, this script and PostgreSQL's other processes take about a third of a
  # core during a catch-up; much more means other work shared the machine
  local busy
  busy=$(awk -F'\t' '$1 == "catchup" && $4 == "other_pct" { print $5 }' "$FIGS" | stats | cut -d' ' -f1)
  if [ "$busy" != n/a ] && awk -v b="$busy" 'BEGIN { exit !(b > 50) }'; then
    printf '\nnote: besides relay, walsender and RabbitMQ, the machine used %.0f%% of a core during the catch-ups (median; about 30%% is bench_drain, this script and PostgreSQL): other work shared it, so the figures are disturbed\n' "$busy"
  fi
  printf '\ntargets met: %s of %s; %s to run\n' "$MET" $((MET + NOT_MET)) "$(calc 'int(s / 60) "m" s % 60 "s"' "s=$((SECONDS - START))" | tr -d ' ')"
}

# ------------------------------------------------------------------ main
START=$SECONDS
start_services
build
mkdir -p "$DIR"
rm -rf "$DIR/catchup" "$DIR/steady" "$DIR/shape"
: >"$FIGS"
: >"$RUNLOG"
trap cleanup EXIT
write_config
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# the relay's code: the last commit that changed it (and whether the work tree differs)
REVISION="$(git -C "$REPO" log -1 --format=%h -- src Cargo.toml Cargo.lock 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REVISION="$REVISION with uncommitted changes"
REVISION="$REVISION (checkout $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown))"
[ -z "${BENCH_RELAY:-}" ] || REVISION="BENCH_RELAY=$BENCH_RELAY (not this checkout's build)"
PG_VERSION=$(psql_su -tA -c 'SHOW server_version')
if [[ " $PHASES " == *" catchup "* ]]; then
  for ((run = 1; run <= RUNS; run++)); do
    for size in $SIZES; do
      for batch in $BATCHES; do catchup_cell "$run" "$size" "$batch"; done
    done
  done
fi
if [[ " $PHASES " == *" steady "* ]]; then
  for ((run = 1; run <= RUNS; run++)); do steady_run "$run"; done
fi
if [[ " $PHASES " == *" shape "* ]]; then
  for ((run = 1; run <= RUNS; run++)); do shape_run "$run"; done
fi
say "Results"
report | tee "$DIR/results.txt"
