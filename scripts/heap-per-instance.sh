#!/usr/bin/env bash
# Where a connected instance's registry memory is (issue 16 point 2), measured: the live heap
# of a registry holding CLIENTS connections, attributed to call sites by heaptrack.
#
#   scripts/heap-per-instance.sh [CLIENTS]
#
# Starts `sfc registry` (a release build without jemalloc, since heaptrack sees only malloc:
# `cargo build --release --no-default-features --features etcd -p sfc`) under heaptrack,
# drives it with `sfc bench` (protobuf, steady, 5 s interval), SIGKILLs it 12 s after the
# fleet is connected, so that what heaptrack counts as "leaked" is what was live at that
# moment, and prints that heap per instance, grouped by component (scripts/lib/heap_breakdown.py).
set -euo pipefail
clients=${1:-10000}
root=$(cd "$(dirname "$0")/.." && pwd)
sfc=${SFC_BIN:-$root/target/release/sfc}
[ -x "$sfc" ] || { echo "build it first (see the top of $0)" >&2; exit 1; }
command -v heaptrack >/dev/null || { echo "heaptrack is needed (Debian package heaptrack)" >&2; exit 1; }
work=$(mktemp -d)
ht_pid= reg_pid= bench_pid=
cleanup() { [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null; [ -n "$reg_pid" ] && kill -KILL "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
RUST_LOG=warn heaptrack -o "$work/heap" "$sfc" registry --listen 127.0.0.1:0 --http 127.0.0.1:0 --dns 127.0.0.1:0 \
  --data-dir "$work/data" >"$work/registry.log" 2>&1 &
ht_pid=$!
for _ in $(seq 600); do grep -q "registry listening on .* (tls)" "$work/registry.log" 2>/dev/null && break; sleep 0.2; done
listen=$(grep -o "registry listening on [^ ]* (tls)" "$work/registry.log" | awk '{print $4}')
[ -n "$listen" ] || { cat "$work/registry.log"; exit 1; }
# heaptrack runs the registry as its child's child: the process whose executable is sfc.
for p in $(pgrep -f -- "--data-dir $work/data"); do
  [ "$(readlink "/proc/$p/exe")" = "$(readlink -f "$sfc")" ] && reg_pid=$p
done
[ -n "$reg_pid" ] || { echo "registry process not found" >&2; exit 1; }
echo "registry pid $reg_pid on $listen; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$sfc" bench --registry "$listen" --ca "$work/data/tls/ca.pem" --registry-pid "$reg_pid" --clients "$clients" \
  --interval 5s --duration 20s --connect-rate 2000 --codec protobuf >"$work/bench.log" 2>&1 &
bench_pid=$!
for _ in $(seq 600); do
  [ "$(ls "/proc/$reg_pid/fd" | wc -l)" -ge $((clients + 5)) ] && break
  kill -0 "$bench_pid" 2>/dev/null || { cat "$work/bench.log"; exit 1; }
  sleep 0.5
done
sleep 12
grep VmRSS "/proc/$reg_pid/status"
kill -KILL "$reg_pid"; reg_pid=
wait "$bench_pid" || true; bench_pid=
wait "$ht_pid" || true
heaptrack_print -f "$work/heap.zst" --print-leaks 0 --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  -F "$work/stacks.txt" --flamegraph-cost-type leaked >/dev/null
python3 "$root/scripts/lib/heap_breakdown.py" "$work/stacks.txt" "$clients"
