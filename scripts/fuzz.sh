#!/usr/bin/env bash
# Fuzzes the replication decoders with cargo-fuzz (libFuzzer), one target at a
# time, on the stable toolchain (no sanitizer: `-s none`).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Default: 60 seconds for each of replication_frame, pgoutput_decode and
# transaction_assembler. Installs cargo-fuzz from crates.io if it is missing.
# The working corpus (fuzz/corpus/<target>/, git-ignored) starts from the
# checked-in seeds (fuzz/seeds/<target>/) and grows from run to run. Prints,
# per target, the executions, coverage (cov/ft from libFuzzer's final stats
# line), corpus size and whether it crashed; exits 1 if any target crashed,
# hung or failed to run. A crashing input is saved as
# fuzz/artifacts/<target>/crash-*; replay it with
#   cargo fuzz run -s none -a <target> fuzz/artifacts/<target>/crash-...
# and print it as a value with `cargo fuzz fmt -s none <target> <file>`.
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-target] [target...]" >&2
    exit 2
fi
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(replication_frame pgoutput_decode transaction_assembler)
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi
echo "==> $(cargo fuzz --version)"

# -s none: no sanitizer, so no nightly-only -Zsanitizer flag (the other
# instrumentation flags cargo-fuzz passes are stable). -a: debug assertions,
# which also turn on integer overflow checks.
fuzz_flags=(-s none -a)

echo "==> building fuzz targets (release, instrumented)"
cargo fuzz build "${fuzz_flags[@]}"

mkdir -p fuzz/logs
failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -n "fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    before_artifacts="$(ls -1 "$artifacts" | sort)"

    echo "==> fuzzing $t for ${secs}s (log: $log)"
    rc=0
    # The outer timeout only guards against a hang outside libFuzzer's own
    # clock (start-up, corpus loading); -timeout flags a single slow input.
    timeout --kill-after=30 "$((secs + 180))" \
        cargo fuzz run "${fuzz_flags[@]}" "$t" "$corpus" -- \
        -max_total_time="$secs" \
        -rss_limit_mb=2048 \
        -max_len=65536 \
        -timeout=30 \
        -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?

    # Last libFuzzer status line, e.g.
    # "#384716  DONE   cov: 412 ft: 1395 corp: 302/58Kb lim: 1688 exec/s: 34974 rss: 69Mb"
    stats="$(grep -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -n 1 || true)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
    [ -n "$runs" ] || runs="$(printf '%s\n' "$stats" | sed -n 's/^#\([0-9]*\).*/\1/p')"
    cov="$(printf '%s\n' "$stats" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')"
    ft="$(printf '%s\n' "$stats" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')"
    corp="$(printf '%s\n' "$stats" | sed -n 's/.* corp: \([^ ]*\).*/\1/p')"
    files="$(find "$corpus" -maxdepth 1 -type f | wc -l)"
    new_artifacts="$(comm -13 <(printf '%s\n' "$before_artifacts") <(ls -1 "$artifacts" | sort) | sed '/^$/d')"

    if [ "$rc" -eq 0 ] && [ -z "$new_artifacts" ]; then
        verdict="no crash"
    else
        failed=1
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            verdict="HUNG (killed after $((secs + 180))s)"
        elif [ -n "$new_artifacts" ]; then
            verdict="CRASHED: $(printf '%s' "$new_artifacts" | sed "s|^|$artifacts/|" | tr '\n' ' ')"
        else
            verdict="FAILED (exit $rc)"
        fi
        echo "---- last lines of $log ----"
        tail -n 40 "$log"
        echo "----"
    fi
    line="$(printf '%-22s runs: %-10s cov: %-5s ft: %-6s corpus: %s (%s files)  %s' \
        "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$files" "$verdict")"
    echo "    $line"
    summary+=("$line")
done

echo "==> summary (${secs}s per target)"
printf '    %s\n' "${summary[@]}"
exit "$failed"
