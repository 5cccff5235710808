#!/usr/bin/env bash
# The operator's and the Node.js user's installs, from the dist/ artifacts only (make dist-bin
# dist-npm first): in a scratch directory outside the checkout, with nothing from target/ on any
# path, it unpacks dist/sfc-<version>-<target>.tar.gz and runs bin/sfc registry (SQLite, then
# --store etcd against a real etcd on loopback ports), npm-installs the two npm tarballs into a
# fresh app with an empty npm cache and --offline (so npm cannot use the network), and runs a
# service that reports, looks another service up and is shut down by `bin/sfc shutdown`.
# One line per check, then `N passed, N failed`; exits non-zero on any failure. It stops only
# the processes it started, by PID. KEEP_SCRATCH=1 keeps the scratch directory.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tests/dist"
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
platform=$(node -p "process.platform + '-' + process.arch + '-' + (process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl')")
sfc_tgz="$repo/dist/sfc-$version-$target.tar.gz"
main_tgz="$repo/dist/npm/service-fleet-control-$version.tgz"
plat_tgz="$repo/dist/npm/service-fleet-control-$platform-$version.tgz"
TOKEN=dist-admin-token

# shellcheck source=tests/dist/lib.sh
. "$repo/tests/dist/lib.sh"
scrub_build_tree
unset SFC_BIN NODE_PATH LD_LIBRARY_PATH NAPI_RS_NATIVE_LIBRARY_PATH SFC_REGISTRY SFC_CA SFC_HTTP SFC_ADMIN_TOKEN

make_scratch node
cd "$scratch" || exit 1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_line FILE PATTERN SECONDS: waits until FILE has a line matching PATTERN.
wait_line() {
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "no line matching '$2' in $1 within $3 s:"
	cat "$1"
	return 1
}

# start_registry NAME ARGS...: starts bin/sfc registry in the background (PID kept for cleanup)
# and waits for its `listening` lines; sets REG_PID, REG_ADDR, REG_HTTP (empty with --http off).
start_registry() {
	local name=$1
	shift
	local out="$scratch/$name.out"
	"$scratch/sfc/bin/sfc" registry "$@" >"$out" 2>"$scratch/$name.err" &
	REG_PID=$!
	pids+=("$REG_PID")
	wait_line "$out" '^sfc registry listening on ' 30 || { cat "$scratch/$name.err"; return 1; }
	REG_ADDR=$(sed -n 's/^sfc registry listening on \([^ ]*\) (tls)$/\1/p' "$out")
	REG_HTTP=
	if [[ " $* " != *" --http off "* ]]; then
		wait_line "$out" '^sfc http listening on ' 10 || return 1
		REG_HTTP=$(sed -n 's/^sfc http listening on \([^ ]*\) .*/\1/p' "$out")
	fi
	[ -n "$REG_ADDR" ] || { echo "no TLS address in:"; cat "$out"; return 1; }
}

# stop_pid PID: SIGTERM to a process this script started, then waits for it; its exit status.
stop_pid() {
	kill -TERM "$1" && wait "$1"
}

no_target_on_paths() {
	env | grep -F "$repo/target" && { echo "the environment names $repo/target"; return 1; }
	case "$PWD" in "$repo"*) echo "running inside the checkout: $PWD"; return 1 ;; esac
	return 0
}
check "scratch directory $scratch is outside the checkout, nothing from target/ on any path" no_target_on_paths

for f in "$sfc_tgz" "$main_tgz" "$plat_tgz"; do
	[ -f "$f" ] || { echo "FAILED: $f is missing (make dist-bin dist-npm)"; echo "0 passed, 1 failed"; exit 1; }
done

# --- the operator's tarball -------------------------------------------------------------------
tarball_layout() {
	local want="sfc-$version-$target/
sfc-$version-$target/LICENSE
sfc-$version-$target/README.md
sfc-$version-$target/bin/
sfc-$version-$target/bin/sfc
sfc-$version-$target/bin/sfc-agent"
	local got
	got=$(tar -tzf "$sfc_tgz" | sort)
	[ "$got" = "$want" ] || { echo "tarball holds:"; echo "$got"; echo "expected:"; echo "$want"; return 1; }
	mkdir -p sfc && tar -xzf "$sfc_tgz" -C sfc --strip-components=1 &&
		grep -q 'Apache License' sfc/LICENSE && grep -q 'Version 2.0' sfc/LICENSE
}
check "$(basename "$sfc_tgz") holds bin/sfc, bin/sfc-agent, LICENSE (Apache-2.0) and README.md in sfc-$version-$target/" tarball_layout

version_line() {
	local got
	got=$(sfc/bin/sfc --version) || return 1
	echo "$got"
	[ "$got" = "sfc $version" ]
}
check "bin/sfc --version says 'sfc $version'" version_line

agent_version_line() {
	local got
	got=$(sfc/bin/sfc-agent --version) || return 1
	echo "$got"
	[ "$got" = "sfc-agent $version" ]
}
check "bin/sfc-agent --version says 'sfc-agent $version'" agent_version_line

stripped() {
	local sections
	# .debug_gdb_scripts is not debug info: 34 loaded bytes that name Rust's pretty-printers.
	sections=$(readelf -S --wide sfc/bin/sfc | grep -o -E '\.(symtab|debug_[a-z_]+)' | grep -vx '.debug_gdb_scripts' | sort -u)
	[ -z "$sections" ] || { echo "bin/sfc still has: $sections"; return 1; }
	echo "$(stat -c %s sfc/bin/sfc) bytes"
}
check "bin/sfc is stripped (no .symtab, no debug info sections)" stripped

sqlite_registry() {
	start_registry sqlite --listen 127.0.0.1:0 --http off --data-dir "$scratch/data-sqlite" || return 1
	[ -s "$scratch/data-sqlite/tls/ca.pem" ] || { echo "no dev CA in data-sqlite/tls/ca.pem"; return 1; }
	local status
	status=$(sfc/bin/sfc status --registry "$REG_ADDR" --ca "$scratch/data-sqlite/tls/ca.pem" --json) || return 1
	echo "$status"
	[ "$(tr -d ' \n' <<<"$status")" = "[]" ] || return 1
	stop_pid "$REG_PID" || { echo "exit status $? after SIGTERM"; cat "$scratch/sqlite.err"; return 1; }
	[ -s "$scratch/data-sqlite/registry.db" ]
}
check "bin/sfc registry --http off (SQLite) starts, answers sfc status, stops on SIGTERM" sqlite_registry

# --- etcd ---------------------------------------------------------------------------------------
ETCD_URL=
start_etcd() {
	local etcd_bin client peer
	etcd_bin=$(command -v etcd) || { echo "etcd is not installed (bash tests/setup.sh installs Debian's etcd-server)"; return 1; }
	client=$(free_port)
	peer=$(free_port)
	ETCD_URL="http://127.0.0.1:$client"
	"$etcd_bin" --name dist --data-dir "$scratch/etcd" \
		--listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
		--listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "dist=http://127.0.0.1:$peer" --initial-cluster-state new \
		--initial-cluster-token sfc-dist </dev/null >/dev/null 2>"$scratch/etcd.log" &
	pids+=("$!")
	local i
	for ((i = 0; i < 300; i++)); do
		node -e "fetch('$ETCD_URL/health').then(r => r.text()).then(t => process.exit(t.includes('\"health\":\"true\"') ? 0 : 1), () => process.exit(1))" && return 0
		sleep 0.1
	done
	echo "etcd not healthy within 30 s"
	tail -20 "$scratch/etcd.log"
	return 1
}
check "etcd on loopback ports answers /health" start_etcd

http_get() { node -e "fetch(process.argv[1]).then(async r => { const t = await r.text(); if (!r.ok) { console.log(r.status, t); process.exit(1) } process.stdout.write(t) }, e => { console.log(e.message); process.exit(1) })" "$1"; }

ETCD_REG_ADDR=
ETCD_REG_HTTP=
etcd_registry() {
	start_registry etcd --listen 127.0.0.1:0 --http 127.0.0.1:0 --admin-token "$TOKEN" \
		--data-dir "$scratch/data-etcd" --store etcd --etcd-endpoints "$ETCD_URL" || return 1
	ETCD_REG_ADDR=$REG_ADDR
	ETCD_REG_HTTP=$REG_HTTP
	ETCD_REG_PID=$REG_PID
	local metrics
	metrics=$(http_get "http://$ETCD_REG_HTTP/metrics") || return 1
	grep -E '^sfc_registry_store_up(\{[^}]*\})? 1$' <<<"$metrics" || { echo "store not up:"; grep store <<<"$metrics"; return 1; }
	[ ! -e "$scratch/data-etcd/registry.db" ] || { echo "a registry.db was written: not the etcd store"; return 1; }
}
check "bin/sfc registry --store etcd --etcd-endpoints $ETCD_URL starts with HTTP and an admin token, store up" etcd_registry

# --- the npm packages ---------------------------------------------------------------------------
main_has_no_binary() {
	local files
	files=$(tar -tzf "$main_tgz") || return 1
	grep -E '\.node$' <<<"$files" && { echo "the main package carries a binary"; return 1; }
	for f in package/LICENSE package/README.md package/index.js package/index.d.ts package/native.js package/native-registry.js package/node_modules/debug/package.json; do
		grep -qx "$f" <<<"$files" || { echo "missing $f"; return 1; }
	done
	tar -xzOf "$main_tgz" package/package.json | node -e "
		const p = JSON.parse(require('fs').readFileSync(0, 'utf8'))
		const want = { 'service-fleet-control-$platform': '$version' }
		if (p.version !== '$version') throw new Error('version ' + p.version)
		if (JSON.stringify(p.optionalDependencies) !== JSON.stringify(want)) throw new Error('optionalDependencies ' + JSON.stringify(p.optionalDependencies))
		console.log(p.name, p.version, JSON.stringify(p.optionalDependencies))"
}
check "$(basename "$main_tgz"): JavaScript, types, LICENSE, README, no .node; optionalDependencies names service-fleet-control-$platform@$version" main_has_no_binary

platform_package() {
	local files
	files=$(tar -tzf "$plat_tgz" | sort | paste -sd' ')
	[ "$files" = "package/LICENSE package/README.md package/package.json package/sfc-registry.$platform.node package/sfc.$platform.node" ] ||
		{ echo "platform package holds: $files"; return 1; }
	tar -xzOf "$plat_tgz" package/package.json | node -e "
		const p = JSON.parse(require('fs').readFileSync(0, 'utf8'))
		const [os, cpu, abi] = '$platform'.split('-')
		const libc = abi === 'gnu' ? 'glibc' : 'musl'
		const ok = p.version === '$version' && p.main === 'sfc.$platform.node' &&
			JSON.stringify(p.os) === JSON.stringify([os]) && JSON.stringify(p.cpu) === JSON.stringify([cpu]) && JSON.stringify(p.libc) === JSON.stringify([libc])
		console.log(JSON.stringify({ name: p.name, version: p.version, os: p.os, cpu: p.cpu, libc: p.libc, main: p.main }))
		process.exit(ok ? 0 : 1)"
	echo "$(stat -c %s "$plat_tgz") bytes packed"
	[ "$(stat -c %s "$plat_tgz")" -le 9000000 ]
}
check "$(basename "$plat_tgz"): both addons, os/cpu/libc, main = the client addon, <= 9 MB packed (bindings/node/scripts/pack.js)" platform_package

npm_install() {
	mkdir -p "$scratch/app" && cd "$scratch/app" || return 1
	echo '{ "name": "dist-app", "version": "1.0.0", "private": true }' >package.json
	# An empty cache and --offline: the install fails if npm needs anything from a registry.
	npm install --no-audit --no-fund --offline --cache "$scratch/npm-cache" "$main_tgz" "$plat_tgz" || return 1
	local r=0
	ls node_modules/service-fleet-control/*.node 2>/dev/null && { echo "a .node file in the main package"; r=1; }
	ls node_modules/service-fleet-control-$platform/ || r=1
	cp "$here/service.js" "$here/peer.js" "$here/registry.js" . || r=1
	return $r
}
check "npm install --offline (empty cache) of the two tarballs into a fresh app" npm_install
cd "$scratch/app" 2>/dev/null || cd "$scratch" || exit 1

require_version() {
	node -e "
		const sfc = require('service-fleet-control')
		const path = require.resolve('service-fleet-control-$platform')
		console.log('version', sfc.version, 'client addon', path)
		if (sfc.version !== '$version') process.exit(1)
		if (!path.startsWith('$scratch/app/node_modules/service-fleet-control-$platform/')) process.exit(1)"
}
check "require('service-fleet-control') loads the client addon from the platform package; version (nativeVersion()) is $version" require_version

check "Registry (embedded) loads sfc-registry.$platform.node from the platform package, starts and stops" node registry.js "$scratch/data-embedded"

service_shutdown() {
	local ca="$scratch/data-etcd/tls/ca.pem"
	SFC_REGISTRY=$ETCD_REG_ADDR SFC_CA=$ca node peer.js >"$scratch/peer.out" 2>&1 &
	local peer=$!
	pids+=("$peer")
	SFC_REGISTRY=$ETCD_REG_ADDR SFC_CA=$ca node service.js >"$scratch/service.out" 2>&1 &
	local svc=$!
	pids+=("$svc")
	wait_line "$scratch/service.out" '^ready$' 40 || return 1
	cat "$scratch/service.out"
	SFC_ADMIN_TOKEN=$TOKEN "$scratch/sfc/bin/sfc" shutdown dist-svc/svc-1 --http "http://$ETCD_REG_HTTP" --reason dist-test ||
		{ echo "sfc shutdown failed"; return 1; }
	local i
	for ((i = 0; i < 150; i++)); do
		kill -0 "$svc" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$svc" 2>/dev/null && { echo "the service still runs 15 s after sfc shutdown"; return 1; }
	wait "$svc" || { echo "the service exited with status $?"; cat "$scratch/service.out"; return 1; }
	cat "$scratch/service.out"
	grep -q '^shutdown received' "$scratch/service.out" && grep -q '^stopped$' "$scratch/service.out" || return 1
	local rec
	rec=$(http_get "http://$ETCD_REG_HTTP/v1/instances/dist-svc/svc-1") || return 1
	node -e "const r = JSON.parse(process.argv[1]); const i = r.instance ?? r; console.log('registry says', i.id, i.status); process.exit(i.status === 'left' ? 0 : 1)" "$rec" || return 1
	stop_pid "$peer" || { echo "the peer exited with status $?"; cat "$scratch/peer.out"; return 1; }
}
check "a service (Client) reports, looks up dist-peer, and exits on bin/sfc shutdown (registry on etcd); the registry shows it left" service_shutdown

stop_etcd_registry() {
	stop_pid "$ETCD_REG_PID" || { echo "exit status $?"; tail -20 "$scratch/etcd.err"; return 1; }
}
check "the etcd registry stops on SIGTERM with status 0" stop_etcd_registry

no_platform_package() {
	mkdir -p "$scratch/app-bare" && cd "$scratch/app-bare" || return 1
	echo '{ "name": "dist-app-bare", "version": "1.0.0", "private": true }' >package.json
	npm install --no-audit --no-fund --offline --cache "$scratch/npm-cache-bare" --omit=optional "$main_tgz" || return 1
	[ ! -e "node_modules/service-fleet-control-$platform" ] || { echo "the platform package was installed"; return 1; }
	node -e "
		try { require('service-fleet-control') } catch (e) {
			console.log(e.message)
			const ok = e.code === 'ERR_SFC_NATIVE_BINDING' && e.message.includes('$platform') && e.message.includes('build from source') && e.message.includes('npm run build')
			process.exit(ok ? 0 : 1)
		}
		console.log('require succeeded without the platform package'); process.exit(1)"
}
check "without the platform package, require fails naming $platform and how to build from source" no_platform_package

finish
