#!/usr/bin/env bash
# Builds the C test suite (-Wall -Wextra -Werror -pedantic) and the C++ header test, starts a
# real `sfc registry` on 127.0.0.1:0, runs the suite once under AddressSanitizer and once under
# Valgrind (--leak-check=full --error-exitcode=1), and stops the registry by its PID.
# Expects target/release/libsfc.a (cargo build -p sfc-ffi --release) and target/debug/sfc.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/scripts/lib/wait-for-line.sh"
lib=${SFC_LIB_DIR:-$root/target/release}
sfc=${SFC_BIN:-$root/target/debug/sfc}
out=${SFC_TEST_OUT:-$root/target/test-out}/c
mkdir -p "$out"

warn=(-Wall -Wextra -Werror -pedantic)
link=("$lib/libsfc.a" -lm -ldl -lpthread)
gcc -std=c11 "${warn[@]}" -g -O1 -I"$root/include" -fsanitize=address,undefined -fno-omit-frame-pointer \
    "$root/tests/c/test_sfc.c" "${link[@]}" -o "$out/test_sfc_asan"
gcc -std=c11 "${warn[@]}" -g -O1 -I"$root/include" "$root/tests/c/test_sfc.c" "${link[@]}" -o "$out/test_sfc"
g++ -std=c++17 "${warn[@]}" -g -I"$root/include" "$root/tests/c/header_test.cpp" "${link[@]}" -o "$out/header_test_cpp"
# The oldest standard the header promises (C99: it includes <stdbool.h> and <stdint.h>).
gcc -std=c99 "${warn[@]}" -g -I"$root/include" "$root/tests/c/test_sfc.c" "${link[@]}" -o "$out/test_sfc_c99"
# The examples must keep compiling with the same flags.
gcc -std=c11 "${warn[@]}" -g -I"$root/include" -fsanitize=address,undefined "$root/examples/c/service.c" "${link[@]}" -o "$out/example_service"
gcc -std=c11 "${warn[@]}" -O2 -I"$root/include" "$root/examples/c/footprint.c" "${link[@]}" -o "$out/footprint"

data=$(mktemp -d)
token=c-suite-token
"$sfc" registry --listen 127.0.0.1:0 --data-dir "$data" --http 127.0.0.1:0 --admin-token "$token" >"$out/registry.stdout" 2>"$out/registry.stderr" &
registry_pid=$!
legacy_pid=
cleanup() {
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
    if [ -n "$legacy_pid" ]; then
        kill "$legacy_pid" 2>/dev/null || true
        wait "$legacy_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
}
trap cleanup EXIT

addr=$(registry_address "$out/registry.stdout" "$registry_pid") || { cat "$out/registry.stderr"; echo "registry exited"; exit 1; }
[ -n "$addr" ] || { echo "registry did not report its address within 20 s"; exit 1; }
http_addr=$(wait_for_line "$out/registry.stdout" 's/^sfc http listening on \([^ ]*\) .*/\1/p' 50)
# A second, unrelated CA: the registry's certificate does not chain to it.
"$sfc" certs init --dir "$data/other" >/dev/null
export SFC_TEST_REGISTRY=$addr SFC_TEST_CA=$data/tls/ca.pem SFC_TEST_OTHER_CA=$data/other/ca.pem
echo "registry at $addr (pid $registry_pid)"

# A registry that predates protocol v1, for the legacy fallback tests: the Node.js fixture that
# behaves as the original service_fleet_control registry does (no ALPN; one JSON document per
# connection, and it exits on anything else), with the test registry's certificate. It prints
# `report {...}` per document and `refused ...` per connection that ended before its handshake.
legacy_log=$out/legacy-registry.stdout
node "$root/bindings/node/tests/support/legacy-registry.js" --cert "$data/tls/server.pem" \
    --key "$data/tls/server-key.pem" >"$legacy_log" 2>"$out/legacy-registry.stderr" &
legacy_pid=$!
legacy_port=$(wait_for_line "$legacy_log" 's/^listening \([0-9]*\)$/\1/p' 100 "$legacy_pid") ||
    { cat "$out/legacy-registry.stderr"; echo "legacy-style registry exited"; exit 1; }
[ -n "$legacy_port" ] || { echo "the legacy-style registry did not report its port within 10 s"; exit 1; }
export SFC_TEST_LEGACY_REGISTRY=127.0.0.1:$legacy_port SFC_TEST_LEGACY_LOG=$legacy_log SFC_TEST_LEGACY_PID=$legacy_pid
echo "legacy-style registry at 127.0.0.1:$legacy_port (pid $legacy_pid)"

suites=0
suites_failed=0
run_suite() {
    local name=$1
    shift
    echo "== $name"
    suites=$((suites + 1))
    if ! "$@"; then
        suites_failed=$((suites_failed + 1))
        echo "== $name FAILED"
    fi
}

run_suite "c++ header" "$out/header_test_cpp"
# detect_leaks: LeakSanitizer checks the Rust side too (the library is linked in).
run_suite "c suite under addresssanitizer" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$out/test_sfc_asan"
run_suite "c suite under valgrind" valgrind --quiet --leak-check=full --error-exitcode=1 \
    --suppressions="$root/tests/c/valgrind.supp" "$out/test_sfc"

# examples/c/service.c registers, and exits 0 when the registry sends it `shutdown` (through
# the operator HTTP API, as an operator would).
example_shutdown() {
    local log=$out/example_service.log
    SFC_REGISTRY=$addr SFC_CA=$SFC_TEST_CA "$out/example_service" --group c-example --instance-id ex1 >"$log" 2>&1 &
    local ex=$!
    for _ in $(seq 1 100); do grep -q '^connected' "$log" && break; sleep 0.1; done
    curl -sS -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"command":"shutdown","reason":"c suite","timeout":"10s"}' \
        "http://$http_addr/v1/instances/c-example/ex1/commands" >"$out/example_shutdown.json"
    for _ in $(seq 1 100); do kill -0 "$ex" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$ex" 2>/dev/null; then
        kill "$ex"
        echo "example service did not exit after shutdown"
        return 1
    fi
    wait "$ex" && grep -q '"ok":true' "$out/example_shutdown.json" && grep -q '^stopped' "$log"
}
if [ -n "$http_addr" ]; then
    run_suite "c example service exits on shutdown" example_shutdown
else
    echo "== the registry serves no HTTP API: example shutdown not run"
    suites_failed=$((suites_failed + 1))
fi

echo "c suites: $((suites - suites_failed)) passed, $suites_failed failed"
[ "$suites_failed" -eq 0 ]
