#!/usr/bin/env bash
# Where a steady report's registry CPU goes (issue 16 point 5), counted in instructions by
# callgrind, so the figure is the same on a busy machine as on a quiet one.
#
#   scripts/profile-report-path.sh [CLIENTS] [INTERVAL] [WINDOW_SECONDS]
#
# Starts `sfc registry` (release build, SQLite store) under callgrind with instrumentation
# off, drives it with `sfc bench` (protobuf, steady), switches instrumentation on for
# WINDOW_SECONDS once the fleet is connected, and prints the instructions per accepted report
# (from the registry's own sfc_registry_reports_total) and the functions they went to.
# Valgrind slows the registry about 50x: keep CLIENTS/INTERVAL near 1,000 reports/s.
set -euo pipefail
clients=${1:-1000} interval=${2:-1s} window=${3:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
sfc=${SFC_BIN:-$root/target/release/sfc}
[ -x "$sfc" ] || { echo "build it first: cargo build --release -p sfc" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian package valgrind)" >&2; exit 1; }
work=$(mktemp -d)
reg_pid= bench_pid=
cleanup() { [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null; [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen=127.0.0.1:$(port) http=127.0.0.1:$(port)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
  "$sfc" registry --listen "$listen" --http "$http" --data-dir "$work/data" --missed-reports 20 >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 600); do grep -q "http listening" "$work/registry.log" 2>/dev/null && break; sleep 0.2; done
grep -q "http listening" "$work/registry.log" || { cat "$work/registry.log"; exit 1; }
reports() { curl -sf "http://$http/metrics" | awk '$1 == "sfc_registry_reports_total" { print $2 }'; }
"$sfc" bench --registry "$listen" --ca "$work/data/tls/ca.pem" --registry-pid "$reg_pid" --clients "$clients" \
  --interval "$interval" --duration $((window * 3))s --connect-rate 200 --codec protobuf >"$work/bench.out" 2>&1 &
bench_pid=$!
# Connected: every client's join is in the registry's count of online instances.
for _ in $(seq 1200); do
  online=$(curl -sf "http://$http/metrics" | awk '$1 == "sfc_registry_instances{status=\"online\"}" { print $2 + 0 }')
  [ "${online:-0}" -ge "$clients" ] && break; sleep 0.5
done
sleep 2
before=$(reports); callgrind_control -z "$reg_pid" >/dev/null; callgrind_control -i on "$reg_pid" >/dev/null
sleep "$window"
callgrind_control -d "$reg_pid" >/dev/null; callgrind_control -i off "$reg_pid" >/dev/null; after=$(reports)
out=$(ls -t "$work"/cg.*.* | head -1)
total=$(callgrind_annotate "$out" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
n=$((after - before))
echo "load $(cut -d' ' -f1-3 /proc/loadavg); $clients clients at $interval; $n reports in the ${window}s window"
echo "instructions per report (all registry threads, watcher and snapshots included): $((total / (n > 0 ? n : 1)))"
echo "--- inclusive, per report, our code and the libraries it calls ---"
callgrind_annotate --inclusive=yes "$out" | grep -E 'sfc_registry::|sfc_proto::|tokio_rustls::server::TlsStream.*poll_fill_buf|rustls::crypto|sqlite3_step|prost::message::Message::decode|write_vectored' \
  | awk -v n="$n" '{ gsub(",", "", $1); printf "%8d  %s\n", $1 / n, $0 }' | cut -c1-200 | head -40
