#!/usr/bin/env bash
# The C/C++ and Go users' installs, from the dist/ artifacts only (make dist-c first): in a
# scratch directory outside the checkout, with nothing from target/ on PATH, LD_LIBRARY_PATH,
# PKG_CONFIG_PATH or CMAKE_PREFIX_PATH, it
#  - unpacks dist/libsfc-<version>-<target>.tar.gz and installs the same C layout with
#    scripts/dist-c.sh install (what `make install` runs for the library; `make install` also
#    builds and installs bin/sfc, which tests/dist/node.sh covers from its tarball);
#  - checks the layout, the SONAME and symlinks, that libsfc.so and libsfc.a define only sfc_*
#    globals, and that a program linking libsfc.a and the system's -lzstd gets the system's zstd;
#  - builds tests/dist/c/client.c with `pkg-config --cflags --libs sfc` (shared) and
#    `pkg-config --static --libs sfc-static` (static), and with CMake's find_package(sfc)
#    (sfc::sfc shared, SFC_USE_STATIC=ON, sfc::sfc_static), against the installed prefix, and
#    the tarball's relocatable .pc files too;
#  - builds a Go module outside the repository that requires the binding (a replace to
#    bindings/go; libsfc from the tarball's prefix through pkg-config), statically by default
#    and with -tags sfc_shared, also after `go mod vendor`, and checks that a CGO_ENABLED=0
#    build fails saying cgo and libsfc are needed;
#  - runs every program against a real registry (SFC_BIN, default target/debug/sfc, started
#    by absolute path) and checks with `sfc status --json` that the registry sees each one
#    online, then left after it stops; one of them under Valgrind with the shipped
#    share/sfc/valgrind.supp.
# One line per check, then `N passed, N failed`; exits non-zero on any failure. It stops only
# the processes it started, by PID. KEEP_SCRATCH=1 keeps the scratch directory.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tests/dist"
sfc_bin=${SFC_BIN:-$repo/target/debug/sfc}
version=$(bash "$repo/scripts/dist-c.sh" version)
major=${version%%.*}
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
tarball="$repo/dist/libsfc-$version-$target.tar.gz"

# shellcheck source=tests/dist/lib.sh
. "$here/lib.sh"
scrub_build_tree
unset LD_LIBRARY_PATH PKG_CONFIG_PATH CMAKE_PREFIX_PATH SFC_REGISTRY SFC_CA CGO_CFLAGS CGO_LDFLAGS
export GOFLAGS=-mod=mod GOTOOLCHAIN=local GOWORK=off

make_scratch c
cd "$scratch" || exit 1

# --- the artifacts ---
installed="$scratch/prefix"
unpacked="$scratch/libsfc-$version-$target"
check "dist/libsfc-$version-$target.tar.gz unpacks" tar -xzf "$tarball" -C "$scratch"
check "scripts/dist-c.sh install PREFIX (make install's library part)" bash "$repo/scripts/dist-c.sh" install "$installed"
[ -d "$unpacked" ] && [ -d "$installed" ] || finish

layout() { (cd "$1" && find . \( -type f -o -type l \) -printf '%y %p %l\n' | LC_ALL=C sort); }
expected_layout() {
	cat <<EOF
f ./include/sfc.h 
f ./lib/cmake/sfc/sfcConfig.cmake 
f ./lib/cmake/sfc/sfcConfigVersion.cmake 
f ./lib/libsfc.a 
l ./lib/libsfc.so libsfc.so.$major
l ./lib/libsfc.so.$major libsfc.so.$version
f ./lib/libsfc.so.$version 
f ./lib/pkgconfig/sfc-static.pc 
f ./lib/pkgconfig/sfc.pc 
f ./share/sfc/valgrind.supp 
EOF
}
check "installed layout: header, libsfc.so.$version + 2 symlinks, libsfc.a, .pc, CMake package, valgrind.supp" \
	diff <(expected_layout | LC_ALL=C sort) <(layout "$installed")
check "tarball: the same layout plus LICENSE and README.md" \
	diff <({ expected_layout; echo "f ./LICENSE "; echo "f ./README.md "; } | LC_ALL=C sort) <(layout "$unpacked")
check "tarball's LICENSE is Apache-2.0 and its header is the checkout's" \
	bash -c "grep -q 'Apache License' '$unpacked/LICENSE' && grep -q 'Version 2.0' '$unpacked/LICENSE' && cmp '$unpacked/include/sfc.h' '$repo/include/sfc.h'"
check "sfc.h mentions the shipped valgrind.supp" grep -q 'share/sfc/valgrind.supp' "$unpacked/include/sfc.h"

soname_is() { readelf -d "$1" | grep -F "(SONAME)" | grep -qF "[libsfc.so.$major]"; }
check "SONAME of lib/libsfc.so.$version is libsfc.so.$major" soname_is "$installed/lib/libsfc.so.$version"
only_sfc_dynamic() {
	local syms others
	syms=$(nm -D --defined-only "$1" | awk 'NF==3 {print $3}')
	others=$(grep -v '^sfc_' <<<"$syms")
	echo "$(wc -l <<<"$syms") exported symbols; others: ${others:-none}"
	[ -n "$syms" ] && [ -z "$others" ] && grep -qx sfc_version <<<"$syms"
}
check "libsfc.so exports only sfc_* (nm -D --defined-only)" only_sfc_dynamic "$installed/lib/libsfc.so"
only_sfc_static() {
	local syms others
	syms=$(nm -g --defined-only "$1" | awk 'NF==3 {print $3}')
	others=$(grep -v '^sfc_' <<<"$syms" | head -5)
	echo "$(wc -l <<<"$syms") global symbols; others: ${others:-none}"
	[ -n "$syms" ] && [ -z "$others" ] && grep -qx sfc_version <<<"$syms"
}
check "libsfc.a defines only sfc_* globals (no ZSTD_*, HUF_*, ring_*, Rust symbols)" only_sfc_static "$installed/lib/libsfc.a"
# Section names, not substrings: a function named *debug_details* has a .text.*debug_details* section.
no_debug() { ! readelf -SW "$1" | grep -qE '^ *\[ *[0-9]+\] \.z?debug_'; }
check "libsfc.so and libsfc.a carry no debug info" bash -c "$(declare -f no_debug); no_debug '$installed/lib/libsfc.so.$version' && no_debug '$installed/lib/libsfc.a'"

pc() { PKG_CONFIG_PATH="$1/lib/pkgconfig" pkg-config "${@:2}"; }
check "pkg-config --modversion sfc is $version; --static adds Libs.private" \
	bash -c "[ \"\$(PKG_CONFIG_PATH='$installed/lib/pkgconfig' pkg-config --modversion sfc)\" = '$version' ] &&
		PKG_CONFIG_PATH='$installed/lib/pkgconfig' pkg-config --static --libs sfc | grep -q -- '-lsfc .*-lpthread'"

# --- zstd: libsfc.a's own zstd must not shadow the system's ---
cc_zstd() {
	local out=$1
	shift
	cc -std=c11 -Wall -Wextra -Werror -o "$out" "$here/c/zstd_clash.c" $(pc "$installed" --cflags sfc-static) "$@" && "./$out"
}
check "libsfc.a then -lzstd: ZSTD_* reach the system's libzstd, sfc_version() works" \
	cc_zstd zstd_after $(pc "$installed" --static --libs sfc-static) -lzstd
check "-lzstd then libsfc.a: the same" cc_zstd zstd_before -lzstd $(pc "$installed" --static --libs sfc-static)

# --- builds ---
warn=(-std=c11 -Wall -Wextra -Werror -pedantic)
needs_libsfc() { readelf -d "$1" | grep -F '(NEEDED)' | grep -qF "[libsfc.so.$major]"; }
check "C, shared: cc client.c \$(pkg-config --cflags --libs sfc); NEEDED libsfc.so.$major" \
	bash -c "cc ${warn[*]} -o client_shared '$here/c/client.c' \$(PKG_CONFIG_PATH='$installed/lib/pkgconfig' pkg-config --cflags --libs sfc) &&
		$(declare -f needs_libsfc); major=$major; needs_libsfc client_shared"
check "C, static: cc client.c \$(pkg-config --static --cflags --libs sfc-static); no libsfc.so needed" \
	bash -c "cc ${warn[*]} -o client_static '$here/c/client.c' \$(PKG_CONFIG_PATH='$installed/lib/pkgconfig' pkg-config --static --cflags --libs sfc-static) &&
		$(declare -f needs_libsfc); major=$major; ! needs_libsfc client_static"
check "C, static, from the unpacked tarball (relocatable .pc: \${pcfiledir})" \
	bash -c "cc ${warn[*]} -o client_tarball '$here/c/client.c' \$(PKG_CONFIG_PATH='$unpacked/lib/pkgconfig' pkg-config --static --cflags --libs sfc-static)"

cmake_build() {
	local dir=$1
	shift
	cmake -S "$here/c" -B "$dir" -DCMAKE_PREFIX_PATH="$installed" -DCMAKE_BUILD_TYPE=Release "$@" &&
		cmake --build "$dir" -j 2
}
check "CMake: find_package(sfc 0.1) in the installed prefix; sfc::sfc is shared, sfc::sfc_static static" \
	bash -c "$(declare -f cmake_build needs_libsfc); here='$here' installed='$installed' major=$major;
		cmake_build cmake-default && needs_libsfc cmake-default/client_cmake && ! needs_libsfc cmake-default/client_cmake_static"
check "CMake: -DSFC_USE_STATIC=ON makes sfc::sfc static" \
	bash -c "$(declare -f cmake_build needs_libsfc); here='$here' installed='$installed' major=$major;
		cmake_build cmake-static -DSFC_USE_STATIC=ON && ! needs_libsfc cmake-static/client_cmake"
check "CMake: find_package(sfc 1.0) is refused (incompatible version)" \
	bash -c "mkdir -p cmake-v && sed 's/find_package(sfc 0.1 REQUIRED)/find_package(sfc 1.0 REQUIRED)/' '$here/c/CMakeLists.txt' >cmake-v/CMakeLists.txt &&
		cp '$here/c/client.c' cmake-v/ && ! cmake -S cmake-v -B cmake-v/build -DCMAKE_PREFIX_PATH='$installed'"

# The Go module: outside the repository, requiring the binding by its module path.
gomod="$scratch/gomod"
# Go's build cache keys a cgo package by its source, the Go and C toolchains and the CGO_*
# variables, not by what pkg-config answers: a package built here, naming this scratch prefix,
# would be reused by later builds of the binding with another PKG_CONFIG_PATH (and fail once
# the scratch directory is gone). A CGO_CFLAGS of this run's own keeps its entries apart.
export CGO_CFLAGS="-O2 -g -DSFC_DIST_TEST_RUN_$(basename "$scratch" | tr -c 'A-Za-z0-9_\n' _)"
mkdir -p "$gomod"
cp "$here/go/main.go" "$gomod/"
cat >"$gomod/go.mod" <<EOF
module example.com/sfc-dist-go

go 1.22

require github.com/sfc/sfc/bindings/go v0.0.0

replace github.com/sfc/sfc/bindings/go => $repo/bindings/go
EOF

check "Go: an outside module builds with PKG_CONFIG_PATH=<tarball>/lib/pkgconfig (libsfc.a, no libsfc.so needed)" \
	bash -c "cd '$gomod' && PKG_CONFIG_PATH='$unpacked/lib/pkgconfig' go build -o '$scratch/client_go' . &&
		$(declare -f needs_libsfc); major=$major; ! needs_libsfc '$scratch/client_go'"
check "Go: -tags sfc_shared links libsfc.so (NEEDED libsfc.so.$major)" \
	bash -c "cd '$gomod' && PKG_CONFIG_PATH='$unpacked/lib/pkgconfig' go build -tags sfc_shared -o '$scratch/client_go_shared' . &&
		$(declare -f needs_libsfc); major=$major; needs_libsfc '$scratch/client_go_shared'"
check "Go: go mod vendor, then go build -mod=vendor (the header comes from pkg-config, not the source tree)" \
	bash -c "rm -rf '$scratch/govendor' && cp -r '$gomod' '$scratch/govendor' && cd '$scratch/govendor' && go mod vendor &&
		test -f vendor/github.com/sfc/sfc/bindings/go/ffi.go &&
		PKG_CONFIG_PATH='$unpacked/lib/pkgconfig' go build -mod=vendor -o /dev/null ."
check "Go: CGO_ENABLED=0 fails saying cgo and libsfc are needed" \
	bash -c "cd '$gomod' && ! out=\$(CGO_ENABLED=0 go build -o /dev/null . 2>&1) && echo \"\$out\" && grep -q 'needs_cgo.*libsfc' <<<\"\$out\""

# --- run everything against a real registry ---
data="$scratch/registry-data"
mkdir -p "$data"
"$sfc_bin" registry --listen 127.0.0.1:0 --http off --data-dir "$data" >"$scratch/registry.out" 2>"$scratch/registry.err" &
registry_pid=$!
pids+=("$registry_pid")
addr=
for _ in $(seq 1 200); do
	addr=$(sed -n 's/^sfc registry listening on \([^ ]*\) .*/\1/p' "$scratch/registry.out")
	[ -n "$addr" ] && break
	kill -0 "$registry_pid" 2>/dev/null || break
	sleep 0.1
done
ca="$data/tls/ca.pem"
check "registry started ($sfc_bin registry, ${addr:-no address})" test -n "$addr" -a -f "$ca"
[ -n "$addr" ] || { cat "$scratch/registry.err"; finish; }

# status_of GROUP INSTANCE: the instance's status in `sfc status --json` ("" if absent).
status_of() {
	"$sfc_bin" status --json --registry "$addr" --ca "$ca" --group "$1" 2>/dev/null |
		python3 -c 'import json, sys
inst = sys.argv[1]
for r in json.load(sys.stdin):
    if r.get("instance_id") == inst or str(r.get("id", "")).endswith("/" + inst):
        print(r.get("status", "")); break' "$2"
}
# run_client NAME ENV... -- COMMAND...: starts COMMAND as instance NAME in group dist-c, waits for
# "connected", checks the registry shows it online, stops it through its stop file, and checks
# it exited 0 and the registry shows it left.
run_client() {
	local name=$1 env=() out pid st=
	shift
	while [ "$1" != -- ]; do env+=("$1"); shift; done
	shift
	out="$scratch/$name.out"
	env -i PATH="$PATH" HOME="$HOME" "${env[@]}" "$@" "$addr" "$ca" dist-c "$name" "$scratch/$name.stop" >"$out" 2>&1 &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 1 200); do
		grep -q '^connected' "$out" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	cat "$out"
	grep -q "^connected dist-c/$name libsfc $version" "$out" || { echo "$name did not connect"; return 1; }
	for _ in $(seq 1 50); do st=$(status_of dist-c "$name"); [ "$st" = online ] && break; sleep 0.1; done
	echo "registry: $name is ${st:-absent}"
	[ "$st" = online ] || return 1
	touch "$scratch/$name.stop"
	wait "$pid" || { echo "$name exited with $?"; cat "$out"; return 1; }
	grep -q '^stopped' "$out" || return 1
	st=$(status_of dist-c "$name")
	echo "registry after stop: $name is ${st:-absent}"
	[ "$st" = left ]
}
lib_env=LD_LIBRARY_PATH="$installed/lib"
check "run C shared (LD_LIBRARY_PATH=<prefix>/lib): registers, the registry sees it online, then left" \
	run_client c-shared "$lib_env" -- ./client_shared
check "run C static (no library path): registers, online, left" run_client c-static -- ./client_static
# share/sfc/valgrind.supp is for library users: a host on the shipped libsfc.so runs clean
# under Memcheck with it (its suppressions match by function name, so libsfc.so keeps its
# symbol table).
check "run C shared under valgrind --suppressions=<prefix>/share/sfc/valgrind.supp: no error, no leak" \
	run_client c-valgrind "$lib_env" -- valgrind --quiet --leak-check=full --error-exitcode=1 \
	--suppressions="$installed/share/sfc/valgrind.supp" ./client_shared
check "run C static from the tarball's .pc: registers, online, left" run_client c-tarball -- ./client_tarball
check "run CMake sfc::sfc (shared): registers, online, left" run_client cmake-shared "$lib_env" -- ./cmake-default/client_cmake
check "run CMake sfc::sfc_static: registers, online, left" run_client cmake-static -- ./cmake-default/client_cmake_static
check "run CMake SFC_USE_STATIC=ON: registers, online, left" run_client cmake-use-static -- ./cmake-static/client_cmake
check "run Go (static libsfc): registers, online, left" run_client go-static -- "$scratch/client_go"
check "run Go -tags sfc_shared (LD_LIBRARY_PATH=<tarball>/lib): registers, online, left" \
	run_client go-shared LD_LIBRARY_PATH="$unpacked/lib" -- "$scratch/client_go_shared"

finish
