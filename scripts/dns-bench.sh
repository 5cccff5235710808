#!/usr/bin/env bash
# DNS benchmark (not a test; BENCHMARKS.md "DNS interface"): a registry with `--dns` on
# 127.0.0.1:7590, 10,000 simulated instances reporting once a second through `sfc bench`
# (FLEET=0: none), then `examples/dns_bench` for SECONDS (default 20) at 4 and 16 concurrent
# queries. Prints, beside each run, the load average, the registry's reports/s and its CPU
# (utime+stime from /proc/PID/stat) over the run. Every process it starts is stopped by PID.
# Needs `cargo build --release --features sfc/etcd -p sfc --bins --example dns_bench`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-20}
bin=$root/target/release
data=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
metric() { curl -s http://127.0.0.1:7591/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
"$bin/sfc" registry --listen 127.0.0.1:7589 --http 127.0.0.1:7591 --dns 127.0.0.1:7590 \
    --dns-rate-limit 0 --store memory --data-dir "$data/d" >"$data/registry.log" 2>&1 &
reg=$!
pids+=("$reg")
for _ in $(seq 100); do
    [ -f "$data/d/tls/ca.pem" ] && curl -sf http://127.0.0.1:7591/metrics >/dev/null && break
    sleep 0.2
done
if [ "${FLEET:-1}" = 1 ]; then
    "$bin/sfc" bench --registry 127.0.0.1:7589 --ca "$data/d/tls/ca.pem" --clients 10000 \
        --duration 600s >"$data/bench.log" 2>&1 &
    pids+=("$!")
    online=0
    for _ in $(seq 600); do
        online=$(metric 'sfc_registry_instances{status="online"}')
        [ "${online:-0}" -ge 10000 ] && break
        sleep 0.5
    done
    echo "fleet online: $online"
fi
for c in 4 16; do
    r0=$(metric sfc_registry_reports_total) t0=$(date +%s.%N)
    c0=$(awk '{ print $14 + $15 }' "/proc/$reg/stat")
    echo "== $c concurrent; load before: $(cat /proc/loadavg)"
    "$bin/examples/dns_bench" --dns 127.0.0.1:7590 --registry 127.0.0.1:7589 \
        --ca "$data/d/tls/ca.pem" --duration "${seconds}s" --concurrency "$c" 2>&1 | tail -1
    r1=$(metric sfc_registry_reports_total) t1=$(date +%s.%N)
    c1=$(awk '{ print $14 + $15 }' "/proc/$reg/stat")
    python3 -c "import sys; r0, r1, t0, t1, c0, c1 = map(float, sys.argv[1:]); d = t1 - t0; \
print(f'   reports/s during: {(r1 - r0) / d:.0f}; registry CPU: {(c1 - c0) / d:.0f} % of a core')" \
        "$r0" "$r1" "$t0" "$t1" "$c0" "$c1"
    echo "   load after: $(cat /proc/loadavg)"
done
