#!/usr/bin/env bash
# The relay against a three-node RabbitMQ cluster with a quorum queue (issue 12): its
# catch-up rate as a ratio to that cluster's own ceiling.
#
#   scripts/bench-cluster.sh [--quick] [events]
#
#   events    backlog per run (default 100000; BENCH_EVENTS too)
#   --quick   for development: 20000 events, 1 run
#
# 1. scripts/rabbit-cluster.sh up: three RabbitMQ nodes on 127.0.0.1 (node 1 first, 2 and
#    3 joined to it); PostgreSQL from scripts/services.sh (the one $OUTBOX_SERVICES_SH
#    names when set, e.g. after `eval "$(scripts/services.sh env)"`, else this checkout's;
#    only `up pg`). On node 1: a durable topic exchange and a durable quorum queue
#    (x-queue-type=quorum) `bench.cluster` bound with '#'; the script checks that the
#    queue has all three nodes as members (its leader on node 1, where it is declared).
#    Publisher confirms on a quorum queue come once a majority of its members (2 of 3)
#    has the message in its log on disk (fsync'd): that is part of what is measured.
# 2. BENCH_RUNS times (default 3; --quick 1), like a catch-up cell of scripts/bench.sh:
#    a. a fresh database `bench_cluster` (`outbox-relay setup`, the default outbox table,
#       autovacuum off for it) and a backlog of `events` rows, one event per transaction,
#       BENCH_SIZE-byte payloads (default 1024, the message body), inserted by one psql
#       session per core while the relay is not running, synchronous_commit off; then a
#       CHECKPOINT. Not measured;
#    b. the cluster's ceiling before: examples/bench_broker through node 1 publishes
#       BENCH_CEILING_EVENTS (default `events`) messages of the relay's exact shape with
#       that body to the quorum queue, confirms, window BENCH_WINDOW (default 1000, the
#       relay's max_in_flight), a consumer attached (through node 1);
#    c. the relay: examples/bench_drain consuming the quorum queue through node 1, then t0
#       and `outbox-relay run` with broker.url = the cluster's three URLs, node 1 first
#       (node_order "listed", the default; a single URL, node 1's, with a relay that does
#       not take a list: the table says which, and which node the relay was on);
#       rate = events / (t0 -> the last distinct message_id's arrival). CPU from
#       /proc/PID/stat (user + sys, all threads): the relay's whole life up to then, the
#       walsender's, and RabbitMQ's summed over the three nodes' beam.smp from t0; the
#       relay's peak RSS (VmHWM) once all are confirmed; then SIGTERM;
#    d. the ceiling after (b again). Ceiling = mean of before and after; ratio = relay
#       rate / ceiling, per run.
# 3. The table (median (min–max) over the runs), with the command and the machine's load
#    at the top, to stdout and BENCH_DIR/cluster-results.txt.
# 4. Cleanup (trap): what this script started, by pid; database and slot `bench_cluster`;
#    exchange and queue `bench.cluster`. The cluster and PostgreSQL stay running
#    (scripts/rabbit-cluster.sh down stops the cluster).
#
# On two cores, three RabbitMQ nodes, PostgreSQL, the relay and the consumer share the
# CPU, so the ceiling is a CPU-bound figure of this machine; the table reports what the
# machine spent besides RabbitMQ per message ("others' CPU"), in the relay's run and in
# the ceiling's, which is what separates the two.
#
# Duration once built, on the 2-core machine (2026-12-07, shared with other work, the
# cluster's ceiling 5,000-8,000 msgs/s): --quick 25 s, the default 3 minutes (the
# cluster's start adds 15-30 s when it is not running). Every wait is bounded:
# BENCH_TIMEOUT seconds per measured phase (default 60 + events/200).
#
# Files in BENCH_DIR (default target/bench): cluster-results.txt (the table),
# cluster-figures.tsv (every figure of every run), cluster-runs.txt (raw lines), and
# cluster/runN/ (relay.log, drain.out, broker-*.out, samples.txt, metrics.txt, ...).
# Other environment (optional): BENCH_RELAY (a relay binary to measure instead of this
# checkout's), BENCH_INSERT_SESSIONS, and rabbit-cluster.sh's OUTBOX_CLUSTER_* (ports,
# state dir). Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BENCH_TAG=bench-cluster
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
    *) [ -z "$ARG_EVENTS" ] || usage; ARG_EVENTS=$a ;;
  esac
done
if [ "$QUICK" = 1 ]; then q_events=20000 q_runs=1; else q_events=100000 q_runs=3; fi
EVENTS=${ARG_EVENTS:-${BENCH_EVENTS:-$q_events}}
RUNS=${BENCH_RUNS:-$q_runs}
CEILING_EVENTS=${BENCH_CEILING_EVENTS:-$EVENTS}
SIZE=${BENCH_SIZE:-1024}
WINDOW=${BENCH_WINDOW:-1000}
INSERT_SESSIONS=${BENCH_INSERT_SESSIONS:-$(nproc)}
PHASE_TIMEOUT=${BENCH_TIMEOUT:-$((60 + EVENTS / 200))}
for n in "$EVENTS" "$RUNS" "$CEILING_EVENTS" "$SIZE" "$WINDOW" "$INSERT_SESSIONS" "$PHASE_TIMEOUT"; do
  case "$n" in '' | *[!0-9]* | 0*) die "not a positive integer: '$n' (see the header of $0)" ;; esac
done
COMMAND="scripts/bench-cluster.sh${*:+ $*}"
for v in $(compgen -e BENCH_ | sort -r); do
  COMMAND="$v=${!v} $COMMAND"
done

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DIR=${BENCH_DIR:-$TARGET_DIR/bench}
EXCHANGE=bench.cluster
QUEUE=bench.cluster
SLOT=bench_cluster
DB=bench_cluster
FIGS="$DIR/cluster-figures.tsv"
RUNLOG="$DIR/cluster-runs.txt"
RESULTS="$DIR/cluster-results.txt"

relay_pid="" drain_pid="" fill_pids=()
created_db=0 created_broker=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  say "Cleanup"
  for p in "$drain_pid" "${fill_pids[@]}"; do
    [ -n "$p" ] && stop_pid "$p" "pid $p" 5
  done
  stop_relay
  if [ "$created_db" = 1 ]; then
    drop_slot_and_db || log "could not drop slot/database $DB (see above); drop them by hand"
  fi
  if [ "$created_broker" = 1 ]; then
    broker --count 0 --delete >/dev/null || log "could not delete exchange/queue $EXCHANGE on the cluster"
  fi
  log "the cluster and PostgreSQL are left running; stop the cluster with: scripts/rabbit-cluster.sh down"
  [ "$rc" = 0 ] || printf '[bench-cluster] failed (exit %s). Logs in %s\n' "$rc" "$DIR/cluster" >&2
  exit "$rc"
}
trap 'exit 130' INT
trap 'exit 143' TERM

psql_su() { PGOPTIONS="-c client_min_messages=warning" timeout 60 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_TEST_PG_URL" "$@"; }
psql_bench() { timeout 120 "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_URL" "$@"; }
# bench_broker on the quorum queue through node 1, options after
broker() {
  timeout $((PHASE_TIMEOUT + 30)) "$BENCH_BROKER" --url "$NODE1_URL" --exchange "$EXCHANGE" --queue "$QUEUE" \
    --queue-type quorum --timeout "$PHASE_TIMEOUT" "$@"
}
record() { printf '%s\t%s\t%s\n' "$@" >>"$FIGS"; } # run, name, value
# CPU ticks of the three nodes' beam.smp: "SUM T1 T2 T3"
beam_ticks() {
  local p t s=0 all=""
  for p in "${BEAM_PIDS[@]}"; do
    t=$(cpu_ticks "$p")
    s=$((s + t)) all="$all $t"
  done
  echo "$s$all"
}
load_now() { cut -d' ' -f1-3 /proc/loadavg; }

# ------------------------------------------------------------------ set-up
start_services() {
  say "PostgreSQL (services.sh up pg) and the RabbitMQ cluster (rabbit-cluster.sh up)"
  local services=${OUTBOX_SERVICES_SH:-$REPO/scripts/services.sh}
  "$services" up pg >/dev/null
  eval "$("$services" env)"
  PSQL="$OUTBOX_TEST_PG_BIN/psql"
  [ -x "$PSQL" ] || die "$PSQL not found (OUTBOX_TEST_PG_BIN)"
  PG_HOSTPORT=$(sed -E 's|^postgres://[^@]*@([^/]*)/.*$|\1|' <<<"$OUTBOX_TEST_PG_URL")
  BENCH_URL="postgres://relay:relay@$PG_HOSTPORT/$DB"

  scripts/rabbit-cluster.sh up >/dev/null
  eval "$(scripts/rabbit-cluster.sh env)"
  IFS=, read -ra CLUSTER_URLS <<<"$OUTBOX_BENCH_CLUSTER_URLS"
  IFS=, read -ra CLUSTER_NODES <<<"$OUTBOX_BENCH_CLUSTER_NODES"
  [ "${#CLUSTER_URLS[@]}" = 3 ] || die "rabbit-cluster.sh env gave ${#CLUSTER_URLS[@]} URLs, not 3"
  NODE1_URL=${CLUSTER_URLS[0]}
  NODE1_HOSTPORT=$(sed -E 's|^amqp://([^@]*@)?([^/]*).*$|\2|' <<<"$NODE1_URL")
  BEAM_PIDS=()
  local n p
  for n in 1 2 3; do
    p=$(tr -dc '0-9' <"$OUTBOX_BENCH_CLUSTER_DIR/node$n/rabbit.pid" 2>/dev/null || true)
    [ -r "/proc/${p:-none}/stat" ] || die "no running beam.smp in $OUTBOX_BENCH_CLUSTER_DIR/node$n/rabbit.pid"
    BEAM_PIDS+=("$p")
  done
  hz=$(getconf CLK_TCK)
}

build() {
  say "Build (cargo build --release --bin outbox-relay --examples)"
  cargo build --release --bin outbox-relay --examples
  RELAY="${BENCH_RELAY:-$TARGET_DIR/release/outbox-relay}"
  BENCH_BROKER="$TARGET_DIR/release/examples/bench_broker"
  BENCH_DRAIN="$TARGET_DIR/release/examples/bench_drain"
  local b
  for b in "$RELAY" "$BENCH_BROKER" "$BENCH_DRAIN"; do [ -x "$b" ] || die "$b was not built"; done
}

# the relay's config in $1, with broker.url = $2 (TOML: a string or a list)
config_text() {
  cat <<EOF
# written by scripts/bench-cluster.sh
[source]
url = "$BENCH_URL"
slot = "$SLOT"
publication = "$SLOT"
create_slot = false
status_interval = "1s"

[broker]
url = $1
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
}

# CONFIG with the three URLs as a list when the relay takes one (`setup --print-sql`
# validates a config without connecting), else node 1's URL alone; BROKER_URLS says which
write_config() {
  free_port 19389 19489
  METRICS_URL="http://127.0.0.1:$PORT/metrics"
  CONFIG="$DIR/cluster/relay.toml"
  local list
  list="[\"${CLUSTER_URLS[0]}\", \"${CLUSTER_URLS[1]}\", \"${CLUSTER_URLS[2]}\"]"
  config_text "$list" >"$CONFIG"
  if "$RELAY" setup --config "$CONFIG" --print-sql >/dev/null 2>"$DIR/cluster/config-check.log"; then
    BROKER_URLS="the three nodes' URLs, node 1 first"
  else
    config_text "\"$NODE1_URL\"" >"$CONFIG"
    "$RELAY" setup --config "$CONFIG" --print-sql >/dev/null 2>>"$DIR/cluster/config-check.log" ||
      { show_tail "$DIR/cluster/config-check.log"; die "the relay rejects the config $CONFIG"; }
    BROKER_URLS="node 1's URL only (this relay takes no list: $(grep -m1 -o 'broker\.url:.*' "$DIR/cluster/config-check.log" | cut -c1-100))"
  fi
  log "broker.url: $BROKER_URLS"
  outbox_ddl "$RELAY" "$CONFIG" "$DIR/cluster/outbox.sql"
  # the same payload and backlog as scripts/bench.sh (bench-lib.sh)
  bench_backlog_sql >>"$DIR/cluster/outbox.sql"
}

# the exchange and the quorum queue, declared through node 1 and empty; checks that the
# queue is a quorum queue on all three nodes; sets QUEUE_LEADER, QUEUE_MEMBERS
declare_queue() {
  created_broker=1
  broker --count 0 --purge >"$DIR/cluster/declare.out" 2>&1 ||
    { show_tail "$DIR/cluster/declare.out"; die "could not declare $EXCHANGE / quorum queue $QUEUE through node 1"; }
  local line
  line=$(scripts/rabbit-cluster.sh ctl 1 -q list_queues name type leader members --no-table-headers 2>&1 |
    awk -v q="$QUEUE" '$1 == q') || true
  [ "$(awk '{ print $2 }' <<<"$line")" = quorum ] || die "queue $QUEUE is not a quorum queue: '$line'"
  QUEUE_LEADER=$(awk '{ print $3 }' <<<"$line")
  QUEUE_MEMBERS=$(awk '{ $1 = $2 = $3 = ""; print }' <<<"$line" | tr -d '[],' | xargs)
  local n
  for n in "${CLUSTER_NODES[@]}"; do
    grep -qw -- "$n" <<<"$QUEUE_MEMBERS" || die "quorum queue $QUEUE is not on $n (members: $QUEUE_MEMBERS)"
  done
  log "quorum queue $QUEUE: leader $QUEUE_LEADER, members $QUEUE_MEMBERS"
}

fresh_db() {
  drop_slot_and_db >/dev/null
  created_db=1
  psql_su -c "CREATE DATABASE $DB OWNER relay" >/dev/null
  psql_bench -f "$DIR/cluster/outbox.sql" >/dev/null
  timeout 60 "$RELAY" setup --config "$CONFIG" >"$1/setup.log" 2>&1 || { show_tail "$1/setup.log"; die "outbox-relay setup failed"; }
}

# purge the queue (a consumer of a quorum queue that goes away leaves the deliveries
# whose auto-ack had not been applied yet back in the queue: a few hundred at most);
# $1 names the step in the run log
empty_queue() {
  local out
  out=$(broker --count 0 --purge 2>&1) || { printf '%s\n' "$out" >&2; die "could not purge $QUEUE"; }
  local n
  n=$(sed -n 's/^bench_broker purged=\([0-9]*\).*/\1/p' <<<"$out")
  [ "${n:-0}" = 0 ] || printf '  purged %s message(s) left in %s before %s\n' "$n" "$QUEUE" "$1" >>"$RUNLOG"
}

# the cluster's ceiling: bench_broker, CEILING_EVENTS messages, consumer attached; output
# $1; sets CEILING to "RATE BEAM_US_PER_MSG OTHERS_US_PER_MSG"
ceiling() {
  local out=$1 b0 b1 m0 m1 _t line
  empty_queue "the ceiling ($(basename "$out" .out))"
  read -r m0 _t < <(machine_ticks)
  read -r b0 _t <<<"$(beam_ticks)"
  broker --count "$CEILING_EVENTS" --body-size "$SIZE" --window "$WINDOW" --consume --purge >"$out" 2>&1 ||
    { show_tail "$out"; die "bench_broker failed"; }
  read -r b1 _t <<<"$(beam_ticks)"
  read -r m1 _t < <(machine_ticks)
  line=$(grep '^bench_broker count=' "$out")
  [ "$(kv "$line" body_bytes)" = "$SIZE" ] || log "bench_broker's body is $(kv "$line" body_bytes) bytes, not $SIZE"
  [ "$(kv "$line" nacked) $(kv "$line" returned)" = "0 0" ] || log "WARNING: bench_broker: $(kv "$line" nacked) nacked, $(kv "$line" returned) returned"
  [ "$(kv "$line" queue_depth_before)" = 0 ] || log "WARNING: $QUEUE held $(kv "$line" queue_depth_before) messages when bench_broker started"
  CEILING="$(kv "$line" msgs_per_s) $(ticks_us $((b1 - b0)) "$CEILING_EVENTS") $(ticks_us $((m1 - m0 - b1 + b0)) "$CEILING_EVENTS")"
}

stop_relay() {
  [ -n "$relay_pid" ] || return 0
  stop_pid "$relay_pid" "the relay" 20
  local relay_rc=0
  wait "$relay_pid" 2>/dev/null || relay_rc=$?
  [ "$relay_rc" = 0 ] || log "the relay (pid $relay_pid) exited with status $relay_rc"
  relay_pid=""
}

# until bench_drain exits, a sample every ~1 s (CPU of relay, the three nodes, walsender;
# the relay's confirmed and in-flight counts); $1 file, $2 t0, $3 walsender pid
sample_until_drained() {
  local file=$1 t0=$2 wal=$3 deadline=$((SECONDS + PHASE_TIMEOUT)) ns r w p f
  local pns=$t0 pr=0 pw pb b _
  read -r pb _ <<<"$(beam_ticks)"
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
    ns=$(now_ns) r=$(cpu_ticks "$relay_pid") w=$(cpu_ticks "$wal")
    read -r b _ <<<"$(beam_ticks)"
    awk -v dt="$((ns - pns))" -v r="$((r - pr))" -v b="$((b - pb))" -v w="$((w - pw))" -v hz="$hz" -v t="$(span "$t0" "$ns")" \
      -v p="$p" -v f="$f" 'BEGIN { s = dt / 1e9; if (s > 0) printf "  t=%6.2fs  cpu: relay %4.0f%%  rabbit x3 %4.0f%%  walsender %4.0f%%   relay: confirmed %7d  in_flight %4d\n", t, 100*r/hz/s, 100*b/hz/s, 100*w/hz/s, p, f }' >>"$file"
    pns=$ns pr=$r pw=$w pb=$b
  done
}

# ------------------------------------------------------------------ one run
run_once() {
  local run=$1 rd="$DIR/cluster/run$1"
  mkdir -p "$rd"
  RELAY_LOG="$rd/relay.log"
  say "run $run of $RUNS: backlog of $EVENTS events, 1 per transaction, $SIZE B"
  fresh_db "$rd"
  local t_fill=$SECONDS
  fill_backlog "$EVENTS" 1 "$SIZE" "$rd/fill.log"
  log "backlog inserted in $((SECONDS - t_fill))s; the cluster's ceiling before"
  local before after
  ceiling "$rd/broker-before.out"
  before=$CEILING
  log "ceiling before: ${before%% *} msgs/s; the relay"

  empty_queue "the relay's run"
  "$BENCH_DRAIN" --url "$NODE1_URL" --queue "$QUEUE" --count "$EVENTS" --timeout $((PHASE_TIMEOUT + 30)) --ready-line \
    </dev/null >"$rd/drain.out" 2>&1 &
  drain_pid=$!
  wait_line "$rd/drain.out" '^ready' "$drain_pid" 20 || { show_tail "$rd/drain.out"; die "bench_drain was not consuming within 20s"; }
  local b0 bs0 t0 wal m0 m1 _t
  read -r m0 _t < <(machine_ticks)
  bs0=$(beam_ticks)
  read -r b0 _t <<<"$bs0"
  t0=$(now_ns)
  start_relay "$RELAY_LOG"
  walsender "$RELAY_LOG"
  wal=$WAL_PID
  sample_until_drained "$rd/samples.txt" "$t0" "$wal"
  local relay_t wal_t b1 bs1
  relay_t=$(cpu_ticks "$relay_pid") wal_t=$(cpu_ticks "$wal")
  bs1=$(beam_ticks)
  read -r b1 _t <<<"$bs1"
  read -r m1 _t < <(machine_ticks)
  local rc=0 line
  wait_exit "$drain_pid" 10 || { show_tail "$rd/drain.out"; die "bench_drain did not finish"; }
  wait "$drain_pid" || rc=$?
  drain_pid=""
  line=$(grep '^bench_drain ' "$rd/drain.out" || true)
  [ -n "$line" ] || { show_tail "$rd/drain.out"; die "bench_drain printed no result"; }
  [ "$rc" = 0 ] || { show_tail "$rd/drain.out"; die "bench_drain timed out: $(kv "$line" distinct) distinct ids arrived"; }
  [ "$(kv "$line" depth_at_start)" = 0 ] || log "WARNING: $QUEUE held $(kv "$line" depth_at_start) messages when bench_drain started"
  [ "$(kv "$line" body_min) $(kv "$line" body_max)" = "$SIZE $SIZE" ] ||
    log "WARNING: the relay's bodies were $(kv "$line" body_min)-$(kv "$line" body_max) bytes, not $SIZE"
  # the last confirms may come just after the last delivery
  local deadline=$((SECONDS + 15)) confirmed
  until confirmed=$(published) && [ "$confirmed" -ge "$EVENTS" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { log "only $confirmed of $EVENTS confirmed 15s after the last delivery"; break; }
    sleep 0.1
  done
  local hwm
  hwm=$(vm_kib "$relay_pid" VmHWM)
  curl -s --max-time 5 "$METRICS_URL" >"$rd/metrics.txt" || true
  # the node the relay published through (outbox_relay_broker_node{node="host:port"} 1;
  # absent from a relay that takes a single URL)
  local on_node
  on_node=$(sed -n 's/^outbox_relay_broker_node{node="\([^"]*\)"} 1$/\1/p' "$rd/metrics.txt" | head -n1)
  if [ -n "$on_node" ]; then
    printf '  the relay was on %s (outbox_relay_broker_node)\n' "$on_node" >>"$RUNLOG"
    [ "$on_node" = "$NODE1_HOSTPORT" ] || log "WARNING: the relay published through $on_node, not node 1 ($NODE1_HOSTPORT)"
  fi
  stop_relay
  log "relay done; the cluster's ceiling after"
  ceiling "$rd/broker-after.out"
  after=$CEILING

  local secs rate c_before c_after ceil beam_before beam_after others_before others_after
  secs=$(span "$t0" "$(kv "$line" last_unix_ns)")
  rate=$(calc "n / s" "n=$EVENTS" "s=$secs")
  read -r c_before beam_before others_before <<<"$before"
  read -r c_after beam_after others_after <<<"$after"
  ceil=$(calc "(a + b) / 2" "a=$c_before" "b=$c_after")
  record "$run" ceiling "$ceil"
  record "$run" ceiling_before "$c_before"
  record "$run" ceiling_after "$c_after"
  record "$run" rate "$rate"
  record "$run" seconds "$secs"
  record "$run" ratio "$(calc "r / c" "r=$rate" "c=$ceil")"
  record "$run" relay_us "$(ticks_us "$relay_t" "$EVENTS")"
  record "$run" relay_pct "$(ticks_pct "$relay_t" "$secs")"
  record "$run" wal_us "$(ticks_us "$wal_t" "$EVENTS")"
  record "$run" hwm_mib "$(calc "k / 1024" "k=${hwm:-0}")"
  record "$run" beam_relay_us "$(ticks_us $((b1 - b0)) "$EVENTS")"
  local i n0 n1
  for i in 1 2 3; do
    n0=$(cut -d' ' -f$((i + 1)) <<<"$bs0") n1=$(cut -d' ' -f$((i + 1)) <<<"$bs1")
    record "$run" "beam${i}_relay_us" "$(ticks_us $((n1 - n0)) "$EVENTS")"
  done
  record "$run" beam_relay_pct "$(ticks_pct $((b1 - b0)) "$secs")"
  record "$run" beam_ceiling_us "$(calc "(a + b) / 2" "a=$beam_before" "b=$beam_after")"
  record "$run" others_relay_us "$(ticks_us $((m1 - m0 - b1 + b0)) "$EVENTS")"
  record "$run" others_ceiling_us "$(calc "(a + b) / 2" "a=$others_before" "b=$others_after")"
  record "$run" machine_pct "$(ticks_pct $((m1 - m0)) "$secs")"
  # the machine besides relay, walsender and RabbitMQ (bench_drain, this script,
  # PostgreSQL's other processes, other users): how quiet the run was
  record "$run" other_pct "$(ticks_pct $((m1 - m0 - relay_t - wal_t - b1 + b0)) "$secs")"
  record "$run" duplicates "$(kv "$line" duplicates)"
  record "$run" start_to_first_s "$(span "$t0" "$(kv "$line" first_unix_ns)")"
  {
    printf 'run %s: t0 -> last id %ss, %s events/s; relay %s ticks, walsender %s, beam x3 %s (%s -> %s) (hz %s), VmHWM %s kB, confirmed %s, load %s\n' \
      "$run" "$secs" "$rate" "$relay_t" "$wal_t" $((b1 - b0)) "$bs0" "$bs1" "$hz" "$hwm" "$confirmed" "$(load_now)"
    printf '  %s\n' "$line" "$(grep '^bench_broker count=' "$rd/broker-before.out")" "$(grep '^bench_broker count=' "$rd/broker-after.out")"
  } >>"$RUNLOG"
  log "run $run: relay $(calc 'sprintf("%.0f", r)' "r=$rate") events/s in ${secs}s, ceiling $c_before / $c_after msgs/s, ratio $(calc 'sprintf("%.2f", r / c)' "r=$rate" "c=$ceil")"
}

# ------------------------------------------------------------------ the table
fig() { awk -F'\t' -v m="$1" '$2 == m && $3 != "n/a" { print $3 }' "$FIGS" | stats; }
# median (min–max) with $2 decimals; the value alone for one run
show() {
  local med min max n
  read -r med min max n < <(fig "$1")
  [ "$n" != 0 ] || { echo n/a; return; }
  if [ "$n" = 1 ]; then printf "%.${2}f" "$med"; else printf "%.${2}f (%.${2}f–%.${2}f)" "$med" "$min" "$max"; fi
}
med() { local m _r; read -r m _r < <(fig "$1"); echo "$m"; }
row() { printf '%s %s\n' "$(pad "$1" 46)" "$2"; }

report() {
  printf 'command: %s\n' "$COMMAND"
  printf '  relay %s; %s cores; load average at start %s, at the end %s; PostgreSQL %s; RabbitMQ %s; %s\n' \
    "$REVISION" "$(nproc)" "$LOAD_START" "$(load_now)" "$PG_VERSION" "$RABBIT_VERSION" "$(date -u +%Y-%m-%dT%H:%MZ)"
  printf '  median (min–max) of %s run(s); every run'"'"'s figures in %s\n' "$RUNS" "$FIGS"
  printf '\ncluster: %s; quorum queue %s (durable, x-queue-type=quorum), leader %s, members %s\n' \
    "$OUTBOX_BENCH_CLUSTER_NODES" "$QUEUE" "$QUEUE_LEADER" "$QUEUE_MEMBERS"
  local on
  on=$(sed -n 's/^  the relay was on \([^ ]*\) .*/\1/p' "$RUNLOG" | sort -u | paste -sd ' ')
  printf 'relay broker.url: %s; published through %s\n' "$BROKER_URLS" "${on:-node 1 (its only URL)}"
  printf 'catch-up of a %s-event backlog, 1 event per transaction, %s B payloads (t0 = relay start -> last distinct id at bench_drain, through node 1); ceiling = bench_broker through node 1 with the relay'"'"'s message shape, %s messages, confirms, window %s, consumer attached, before and after; CPU in ticks of 1/%s s\n\n' \
    "$EVENTS" "$SIZE" "$CEILING_EVENTS" "$WINDOW" "$hz"
  row "cluster ceiling, msgs/s (mean)" "$(show ceiling 0)"
  row "  before / after" "$(show ceiling_before 0) / $(show ceiling_after 0)"
  row "relay, events/s" "$(show rate 0)"
  row "ratio relay / ceiling" "$(show ratio 2)"
  row "relay CPU, µs/event" "$(show relay_us 1)"
  row "  relay CPU, % of one core" "$(show relay_pct 0)"
  row "relay peak RSS (VmHWM), MiB" "$(show hwm_mib 1)"
  row "walsender CPU, µs/event" "$(show wal_us 1)"
  row "RabbitMQ CPU (3 nodes), µs/msg: relay | alone" "$(show beam_relay_us 0) | $(show beam_ceiling_us 0)"
  row "  per node under the relay: 1 | 2 | 3" "$(show beam1_relay_us 0) | $(show beam2_relay_us 0) | $(show beam3_relay_us 0)"
  row "  RabbitMQ (3 nodes), % of one core" "$(show beam_relay_pct 0)"
  row "others' CPU, µs/msg: relay | alone" "$(show others_relay_us 0) | $(show others_ceiling_us 0)"
  row "duplicates" "$(show duplicates 0)"
  row "  relay start -> first id, s" "$(show start_to_first_s 2)"
  row "  whole machine, % of one core" "$(show machine_pct 0)"
  row "  rest of the machine, % of one core" "$(show other_pct 0)"
  local busy
  busy=$(med other_pct)
  if [ "$busy" != n/a ] && awk -v b="$busy" 'BEGIN { exit !(b > 50) }'; then
    printf '\nnote: besides relay, walsender and RabbitMQ, the machine used %.0f%% of a core during the catch-ups (median; bench_drain, this script and PostgreSQL take about 30%%): other work shared it, so the figures are disturbed\n' "$busy"
  fi
  printf '\n%s to run\n' "$(calc 'int(s / 60) "m" s % 60 "s"' "s=$((SECONDS - START))" | tr -d ' ')"
}

# ------------------------------------------------------------------ main
START=$SECONDS
LOAD_START=$(load_now)
start_services
build
mkdir -p "$DIR/cluster"
rm -rf "$DIR"/cluster/run*
: >"$FIGS"
: >"$RUNLOG"
trap cleanup EXIT
write_config
declare_queue
REVISION="$(git -C "$REPO" log -1 --format=%h -- src Cargo.toml Cargo.lock 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || REVISION="$REVISION with uncommitted changes"
REVISION="$REVISION (checkout $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown))"
[ -z "${BENCH_RELAY:-}" ] || REVISION="BENCH_RELAY=$BENCH_RELAY (not this checkout's build)"
PG_VERSION=$(psql_su -tA -c 'SHOW server_version')
RABBIT_VERSION=$(scripts/rabbit-cluster.sh ctl 1 -q eval 'rabbit_misc:version().' 2>/dev/null | tr -d '"' || echo unknown)
for ((run = 1; run <= RUNS; run++)); do run_once "$run"; done
say "Results"
report | tee "$RESULTS"
