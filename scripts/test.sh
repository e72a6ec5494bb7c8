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

cargo_pid=""

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # on a signal, stop the test run first: cargo's own process group (cargo, the test
  # binaries and whatever they spawned), bounded
  if [ -n "$cargo_pid" ] && kill -0 "$cargo_pid" 2>/dev/null; then
    echo "[test] stopping cargo test (process group $cargo_pid)" >&2
    kill -TERM -- "-$cargo_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$cargo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$cargo_pid" 2>/dev/null || true
  fi
  if [ "${OUTBOX_KEEP_SERVICES:-0}" = 1 ]; then
    echo "[test] services left running (OUTBOX_KEEP_SERVICES=1); stop them with: scripts/services.sh down" >&2
  else
    scripts/services.sh down >&2 || echo "[test] WARNING: scripts/services.sh down failed" >&2
  fi
  echo "[test] services up ${t_up:-?}s, cargo test ${t_test:-?}s, total ${SECONDS}s; exit $rc" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SECONDS=0
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
t_up=$SECONDS

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

redact() { sed -E 's#//([^:/@]*):[^@]*@#//\1:***@#'; }
echo "[test] PostgreSQL $(redact <<<"$OUTBOX_TEST_PG_URL"), RabbitMQ $(redact <<<"$OUTBOX_TEST_AMQP_URL")" >&2
rc=0
# In the background, in its own process group, and waited for: a SIGINT/SIGTERM to
# this script is handled at once (the trap stops that group, then the services)
# instead of after the whole run.
setsid cargo test --release "${cargo_args[@]}" -- --test-threads="${OUTBOX_TEST_THREADS:-2}" "${harness_args[@]}" &
cargo_pid=$!
wait "$cargo_pid" || rc=$?
cargo_pid=""
t_test=$((SECONDS - t_up))
exit "$rc"
