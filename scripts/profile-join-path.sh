#!/usr/bin/env bash
# What a join costs (issue 16 point 6), counted in instructions by callgrind, so the figures are
# the same on a busy machine as on a quiet one: a fresh join (full TLS 1.3 handshake,
# preamble, hello, welcome, the `online` transition through the group commit) and a resumed
# re-join (the whole fleet drops at once and comes back with its session tickets: an `offline`
# and an `online` transition each), on both sides.
#
#   scripts/profile-join-path.sh [CLIENTS] [STORE]
#
# Starts `sfc registry` (release build, STORE: sqlite by default, or memory) and `sfc bench
# --scenario rejoin` (protobuf; the load generator runs the client library's TLS config and
# the protocol's codecs), both under callgrind with instrumentation off. Instrumentation is on
# in both processes (callgrind_control -i on/off) for two windows: from the bench's start until
# every client's full handshake and welcome are counted, then from the fleet's drop until
# every client's resumed handshake and welcome are counted (the registry's own
# sfc_registry_tls_handshakes_total and online count). It prints the instructions per fresh
# join and per resumed join of each process and the functions they went to (inclusive and
# self). Valgrind slows each process ~50x and serialises its threads: keep CLIENTS small
# (the default 200) so that no handshake reaches the bench's 10 s connect timeout; the script
# says so if one did (connect errors in the bench's output).
#
# CLIENT_SIDE=0 runs the bench natively (the registry's figures only, faster).
# KEEP=DIR copies the callgrind files there (for callgrind_annotate --tree=caller and such).
# Build first: nice cargo build --release --features sfc/etcd -p sfc
set -euo pipefail
clients=${1:-200} store=${2:-sqlite}
root=$(cd "$(dirname "$0")/.." && pwd)
sfc=${SFC_BIN:-$root/target/release/sfc}
[ -x "$sfc" ] || { echo "build it first: nice cargo build --release --features sfc/etcd -p sfc" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian package valgrind)" >&2; exit 1; }
case $store in sqlite|memory) ;; *) echo "STORE must be sqlite or memory, not $store" >&2; exit 2 ;; esac
work=$(mktemp -d)
reg_pid= bench_pid=
cleanup() { [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null; [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && cp "$work"/reg.*.* "$work"/bench.*.* "$KEEP"/ 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen=127.0.0.1:$(port) http=127.0.0.1:$(port)
vg() { exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$1.%p" "${@:2}"; }
vg reg "$sfc" registry --listen "$listen" --http "$http" --data-dir "$work/data" --store "$store" \
  --missed-reports 20 >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 600); do grep -q "http listening" "$work/registry.log" 2>/dev/null && break; sleep 0.2; done
grep -q "http listening" "$work/registry.log" || { cat "$work/registry.log"; exit 1; }
metric() { curl -sf "http://$http/metrics" | awk -v m="$1" '$1 == m { print $2 + 0 }'; }
full() { metric 'sfc_registry_tls_handshakes_total{kind="full"}'; }
resumed() { metric 'sfc_registry_tls_handshakes_total{kind="resumed"}'; }
online() { metric 'sfc_registry_instances{status="online"}'; }
# Waits (at most 20 minutes) until the counter $1 reaches $2 and the whole fleet is online.
wait_for() {
  for _ in $(seq 2400); do
    [ "$($1)" -ge "$2" ] && [ "$(online)" -ge "$clients" ] && return 0; sleep 0.5
  done
  echo "timed out waiting for $1 >= $2 (now $($1), online $(online))" >&2; exit 1
}
cg() { # callgrind_control ARGS... on the registry, and on the bench when it runs under callgrind
  callgrind_control "$@" "$reg_pid" >/dev/null
  [ "${CLIENT_SIDE:-1}" = 1 ] && callgrind_control "$@" "$bench_pid" >/dev/null
  return 0
}
toggle() { cg -i "$1"; }
dump() { cg -d; }
# The interval is long (reports are not what is measured: about one per client falls in the
# re-join window); the bench waits one interval after its ramp, then the fleet drops a third
# of the way through the measured phase.
bench_vg=(); [ "${CLIENT_SIDE:-1}" = 1 ] && bench_vg=(vg bench)
"${bench_vg[@]}" "$sfc" bench --registry "$listen" --ca "$work/data/tls/ca.pem" --clients "$clients" \
  --interval 30s --duration 3s --connect-rate 100 --codec protobuf --scenario rejoin >"$work/bench.out" 2>&1 &
bench_pid=$! bench_pid0=$!
# The bench's own start-up (before its first connection) is not a join: wait for its
# callgrind control file, then switch both on.
[ "${CLIENT_SIDE:-1}" = 1 ] && for _ in $(seq 600); do callgrind_control -i off "$bench_pid" >/dev/null 2>&1 && break; sleep 0.1; done
load0=$(cut -d' ' -f1-3 /proc/loadavg)
full0=$(full) resumed0=$(resumed)
cg -z
toggle on
wait_for full $((full0 + clients))
toggle off; dump
fresh_n=$(( $(full) - full0 ))
# Re-joins: on from before the drop (the fleet idles until it, which costs next to nothing)
# until every client has resumed and is online again.
cg -z
toggle on
for _ in $(seq 1200); do [ "$(online)" -lt "$clients" ] && break; sleep 0.2; done
wait_for resumed $((resumed0 + clients))
toggle off; dump
resumed_n=$(( $(resumed) - resumed0 ))
wait "$bench_pid" || true
bench_pid=
errors=$(awk '/connect errors/ { print; exit }' "$work/bench.out")

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'; }
# callgrind_control -d writes <prefix>.<pid>.<n>: dump 1 is the fresh window, dump 2 the re-joins.
out() { echo "$work/$1.$2.$3"; }
top() { # file n inclusive|self: the functions, per join, with their source paths left out
  local incl=yes; [ "$3" = self ] && incl=no
  { callgrind_annotate --inclusive=$incl --threshold=100 "$1" 2>/dev/null \
    | awk '/^-+$/ { s++ } s >= 3 && $1 ~ /^[0-9,]+$/' \
    | grep -v -E '\?\?\?|std::sys::|_start|clone3|start_thread|__libc_start|tokio::runtime::(task|scheduler|context)|futures_util::future::|core::future::future|core::pin::Pin|task_tracker' \
    | sed -E 's#\) +[^ :]*:#) #; s/ \[[^]]*\]$//' \
    | awk -v n="$2" '{ v = $1; gsub(",", "", v); $1 = ""; printf "%9d %s\n", v / n, $0 }' \
    | cut -c1-180 | head -"${TOP:-30}"; } || true
}
echo "load at start: $load0; $clients clients, store $store; bench: ${errors:-no connect-errors line}"
echo "fresh joins in the window: $fresh_n (full handshakes); resumed re-joins: $resumed_n"
sides=reg; [ "${CLIENT_SIDE:-1}" = 1 ] && sides="reg bench"
for side in $sides; do
  [ $side = reg ] && pid=$reg_pid || pid=$bench_pid0
  f1=$(out $side "$pid" 1) f2=$(out $side "$pid" 2)
  name=$([ $side = reg ] && echo "registry" || echo "load generator (sfc bench: client TLS and codecs)")
  echo
  echo "=== $name ==="
  echo "instructions per fresh join:   $(( $(total "$f1") / (fresh_n > 0 ? fresh_n : 1) ))"
  echo "instructions per resumed join: $(( $(total "$f2") / (resumed_n > 0 ? resumed_n : 1) ))"
  for w in fresh resumed; do
    [ $w = fresh ] && f=$f1 n=$fresh_n || f=$f2 n=$resumed_n
    echo "--- $name, $w join: inclusive, per join ---"; top "$f" "$((n > 0 ? n : 1))" inclusive
    echo "--- $name, $w join: self, per join ---"; top "$f" "$((n > 0 ? n : 1))" self
  done
done
