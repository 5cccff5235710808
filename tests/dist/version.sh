#!/usr/bin/env bash
# One version everywhere (issue 13, item 4): the workspace's `[workspace.package] version` is the
# version of `sfc --version` (from the dist tarball), of `sfc_version()` and `SFC_VERSION` in
# include/sfc.h, of both npm packages (package.json, the tarballs, the loaders' expected platform
# package version, `nativeVersion()` of the packed addon) and of the Go binding's `Version()`.
# What would need the C library built (sfc_version() at run time, Go's Version()) is run when
# dist/libsfc-<version>-<target>.tar.gz exists, and otherwise checked in the source: both
# return CARGO_PKG_VERSION of a crate whose version is the workspace's. Run after make dist-bin
# dist-npm. One line per check, then `N passed, N failed`.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo" || exit 1
V=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
platform=$(node -p "process.platform + '-' + process.arch + '-' + (process.report.getReport().header.glibcVersionRuntime ? 'gnu' : 'musl')")
# shellcheck source=tests/dist/lib.sh
. "$repo/tests/dist/lib.sh"
make_scratch version
# same WHAT GOT: GOT must be the workspace version.
same() {
	echo "$1: '$2', workspace: '$V'"
	[ "$2" = "$V" ]
}

[ -n "$V" ] || { echo "FAILED: no [workspace.package] version in Cargo.toml"; echo "0 passed, 1 failed"; exit 1; }
echo "workspace version: $V"

crates_inherit() {
	local bad=0 toml
	for toml in crates/*/Cargo.toml ffi/Cargo.toml bindings/node/Cargo.toml bindings/node/registry/Cargo.toml; do
		grep -q '^version\.workspace *= *true' "$toml" || { echo "$toml does not take the workspace version"; bad=1; }
	done
	return $bad
}
check "every crate (sfc, sfc-client, sfc-ffi, sfc-node, ...) has version.workspace = true" crates_inherit

sfc_version() {
	local tgz="dist/sfc-$V-$target.tar.gz"
	[ -f "$tgz" ] || { echo "$tgz is missing (make dist-bin)"; return 1; }
	tar -xzf "$tgz" -C "$scratch" || return 1
	same "sfc --version" "$("$scratch/sfc-$V-$target/bin/sfc" --version | sed -n 's/^sfc //p')"
}
check "sfc --version (dist/sfc-$V-$target.tar.gz)" sfc_version

header_version() {
	local maj min pat
	same "SFC_VERSION" "$(sed -n 's/^#define SFC_VERSION "\(.*\)"$/\1/p' include/sfc.h)" || return 1
	maj=$(sed -n 's/^#define SFC_VERSION_MAJOR \([0-9]*\)$/\1/p' include/sfc.h)
	min=$(sed -n 's/^#define SFC_VERSION_MINOR \([0-9]*\)$/\1/p' include/sfc.h)
	pat=$(sed -n 's/^#define SFC_VERSION_PATCH \([0-9]*\)$/\1/p' include/sfc.h)
	same "SFC_VERSION_MAJOR.MINOR.PATCH" "$maj.$min.$pat"
}
check "SFC_VERSION (and _MAJOR/_MINOR/_PATCH) in include/sfc.h" header_version

c_library_version() {
	local tgz="dist/libsfc-$V-$target.tar.gz"
	if [ -f "$tgz" ]; then
		mkdir -p "$scratch/libsfc" && tar -xzf "$tgz" -C "$scratch/libsfc" || return 1
		local inc lib
		inc=$(dirname "$(find "$scratch/libsfc" -name sfc.h | head -1)")
		lib=$(dirname "$(find "$scratch/libsfc" -name 'libsfc.so*' | head -1)")
		printf '#include <stdio.h>\n#include "sfc.h"\nint main(void) { printf("%%s %%s\\n", sfc_version(), SFC_VERSION); return 0; }\n' >"$scratch/v.c"
		cc -o "$scratch/v" "$scratch/v.c" -I"$inc" -L"$lib" -lsfc -Wl,-rpath,"$lib" || return 1
		local out
		out=$("$scratch/v") || return 1
		same "sfc_version() (from $tgz)" "${out%% *}" && same "SFC_VERSION of the packed header" "${out##* }"
	else
		echo "$tgz not built: checking the source"
		grep -q 'concat!(env!("CARGO_PKG_VERSION"), "\\0")' ffi/src/lib.rs ||
			{ echo "ffi/src/lib.rs: sfc_version() does not return CARGO_PKG_VERSION"; return 1; }
		grep -q '^version\.workspace *= *true' ffi/Cargo.toml
	fi
}
check "sfc_version() of libsfc" c_library_version

go_version() {
	# Version() is the C library's sfc_version() (checked above); nothing in the binding may
	# carry a version of its own.
	grep -Pzo 'func Version\(\) string \{\s*return C\.GoString\(C\.sfc_version\(\)\)\s*\}' bindings/go/ffi.go >/dev/null ||
		{ echo "bindings/go/ffi.go: Version() is not C.GoString(C.sfc_version())"; return 1; }
	local other
	other=$(grep -n -E '"[0-9]+\.[0-9]+\.[0-9]+"' bindings/go/*.go | grep -v '_test\.go' | grep -v -F "\"$V\"")
	[ -z "$other" ] || { echo "other version literals in the Go binding:"; echo "$other"; return 1; }
	echo "Version() returns sfc_version()"
}
check "the Go binding's Version() is sfc_version()" go_version

npm_sources() {
	same "bindings/node/package.json" "$(node -p "require('./bindings/node/package.json').version")" &&
		same "bindings/node/package-lock.json" "$(node -p "const l = require('./bindings/node/package-lock.json'); l.version + (l.packages[''].version === l.version ? '' : ' / ' + l.packages[''].version)")" &&
		for loader in native.js native-registry.js; do
			same "platform package version that bindings/node/$loader expects" \
				"$(grep -o -E 'expected [^ ]+ but got' "bindings/node/$loader" | sort -u | sed 's/^expected \(.*\) but got$/\1/' | paste -sd' ')" || return 1
		done
}
check "bindings/node: package.json, package-lock.json and the napi-rs loaders" npm_sources

npm_tarballs() {
	local main="dist/npm/service-fleet-control-$V.tgz" plat="dist/npm/service-fleet-control-$platform-$V.tgz"
	[ -f "$main" ] && [ -f "$plat" ] || { echo "$main or $plat is missing (make dist-npm)"; return 1; }
	same "$main package.json" "$(tar -xzOf "$main" package/package.json | node -p 'JSON.parse(require("fs").readFileSync(0)).version')" &&
		same "$main optionalDependencies" "$(tar -xzOf "$main" package/package.json | node -p 'Object.values(JSON.parse(require("fs").readFileSync(0)).optionalDependencies).join(" ")')" &&
		same "$plat package.json" "$(tar -xzOf "$plat" package/package.json | node -p 'JSON.parse(require("fs").readFileSync(0)).version')" || return 1
	mkdir -p "$scratch/plat" && tar -xzf "$plat" -C "$scratch/plat" || return 1
	same "nativeVersion() of the packed sfc.$platform.node" "$(node -p "require('$scratch/plat/package/sfc.$platform.node').nativeVersion()")"
}
check "npm tarballs: both versions, optionalDependencies, nativeVersion() of the packed addon" npm_tarballs

finish
