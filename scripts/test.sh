#!/usr/bin/env bash
# The test command: starts the project's own PostgreSQL and RabbitMQ (scripts/services.sh),
# runs the whole test suite against them, and stops them again.
#
#   scripts/test.sh                         all tests
#   scripts/test.sh replay                  tests whose name contains "replay"
#   scripts/test.sh --test integration      cargo arguments go before `--` ...
#   scripts/test.sh -- --nocapture          ... test-harness arguments after it
#
# Environment: OUTBOX_TEST_THREADS (default 2), OUTBOX_KEEP_SERVICES=1 to leave the
# services running afterwards, and everything scripts/services.sh reads (ports, state dir).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

start=$(date +%s)
phase=$start
stamp() { # prints the seconds since the previous stamp
  local now
  now=$(date +%s)
  printf '%s' "$((now - phase))"
  phase=$now
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${OUTBOX_KEEP_SERVICES:-0}" = 1 ]; then
    echo "[test] services left running (OUTBOX_KEEP_SERVICES=1); stop them with: scripts/services.sh down" >&2
  else
    scripts/services.sh down >&2 || echo "[test] WARNING: scripts/services.sh down failed" >&2
  fi
  echo "[test] services up ${t_up:-?}s, cargo test ${t_test:-?}s, total $(($(date +%s) - start))s; exit $rc" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
t_up=$(stamp)

# split "$@" at the first `--`: before it for cargo, after it for the test harness
cargo_args=()
harness_args=()
seen_sep=0
for a in "$@"; do
  if [ "$seen_sep" = 0 ] && [ "$a" = -- ]; then
    seen_sep=1
  elif [ "$seen_sep" = 0 ]; then
    cargo_args+=("$a")
  else
    harness_args+=("$a")
  fi
done

echo "[test] PostgreSQL $OUTBOX_TEST_PG_URL, RabbitMQ $OUTBOX_TEST_AMQP_URL" >&2
rc=0
cargo test --release "${cargo_args[@]}" -- --test-threads="${OUTBOX_TEST_THREADS:-2}" "${harness_args[@]}" || rc=$?
t_test=$(stamp)
exit "$rc"
