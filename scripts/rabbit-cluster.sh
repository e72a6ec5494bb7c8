#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, for scripts/bench-cluster.sh.
#
#   scripts/rabbit-cluster.sh up       start the three nodes (idempotent), join nodes 2 and 3
#                                      to node 1, print the env lines
#   scripts/rabbit-cluster.sh down     stop the nodes this script started (by their pid files)
#   scripts/rabbit-cluster.sh status   each node and the cluster's members (exit 0 only when
#                                      all three run and are clustered)
#   scripts/rabbit-cluster.sh env      print the export lines (OUTBOX_BENCH_CLUSTER_URLS, ...)
#   scripts/rabbit-cluster.sh ctl N ARGS...   rabbitmqctl against node N (1-3), e.g.
#                                      `ctl 1 list_queues name type members`
#   scripts/rabbit-cluster.sh clean    down, then delete the state dir (next `up` is a cold start)
#
# Like scripts/services.sh, and independent of it: RabbitMQ from Debian's package
# (/usr/lib/rabbitmq/bin, installed by `scripts/services.sh up` when missing), run as the
# current user without the /usr/sbin wrappers; the nodes have their own names, ports, data
# dirs and one Erlang cookie of their own (HOME is the state dir's home/, shared by the
# three nodes and by this script's rabbitmqctl), so neither a system node (5672/25672) nor
# the services.sh node can be reached from here or reach them. Everything listens on
# 127.0.0.1 only. Every wait is bounded.
#
# Environment (all optional):
#   OUTBOX_CLUSTER_DIR        state dir (default: $REPO/target/rabbit-cluster)
#   OUTBOX_CLUSTER_AMQP_PORT  node 1's AMQP port; nodes 2 and 3 take the next two
#                             (default 27681: 27681-27683)
#   OUTBOX_CLUSTER_DIST_PORT  node 1's Erlang distribution port; the next two for nodes 2
#                             and 3 (default 27691: 27691-27693)
#   OUTBOX_CLUSTER_CTL_PORT   first of 10 distribution ports for this script's rabbitmqctl
#                             (default 27700: 27700-27709)
#   OUTBOX_CLUSTER_NODE       node name prefix (default outbox_cluster, nodes
#                             outbox_cluster1@localhost ..3; with a non-default AMQP port
#                             outbox_cluster_PORT_1@localhost ..3, since epmd is shared)
# The default ports lie below the kernel's ephemeral range (32768-60999 by default), so no
# outgoing connection can take them while a node is down, and away from RabbitMQ's own
# defaults (5672, 25672, 15672, 35672-35682).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/rabbit-cluster.sh"

AMQP_PORT=${OUTBOX_CLUSTER_AMQP_PORT:-27681}
DIST_PORT=${OUTBOX_CLUSTER_DIST_PORT:-27691}
CTL_PORT=${OUTBOX_CLUSTER_CTL_PORT:-27700}
for n in "$AMQP_PORT" "$DIST_PORT" "$CTL_PORT"; do
  case "$n" in '' | *[!0-9]* | 0*) printf '[rabbit-cluster] ERROR: not a port: %s\n' "$n" >&2; exit 2 ;; esac
done
if [ "$AMQP_PORT" = 27681 ]; then
  NODE_PREFIX=${OUTBOX_CLUSTER_NODE:-outbox_cluster}
else
  NODE_PREFIX=${OUTBOX_CLUSTER_NODE:-outbox_cluster_${AMQP_PORT}_}
fi
NODES=(1 2 3)
RABBIT_BIN=/usr/lib/rabbitmq/bin
START_TIMEOUT=180 # seconds, until all three nodes report they have booted
STOP_TIMEOUT=60   # seconds per node for `rabbitmqctl stop`
CTL_TIMEOUT=90    # seconds for any other rabbitmqctl call

log() { printf '[rabbit-cluster] %s\n' "$*" >&2; }
die() { printf '[rabbit-cluster] ERROR: %s\n' "$*" >&2; exit 1; }
show_tail() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then
      printf '[rabbit-cluster] ---- last lines of %s ----\n' "$f" >&2
      tail -n 40 "$f" >&2 || true
      printf '[rabbit-cluster] ---- end of %s ----\n' "$f" >&2
    fi
  done
}
port_open() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }
# process $1 carries the environment assignment $2: ours, not a recycled pid
pid_has_env() {
  local e
  e=$({ tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null) || return 1
  grep -qxF -- "$2" <<<"$e"
}
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while pid_alive "$pid"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- per node
STATE=${OUTBOX_CLUSTER_DIR:-$REPO/target/rabbit-cluster}
case "$STATE" in /*) ;; *) STATE="$PWD/$STATE" ;; esac

node_name() { printf '%s%s@localhost' "$NODE_PREFIX" "$1"; }
node_dir() { printf '%s/node%s' "$STATE" "$1"; }
amqp_port() { printf '%s' $((AMQP_PORT + $1 - 1)); }
dist_port() { printf '%s' $((DIST_PORT + $1 - 1)); }
amqp_url() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f' "$(amqp_port "$1")"; }
beam_pidfile() { printf '%s/rabbit.pid' "$(node_dir "$1")"; }
wrapper_pidfile() { printf '%s/wrapper.pid' "$(node_dir "$1")"; }
node_log() { printf '%s/log/%s.log' "$(node_dir "$1")" "$(node_name "$1")"; }
mark() { printf 'RABBITMQ_MNESIA_BASE=%s/mnesia' "$(node_dir "$1")"; }

# the environment of node $1 (for the node itself and for rabbitmqctl against it)
node_export() {
  local d
  d=$(node_dir "$1")
  export HOME="$STATE/home" # its .erlang.cookie is the cluster's
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(node_name "$1")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(amqp_port "$1")
  export RABBITMQ_DIST_PORT
  RABBITMQ_DIST_PORT=$(dist_port "$1")
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/rabbit.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" # instead of /etc/rabbitmq/rabbitmq-env.conf
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_CRASH_DUMP="$d/log/erl_crash.dump"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  # the CLI is an Erlang node too: its own distribution ports, not the shared 35672-35682
  export RABBITMQ_CTL_DIST_PORT_MIN="$CTL_PORT"
  export RABBITMQ_CTL_DIST_PORT_MAX=$((CTL_PORT + 9))
  unset RABBITMQ_ERLANG_COOKIE
}

# rabbitmqctl -n NODE$1 ARGS..., killed after $2 seconds
ctl_t() {
  local n=$1 secs=$2
  shift 2
  (
    node_export "$n"
    cd "$(node_dir "$n")"
    exec timeout "$secs" "$RABBIT_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@" 9>&-
  )
}

node_running() {
  local pid
  pid=$(read_pid "$(beam_pidfile "$1")")
  pid_alive "$pid" && pid_has_env "$pid" "$(mark "$1")"
}

node_prepare() {
  local d
  d=$(node_dir "$1")
  install -d -m 755 "$d" "$d/log" "$d/mnesia"
  printf '[].\n' >"$d/enabled_plugins" # no plugins: no management listener to clash
  cat >"$d/rabbitmq.conf" <<EOF
# written by scripts/rabbit-cluster.sh; the AMQP listener comes from
# RABBITMQ_NODE_IP_ADDRESS/PORT (127.0.0.1:$(amqp_port "$1"))
log.file.level = info
log.console = false
EOF
  printf '# written by scripts/rabbit-cluster.sh: nothing here (the system file is not read)\n' >"$d/rabbitmq-env.conf"
}

prepare() {
  { [ -x "$RABBIT_BIN/rabbitmq-server" ] && [ -x "$RABBIT_BIN/rabbitmqctl" ]; } ||
    die "RabbitMQ is not installed ($RABBIT_BIN): run scripts/services.sh up rabbit once, or apt-get install rabbitmq-server"
  install -d -m 755 "$STATE"
  install -d -m 700 "$STATE/home"
  if [ ! -s "$STATE/home/.erlang.cookie" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$STATE/home/.erlang.cookie")
  fi
  chmod 400 "$STATE/home/.erlang.cookie"
  local n
  for n in "${NODES[@]}"; do node_prepare "$n"; done
}

epmd_up() { timeout 5 epmd -names >/dev/null 2>&1; }

# start node $1 in the background unless it runs
node_spawn() {
  local n=$1 d
  d=$(node_dir "$n")
  if node_running "$n"; then
    log "node $(node_name "$n") already running (pid $(read_pid "$(beam_pidfile "$n")"))"
    return 0
  fi
  rm -f "$(beam_pidfile "$n")" "$(wrapper_pidfile "$n")"
  log "starting node $(node_name "$n") on 127.0.0.1:$(amqp_port "$n") (dist $(dist_port "$n"))"
  : >>"$d/startup.log"
  # one fork, then exec: $! is the rabbitmq-server script, which runs beam as its child
  # and stops it on SIGTERM; beam writes its own pid to rabbit.pid
  (
    node_export "$n"
    cd "$d"
    exec setsid "$RABBIT_BIN/rabbitmq-server" </dev/null >>"$d/startup.log" 2>&1 9>&-
  ) &
  printf '%s\n' "$!" >"$(wrapper_pidfile "$n")"
}

# until node $1 has booted or the deadline $2 (SECONDS) passed; false then
node_await() {
  local n=$1 deadline=$2 left wrapper beam
  wrapper=$(read_pid "$(wrapper_pidfile "$n")")
  while :; do
    left=$((deadline - SECONDS))
    [ "$left" -ge 5 ] || left=5
    [ "$left" -le 30 ] || left=30
    if ctl_t "$n" $((left + 15)) -q await_startup --timeout "$left" >/dev/null 2>&1 && port_open "$(amqp_port "$n")"; then
      return 0
    fi
    beam=$(read_pid "$(beam_pidfile "$n")")
    if ! pid_alive "$wrapper" && ! pid_alive "$beam"; then
      show_tail "$(node_dir "$n")/startup.log" "$(node_log "$n")"
      log "node $(node_name "$n") exited during startup; stopping the others"
      cluster_down || true
      die "node $(node_name "$n") exited during startup"
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}

node_stop() {
  local n=$1 beam wrapper
  beam=$(read_pid "$(beam_pidfile "$n")")
  wrapper=$(read_pid "$(wrapper_pidfile "$n")")
  if node_running "$n"; then
    log "stopping node $(node_name "$n") (pid $beam)"
    # `stop PIDFILE` returns once that process has exited
    ctl_t "$n" "$STOP_TIMEOUT" -q stop "$(beam_pidfile "$n")" >/dev/null 2>&1 ||
      log "rabbitmqctl stop failed or timed out; SIGTERM to $beam"
    if pid_alive "$beam" && pid_has_env "$beam" "$(mark "$n")"; then
      kill -TERM "$beam" 2>/dev/null || true
      if ! wait_gone "$beam" 30; then
        log "pid $beam still alive 30s after SIGTERM; SIGKILL"
        kill -KILL "$beam" 2>/dev/null || true
        wait_gone "$beam" 10 || die "could not stop pid $beam (node $(node_name "$n"))"
      fi
    fi
  fi
  if pid_alive "$wrapper" && pid_has_env "$wrapper" "$(mark "$n")"; then
    kill -TERM "$wrapper" 2>/dev/null || true
    wait_gone "$wrapper" 10 || kill -KILL "$wrapper" 2>/dev/null || true
  fi
  rm -f "$(beam_pidfile "$n")" "$(wrapper_pidfile "$n")"
}

# the cluster's members as node $1 sees them ($2: disk_nodes or running_nodes), one a line
members() {
  local json
  json=$(ctl_t "$1" "$CTL_TIMEOUT" -q cluster_status --formatter json 2>/dev/null) || return 1
  sed -n "s/.*\"$2\":\[\([^]]*\)\].*/\1/p" <<<"$json" | tr ',' '\n' | tr -d '"' | sed '/^$/d'
}

# node $1 (2 or 3) into node 1's cluster, unless it is a member already
join() {
  local n=$1 one
  one=$(node_name 1)
  if members 1 disk_nodes | grep -qxF "$(node_name "$n")"; then
    return 0
  fi
  log "joining $(node_name "$n") to $one"
  local out
  out="$(node_dir "$n")/join.log"
  {
    ctl_t "$n" "$CTL_TIMEOUT" stop_app &&
      ctl_t "$n" "$CTL_TIMEOUT" reset &&
      ctl_t "$n" "$CTL_TIMEOUT" join_cluster "$one" &&
      ctl_t "$n" "$CTL_TIMEOUT" start_app
  } >>"$out" 2>&1 || {
    show_tail "$out" "$(node_log "$n")"
    die "could not join $(node_name "$n") to $one"
  }
}

cluster_up() {
  prepare
  local n started_epmd=0
  if command -v epmd >/dev/null && ! epmd_up; then started_epmd=1; fi
  # the ports of the nodes to start, all free before any starts
  local p
  for n in "${NODES[@]}"; do
    node_running "$n" && continue
    for p in "$(amqp_port "$n")" "$(dist_port "$n")"; do
      if port_open "$p"; then
        die "127.0.0.1:$p (node $n) is in use by another process (see: ss -ltnp 'sport = :$p'); set OUTBOX_CLUSTER_AMQP_PORT / OUTBOX_CLUSTER_DIST_PORT"
      fi
    done
  done
  # all three at once: a node that was clustered before waits at boot for its peers
  for n in "${NODES[@]}"; do node_spawn "$n"; done
  [ "$started_epmd" = 0 ] || touch "$STATE/epmd-started-here"
  local deadline=$((SECONDS + START_TIMEOUT))
  for n in "${NODES[@]}"; do
    if ! node_await "$n" "$deadline"; then
      show_tail "$(node_dir "$n")/startup.log" "$(node_log "$n")"
      log "node $(node_name "$n") did not boot within ${START_TIMEOUT}s; stopping the cluster"
      cluster_down || true
      die "node $(node_name "$n") did not boot within ${START_TIMEOUT}s"
    fi
  done
  join 2
  join 3
  # every node up and running in one cluster, bounded (a node that has just joined
  # restarts its app)
  deadline=$((SECONDS + 60))
  until [ "$(members 1 running_nodes | sort | tr '\n' ' ')" = "$(for n in "${NODES[@]}"; do node_name "$n"; echo; done | sort | tr '\n' ' ')" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      ctl_t 1 30 cluster_status >&2 || true
      die "the three nodes are not all running in one cluster after 60s (cluster_status above)"
    fi
    sleep 1
  done
  for n in "${NODES[@]}"; do
    node_running "$n" || die "node $(node_name "$n") answers but $(beam_pidfile "$n") does not name a live process of ours"
  done
  log "cluster of $(node_name 1), $(node_name 2), $(node_name 3) is up"
}

cluster_down() {
  local n rc=0
  # 3, 2, then 1; `up` starts all three at once, so the order does not matter for the restart
  for n in 3 2 1; do node_stop "$n" || rc=1; done
  if [ -f "$STATE/epmd-started-here" ]; then
    local names
    if names=$(timeout 5 epmd -names 2>/dev/null) && ! grep -q '^name ' <<<"$names"; then
      log "stopping epmd (started here, no nodes left)"
      timeout 5 epmd -kill >/dev/null 2>&1 || true
    fi
    rm -f "$STATE/epmd-started-here"
  fi
  return "$rc"
}

cluster_status() {
  local n rc=0 open
  for n in "${NODES[@]}"; do
    if node_running "$n"; then
      open=closed
      port_open "$(amqp_port "$n")" && open=accepting
      printf 'node %s: running  pid %s  %s  127.0.0.1:%s (%s)\n' "$n" "$(read_pid "$(beam_pidfile "$n")")" \
        "$(node_name "$n")" "$(amqp_port "$n")" "$open"
      [ "$open" = accepting ] || rc=3
    else
      printf 'node %s: stopped  %s  (dir %s)\n' "$n" "$(node_name "$n")" "$(node_dir "$n")"
      rc=3
    fi
  done
  if node_running 1; then
    local running
    running=$(members 1 running_nodes | paste -sd ' ')
    printf 'cluster (as node 1 sees it): running %s\n' "${running:-?}"
    [ "$(wc -w <<<"$running")" = 3 ] || rc=3
  fi
  return "$rc"
}

print_env() {
  printf "export OUTBOX_BENCH_CLUSTER_URLS='%s'\n" "$(amqp_url 1),$(amqp_url 2),$(amqp_url 3)"
  printf "export OUTBOX_BENCH_CLUSTER_NODES='%s'\n" "$(node_name 1),$(node_name 2),$(node_name 3)"
  # each node's dir holds rabbit.pid (its beam.smp)
  printf 'export OUTBOX_BENCH_CLUSTER_DIR=%q\n' "$STATE"
  printf 'export OUTBOX_BENCH_CLUSTER_SH=%q\n' "$SELF"
}

with_lock() {
  install -d -m 755 "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 300 9 || die "another rabbit-cluster.sh holds $STATE/.lock for over 300s"
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    t0=$SECONDS
    with_lock
    cluster_up
    log "up in $((SECONDS - t0))s"
    print_env
    ;;
  down)
    [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; exit 0; }
    with_lock
    cluster_down
    ;;
  status) cluster_status ;;
  env) print_env ;;
  ctl)
    n=${1:-}
    case "$n" in 1 | 2 | 3) ;; *) die "usage: $0 ctl 1|2|3 ARGS..." ;; esac
    shift
    ctl_t "$n" "$CTL_TIMEOUT" "$@"
    ;;
  clean)
    if [ -d "$STATE" ]; then
      "$SELF" down
      case "$STATE" in "" | / | "$REPO" | "$REPO/target") die "refusing to delete '$STATE'" ;; esac
      log "removing $STATE"
      rm -rf "$STATE"
    fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
