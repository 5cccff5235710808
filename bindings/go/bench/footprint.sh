#!/usr/bin/env bash
# Go footprint benchmark (not a test): bench/footprint (one binary) with the client and
# without it (-client=false), side by side for SECONDS (default 60), ROUNDS times (default 2),
# against a real registry started here (stopped by its PID at the end). Prints each pair, the
# difference and the load average. Needs target/release/libsfc.a (make ffi-release), the .pc
# files of `bash scripts/dist-c.sh dev-pc target/pkgconfig`, and an `sfc` binary (SFC_BIN,
# default target/release/sfc or else target/debug/sfc).
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
. "$root/scripts/lib/wait-for-line.sh"
seconds=${1:-60}
rounds=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
# Further arguments go to the client's run only, for attribution (-no-runtime-metrics,
# -no-watch, -no-metrics).
out=${SFC_TEST_OUT:-$root/target/test-out}/footprint-go
mkdir -p "$out"
sfc=${SFC_BIN:-$root/target/release/sfc}
[ -x "$sfc" ] || sfc=$root/target/debug/sfc
(cd "$root/bindings/go" && PKG_CONFIG_PATH=$root/target/pkgconfig go build -o "$out/footprint" ./bench/footprint)

data=$(mktemp -d)
"$sfc" registry --listen 127.0.0.1:0 --data-dir "$data" --http off >"$out/registry.stdout" 2>"$out/registry.stderr" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
addr=$(registry_address "$out/registry.stdout")
[ -n "$addr" ] || { echo "registry did not start"; exit 1; }

export SFC_REGISTRY=$addr SFC_CA=$data/tls/ca.pem
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" "$2"; }
echo "go $(go env GOVERSION), $(nproc) cores, $(date -u +%FT%TZ), client flags: ${*:-(defaults)}"
for round in $(seq 1 "$rounds"); do
    echo "round $round: load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"
    "$out/footprint" -client=false -seconds "$seconds" >"$out/baseline.txt" &
    b=$!
    "$out/footprint" -seconds "$seconds" "$@" >"$out/with-client.txt"
    wait $b
    cat "$out/baseline.txt" "$out/with-client.txt"
    awk -v bc="$(field cpu_ms_per_s "$out/baseline.txt")" -v cc="$(field cpu_ms_per_s "$out/with-client.txt")" \
        -v br="$(field rss_kib "$out/baseline.txt")" -v cr="$(field rss_kib "$out/with-client.txt")" \
        'BEGIN { printf "client + watch adds: %.3f ms CPU per second, %.2f MiB resident (%d KiB)\n", cc - bc, (cr - br) / 1024, cr - br }'
    echo "round $round: load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
done
