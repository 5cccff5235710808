#!/usr/bin/env bash
# libsfc's installed layout, for C/C++ and Go users, from the release build
# (`make ffi-release`; `make install` and `make dist-c` run it first), debug info stripped here:
#
#   include/sfc.h
#   lib/libsfc.so.<major>.<minor>.<patch>   SONAME libsfc.so.<major> (ffi/build.rs), exports sfc_* only
#   lib/libsfc.so.<major> -> libsfc.so.<major>.<minor>.<patch>
#   lib/libsfc.so -> libsfc.so.<major>
#   lib/libsfc.a                            one object, only sfc_* global (see make_archive)
#   lib/pkgconfig/sfc.pc                    -lsfc (shared), Libs.private for the static case
#   lib/pkgconfig/sfc-static.pc             names lib/libsfc.a itself (the Go binding uses it)
#   lib/cmake/sfc/sfcConfig.cmake, sfcConfigVersion.cmake   targets sfc::sfc, sfc::sfc_shared, sfc::sfc_static
#   share/sfc/valgrind.supp                 suppressions for library users (tests/c/valgrind.supp)
#
# Usage:
#   dist-c.sh install PREFIX   lay it out in PREFIX (.pc files name PREFIX)
#   dist-c.sh tarball OUTDIR   OUTDIR/libsfc-<version>-<target>.tar.gz: the same layout plus
#                              LICENSE and README.md in one top directory; its .pc files are
#                              relative to where they are (${pcfiledir}), so it unpacks anywhere
#   dist-c.sh install-bin PREFIX   PREFIX/bin/sfc from dist/sfc-<version>-<target>.tar.gz (make dist-bin)
#   dist-c.sh dev-pc DIR       DIR/sfc.pc and DIR/sfc-static.pc naming this checkout's include/
#                              and target/release/ (or SFC_LIB_DIR) for the in-repo Go tests
#                              (PKG_CONFIG_PATH=DIR)
#   dist-c.sh version          prints the workspace version
# SFC_LIB_DIR overrides where the built libsfc.so/libsfc.a are read (default target/release for
# install, tarball and dev-pc).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
[[ $version =~ ^([0-9]+)\.([0-9]+)\.([0-9]+) ]] || { echo "dist-c: no x.y.z workspace version in Cargo.toml" >&2; exit 1; }
major=${BASH_REMATCH[1]}
minor=${BASH_REMATCH[2]}
full="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
lib_dir=${SFC_LIB_DIR:-$repo/target/release}
# What a static link of libsfc needs besides libc (rustc --print native-static-libs, less what
# the C compiler driver adds by itself: -lc, -lgcc_s).
static_libs="-lm -ldl -lpthread"

# pc_files DIR PREFIX_LINE: writes sfc.pc and sfc-static.pc into DIR.
pc_files() {
	local dir=$1 prefix=$2 libdir=${3:-'${prefix}/lib'} includedir=${4:-'${prefix}/include'}
	mkdir -p "$dir"
	cat >"$dir/sfc.pc" <<EOF
prefix=$prefix
libdir=$libdir
includedir=$includedir

Name: sfc
Description: Service Fleet Control client library (C ABI): register, report health and metrics, discover services
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lsfc
Libs.private: $static_libs
EOF
	cat >"$dir/sfc-static.pc" <<EOF
# libsfc.a by its path, so that the static library is linked even where libsfc.so is installed
# next to it (-lsfc would pick the shared one). The Go binding links through this module.
prefix=$prefix
libdir=$libdir
includedir=$includedir

Name: sfc-static
Description: Service Fleet Control client library (C ABI), static: libsfc.a
Version: $version
Cflags: -I\${includedir}
Libs: \${libdir}/libsfc.a $static_libs
EOF
}

cmake_files() {
	local dir=$1
	mkdir -p "$dir"
	cat >"$dir/sfcConfig.cmake" <<EOF
# CMake package of libsfc $version (the Service Fleet Control client, C ABI).
#
#   find_package(sfc $version REQUIRED)
#   target_link_libraries(app PRIVATE sfc::sfc)
#
# sfc::sfc is the shared library (lib/libsfc.so.$major); set SFC_USE_STATIC to ON before
# find_package to make it the static one (lib/libsfc.a, which brings its system libraries).
# sfc::sfc_shared and sfc::sfc_static name each one explicitly. Relocatable: paths are found
# from this file's location (<prefix>/lib/cmake/sfc).
cmake_minimum_required(VERSION 3.5)
include(CMakeFindDependencyMacro)
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_dependency(Threads)

get_filename_component(_sfc_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(sfc_VERSION "$version")
set(sfc_INCLUDE_DIRS "\${_sfc_prefix}/include")

if(NOT TARGET sfc::sfc_shared)
  add_library(sfc::sfc_shared SHARED IMPORTED)
  set_target_properties(sfc::sfc_shared PROPERTIES
    IMPORTED_LOCATION "\${_sfc_prefix}/lib/libsfc.so.$full"
    IMPORTED_SONAME "libsfc.so.$major"
    INTERFACE_INCLUDE_DIRECTORIES "\${_sfc_prefix}/include")
endif()
if(NOT TARGET sfc::sfc_static)
  add_library(sfc::sfc_static STATIC IMPORTED)
  set_target_properties(sfc::sfc_static PROPERTIES
    IMPORTED_LOCATION "\${_sfc_prefix}/lib/libsfc.a"
    IMPORTED_LINK_INTERFACE_LANGUAGES "C"
    INTERFACE_INCLUDE_DIRECTORIES "\${_sfc_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;m;dl")
endif()
if(NOT TARGET sfc::sfc)
  add_library(sfc::sfc INTERFACE IMPORTED)
  if(SFC_USE_STATIC)
    set_target_properties(sfc::sfc PROPERTIES INTERFACE_LINK_LIBRARIES sfc::sfc_static)
  else()
    set_target_properties(sfc::sfc PROPERTIES INTERFACE_LINK_LIBRARIES sfc::sfc_shared)
  endif()
endif()
unset(_sfc_prefix)
EOF
	cat >"$dir/sfcConfigVersion.cmake" <<EOF
# libsfc $version. Compatible: the same major version and not older; while the major is 0,
# the same minor too (0.x releases may change the ABI). 64-bit only.
set(PACKAGE_VERSION "$version")
if(NOT "\${CMAKE_SIZEOF_VOID_P}" STREQUAL "" AND NOT "\${CMAKE_SIZEOF_VOID_P}" STREQUAL "8")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
  set(PACKAGE_VERSION "$version (64-bit)")
  return()
endif()
set(PACKAGE_VERSION_COMPATIBLE FALSE)
if(NOT PACKAGE_FIND_VERSION OR PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
elseif(PACKAGE_FIND_VERSION VERSION_LESS PACKAGE_VERSION
       AND PACKAGE_FIND_VERSION_MAJOR STREQUAL "$major"
       AND ("$major" STRGREATER "0" OR PACKAGE_FIND_VERSION_MINOR STREQUAL "$minor"))
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
if(PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
EOF
}

# make_archive IN OUT: libsfc.a with only sfc_* global. The Rust staticlib carries vendored C
# (zstd's ZSTD_*/HUF_*/FSE_*, ring's) and Rust's own symbols as globals, so a program that also
# links the system libzstd would get one zstd or the other by link order. One partial link
# (ld -r) of every member makes the library a single relocatable object whose internal
# references are resolved; objcopy then makes every defined symbol but sfc_* local, drops the
# debug info (Rust's std brings its own) and the embedded LLVM bitcode and address-significance
# tables, which describe the separate members and not the merged object (binutils' LLVMgold
# plugin aborts on them).
make_archive() {
	local in=$1 out=$2 work
	work=$(mktemp -d)
	ld -r -o "$work/sfc.o" --whole-archive "$in"
	objcopy --wildcard --keep-global-symbol='sfc_*' --strip-debug \
		--remove-section=.llvmbc --remove-section=.llvmcmd --remove-section=.llvm_addrsig \
		"$work/sfc.o" "$work/libsfc.o"
	rm -f "$out"
	ar rcsD "$out" "$work/libsfc.o"
	rm -rf "$work"
	local leaked
	leaked=$(nm -g --defined-only "$out" | awk 'NF==3 && $3 !~ /^sfc_/ {print $3}' | head -5)
	[ -z "$leaked" ] || { echo "dist-c: libsfc.a still defines non-sfc_ globals: $leaked" >&2; exit 1; }
}

# layout DEST PC_PREFIX: the C layout in DEST.
layout() {
	local dest=$1 pc_prefix=$2
	for f in libsfc.so libsfc.a; do
		[ -f "$lib_dir/$f" ] || { echo "dist-c: $lib_dir/$f is missing (make ffi-release)" >&2; exit 1; }
	done
	mkdir -p "$dest/include" "$dest/lib" "$dest/share/sfc"
	install -m 0644 "$repo/include/sfc.h" "$dest/include/sfc.h"
	install -m 0755 "$lib_dir/libsfc.so" "$dest/lib/libsfc.so.$full"
	# Debug info only: the symbol table stays, so that share/sfc/valgrind.supp's suppressions
	# (which match function names) and profilers work with the shipped library.
	strip --strip-debug "$dest/lib/libsfc.so.$full"
	ln -sfn "libsfc.so.$full" "$dest/lib/libsfc.so.$major"
	ln -sfn "libsfc.so.$major" "$dest/lib/libsfc.so"
	make_archive "$lib_dir/libsfc.a" "$dest/lib/libsfc.a"
	chmod 0644 "$dest/lib/libsfc.a"
	pc_files "$dest/lib/pkgconfig" "$pc_prefix"
	cmake_files "$dest/lib/cmake/sfc"
	install -m 0644 "$repo/tests/c/valgrind.supp" "$dest/share/sfc/valgrind.supp"
	local soname
	soname=$(readelf -d "$dest/lib/libsfc.so.$full" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
	[ "$soname" = "libsfc.so.$major" ] || { echo "dist-c: libsfc.so's SONAME is '$soname', expected libsfc.so.$major" >&2; exit 1; }
}

cmd=${1:-}
case $cmd in
install)
	prefix=${2:?usage: dist-c.sh install PREFIX}
	mkdir -p "$prefix"
	prefix=$(cd "$prefix" && pwd)
	layout "$prefix" "$prefix"
	echo "libsfc $version installed in $prefix"
	;;
tarball)
	out=${2:?usage: dist-c.sh tarball OUTDIR}
	target=$(rustc -vV | sed -n 's/^host: //p')
	name="libsfc-$version-$target"
	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	layout "$stage/$name" '${pcfiledir}/../..'
	[ -f "$repo/LICENSE" ] || { echo "dist-c: LICENSE is missing" >&2; exit 1; }
	install -m 0644 "$repo/LICENSE" "$repo/README.md" "$stage/$name/"
	mkdir -p "$out"
	tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name -czf "$out/$name.tar.gz" "$name"
	echo "$out/$name.tar.gz: $(stat -c %s "$out/$name.tar.gz") bytes;" \
		"libsfc.so $(stat -c %s "$stage/$name/lib/libsfc.so.$full") bytes, libsfc.a $(stat -c %s "$stage/$name/lib/libsfc.a") bytes"
	;;
install-bin)
	# bin/sfc as the operator's tarball ships it (make dist-bin: release, stripped, with etcd).
	prefix=${2:?usage: dist-c.sh install-bin PREFIX}
	target=$(rustc -vV | sed -n 's/^host: //p')
	name="sfc-$version-$target"
	[ -f "$repo/dist/$name.tar.gz" ] || { echo "dist-c: dist/$name.tar.gz is missing (make dist-bin)" >&2; exit 1; }
	mkdir -p "$prefix/bin"
	tar -xzf "$repo/dist/$name.tar.gz" -O "$name/bin/sfc" >"$prefix/bin/sfc.tmp"
	chmod 0755 "$prefix/bin/sfc.tmp"
	mv -f "$prefix/bin/sfc.tmp" "$prefix/bin/sfc"
	echo "sfc $version installed in $prefix/bin"
	;;
dev-pc)
	dir=${2:?usage: dist-c.sh dev-pc DIR}
	pc_files "$dir" "$repo" "${SFC_LIB_DIR:-$repo/target/release}" "$repo/include"
	;;
version)
	echo "$version"
	;;
*)
	echo "usage: dist-c.sh install PREFIX | tarball OUTDIR | install-bin PREFIX | dev-pc DIR | version" >&2
	exit 2
	;;
esac
