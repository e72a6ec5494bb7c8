#!/usr/bin/env bash
# The demo, the whole loop:
#
#   wallet (db demo)                                          anti-fraud (db antifraud)
#   wallet_transactions + outbox --relay 1--> wallet.events --> examples/antifraud.rs
#                                                               processed_events + outbox
#   examples/wallet_flags.rs <-- antifraud.events <--relay 2-- FraudDetected
#   processed_events, accounts.flagged = true
#   => the database refuses the flagged account's next transaction
#
# Each service writes its change and its event in ONE local transaction (the outbox);
# two outbox-relay instances stream the outboxes through logical replication to
# RabbitMQ; each consumer records the event's message_id in processed_events in the
# same transaction as its effect and acknowledges only after the commit, so a
# redelivered event changes nothing (the demo sends one twice to show it).
#
#   scripts/demo.sh
#
# Uses the project's own PostgreSQL and RabbitMQ (scripts/services.sh) and leaves them
# running at the end; stop them with `scripts/services.sh down`. Everything else it
# starts (two relays, two consumers) it stops again, by pid. Running it again starts
# from a clean slate: the demo tables are emptied, the demo queues purged.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
WALLET_CONFIG="$REPO/config.example.toml"             # slot outbox_relay, wallet.events, :9187
AF_CONFIG="$REPO/deploy/demo/antifraud-relay.toml"    # slot antifraud_relay, antifraud.events, :9188
WALLET_HTTP=127.0.0.1:9187
AF_HTTP=127.0.0.1:9188
WALLET_SLOT=outbox_relay
AF_SLOT=antifraud_relay
WALLET_RELAY_LOG="$TARGET_DIR/demo-wallet-relay.log"
AF_RELAY_LOG="$TARGET_DIR/demo-antifraud-relay.log"
AF_LOG="$TARGET_DIR/demo-antifraud.log"
FLAGS_LOG="$TARGET_DIR/demo-wallet-flags.log"
LOGS=("$WALLET_RELAY_LOG" "$AF_RELAY_LOG" "$AF_LOG" "$FLAGS_LOG")
WAIT=60       # seconds, for each thing the demo waits for
STOP_WAIT=30  # seconds, for each process to exit after SIGTERM
SAFETY=600    # seconds: the consumers exit on their own after this, should the demo be SIGKILLed

say() { printf '\n==> %s\n' "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }
show_tail() { [ -f "$1" ] && { printf -- '---- last lines of %s ----\n' "$1" >&2; tail -n 30 "$1" >&2; }; true; }
# user:password@ -> user:***@ in URLs
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#g' <<<"$1"; }

# name -> pid of what this script started and has not reaped yet
declare -A PIDS=()
STOP_ORDER=(antifraud wallet_flags wallet-relay antifraud-relay)

# wait for our child $1 to exit, at most $2 seconds; false on timeout
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# SIGTERM our child named $1, wait at most STOP_WAIT seconds (then SIGKILL); sets STOP_RC
stop_child() {
  local name=$1 pid=${PIDS[$1]:-}
  STOP_RC=0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_exit "$pid" "$STOP_WAIT"; then
    printf '[demo] %s (pid %s) did not exit within %ss of SIGTERM; SIGKILL\n' "$name" "$pid" "$STOP_WAIT" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || STOP_RC=$?
  unset "PIDS[$name]"
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? name
  trap - EXIT INT TERM
  # stop only the background processes this script started, by their pids
  for name in "${STOP_ORDER[@]}"; do
    stop_child "$name" || true
  done
  if [ "$rc" != 0 ]; then
    printf '\n[demo] failed (exit %s). Logs: %s\n' "$rc" "${LOGS[*]}" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOG COMMAND...: in the background, output to LOG, pid remembered
start() {
  local name=$1 log=$2
  shift 2
  : >"$log"
  "$@" </dev/null >"$log" 2>&1 &
  PIDS[$name]=$!
}

# alive NAME LOG: die with its log if our child NAME has exited
alive() {
  if ! kill -0 "${PIDS[$1]}" 2>/dev/null; then
    show_tail "$2"
    die "$1 exited unexpectedly (log: $2)"
  fi
}

# wait_until WHAT NAME LOG COMMAND...: poll COMMAND every 0.2s until it succeeds, at most
# $WAIT seconds, dying (with NAME's log) on timeout or when our child NAME has exited
wait_until() {
  local what=$1 name=$2 log=$3 deadline=$((SECONDS + WAIT))
  shift 3
  until "$@"; do
    alive "$name" "$log"
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_tail "$log"
      die "timed out after ${WAIT}s waiting for $what"
    fi
    sleep 0.2
  done
}

has_line() { grep -qF -- "$2" "$1"; }
relay_ready() { "$RELAY" healthcheck --ready --addr "$1" >/dev/null 2>&1; }

[ -f "$WALLET_CONFIG" ] || die "$WALLET_CONFIG is missing"
[ -f "$AF_CONFIG" ] || die "$AF_CONFIG is missing"

say "Starting PostgreSQL and RabbitMQ (scripts/services.sh up)"
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
PSQL="$OUTBOX_TEST_PG_BIN/psql"
ADMIN_URL=$OUTBOX_TEST_PG_URL           # superuser: only to create database antifraud
WALLET_URL=$OUTBOX_DEMO_PG_URL          # role relay, database demo
AF_URL=${OUTBOX_DEMO_PG_URL%/*}/antifraud
AMQP_URL=$OUTBOX_DEMO_AMQP_URL
echo "PostgreSQL: $(redact "$WALLET_URL") (wallet), $(redact "$AF_URL") (anti-fraud)"
echo "RabbitMQ:   $(redact "$AMQP_URL")"

say "Building outbox-relay and the two demo services (cargo build --release)"
cargo build --release --bin outbox-relay --example antifraud --example wallet_flags
RELAY="$TARGET_DIR/release/outbox-relay"
ANTIFRAUD="$TARGET_DIR/release/examples/antifraud"
FLAGS="$TARGET_DIR/release/examples/wallet_flags"
for b in "$RELAY" "$ANTIFRAUD" "$FLAGS"; do [ -x "$b" ] || die "$b was not built"; done

psql_() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"; }
# one value from a query
value() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$1" -c "$2"; }

# The SPEC's default outbox table, used by both services, as the relay itself prints
# it (its one copy is deploy/sql/outbox.sql): the block of `setup --print-sql`
# from CREATE TABLE to the blank line after it (the table and its index), which
# reads the config but connects to nothing
OUTBOX_TABLE_SQL=$(OUTBOX_RELAY_SOURCE_URL=$WALLET_URL OUTBOX_RELAY_BROKER_URL=$AMQP_URL \
  "$RELAY" setup --print-sql --config "$WALLET_CONFIG" |
  awk '/^CREATE TABLE/ { on = 1 } on && /^$/ { exit } on { print }')
[[ $OUTBOX_TABLE_SQL == "CREATE TABLE"*"CREATE INDEX"*");" ]] ||
  die "could not get the default outbox table from 'outbox-relay setup --print-sql'"

say "Wallet database demo: accounts, wallet_transactions (a trigger refuses flagged accounts), processed_events, outbox"
{ echo "SET client_min_messages = warning;"; echo "$OUTBOX_TABLE_SQL"; cat <<'SQL'
CREATE TABLE IF NOT EXISTS accounts (
  name    text    PRIMARY KEY,
  flagged boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS wallet_transactions (
  id           bigserial   PRIMARY KEY,
  account      text        NOT NULL,
  amount_cents bigint      NOT NULL,
  created_at   timestamptz DEFAULT now()
);
-- the wallet's own consumer (examples/wallet_flags.rs) deduplicates by message_id here
CREATE TABLE IF NOT EXISTS processed_events (
  message_id   text        PRIMARY KEY,
  processed_at timestamptz DEFAULT now()
);
-- A flagged (or unknown) account's transaction is refused by the database itself.
-- FOR SHARE conflicts with the UPDATE that flags the account: a transaction racing
-- the flagging waits for it and then sees flagged = true; none slips past it.
CREATE OR REPLACE FUNCTION refuse_flagged_account() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  is_flagged boolean;
BEGIN
  SELECT flagged INTO is_flagged FROM accounts WHERE name = NEW.account FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'account % does not exist', NEW.account USING ERRCODE = 'foreign_key_violation';
  END IF;
  IF is_flagged THEN
    RAISE EXCEPTION 'account % is flagged for fraud: transaction refused', NEW.account
      USING ERRCODE = 'check_violation',
            HINT = 'the anti-fraud service reported FraudDetected for this account';
  END IF;
  RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER refuse_flagged_account BEFORE INSERT ON wallet_transactions
  FOR EACH ROW EXECUTE FUNCTION refuse_flagged_account();
SQL
} | psql_ "$WALLET_URL"
echo "tables accounts, wallet_transactions (+ trigger), processed_events, outbox ready"

say "Anti-fraud database antifraud (owned by relay): processed_events, outbox"
psql_ "$ADMIN_URL" >/dev/null <<'SQL'
SELECT 'CREATE DATABASE antifraud OWNER relay'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'antifraud')\gexec
SQL
{ echo "SET client_min_messages = warning;"; echo "$OUTBOX_TABLE_SQL"; cat <<'SQL'
CREATE TABLE IF NOT EXISTS processed_events (
  message_id   text        PRIMARY KEY,
  processed_at timestamptz DEFAULT now()
);
SQL
} | psql_ "$AF_URL"
echo "tables processed_events, outbox ready"

say "outbox-relay setup for both databases (publication and slot, idempotent)"
OUTBOX_RELAY_SOURCE_URL=$WALLET_URL OUTBOX_RELAY_BROKER_URL=$AMQP_URL "$RELAY" setup --config "$WALLET_CONFIG"
OUTBOX_RELAY_SOURCE_URL=$AF_URL OUTBOX_RELAY_BROKER_URL=$AMQP_URL "$RELAY" setup --config "$AF_CONFIG"

say "A clean slate: demo tables emptied, accounts alice bob carol dave opened"
# Events an interrupted earlier run left in a demo slot would leak into this run's
# story (the dedup tables are emptied too), so each demo slot is moved to the current
# WAL position first. Only these two slots, in their own databases; nothing else.
psql_ "$WALLET_URL" <<SQL
SET client_min_messages = warning;
TRUNCATE wallet_transactions, processed_events, accounts, outbox RESTART IDENTITY;
INSERT INTO accounts (name) VALUES ('alice'), ('bob'), ('carol'), ('dave');
SELECT count(pg_replication_slot_advance(slot_name, pg_current_wal_lsn()))
  FROM pg_replication_slots WHERE slot_name = '$WALLET_SLOT' AND database = current_database() AND NOT active \\g /dev/null
SQL
psql_ "$AF_URL" <<SQL
SET client_min_messages = warning;
TRUNCATE processed_events, outbox;
SELECT count(pg_replication_slot_advance(slot_name, pg_current_wal_lsn()))
  FROM pg_replication_slots WHERE slot_name = '$AF_SLOT' AND database = current_database() AND NOT active \\g /dev/null
SQL
psql_ "$WALLET_URL" -c "SELECT name, flagged FROM accounts ORDER BY name"

say "Starting the anti-fraud service and the wallet's fraud listener (they declare their exchange, durable queue and binding)"
start antifraud "$AF_LOG" env PG_URL="$AF_URL" AMQP_URL="$AMQP_URL" \
  "$ANTIFRAUD" --purge --ready-line --timeout "$SAFETY"
start wallet_flags "$FLAGS_LOG" env PG_URL="$WALLET_URL" AMQP_URL="$AMQP_URL" \
  "$FLAGS" --purge --ready-line --timeout "$SAFETY"
wait_until "the anti-fraud service to bind its queue" antifraud "$AF_LOG" has_line "$AF_LOG" ready
wait_until "the fraud listener to bind its queue" wallet_flags "$FLAGS_LOG" has_line "$FLAGS_LOG" ready
echo "antifraud    (pid ${PIDS[antifraud]}): queue antifraud.transactions <- wallet.events 'wallet.TransactionAdded'"
echo "wallet_flags (pid ${PIDS[wallet_flags]}): queue wallet.fraud <- antifraud.events 'account.FraudDetected'"

say "Starting two relays: wallet (demo -> wallet.events) and anti-fraud (antifraud -> antifraud.events)"
start wallet-relay "$WALLET_RELAY_LOG" env OUTBOX_RELAY_SOURCE_URL="$WALLET_URL" OUTBOX_RELAY_BROKER_URL="$AMQP_URL" \
  "$RELAY" run --config "$WALLET_CONFIG"
start antifraud-relay "$AF_RELAY_LOG" env OUTBOX_RELAY_SOURCE_URL="$AF_URL" OUTBOX_RELAY_BROKER_URL="$AMQP_URL" \
  "$RELAY" run --config "$AF_CONFIG"
wait_until "the wallet relay to stream ($WALLET_HTTP/readyz)" wallet-relay "$WALLET_RELAY_LOG" relay_ready "$WALLET_HTTP"
wait_until "the anti-fraud relay to stream ($AF_HTTP/readyz)" antifraud-relay "$AF_RELAY_LOG" relay_ready "$AF_HTTP"
echo "wallet relay    (pid ${PIDS[wallet-relay]}): config.example.toml, slot $WALLET_SLOT, http $WALLET_HTTP: streaming"
echo "anti-fraud relay (pid ${PIDS[antifraud-relay]}): deploy/demo/antifraud-relay.toml, slot $AF_SLOT, http $AF_HTTP: streaming"

# the wallet's write: the transaction and its TransactionAdded event, in one local transaction
wallet_tx_sql() {
  cat <<SQL
BEGIN;
WITH t AS (
  INSERT INTO wallet_transactions (account, amount_cents)
  VALUES ('$1', $2)
  RETURNING id, account, amount_cents, created_at
)
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
SELECT 'wallet', account, 'TransactionAdded',
       jsonb_build_object('transaction_id', id, 'account', account,
                          'amount_cents', amount_cents, 'created_at', created_at)
  FROM t;
COMMIT;
SQL
}

TXS=(alice:2500 bob:-1200 carol:-250000 alice:-500 dave:4000)
say "The wallet writes ${#TXS[@]} transactions, each with its TransactionAdded in the same transaction (carol's -2500.00 is suspicious: the rule is |amount| >= 1000.00)"
for tx in "${TXS[@]}"; do
  wallet_tx_sql "${tx%%:*}" "${tx#*:}"
done | psql_ "$WALLET_URL"
psql_ "$WALLET_URL" -c "SELECT id, account, amount_cents FROM wallet_transactions ORDER BY id"

processed() { value "$1" "SELECT count(*) FROM processed_events"; }
is_flagged() { [ "$(value "$WALLET_URL" "SELECT flagged FROM accounts WHERE name = '$1'")" = t ]; }
processed_is() { [ "$(processed "$AF_URL")" = "$1" ]; }

say "Waiting for the loop: wallet -> relay -> antifraud -> relay -> wallet_flags (at most ${WAIT}s each)"
t0=$(date +%s%N)
wait_until "account carol to be flagged" wallet_flags "$FLAGS_LOG" is_flagged carol
t1=$(date +%s%N)
wait_until "the anti-fraud service to process ${#TXS[@]} events" antifraud "$AF_LOG" processed_is "${#TXS[@]}"
echo "carol flagged $(((t1 - t0) / 1000000)) ms after the wallet's commits"
echo "---- antifraud ($AF_LOG) ----"
grep -v '^ready$' "$AF_LOG"
echo "---- wallet_flags ($FLAGS_LOG) ----"
grep -v '^ready$' "$FLAGS_LOG"
echo "----"
psql_ "$WALLET_URL" -c "SELECT name, flagged FROM accounts ORDER BY name"

say "carol tries another transaction: the wallet database refuses it"
carol_before=$(value "$WALLET_URL" "SELECT count(*) FROM outbox WHERE aggregate_id = 'carol'")
if out=$(wallet_tx_sql carol -100 | psql_ "$WALLET_URL" 2>&1); then
  die "carol's transaction was accepted although carol is flagged"
fi
grep -E '^(psql:[^ ]* )?(ERROR|HINT):' <<<"$out" | sed -E 's/^psql:[^ ]* //'
carol_after=$(value "$WALLET_URL" "SELECT count(*) FROM outbox WHERE aggregate_id = 'carol'")
[ "$carol_before" = "$carol_after" ] || die "a TransactionAdded for carol was written although her transaction was refused"
echo "(the whole transaction rolled back: no wallet_transactions row, no TransactionAdded in the outbox: still $carol_after for carol)"

say "bob's next transaction still goes through"
wallet_tx_sql bob 700 | psql_ "$WALLET_URL"
psql_ "$WALLET_URL" -c "SELECT id, account, amount_cents FROM wallet_transactions WHERE account = 'bob' ORDER BY id"
expected=$((${#TXS[@]} + 1))
wait_until "the anti-fraud service to process bob's transaction" antifraud "$AF_LOG" processed_is "$expected"
tail -n 1 "$AF_LOG"

say "At-least-once delivery: carol's TransactionAdded arrives a second time, same message_id"
IFS='|' read -r dup_id dup_body < <(value "$WALLET_URL" \
  "SELECT id, payload FROM outbox WHERE aggregate_id = 'carol' AND event_type = 'TransactionAdded' ORDER BY created_at LIMIT 1")
[ -n "$dup_id" ] || die "carol's TransactionAdded is not in the wallet outbox"
fraud_count() { value "$AF_URL" "SELECT count(*) FROM outbox WHERE event_type = 'FraudDetected'"; }
p_before=$(processed "$AF_URL")
f_before=$(fraud_count)
echo "before: antifraud processed_events = $p_before, FraudDetected in its outbox = $f_before"
echo "(a relay that crashes after the broker's confirm but before the slot moves sends events again;"
echo " here the copy is published directly, with the relay's message_id, type and body)"
env AMQP_URL="$AMQP_URL" "$ANTIFRAUD" --republish "$dup_id" --body "$dup_body"
wait_until "the anti-fraud service to see the duplicate" antifraud "$AF_LOG" \
  has_line "$AF_LOG" "duplicate TransactionAdded id=$dup_id ignored"
grep -F "duplicate TransactionAdded id=$dup_id" "$AF_LOG"
p_after=$(processed "$AF_URL")
f_after=$(fraud_count)
echo "after:  antifraud processed_events = $p_after, FraudDetected in its outbox = $f_after"
if [ "$p_before" != "$p_after" ] || [ "$f_before" != "$f_after" ]; then
  die "the duplicate changed something"
fi
echo "unchanged: the duplicate had no effect"

say "Stopping what the demo started with SIGTERM (relays drain their confirms and acknowledge their position)"
rcs=()
for name in "${STOP_ORDER[@]}"; do
  pid=${PIDS[$name]}
  stop_child "$name"
  printf '%-16s (pid %s) exited with status %s\n' "$name" "$pid" "$STOP_RC"
  [ "$STOP_RC" = 0 ] || rcs+=("$name:$STOP_RC")
done

say "Done"
for log in "${LOGS[@]}"; do echo "log: $log"; done
echo "PostgreSQL and RabbitMQ are still running; stop them with: scripts/services.sh down"
[ "${#rcs[@]}" = 0 ] || die "exited with a non-zero status: ${rcs[*]}"
