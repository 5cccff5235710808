#!/usr/bin/env bash
# Footprint benchmark of `sfc agent` (not a test): the agent standing for `sleep` at the default
# 1 s interval, against a real registry started here (both stopped by their PIDs at the end).
# After a 5 s warm-up it reads the agent's CPU time (utime+stime, /proc/<pid>/stat) over
# SECONDS (default 60), samples its VmRSS / RssAnon / RssFile every second (mean) and counts
# its context switches (all threads). Extra arguments go to the agent, e.g. a check:
#   bash scripts/agent-footprint.sh 60 --check 'tcp://127.0.0.1:22 interval=10s'
# Needs an `sfc` binary (SFC_BIN, default target/release/sfc or else target/debug/sfc). With
# AGENT=sfc-agent the agent is the stand-alone `sfc-agent` binary beside it (no registry code)
# instead of `sfc agent`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/wait-for-line.sh"
seconds=${1:-60}
shift || true
sfc=${SFC_BIN:-$root/target/release/sfc}
[ -x "$sfc" ] || sfc=$root/target/debug/sfc
data=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$data"
}
trap cleanup EXIT
"$sfc" registry --store memory --listen 127.0.0.1:0 --http off --data-dir "$data" >"$data/registry.stdout" 2>"$data/registry.stderr" &
pids+=($!)
addr=$(registry_address "$data/registry.stdout" "${pids[0]}")
[ -n "$addr" ] || { echo "registry did not start"; exit 1; }
case ${AGENT:-sfc} in
    sfc) agent_cmd=("$sfc" agent) ;;
    sfc-agent) agent_cmd=("$(dirname "$sfc")/sfc-agent") ;;
    *) echo "AGENT must be sfc or sfc-agent, not ${AGENT}" >&2; exit 2 ;;
esac
"${agent_cmd[@]}" --registry "$addr" --ca "$data/tls/ca.pem" --group footprint --instance-id agent "$@" \
    -- sleep $((seconds + 60)) 2>"$data/agent.stderr" &
agent=$!
pids=("$agent" "${pids[@]}")
sleep 5
kill -0 "$agent" || { cat "$data/agent.stderr"; exit 1; }
tck=$(getconf CLK_TCK)
cpu() { awk '{ s = substr($0, index($0, ")") + 2); split(s, f, " "); print f[12] + f[13] }' "/proc/$agent/stat"; }
switches() { awk '/ctxt_switches/ { n += $2 } END { print n }' /proc/"$agent"/task/*/status; }
kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$agent/status"; }
echo "load average at the start: $(cat /proc/loadavg)"
c0=$(cpu); s0=$(switches); rss=0; anon=0; file=0
for _ in $(seq 1 "$seconds"); do
    sleep 1
    rss=$((rss + $(kib VmRSS))); anon=$((anon + $(kib RssAnon))); file=$((file + $(kib RssFile)))
done
c1=$(cpu); s1=$(switches)
echo "load average at the end:   $(cat /proc/loadavg)"
echo "threads: $(ls /proc/$agent/task | wc -l)"
awk -v name="${agent_cmd[*]##*/}" -v c="$((c1 - c0))" -v t="$tck" -v n="$seconds" -v r="$rss" -v a="$anon" -v f="$file" -v s="$((s1 - s0))" 'BEGIN {
    printf "%s: %.3f ms CPU per second, %.2f MiB resident (mean; anon %.2f + file %.2f), %.1f context switches/s\n",
        name, c * 1000 / t / n, r / n / 1024, a / n / 1024, f / n / 1024, s / n }'
