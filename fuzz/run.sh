#!/usr/bin/env bash
# Bounded fuzzing run of every target (what `make test-fuzz`, part of `make test`, calls).
# Installs cargo-fuzz if it is missing, builds the targets, then runs each one for FUZZ_SECONDS
# from its committed seed corpus (corpus/<target>, read only: libFuzzer writes only to the
# first corpus directory it is given) plus a fresh, empty scratch corpus in a temporary
# directory that is removed when the script exits, so every run starts from the same inputs
# and nothing carries over between runs. FUZZ_JOBS targets run at a time. A crash, a panic, a
# timeout or an out-of-memory fails the target; libFuzzer leaves the input in
# artifacts/<target>/. Prints one line per target and `N passed, N failed`.
#
# cargo-fuzz needs nightly-only flags (-Z, sanitizer coverage); RUSTC_BOOTSTRAP=1 lets stable
# rustc accept them, so no nightly toolchain is needed.
#
#   FUZZ_SECONDS=20       seconds per target (libFuzzer -max_total_time)
#   FUZZ_TARGETS="a b"    a subset of the targets
#   FUZZ_JOBS=2           targets run at once (default 2, as the Makefile says)
#   FUZZ_SANITIZER=none   cargo fuzz -s: none (default: the targets are safe Rust), address, ...
#   FUZZ_CGU=16           codegen units: 16 builds the fresh tree in about two thirds of the time
#                         of cargo-fuzz's default 1, at some cost in executions per second
# A failing input replays with: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none TARGET artifacts/TARGET/crash-...
set -uo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
SECONDS_EACH=${FUZZ_SECONDS:-20}
SAN=${FUZZ_SANITIZER:-none}
JOBS=${FUZZ_JOBS:-2}
CGU=${FUZZ_CGU:-16}
ALL="frame_decoder handshake message_decode message_structured legacy_parse http_query http_command pb_decode"
TARGETS=${FUZZ_TARGETS:-$ALL}
CARGO=${CARGO:-cargo}

start=$(date +%s)
if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    # --debug: cargo-fuzz only drives cargo, and its debug build takes a quarter of the time
    # of a release one (22 s against 99 s here).
    echo "fuzz: installing cargo-fuzz"
    "$CARGO" install cargo-fuzz --locked --debug || { echo "fuzz: cargo install cargo-fuzz failed"; echo "0 passed, 1 failed"; exit 1; }
fi
# `cargo fuzz build` takes one target or none (all of them).
if [ "$TARGETS" = "$ALL" ]; then build_args=(""); else build_args=($TARGETS); fi
for t in "${build_args[@]}"; do
    if ! "$CARGO" fuzz build -s "$SAN" --codegen-units "$CGU" $t; then
        echo "fuzz: build failed"; echo "0 passed, 1 failed"; exit 1
    fi
done
echo "fuzz: installed and built in $(( $(date +%s) - start ))s"
BIN_DIR="${CARGO_TARGET_DIR:-target}/$(rustc -vV | sed -n 's/^host: //p')/release"
OUT=../target/test-out
mkdir -p "$OUT"
# Scratch corpora of this run only (libFuzzer adds what it finds there); removed on exit.
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/sfc-fuzz-corpus.XXXXXX") || { echo "fuzz: mktemp failed"; echo "0 passed, 1 failed"; exit 1; }
trap 'rm -rf "$SCRATCH"' EXIT
# Interrupted: stop the running targets (each run_one job's `timeout`, which passes the signal
# on to the fuzzer, then the job itself) before the scratch corpus is removed.
stop_jobs() {
    local j
    for j in $(jobs -p); do
        kill -TERM $(ps -o pid= --ppid "$j") "$j" 2>/dev/null
    done
    wait
}
trap 'stop_jobs; exit 1' INT TERM HUP

# One target: runs it and writes its one-line verdict to $OUT/fuzz-<target>.result.
run_one() {
    local t=$1 log="$OUT/fuzz-$1.log" t0 rc runs cov
    mkdir -p "$SCRATCH/$t" "artifacts/$t"
    t0=$(date +%s)
    # The binary `cargo fuzz build` made, run as `cargo fuzz run` runs it, but without a second
    # build: core may change under a long run and a rebuild must not eat the time budget.
    # timeout: a hard stop should libFuzzer itself hang (it has its own -timeout per input).
    timeout $((SECONDS_EACH + 60)) "$BIN_DIR/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -dict=dict/sfc.dict \
        -print_final_stats=1 "$SCRATCH/$t" "corpus/$t" >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ $rc -eq 0 ]; then
        echo "ok: fuzz $t (${runs:-?} inputs, $cov, $(( $(date +%s) - t0 ))s)" >"$OUT/fuzz-$t.result"
    else
        {
            echo "FAILED: fuzz $t (exit $rc, $(( $(date +%s) - t0 ))s); log $log:"
            grep -E -A30 'panicked|ERROR: libFuzzer|SUMMARY|deadly signal|Test unit written' "$log" | head -60 \
                || tail -20 "$log"
        } >"$OUT/fuzz-$t.result"
    fi
}

running=0
for t in $TARGETS; do
    rm -f "$OUT/fuzz-$t.result"
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
    run_one "$t" &
    running=$((running + 1))
done
wait

pass=0; fail=0
for t in $TARGETS; do
    if [ -f "$OUT/fuzz-$t.result" ] && head -1 "$OUT/fuzz-$t.result" | grep -q '^ok: '; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        [ -f "$OUT/fuzz-$t.result" ] || echo "FAILED: fuzz $t (no result)" >"$OUT/fuzz-$t.result"
    fi
    cat "$OUT/fuzz-$t.result"
done
echo "fuzz: total $(( $(date +%s) - start ))s"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
