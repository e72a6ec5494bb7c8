#!/usr/bin/env bash
# Project-owned PostgreSQL and RabbitMQ instances for outbox-relay's tests and demo.
#
#   scripts/services.sh up     [pg|rabbit]   install what is missing (promtool too), start (idempotent), print env
#   scripts/services.sh down   [pg|rabbit]   stop what this script started (by its pid files / data dirs)
#   scripts/services.sh status               say what runs (exit 0 only when both run)
#   scripts/services.sh env                  print the export lines for tests and the demo
#   scripts/services.sh ctl ARGS...          rabbitmqctl against the project node (e.g. `ctl list_queues`)
#   scripts/services.sh clean                down, then delete the state dir (next `up` is a cold start)
#
# These instances never touch a system PostgreSQL (5432) or RabbitMQ (5672) that may
# also run on the machine: they have their own ports, data dirs, node name and Erlang
# cookie, listen on 127.0.0.1 only, and are stopped by the pids they recorded.
#
# Environment (all optional):
#   OUTBOX_STATE_DIR        state dir (default: $REPO/target/services)
#   OUTBOX_PG_PORT          PostgreSQL port            (default 54329)
#   OUTBOX_AMQP_PORT        RabbitMQ AMQP port         (default 56729)
#   OUTBOX_AMQP_DIST_PORT   RabbitMQ Erlang dist port  (default 56730)
#   OUTBOX_RABBIT_NODE      node name (default outbox_relay@localhost; with a
#                           non-default AMQP port: outbox_relay_PORT@localhost)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/services.sh"

PG_PORT=${OUTBOX_PG_PORT:-54329}
AMQP_PORT=${OUTBOX_AMQP_PORT:-56729}
DIST_PORT=${OUTBOX_AMQP_DIST_PORT:-56730}
# A second set of services (another worktree, other ports) needs its own node name
# too, since epmd is shared: derive it from the port unless given.
if [ "$AMQP_PORT" = 56729 ]; then
  RABBIT_NODE=${OUTBOX_RABBIT_NODE:-outbox_relay@localhost}
else
  RABBIT_NODE=${OUTBOX_RABBIT_NODE:-outbox_relay_$AMQP_PORT@localhost}
fi
PG_SUPERPASS=postgres
PG_START_TIMEOUT=60      # seconds, pg_ctl -t
RABBIT_START_TIMEOUT=120 # seconds, until the node reports it has booted
RABBIT_STOP_TIMEOUT=60   # seconds

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# tail of a log file, for failure messages
show_tail() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then
      printf '[services] ---- last lines of %s ----\n' "$f" >&2
      tail -n 40 "$f" >&2 || true
      printf '[services] ---- end of %s ----\n' "$f" >&2
    fi
  done
}

port_open() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# true when process $1 carries the environment variable assignment $2 (how we tell
# our own processes from a recycled pid or someone else's node)
pid_has_env() {
  local e
  e=$({ tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null) || return 1
  grep -qxF -- "$2" <<<"$e"
}

read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }

# wait until process $1 is gone, at most $2 seconds; false on timeout
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while pid_alive "$pid"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- packages

# highest installed PostgreSQL major version with a complete server + client
pg_highest_bin() {
  local d best=""
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && [ -x "$d/psql" ]; then
      best=$d
    fi
  done
  printf '%s' "$best"
}

RABBIT_BIN=/usr/lib/rabbitmq/bin

ensure_packages() {
  local need=()
  [ -n "$(pg_highest_bin)" ] || need+=(postgresql)
  [ -x "$RABBIT_BIN/rabbitmq-server" ] && [ -x "$RABBIT_BIN/rabbitmqctl" ] || need+=(rabbitmq-server)
  command -v runuser >/dev/null || need+=(util-linux)
  if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]} and not root: install them with apt-get"
    log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q >&2
    apt-get -o DPkg::Lock::Timeout=300 install -y -q "${need[@]}" >&2
    [ -n "$(pg_highest_bin)" ] || die "postgresql installed but no /usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres,psql}"
    [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "rabbitmq-server installed but $RABBIT_BIN/rabbitmq-server is missing"
  fi
  id -u postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (it comes with the postgresql package)"
  # promtool, for the test that runs `promtool check metrics` on the relay's /metrics
  # (extracted from Debian's prometheus package; no server); that test says how when missing
  "$REPO/scripts/promtool.sh" >/dev/null || log "WARNING: promtool could not be installed (scripts/promtool.sh)"
}

# ---------------------------------------------------------------- state dir

# The postgres user must be able to traverse every directory above its data dir.
# When the repo sits somewhere it can't (e.g. under /root, mode 700), fall back to
# a dir under /var/tmp derived from the repo path, rather than chmod'ing parents.
resolve_state() {
  if [ -n "${OUTBOX_STATE_DIR:-}" ]; then
    STATE=$OUTBOX_STATE_DIR
  else
    STATE="$REPO/target/services"
    if id -u postgres >/dev/null 2>&1 && command -v runuser >/dev/null; then
      local probe=$STATE
      while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
      if ! (cd / && runuser -u postgres -- test -x "$probe") 2>/dev/null; then
        STATE="/var/tmp/outbox-relay-services-$(printf '%s' "$REPO" | cksum | cut -d' ' -f1)"
        log "postgres cannot traverse $probe; using state dir $STATE"
      fi
    fi
  fi
  case "$STATE" in /*) ;; *) STATE="$PWD/$STATE" ;; esac
  PGDATA="$STATE/pg"
  PGSOCK="$STATE/pg-sock"
  PGLOG="$STATE/pg.log"
  RDIR="$STATE/rabbit"
  RABBIT_PIDFILE="$RDIR/rabbit.pid"         # beam.smp; written by the node itself
  RABBIT_WRAPPER_PIDFILE="$RDIR/wrapper.pid" # the rabbitmq-server script we started
}

pg_bin() {
  # an existing cluster keeps the major version it was created with
  if [ -f "$PGDATA/PG_VERSION" ]; then
    local v
    v=$(cat "$PGDATA/PG_VERSION")
    if [ -x "/usr/lib/postgresql/$v/bin/postgres" ]; then
      printf '%s' "/usr/lib/postgresql/$v/bin"
      return
    fi
    die "$PGDATA was created by PostgreSQL $v, which is not installed: run '$SELF clean' to start over"
  fi
  pg_highest_bin
}

# fd 9 is services.sh's lock: the servers started from here must not inherit it
as_postgres() { (cd / && exec 9>&- && runuser -u postgres -- "$@"); }

# ---------------------------------------------------------------- PostgreSQL

pg_running() {
  [ -f "$PGDATA/postmaster.pid" ] || return 1
  local bin
  bin=$(pg_bin) || return 1
  [ -n "$bin" ] || return 1
  as_postgres "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

# shellcheck disable=SC2120 # callers may pass extra psql arguments
pg_psql() {
  # admin connection over TCP with the superuser password (the same path tests use)
  local bin
  bin=$(pg_bin)
  PGCONNECT_TIMEOUT=5 "$bin/psql" -X -q -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PG_PORT user=postgres password=$PG_SUPERPASS dbname=postgres sslmode=disable" "$@"
}

pg_write_conf() {
  local sockdir="$PGSOCK"
  # a unix socket path is limited to 107 bytes; everything here uses TCP anyway
  if [ "${#PGSOCK}" -gt 90 ]; then
    log "socket dir path too long for a unix socket; PostgreSQL will listen on TCP only"
    sockdir=""
  fi
  cat >"$PGDATA/outbox-relay.conf" <<EOF
# written by scripts/services.sh on every 'up'; included from postgresql.conf
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sockdir'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_connections = 300
wal_sender_timeout = '60s'
password_encryption = 'scram-sha-256'
# Test speed only: this throwaway instance gives up crash safety. Never copy these
# three lines to a real server.
fsync = off
synchronous_commit = off
full_page_writes = off
# log to stderr, which pg_ctl -l sends to $PGLOG
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  cat >"$PGDATA/pg_hba.conf" <<'EOF'
# written by scripts/services.sh
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
EOF
  chown postgres:postgres "$PGDATA/outbox-relay.conf" "$PGDATA/pg_hba.conf"
  chmod 600 "$PGDATA/outbox-relay.conf" "$PGDATA/pg_hba.conf"
}

pg_init() {
  local bin=$1 pwfile="$STATE/.pg-pwfile"
  log "initdb $PGDATA ($bin)"
  rm -rf "$PGDATA"
  install -d -o postgres -g postgres -m 700 "$PGDATA"
  (umask 077 && printf '%s\n' "$PG_SUPERPASS" >"$pwfile")
  chown postgres:postgres "$pwfile"
  if ! as_postgres "$bin/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
      >"$STATE/initdb.log" 2>&1; then
    rm -f "$pwfile"
    show_tail "$STATE/initdb.log"
    rm -rf "$PGDATA"
    die "initdb failed"
  fi
  rm -f "$pwfile"
  printf "\ninclude_if_exists = 'outbox-relay.conf'\n" >>"$PGDATA/postgresql.conf"
}

pg_up() {
  local bin
  bin=$(pg_bin)
  [ -n "$bin" ] || die "no PostgreSQL server binaries found"
  install -d -m 755 "$STATE"
  install -d -o postgres -g postgres -m 755 "$PGSOCK"
  if pg_running; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT ($PGDATA)"
  else
    if port_open "$PG_PORT"; then
      die "127.0.0.1:$PG_PORT is in use by another process (see: ss -ltnp 'sport = :$PG_PORT'); set OUTBOX_PG_PORT"
    fi
    [ -f "$PGDATA/PG_VERSION" ] || pg_init "$bin"
    pg_write_conf
    touch "$PGLOG"
    chown postgres:postgres "$PGLOG"
    log "starting PostgreSQL $(cat "$PGDATA/PG_VERSION") on 127.0.0.1:$PG_PORT"
    if ! as_postgres "$bin/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t "$PG_START_TIMEOUT" start >"$STATE/pg_ctl.log" 2>&1; then
      show_tail "$STATE/pg_ctl.log" "$PGLOG"
      # do not leave a half-started server behind
      as_postgres "$bin/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
      die "PostgreSQL did not start within ${PG_START_TIMEOUT}s"
    fi
  fi
  # roles and database for the demo (idempotent)
  if ! pg_psql >/dev/null <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'relay') THEN
    CREATE ROLE relay LOGIN REPLICATION PASSWORD 'relay';
  END IF;
END
$$;
SELECT 'CREATE DATABASE demo OWNER relay'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'demo')\gexec
SQL
  then
    show_tail "$PGLOG"
    die "could not create role relay / database demo"
  fi
}

pg_down() {
  [ -f "$PGDATA/postmaster.pid" ] || { log "PostgreSQL: not running (no $PGDATA/postmaster.pid)"; return 0; }
  local bin
  bin=$(pg_bin)
  if ! pg_running; then
    log "PostgreSQL: not running (stale postmaster.pid)"
    return 0
  fi
  log "stopping PostgreSQL ($PGDATA)"
  if ! as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1; then
    log "fast shutdown timed out; trying immediate"
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || {
      show_tail "$PGLOG"
      die "PostgreSQL ($PGDATA) did not stop"
    }
  fi
}

pg_status() {
  if pg_running; then
    printf 'postgresql: running  pid %s  127.0.0.1:%s  data %s\n' \
      "$(head -n1 "$PGDATA/postmaster.pid")" "$PG_PORT" "$PGDATA"
    return 0
  fi
  printf 'postgresql: stopped  (data %s)\n' "$PGDATA"
  return 1
}

# ---------------------------------------------------------------- RabbitMQ

# Run a RabbitMQ command with the project node's environment. The node runs as root
# (the Debian /usr/sbin wrappers would su to user rabbitmq, who cannot write our state
# dir), with HOME pointing at our own dir so its Erlang cookie is ours: the node and
# our rabbitmqctl agree, and neither can talk to the system node (other cookie).
rabbit_export() {
  # shellcheck disable=SC2030 # deliberately only in the subshells that call this
  export HOME="$RDIR/home"
  export RABBITMQ_NODENAME="$RABBIT_NODE"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$AMQP_PORT"
  export RABBITMQ_DIST_PORT="$DIST_PORT"
  export RABBITMQ_MNESIA_BASE="$RDIR/mnesia"
  export RABBITMQ_LOG_BASE="$RDIR/log"
  export RABBITMQ_PID_FILE="$RABBIT_PIDFILE"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RDIR/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$RDIR/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$RDIR/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$RDIR/rabbitmq-env.conf" # instead of /etc/rabbitmq/rabbitmq-env.conf
  export ERL_EPMD_ADDRESS=127.0.0.1                       # if our node has to start epmd
  export ERL_CRASH_DUMP="$RDIR/log/erl_crash.dump"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  unset RABBITMQ_ERLANG_COOKIE
}

rabbit_env_run() {
  (
    rabbit_export
    cd "$RDIR"
    exec "$@" 9>&- # fd 9 is services.sh's lock: nothing started here may inherit it
  )
}

rabbitmqctl_() { rabbit_env_run "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@"; }
# the same, killed after $1 seconds
rabbitmqctl_t() {
  local secs=$1
  shift
  rabbit_env_run timeout "$secs" "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@"
}

rabbit_running() {
  local pid
  pid=$(read_pid "$RABBIT_PIDFILE")
  pid_alive "$pid" && pid_has_env "$pid" "RABBITMQ_MNESIA_BASE=$RDIR/mnesia"
}

rabbit_prepare() {
  install -d -m 755 "$STATE" "$RDIR" "$RDIR/log" "$RDIR/mnesia"
  install -d -m 700 "$RDIR/home"
  if [ ! -s "$RDIR/home/.erlang.cookie" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$RDIR/home/.erlang.cookie")
  fi
  chmod 400 "$RDIR/home/.erlang.cookie"
  printf '[].\n' >"$RDIR/enabled_plugins" # no plugins: no management listener to clash
  cat >"$RDIR/rabbitmq.conf" <<'EOF'
# written by scripts/services.sh; listeners come from RABBITMQ_NODE_IP_ADDRESS/PORT
# guest/guest may log in from loopback (RabbitMQ's default), which is all we listen on
log.file.level = info
log.console = false
EOF
  printf '# written by scripts/services.sh: nothing here (the system file is not read)\n' >"$RDIR/rabbitmq-env.conf"
}

epmd_up() { timeout 5 epmd -names >/dev/null 2>&1; }

rabbit_up() {
  rabbit_prepare
  local wrapper beam deadline
  if rabbit_running; then
    log "RabbitMQ node $RABBIT_NODE already running (pid $(read_pid "$RABBIT_PIDFILE"))"
  else
    local p
    for p in "$AMQP_PORT" "$DIST_PORT"; do
      if port_open "$p"; then
        die "127.0.0.1:$p is in use by another process (see: ss -ltnp 'sport = :$p'); set OUTBOX_AMQP_PORT / OUTBOX_AMQP_DIST_PORT"
      fi
    done
    rm -f "$RABBIT_PIDFILE" "$RABBIT_WRAPPER_PIDFILE"
    # epmd (port 4369) is shared by every Erlang node on the machine. Remember whether
    # we had to start it, so `down` can stop it again when no node uses it any more.
    if command -v epmd >/dev/null && ! epmd_up; then
      touch "$RDIR/epmd-started-here"
    fi
    log "starting RabbitMQ node $RABBIT_NODE on 127.0.0.1:$AMQP_PORT (dist $DIST_PORT)"
    : >>"$RDIR/startup.log"
    # one fork, then exec: $! is the rabbitmq-server script itself, which runs beam
    # as its child and stops it on SIGTERM; beam writes its own pid to $RABBIT_PIDFILE
    (
      rabbit_export
      cd "$RDIR"
      exec setsid "$RABBIT_BIN/rabbitmq-server" </dev/null >>"$RDIR/startup.log" 2>&1 9>&-
    ) &
    wrapper=$!
    printf '%s\n' "$wrapper" >"$RABBIT_WRAPPER_PIDFILE"
  fi
  # wait until the node has booted, bounded
  wrapper=$(read_pid "$RABBIT_WRAPPER_PIDFILE")
  deadline=$((SECONDS + RABBIT_START_TIMEOUT))
  while :; do
    if rabbitmqctl_t 30 -q await_startup --timeout 10 >/dev/null 2>&1; then
      break
    fi
    beam=$(read_pid "$RABBIT_PIDFILE")
    if ! pid_alive "$wrapper" && ! pid_alive "$beam"; then
      show_tail "$RDIR/startup.log" "$RDIR/log/$RABBIT_NODE.log"
      die "RabbitMQ node $RABBIT_NODE exited during startup"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_tail "$RDIR/startup.log" "$RDIR/log/$RABBIT_NODE.log"
      log "RabbitMQ node $RABBIT_NODE did not start within ${RABBIT_START_TIMEOUT}s; stopping it"
      rabbit_down || true
      die "RabbitMQ node $RABBIT_NODE did not start within ${RABBIT_START_TIMEOUT}s"
    fi
    sleep 1
  done
  deadline=$((SECONDS + 30))
  until port_open "$AMQP_PORT"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_tail "$RDIR/log/$RABBIT_NODE.log"
      die "RabbitMQ booted but 127.0.0.1:$AMQP_PORT does not accept connections"
    fi
    sleep 0.5
  done
  rabbit_running || die "RabbitMQ answers but its pid file $RABBIT_PIDFILE does not name a live process of ours"
}

rabbit_down() {
  local beam wrapper
  beam=$(read_pid "$RABBIT_PIDFILE")
  wrapper=$(read_pid "$RABBIT_WRAPPER_PIDFILE")
  if rabbit_running; then
    log "stopping RabbitMQ node $RABBIT_NODE (pid $beam)"
    # `stop PIDFILE` returns once that process has exited
    if ! rabbitmqctl_t "$RABBIT_STOP_TIMEOUT" -q stop "$RABBIT_PIDFILE" >/dev/null 2>&1; then
      log "rabbitmqctl stop failed or timed out; sending SIGTERM to $beam"
    fi
    if pid_alive "$beam" && pid_has_env "$beam" "RABBITMQ_MNESIA_BASE=$RDIR/mnesia"; then
      kill -TERM "$beam" 2>/dev/null || true
      if ! wait_gone "$beam" 30; then
        log "pid $beam still alive after SIGTERM; SIGKILL"
        kill -KILL "$beam" 2>/dev/null || true
        wait_gone "$beam" 10 || die "could not stop RabbitMQ pid $beam"
      fi
    fi
  else
    log "RabbitMQ: node $RABBIT_NODE not running"
  fi
  # the rabbitmq-server script we started exits with the node; make sure
  if pid_alive "$wrapper" && pid_has_env "$wrapper" "RABBITMQ_MNESIA_BASE=$RDIR/mnesia"; then
    kill -TERM "$wrapper" 2>/dev/null || true
    wait_gone "$wrapper" 10 || kill -KILL "$wrapper" 2>/dev/null || true
  fi
  rm -f "$RABBIT_PIDFILE" "$RABBIT_WRAPPER_PIDFILE"
  # stop epmd only if this script started it and no Erlang node is registered any more
  if [ -f "$RDIR/epmd-started-here" ]; then
    local names
    if names=$(timeout 5 epmd -names 2>/dev/null) && ! grep -q '^name ' <<<"$names"; then
      log "stopping epmd (started by services.sh, no nodes left)"
      timeout 5 epmd -kill >/dev/null 2>&1 || true
    fi
    rm -f "$RDIR/epmd-started-here"
  fi
}

rabbit_status() {
  if rabbit_running; then
    local open=closed
    port_open "$AMQP_PORT" && open=accepting
    printf 'rabbitmq:   running  pid %s  node %s  127.0.0.1:%s (%s)  dir %s\n' \
      "$(read_pid "$RABBIT_PIDFILE")" "$RABBIT_NODE" "$AMQP_PORT" "$open" "$RDIR"
    [ "$open" = accepting ]
    return
  fi
  printf 'rabbitmq:   stopped  (node %s, dir %s)\n' "$RABBIT_NODE" "$RDIR"
  return 1
}

# ---------------------------------------------------------------- env

print_env() {
  local bin
  bin=$(pg_bin 2>/dev/null || true)
  printf 'export OUTBOX_TEST_PG_URL=%q\n' "postgres://postgres:$PG_SUPERPASS@127.0.0.1:$PG_PORT/postgres"
  printf 'export OUTBOX_TEST_AMQP_URL=%q\n' "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
  printf 'export OUTBOX_TEST_PG_BIN=%q\n' "$bin"
  printf 'export OUTBOX_TEST_PG_DATA=%q\n' "$PGDATA"
  printf 'export OUTBOX_DEMO_PG_URL=%q\n' "postgres://relay:relay@127.0.0.1:$PG_PORT/demo"
  printf 'export OUTBOX_DEMO_AMQP_URL=%q\n' "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
  # tests that restart a service can call "$OUTBOX_SERVICES_SH" down rabbit / up rabbit
  printf 'export OUTBOX_SERVICES_SH=%q\n' "$SELF"
  printf 'export OUTBOX_STATE_DIR=%q\n' "$STATE"
}

# ---------------------------------------------------------------- main

with_lock() {
  install -d -m 755 "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 300 9 || die "another services.sh holds $STATE/.lock for over 300s"
}

cmd=${1:-}
shift || true
what=${1:-all}
case "$what" in all | pg | rabbit) ;; *) [ "$cmd" = ctl ] || die "unknown component '$what' (pg|rabbit)" ;; esac

case "$cmd" in
  up)
    t0=$SECONDS
    ensure_packages
    resolve_state
    with_lock
    case "$what" in pg) pg_up ;; rabbit) rabbit_up ;; all) pg_up; rabbit_up ;; esac
    log "up in $((SECONDS - t0))s"
    print_env
    ;;
  down)
    resolve_state
    [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; exit 0; }
    with_lock
    case "$what" in pg) pg_down ;; rabbit) rabbit_down ;; all) rc=0; rabbit_down || rc=$?; pg_down || rc=$?; exit "$rc" ;; esac
    ;;
  status)
    resolve_state
    rc=0
    pg_status || rc=3
    rabbit_status || rc=3
    exit "$rc"
    ;;
  env)
    resolve_state
    print_env
    ;;
  ctl)
    resolve_state
    rabbitmqctl_ "$@"
    ;;
  clean)
    resolve_state
    if [ -d "$STATE" ]; then
      "$SELF" down
      # shellcheck disable=SC2031
      case "$STATE" in "" | / | "$REPO" | "$HOME") die "refusing to delete '$STATE'" ;; esac
      log "removing $STATE"
      rm -rf "$STATE"
    fi
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
