#!/usr/bin/env bash
# Footprint benchmark (not a test): the same C host with and without the client, side by side
# for SECONDS (default 60) against a real registry started here (stopped by its PID at the
# end). Prints both lines and the difference. Needs target/release/libsfc.a and an `sfc`
# binary (SFC_BIN, default target/release/sfc or else target/debug/sfc).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/scripts/lib/wait-for-line.sh"
seconds=${1:-60}
out=${SFC_TEST_OUT:-$root/target/test-out}/footprint
mkdir -p "$out"
sfc=${SFC_BIN:-$root/target/release/sfc}
[ -x "$sfc" ] || sfc=$root/target/debug/sfc
flags=(-std=c11 -O2 -Wall -Wextra -Werror -pedantic -I"$root/include")
# --gc-sections, as a host linking libsfc.a should (README "Install"): without it the unused
# code stays in the binary and its pages count in the resident memory measured here.
gcc "${flags[@]}" "$root/examples/c/footprint.c" "$root/target/release/libsfc.a" -lm -ldl -lpthread -Wl,--gc-sections -o "$out/with-client"
gcc "${flags[@]}" -DSFC_FOOTPRINT_NO_CLIENT "$root/examples/c/footprint.c" -o "$out/baseline"

data=$(mktemp -d)
"$sfc" registry --listen 127.0.0.1:0 --data-dir "$data" >"$out/registry.stdout" 2>"$out/registry.stderr" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
addr=$(registry_address "$out/registry.stdout")
[ -n "$addr" ] || { echo "registry did not start"; exit 1; }

export SFC_REGISTRY=$addr SFC_CA=$data/tls/ca.pem
"$out/baseline" "$seconds" >"$out/baseline.txt" &
b=$!
"$out/with-client" "$seconds" >"$out/with-client.txt"
wait $b
cat "$out/baseline.txt" "$out/with-client.txt"
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" "$2"; }
awk -v bc="$(field cpu_ms_per_s "$out/baseline.txt")" -v cc="$(field cpu_ms_per_s "$out/with-client.txt")" \
    -v br="$(field rss_kib "$out/baseline.txt")" -v cr="$(field rss_kib "$out/with-client.txt")" \
    'BEGIN { printf "client adds: %.3f ms CPU per second, %.2f MiB resident (%d KiB)\n", cc - bc, (cr - br) / 1024, cr - br }'
