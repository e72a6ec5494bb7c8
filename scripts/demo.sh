#!/usr/bin/env bash
# The demo: a wallet service writes a transaction and its outbox event in one local
# transaction; outbox-relay streams the events from PostgreSQL's logical replication
# to RabbitMQ; an example consumer prints what arrives.
#
#   scripts/demo.sh
#
# Uses the project's own PostgreSQL and RabbitMQ (scripts/services.sh) and leaves them
# running at the end; stop them with `scripts/services.sh down`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CONFIG="$REPO/config.example.toml"
COUNT=5
EXCHANGE=wallet.events
RELAY_LOG="$TARGET_DIR/demo-relay.log"
CONSUMER_LOG="$TARGET_DIR/demo-consumer.log"

say() { printf '\n==> %s\n' "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }
show_tail() { [ -f "$1" ] && { printf -- '---- last lines of %s ----\n' "$1" >&2; tail -n 30 "$1" >&2; }; true; }

relay_pid=""
consumer_pid=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # stop only the background processes this script started, by their pids
  if [ -n "$consumer_pid" ] && kill -0 "$consumer_pid" 2>/dev/null; then
    kill -TERM "$consumer_pid" 2>/dev/null || true
  fi
  if [ -n "$relay_pid" ] && kill -0 "$relay_pid" 2>/dev/null; then
    kill -TERM "$relay_pid" 2>/dev/null || true
    wait_exit "$relay_pid" 30 || kill -KILL "$relay_pid" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ]; then
    printf '\n[demo] failed (exit %s). Logs: %s, %s\n' "$rc" "$RELAY_LOG" "$CONSUMER_LOG" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait for our child $1 to exit, at most $2 seconds; false on timeout
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

[ -f "$CONFIG" ] || die "$CONFIG is missing"

say "Starting PostgreSQL and RabbitMQ (scripts/services.sh up)"
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
PSQL="$OUTBOX_TEST_PG_BIN/psql"
export OUTBOX_RELAY_SOURCE_URL="$OUTBOX_DEMO_PG_URL"
export OUTBOX_RELAY_BROKER_URL="$OUTBOX_DEMO_AMQP_URL"
echo "PostgreSQL: $OUTBOX_DEMO_PG_URL"
echo "RabbitMQ:   $OUTBOX_DEMO_AMQP_URL"

say "Building outbox-relay and the example consumer (cargo build --release)"
cargo build --release --bin outbox-relay --example consume
RELAY="$TARGET_DIR/release/outbox-relay"
CONSUMER="$TARGET_DIR/release/examples/consume"
[ -x "$RELAY" ] || die "$RELAY was not built"
[ -x "$CONSUMER" ] || die "$CONSUMER was not built"

say "Creating the outbox and wallet tables in database demo (as relay, the owner)"
"$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_DEMO_PG_URL" <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS outbox (
  id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregate_type text        NOT NULL,
  aggregate_id   text        NOT NULL,
  event_type     text        NOT NULL,
  payload        jsonb       NOT NULL,
  headers        jsonb,
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS wallet_transactions (
  id           bigserial   PRIMARY KEY,
  account      text        NOT NULL,
  amount_cents bigint      NOT NULL,
  created_at   timestamptz DEFAULT now()
);
SQL
echo "tables outbox, wallet_transactions ready"

say "outbox-relay setup --config config.example.toml (publication and slot)"
"$RELAY" setup --config "$CONFIG"

: >"$CONSUMER_LOG"
: >"$RELAY_LOG"

say "Starting the consumer: topic exchange $EXCHANGE, a queue bound with '#', $COUNT messages"
"$CONSUMER" --url "$OUTBOX_DEMO_AMQP_URL" --exchange "$EXCHANGE" --binding '#' --count "$COUNT" \
  </dev/null >"$CONSUMER_LOG" 2>&1 &
consumer_pid=$!
# it must have declared the exchange and bound its queue before anything is published
deadline=$((SECONDS + 30))
# (awk, not grep -q: an early exit would SIGPIPE rabbitmqctl and fail the pipeline)
until scripts/services.sh ctl -q list_bindings source_name routing_key 2>/dev/null |
  awk -v ex="$EXCHANGE" '$1 == ex { found = 1 } END { exit !found }'; do
  if ! kill -0 "$consumer_pid" 2>/dev/null; then
    show_tail "$CONSUMER_LOG"
    die "the consumer exited before binding a queue to $EXCHANGE"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    show_tail "$CONSUMER_LOG"
    die "no queue was bound to $EXCHANGE within 30s"
  fi
  sleep 0.5
done
echo "consumer (pid $consumer_pid) is bound to $EXCHANGE"

say "Starting the relay: outbox-relay run --config config.example.toml (log: $RELAY_LOG)"
"$RELAY" run --config "$CONFIG" </dev/null >"$RELAY_LOG" 2>&1 &
relay_pid=$!
sleep 1
if ! kill -0 "$relay_pid" 2>/dev/null; then
  show_tail "$RELAY_LOG"
  die "the relay exited right after starting"
fi
echo "relay running (pid $relay_pid)"

say "Writing $COUNT wallet transactions, each with its outbox event in the same transaction"
{
  i=0
  for tx in alice:2500 bob:-1200 alice:-500 carol:10000 bob:300; do
    i=$((i + 1))
    [ "$i" -le "$COUNT" ] || break
    account=${tx%%:*}
    amount=${tx#*:}
    cat <<SQL
BEGIN;
WITH t AS (
  INSERT INTO wallet_transactions (account, amount_cents)
  VALUES ('$account', $amount)
  RETURNING id, account, amount_cents, created_at
)
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
SELECT 'wallet', account, 'TransactionAdded',
       jsonb_build_object('transaction_id', id, 'account', account,
                          'amount_cents', amount_cents, 'created_at', created_at)
  FROM t;
COMMIT;
SQL
  done
} | "$PSQL" -X -q -v ON_ERROR_STOP=1 "$OUTBOX_DEMO_PG_URL"
"$PSQL" -X -v ON_ERROR_STOP=1 "$OUTBOX_DEMO_PG_URL" \
  -c "SELECT id, account, amount_cents FROM wallet_transactions ORDER BY id DESC LIMIT $COUNT"

say "Waiting for the consumer to receive $COUNT messages (at most 45s)"
if ! wait_exit "$consumer_pid" 45; then
  show_tail "$RELAY_LOG"
  die "the consumer did not finish within 45s (log: $CONSUMER_LOG)"
fi
consumer_rc=0
wait "$consumer_pid" || consumer_rc=$?
consumer_pid=""
echo "---- consumer output ($CONSUMER_LOG) ----"
cat "$CONSUMER_LOG"
echo "---- end of consumer output ----"

say "Stopping the relay with SIGTERM (it drains confirms and acknowledges its position)"
kill -TERM "$relay_pid"
if ! wait_exit "$relay_pid" 30; then
  show_tail "$RELAY_LOG"
  die "the relay did not exit within 30s of SIGTERM"
fi
relay_rc=0
wait "$relay_pid" || relay_rc=$?
relay_pid=""
echo "relay exited with status $relay_rc"

say "Done"
echo "relay log:    $RELAY_LOG"
echo "consumer log: $CONSUMER_LOG"
echo "PostgreSQL and RabbitMQ are still running; stop them with: scripts/services.sh down"
[ "$consumer_rc" = 0 ] || die "the consumer exited with status $consumer_rc"
[ "$relay_rc" = 0 ] || die "the relay exited with status $relay_rc after SIGTERM"
