#!/usr/bin/env bash
# Installs the tools the test suites need when they are missing. Idempotent: every step checks
# first, and `apt-get update` runs at most once per call. Suites add their own section.
set -euo pipefail
cd "$(dirname "$0")"

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# --- etcd store (crates/sfc/tests/etcd.rs): etcd-client needs protoc to build (so `make build`
# runs this script first), and the tests run a real etcd on loopback ---
if ! command -v protoc >/dev/null; then
    apt_install protobuf-compiler
fi
if ! command -v etcd >/dev/null; then
    apt_install etcd-server
fi

# --- DNS interface (crates/sfc/tests/dns.rs): Debian's dig asks the registry's DNS port ---
if ! command -v dig >/dev/null; then
    apt_install dnsutils
fi

# --- browser suite (tests/browser): Debian's chromium driven by playwright-core ---
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if [ ! -d browser/node_modules/playwright-core ]; then
    (cd browser && npm ci --no-audit --no-fund --silent)
fi

# --- Node.js binding suite (bindings/node): node + npm, then the package's locked devDependencies ---
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if [ ! -d ../bindings/node/node_modules/@napi-rs/cli ] || [ ! -d ../bindings/node/node_modules/typescript ]; then
    (cd ../bindings/node && npm ci --no-audit --no-fund --silent)
fi

# --- C ABI suite (tests/c) and Go binding (bindings/go): gcc/g++, valgrind, curl, Go ---
if ! command -v gcc >/dev/null || ! command -v g++ >/dev/null; then
    apt_install gcc g++
fi
if ! command -v valgrind >/dev/null; then
    apt_install valgrind
fi
if ! command -v curl >/dev/null; then
    apt_install curl
fi
if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
    apt_install golang-go
fi

# --- libsfc's installs (tests/dist/c.sh): pkg-config and CMake find the library; a program
# that links libsfc.a and the system's libzstd checks that libsfc's own zstd stays private ---
if ! command -v pkg-config >/dev/null; then
    apt_install pkg-config
fi
if ! command -v cmake >/dev/null; then
    apt_install cmake
fi
if [ ! -f /usr/include/zstd.h ]; then
    apt_install libzstd-dev
fi
