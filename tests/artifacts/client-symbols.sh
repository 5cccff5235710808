#!/usr/bin/env bash
# Client artifacts carry no server code: the C library (libsfc.a, libsfc.so, which the Go
# binding links too) and the Node.js client addon must define no symbol of the registry's
# crates (axum, hyper, tower, rusqlite and SQLite itself, etcd-client, rcgen, sfc-registry).
# The Node.js registry addon is the control: the same search must find them there, so a
# search that finds nothing anywhere cannot pass.
#
#   bash tests/artifacts/client-symbols.sh LIBSFC_A LIBSFC_SO CLIENT_NODE REGISTRY_NODE
set -uo pipefail
SERVER='axum|hyper[0-9]*::|hyper_util|tower::|rusqlite|sqlite3_|etcd_client|rcgen|sfc_registry'
pass=0
fail=0
defined() { nm -C --defined-only "$1" 2>/dev/null; }
check_clean() {
    local f=$1
    if [ ! -s "$f" ]; then
        echo "FAILED: $f is missing (build it first)"; fail=$((fail + 1)); return
    fi
    local hits
    hits=$(defined "$f" | grep -E "$SERVER" | head -n 5)
    if [ -n "$hits" ]; then
        echo "FAILED: $f defines server symbols, e.g.:"; echo "$hits"; fail=$((fail + 1))
    elif [ "$(defined "$f" | grep -c 'sfc_client')" = 0 ]; then
        echo "FAILED: $f defines no sfc_client symbol: nothing was checked"; fail=$((fail + 1))
    else
        echo "ok: $f holds no server code"; pass=$((pass + 1))
    fi
}
for f in "$1" "$2" "$3"; do check_clean "$f"; done
if [ "$(defined "$4" | grep -cE "$SERVER")" -gt 0 ]; then
    echo "ok: the search finds server symbols in the registry addon $4"; pass=$((pass + 1))
else
    echo "FAILED: no server symbol found in $4 either: the search is broken"; fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
