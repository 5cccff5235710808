#!/usr/bin/env bash
# The operator's tarball: dist/sfc-<version>-<target>.tar.gz, one directory
# sfc-<version>-<target>/ holding bin/sfc (release, stripped, built with etcd support),
# bin/sfc-agent (`sfc agent` alone, without the registry: the lighter process to run beside a
# service), LICENSE and README.md. <version> is the workspace's ([workspace.package] in Cargo.toml),
# <target> the build machine's (`rustc -vV`'s host). The binary comes from the release build,
# stripped here.
# Building the etcd feature needs protoc (tests/setup.sh installs it); running the binary does not.
# Fails when a stripped binary is over its budget (BENCHMARKS.md): sfc 20 MB, sfc-agent 10 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
BUDGET=$((20 * 1000 * 1000))
AGENT_BUDGET=$((10 * 1000 * 1000))

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
target=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$version" ] && [ -n "$target" ] || { echo "dist-bin: no workspace version or host target" >&2; exit 1; }
profile=release

# SFC_RELEASE_SELECTION: the Makefile builds every release artifact in one cargo call, so the
# dependencies are compiled once; the same selection here makes this call a no-op.
$CARGO build --profile "$profile" ${SFC_RELEASE_SELECTION:--p sfc --bin sfc --bin sfc-agent --features sfc/etcd}
target_dir=$($CARGO metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/$profile/sfc"

name="sfc-$version-$target"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/bin" dist
install -m 0755 "$bin" "$stage/$name/bin/sfc"
strip --strip-all "$stage/$name/bin/sfc"
install -m 0755 "$target_dir/$profile/sfc-agent" "$stage/$name/bin/sfc-agent"
strip --strip-all "$stage/$name/bin/sfc-agent"
install -m 0644 LICENSE README.md "$stage/$name/"

got=$("$stage/$name/bin/sfc" --version)
[ "$got" = "sfc $version" ] || { echo "dist-bin: bin/sfc --version says '$got', expected 'sfc $version'" >&2; exit 1; }
got=$("$stage/$name/bin/sfc-agent" --version)
[ "$got" = "sfc-agent $version" ] || { echo "dist-bin: bin/sfc-agent --version says '$got', expected 'sfc-agent $version'" >&2; exit 1; }
# A build without the feature carries the refusal it prints for --store etcd.
if grep -q -a 'built without etcd support' "$stage/$name/bin/sfc"; then
	echo "dist-bin: bin/sfc was built without etcd support" >&2; exit 1
fi

tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name -czf "dist/$name.tar.gz" "$name"
size=$(stat -c %s "$stage/$name/bin/sfc")
echo "dist/$name.tar.gz: $(stat -c %s "dist/$name.tar.gz") bytes; bin/sfc $size bytes stripped (profile $profile, features sfc/etcd)"
[ "$size" -le "$BUDGET" ] || { echo "dist-bin: bin/sfc is $size bytes, over its $BUDGET-byte budget" >&2; exit 1; }
size=$(stat -c %s "$stage/$name/bin/sfc-agent")
echo "bin/sfc-agent $size bytes stripped"
[ "$size" -le "$AGENT_BUDGET" ] || { echo "dist-bin: bin/sfc-agent is $size bytes, over its $AGENT_BUDGET-byte budget" >&2; exit 1; }
