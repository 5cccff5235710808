#!/usr/bin/env bash
# What the operator surfaces cost at fleet scale (issue 21; BENCHMARKS.md "Operator surfaces").
# Loopback only; every process it starts is stopped by its PID when it ends (also on error or
# Ctrl-C); every wait is bounded. Prints one JSON line per measurement and asserts nothing.
#
#   scripts/bench-dashboard.sh [dashboard|metrics|all]      (default all)
#
# dashboard: one release `sfc registry --store memory`, CLIENTS instances from `sfc bench` in a
#   separate process (protobuf, one report per INTERVAL each), then
#   tests/browser/measure-dashboard.mjs: registry CPU for WINDOW s with no viewer, one headless
#   chromium viewer (first paint of the overview, drill into the `bench` group, then WINDOW s of
#   the bytes it downloads and the registry's CPU), and WINDOW s with no viewer again; then
#   /metrics (the default, --metrics-instances none) scraped SCRAPES times.
# metrics: a registry (SQLite store) loaded with legacy records (scripts/legacy-load.mjs: no
#   connection held per instance, each online for an hour) to each size in SIZES; at each size it
#   is restarted once per --metrics-instances setting (none, BOUND, all), its records restored
#   from the store, and /metrics scraped SCRAPES times: series, bytes plain and gzip, time.
#
# Environment (defaults): SFC=target/release/sfc CLIENTS=19000 INTERVAL=5s WINDOW=20
#   CONNECT_RATE=500 SIZES="19000 50000" BOUND=1000 SCRAPES=5 NGROUPS=100
#   FLEET_UP=600 (seconds the bench fleet may take to come up) DRILL=bench (the group the viewer
#   opens; `sfc bench` puts every n-th client in bench-lat, all of them in small fleets)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/scripts/lib/wait-for-line.sh"

what=${1:-all}
case $what in dashboard|metrics|all) ;; *) echo "usage: $0 [dashboard|metrics|all]" >&2; exit 2 ;; esac
SFC=${SFC:-$repo/target/release/sfc}
CLIENTS=${CLIENTS:-19000}
INTERVAL=${INTERVAL:-5s}
WINDOW=${WINDOW:-20}
CONNECT_RATE=${CONNECT_RATE:-500}
SIZES=${SIZES:-19000 50000}
BOUND=${BOUND:-1000}
SCRAPES=${SCRAPES:-5}
NGROUPS=${NGROUPS:-100}
FLEET_UP=${FLEET_UP:-600}
DRILL=${DRILL:-bench}
[ -x "$SFC" ] || { echo "$SFC is missing: nice cargo build --release --features sfc/etcd -p sfc" >&2; exit 1; }
[ -d "$repo/tests/browser/node_modules/playwright-core" ] || { echo "playwright-core is missing: bash tests/setup.sh" >&2; exit 1; }

work=$(mktemp -d /tmp/sfc-bench-dashboard.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # PID: SIGTERM, then SIGKILL after 10 s
    local p=$1 _
    kill -TERM "$p" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

# start_registry NAME ARGS...: sets REG_PID, REG_ADDR, HTTP_ADDR, REG_DIR.
start_registry() {
    local name=$1; shift
    REG_DIR=$work/$name
    mkdir -p "$REG_DIR"
    RUST_LOG=error "$SFC" registry --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$REG_DIR" \
        "$@" >"$REG_DIR/out" 2>"$REG_DIR/err" &
    REG_PID=$!
    pids+=("$REG_PID")
    REG_ADDR=$(registry_address "$REG_DIR/out" "$REG_PID") || true
    HTTP_ADDR=$(wait_for_line "$REG_DIR/out" 's/^sfc http listening on \([^ ]*\).*/\1/p' 200 "$REG_PID") || true
    if [ -z "$REG_ADDR" ] || [ -z "$HTTP_ADDR" ]; then
        echo "the registry did not start: $(cat "$REG_DIR/err")" >&2
        exit 1
    fi
}

# summary FIELD: .totals.FIELD of /v1/summary (empty when the registry does not answer).
summary() {
    curl -s --max-time 10 "http://$HTTP_ADDR/v1/summary" |
        python3 -c "import json,sys; print(json.load(sys.stdin)['totals']['$1'])" 2>/dev/null || true
}

# wait_total FIELD N SECONDS [PID]: until /v1/summary's totals.FIELD >= N; fails after SECONDS
# or when PID (the load generator) is gone.
wait_total() {
    local field=$1 n=$2 secs=$3 pid=${4:-} got= _
    for _ in $(seq 1 "$secs"); do
        got=$(summary "$field")
        [ -n "$got" ] && [ "$got" -ge "$n" ] && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "the load generator exited with $got of $n $field" >&2; return 1
        fi
        sleep 1
    done
    echo "only $got of $n $field after $secs s" >&2
    return 1
}

# scrape LABEL INSTANCES: /metrics SCRAPES times; one JSON line.
scrape() {
    local label=$1 n=$2 times=() i line
    curl -s --max-time 60 "http://$HTTP_ADDR/metrics" >"$work/metrics.txt"
    local size series gz
    size=$(stat -c %s "$work/metrics.txt")
    series=$(grep -vc '^#' "$work/metrics.txt" || true)
    gz=$(curl -s --max-time 60 -H 'accept-encoding: gzip' -o /dev/null -w '%{size_download}' "http://$HTTP_ADDR/metrics")
    for i in $(seq 1 "$SCRAPES"); do
        line=$(curl -s --max-time 60 -o /dev/null -w '%{size_download} %{time_total}' "http://$HTTP_ADDR/metrics")
        times+=("${line#* }")
    done
    python3 - "$label" "$n" "$size" "$series" "$gz" "$(cat /proc/loadavg)" "${times[@]}" <<'EOF'
import json, statistics, sys
label, n, size, series, gz, load, *times = sys.argv[1:]
ms = sorted(float(t) * 1000 for t in times)
print(json.dumps({"metrics_instances": label, "instances": int(n), "series": int(series),
                  "bytes": int(size), "gzip_bytes": int(gz), "scrape_ms_min": round(ms[0], 1),
                  "scrape_ms_median": round(statistics.median(ms), 1), "scrape_ms_max": round(ms[-1], 1),
                  "loadavg": load}))
EOF
}

# ticks: the registry's utime + stime (clock ticks).
ticks() { awk '{ print $14 + $15 }' "/proc/$REG_PID/stat"; }

# request_cost: registry CPU per request of the two kinds a viewer repeats (/v1/summary every
# 5 s, /v1/samples for the rows on screen every 2 s), from N back-to-back requests each, less
# what the registry spent meanwhile without them (the rate of a WINDOW s baseline just before).
# Far less noisy than one viewer's few requests against the fleet's own load.
request_cost() {
    local n=100 hz ids since t0 w0 t1 w1 u i base
    hz=$(getconf CLK_TCK)
    ids=$(curl -s "http://$HTTP_ADDR/v1/instances?group=$DRILL&fields=id&limit=34" |
        python3 -c "import json,sys,urllib.parse; print(','.join(urllib.parse.quote(r['id'], safe='') for r in json.load(sys.stdin)))")
    since=$(( $(date +%s%3N) - 2000 ))
    t0=$(ticks); w0=$(date +%s%N); sleep "$WINDOW"; t1=$(ticks); w1=$(date +%s%N)
    base="$t0 $w0 $t1 $w1"
    for u in "/v1/summary" "/v1/samples?ids=$ids&since=$since"; do
        t0=$(ticks); w0=$(date +%s%N)
        for i in $(seq 1 $n); do curl -s -o /dev/null -H 'accept-encoding: gzip' "http://$HTTP_ADDR$u"; done
        t1=$(ticks); w1=$(date +%s%N)
        # shellcheck disable=SC2086
        python3 - "$u" "$n" "$hz" $base "$t0" "$w0" "$t1" "$w1" <<'EOF'
import json, sys
u, n, hz, *v = sys.argv[1:]
n, hz = int(n), int(hz)
bt0, bw0, bt1, bw1, t0, w0, t1, w1 = map(int, v)
rate = (bt1 - bt0) / hz / ((bw1 - bw0) / 1e9)          # cores busy without the requests
spent = (t1 - t0) / hz - rate * (w1 - w0) / 1e9         # CPU seconds the requests added
print(json.dumps({"request": u.split("?")[0], "requests": n, "baseline_cpu_percent": round(rate * 100, 1),
                  "cpu_ms_per_request": round(spent * 1000 / n, 2),
                  "wall_ms_per_request": round((w1 - w0) / 1e6 / n, 1)}))
EOF
    done
}

dashboard() {
    start_registry dash --store memory --metrics-instances none
    "$SFC" bench --registry "$REG_ADDR" --ca "$REG_DIR/tls/ca.pem" --registry-pid "$REG_PID" \
        --clients "$CLIENTS" --interval "$INTERVAL" --duration 30m --codec protobuf \
        --connect-rate "$CONNECT_RATE" --json >"$work/bench.out" 2>"$work/bench.err" &
    local bench=$!
    pids+=("$bench")
    local t0=$SECONDS
    wait_total online "$CLIENTS" "$FLEET_UP" "$bench" || { tail -5 "$work/bench.err" >&2; exit 1; }
    echo "{\"fleet_up_s\": $((SECONDS - t0)), \"clients\": $CLIENTS, \"interval\": \"$INTERVAL\", \"loadavg\": \"$(cat /proc/loadavg)\"}"
    node "$repo/tests/browser/measure-dashboard.mjs" "$HTTP_ADDR" "$REG_PID" "$DRILL" "$WINDOW"
    local summary_ms=() i
    for i in $(seq 1 "$SCRAPES"); do
        summary_ms+=("$(curl -s --max-time 60 -o /dev/null -w '%{time_total}' "http://$HTTP_ADDR/v1/summary")")
    done
    echo "{\"summary_seconds\": \"${summary_ms[*]}\"}"
    request_cost
    scrape none "$(summary instances)"
    echo "{\"online_at_end\": $(summary online), \"instances_at_end\": $(summary instances)}"
    stop "$bench"
    stop "$REG_PID"
}

# load FROM TO: legacy records FROM..TO-1 into the registry, from two loader processes (the
# client's TLS handshakes are the slow part), then waits until the registry holds TO records.
load() {
    local from=$1 to=$2 mid=$(( ($1 + $2) / 2 )) a b
    node "$repo/scripts/legacy-load.mjs" "$REG_ADDR" "$REG_DIR/tls/ca.pem" "$from" "$mid" "$NGROUPS" 64 >&2 &
    a=$!; pids+=("$a")
    node "$repo/scripts/legacy-load.mjs" "$REG_ADDR" "$REG_DIR/tls/ca.pem" "$mid" "$to" "$NGROUPS" 64 >&2 &
    b=$!; pids+=("$b")
    wait "$a" && wait "$b" || { echo "the legacy loader failed" >&2; exit 1; }
    wait_total instances "$to" 60
}

metrics() {
    local mode size have=0 t0
    # One data directory (SQLite) loaded once per size; each setting is a restart on it: the
    # records and their last metrics are restored from the store, no client reconnects.
    for size in $SIZES; do
        start_registry metrics --store sqlite --max-legacy-instances 60000 --max-legacy-group-instances 60000
        load "$have" "$size"
        have=$size
        stop "$REG_PID"
        for mode in none "$BOUND" all; do
            t0=$SECONDS
            start_registry metrics --store sqlite --metrics-instances "$mode" \
                --max-legacy-instances 60000 --max-legacy-group-instances 60000
            wait_total online "$size" 120
            echo "{\"restored\": $size, \"seconds\": $((SECONDS - t0))}" >&2
            scrape "$mode" "$(summary instances)"
            stop "$REG_PID"
        done
    done
}

case $what in
    dashboard) dashboard ;;
    metrics) metrics ;;
    all) dashboard; metrics ;;
esac
