# `make test` builds everything and runs every suite. Each suite prints its runner's summary
# line. Tools that are missing (Chromium, etcd, dig, ...) are installed by tests/setup.sh.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR := never
# No incremental caches: a clean CI build gains nothing from them and they weighed 1.7 GB of
# its disk. `CARGO_INCREMENTAL=1 make test` keeps them for repeated local runs.
export CARGO_INCREMENTAL ?= 0
# Test artefacts (screenshots, logs) land here.
export SFC_TEST_OUT ?= $(CURDIR)/target/test-out

.PHONY: test build test-rust test-etcd test-bench-smoke test-node test-artifacts test-browser test-c test-go test-fuzz header header-check ffi-release bench-footprint-c
# test-rust runs ffi/tests/header.rs too (what header-check runs alone).
test: build test-rust test-etcd test-bench-smoke test-node test-artifacts test-browser test-c test-go test-dist-c test-dist-node test-fuzz
	@echo "make test: all suites passed"

# setup.sh first: building the `etcd` feature (sfc-registry's, through sfc's) needs protoc.
# Every debug-profile cargo call below selects the same packages and features as this one
# (`--workspace --features sfc/etcd`), so that none of them builds the tree a second time.
WS := --workspace --features sfc/etcd
build:
	bash tests/setup.sh
	$(CARGO) build $(WS) --all-targets

test-rust: build
	$(CARGO) test $(WS)
	# The tests that need root (mounts, network namespaces) are #[ignore]d in plain
	# `cargo test`, which lists them as ignored; here they run, and fail without root.
	$(CARGO) test $(WS) --test disk --test partition -- --ignored

# `sfc bench` keeps working: few-second runs against spawned registries, each with
# --json. Each must exit 0 and its JSON must show: the scenario, codec and compression asked
# for, reports accepted (confirmed by the registry) > 0, 0 false offline, and for the crash
# runs the whole crashed batch (a tenth of the 40 clients: 4) detected offline, for the rejoin
# run every client back with a resumed TLS session. The `--peer etcd` run (issue 16 point 4;
# etcd from tests/setup.sh, as for test-etcd) also drives a real etcd with the same 40 clients
# as leases: keep-alives acknowledged > 0, no lease expired outside the batch, and the whole
# batch's keys deleted at the watcher. No timing is asserted. BENCH_SMOKE_CHECK (python3)
# reads one run's JSON on stdin; its arguments are the expected scenario, codec, compression,
# crash batch (0: no crash figures expected) and the peer ("" for none).
define BENCH_SMOKE_CHECK
import json, sys
scenario, codec, compression, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    r = json.loads(sys.stdin.read())
except ValueError as e:
    sys.exit(f"output is not one JSON object: {e}")
bad = []
def want(ok, what):
    if not ok:
        bad.append(what)
want(r.get("scenario") == scenario, f"scenario {r.get('scenario')!r}, expected {scenario!r}")
want(r.get("codec") == codec, f"codec {r.get('codec')!r}, expected {codec!r}")
want(r.get("compression") == compression, f"compression {r.get('compression')!r}, expected {compression!r}")
accepted = r.get("reports_accepted")
want(isinstance(accepted, int) and accepted > 0, f"reports_accepted {accepted!r}, expected > 0")
false_offline = r.get("false_offline")
want(false_offline == 0, f"false_offline {false_offline!r} {r.get('false_offline_reasons')}, expected 0")
crash = r.get("crash")
if batch:
    got = (crash or {}).get("batch"), (crash or {}).get("detected")
    want(got == (batch, batch), f"crash batch/detected {got}, expected {batch}/{batch}")
else:
    want(crash is None, f"crash figures {crash} in a run without a crash")
if scenario == "rejoin":
    j = r.get("rejoin") or {}
    got = j.get("joins"), j.get("resumed_handshakes")
    want(got == (r.get("clients"),) * 2, f"rejoin joins/resumed {got}, expected every client back with a resumed TLS session")
peer = sys.argv[5] if len(sys.argv) > 5 else None
p = r.get("peer") or {}
if peer:
    want(p.get("peer") == peer, f"peer {p.get('peer')!r}, expected {peer!r}")
    acked = p.get("keepalives_acked")
    want(isinstance(acked, int) and acked > 0, f"peer keepalives_acked {acked!r}, expected > 0")
    want(p.get("false_expired") == 0, f"peer false_expired {p.get('false_expired')!r}, expected 0")
    if batch:
        got = (p.get("crash") or {}).get("batch"), (p.get("crash") or {}).get("detected")
        want(got == (batch, batch), f"peer crash batch/detected {got}, expected {batch}/{batch}")
else:
    want(not p, f"peer figures {p} in a run without --peer")
if bad:
    sys.exit("; ".join(bad))
print(f"{accepted} reports accepted, 0 false offline" + (f", {batch} of {batch} crashed detected" if batch else "")
      + (f"; {peer}: {p.get('keepalives_acked')} keep-alives, 0 expired" + (f", {batch} of {batch} crashed detected" if batch else "") if peer else ""))
endef
export BENCH_SMOKE_CHECK
# The several-registry mode (issue 16 point 3): 40 clients from 2 worker processes over 2
# registries sharing a real etcd (from tests/setup.sh, as for test-etcd), a tenth crashed.
# BENCH_MULTI_CHECK reads its JSON on stdin; its arguments are the registries, workers and
# crash batch. Each registry must have accepted reports, seen every client not crashed online
# (/v1/summary) and no false offline; etcd's writes were read; the whole batch was heard
# offline by the watcher of every registry other than the crashed client's. No timing.
define BENCH_MULTI_CHECK
import json, sys
registries, workers, batch = (int(x) for x in sys.argv[1:4])
r = json.load(sys.stdin)
bad = []
def want(ok, what):
    if not ok:
        bad.append(what)
want(r.get("registries") == registries and len(r.get("per_registry") or []) == registries, f"registries {r.get('registries')!r}, expected {registries}")
want(r.get("workers") == workers, f"workers {r.get('workers')!r}, expected {workers}")
alive = r.get("clients", 0) - batch
for g in r.get("per_registry") or []:
    want(g.get("reports_accepted", 0) > 0, f"registry {g.get('addr')}: reports_accepted {g.get('reports_accepted')!r}, expected > 0")
    want(g.get("online_summary") == alive, f"registry {g.get('addr')}: online {g.get('online_summary')!r}, expected {alive}")
    want(g.get("false_offline") == 0, f"registry {g.get('addr')}: false_offline {g.get('false_offline')!r}, expected 0")
want((r.get("etcd") or {}).get("puts_per_s") is not None, f"etcd figures {r.get('etcd')!r} without puts_per_s")
got = (r.get("crash") or {}).get("batch"), (r.get("crash") or {}).get("detected_elsewhere")
want(got == (batch, batch), f"crash batch/detected on other registries {got}, expected {batch}/{batch}")
if bad:
    sys.exit("; ".join(bad))
print(f"{registries} registries each saw {alive} online, 0 false offline, {batch} of {batch} crashed heard on the other registries")
endef
export BENCH_MULTI_CHECK
SFC_BIN ?= $(CURDIR)/target/debug/sfc
test-bench-smoke: build
	@pass=0; fail=0; err=$$(mktemp); trap 'rm -f "$$err"' EXIT; \
	smoke() { \
		local name=$$1 scenario=$$2 codec=$$3 compression=$$4 batch=$$5 peer=$$6 out rc verdict=; shift 6; \
		out=$$(timeout 120 $(SFC_BIN) bench --spawn --clients 40 --interval 200ms --duration 2s --json "$$@" 2>"$$err"); rc=$$?; \
		if [ $$rc -eq 0 ] && verdict=$$(python3 -c "$$BENCH_SMOKE_CHECK" $$scenario $$codec $$compression $$batch $$peer <<<"$$out" 2>&1); then \
			pass=$$((pass+1)); echo "ok: sfc bench $$name ($$verdict)"; \
		else \
			fail=$$((fail+1)); echo "FAILED: sfc bench $$name (exit status $$rc) $$verdict"; \
			echo "$$out"; cat "$$err"; \
		fi; \
	}; \
	smoke "--scenario steady --json" steady json none 0 "" --scenario steady; \
	smoke "--scenario crash --json" crash json none 4 "" --scenario crash; \
	smoke "--codec protobuf --compression zstd --json" steady protobuf zstd 0 "" --codec protobuf --compression zstd; \
	smoke "--scenario rejoin --json" rejoin json none 0 "" --scenario rejoin; \
	smoke "--peer etcd --scenario crash --json" crash json none 4 etcd --peer etcd --scenario crash; \
	out=$$(timeout 180 $(SFC_BIN) bench --spawn --clients 40 --interval 200ms --duration 2s --json --registries 2 --workers 2 --registry-arg=--store=etcd --scenario crash 2>"$$err"); rc=$$?; \
	if [ $$rc -eq 0 ] && verdict=$$(python3 -c "$$BENCH_MULTI_CHECK" 2 2 4 <<<"$$out" 2>&1); then \
		pass=$$((pass+1)); echo "ok: sfc bench --registries 2 --workers 2 --store=etcd --scenario crash ($$verdict)"; \
	else \
		fail=$$((fail+1)); echo "FAILED: sfc bench --registries 2 --workers 2 --store=etcd --scenario crash (exit status $$rc) $$verdict"; \
		echo "$$out"; cat "$$err"; \
	fi; \
	echo "$$pass passed, $$fail failed"; test $$fail -eq 0

# Node.js binding (bindings/node): `npm test` rebuilds the addon, fails if the committed
# native.js / native.d.ts differ from the fresh build, then runs the node:test suite (which
# also checks index.d.ts and compat.d.ts against the build). SFC_NODE_CARGO_ARGS makes that
# build resolve features as `build` did: `--examples` (there are none) switches the
# dev-dependencies on as `--all-targets` does, while `--lib` builds sfc-node's library only
# (its test harness would write the napi type definitions a second time).
test-node: build
	bash tests/setup.sh
	cd bindings/node && SFC_BIN=$(SFC_BIN) SFC_NODE_CARGO_ARGS="$(WS) --lib --examples" npm test

# Client artifacts carry no server code: libsfc (C, and Go through it) and the Node.js client
# addon define no symbol of axum, hyper, SQLite, etcd-client or sfc-registry; the Node.js
# registry addon, loaded only by `Registry`, is the control that shows the search works.
test-artifacts: build ffi-release test-node
	bash tests/artifacts/client-symbols.sh target/release/libsfc.a target/release/libsfc.so \
		bindings/node/sfc.linux-x64-gnu.node bindings/node/sfc-registry.linux-x64-gnu.node

# Dashboard in headless Debian chromium (playwright-core): a real registry and two example
# services; the screenshot lands in $(SFC_TEST_OUT). node:test prints the summary.
test-browser: build
	bash tests/setup.sh
	node --test tests/browser/

# etcd mode (crates/sfc/tests/etcd.rs): real etcd members on loopback ports, real registries and
# clients. The tests are #[ignore]d in plain `cargo test` because they need Debian's etcd-server.
test-etcd: build
	$(CARGO) test $(WS) --test etcd -- --ignored --test-threads 1

# Fuzzing (fuzz/, cargo-fuzz + libFuzzer, see fuzz/README.md): installs cargo-fuzz if missing,
# builds the instrumented targets (its own workspace and target dir) and runs each for
# FUZZ_SECONDS (default 20) from its committed seed corpus, two at a time; any crash fails.
# `make fuzz FUZZ_SECONDS=600` is the long run.
.PHONY: fuzz
test-fuzz fuzz:
	bash fuzz/run.sh

# C ABI (ffi/ -> libsfc, include/sfc.h) and the Go binding over it. Both link the release
# static library target/release/libsfc.a.
# Every release artifact (the C library, the operator's sfc with etcd, the two Node.js addons)
# comes from this one cargo call, so the dependencies are compiled once; the dist scripts make the
# same call (SFC_RELEASE_SELECTION, SFC_NODE_CARGO_ARGS), which is then a no-op.
RELEASE_SELECTION := --features sfc/etcd -p sfc -p sfc-ffi -p sfc-node -p sfc-node-registry
export SFC_RELEASE_SELECTION := $(RELEASE_SELECTION)
ffi-release:
	bash tests/setup.sh
	$(CARGO) build --release $(RELEASE_SELECTION)

# include/sfc.h is generated by cbindgen from ffi/src and committed: `make header` rewrites it,
# `make header-check` fails when the committed one is out of date.
header:
	SFC_BLESS=1 $(CARGO) test $(WS) --test header

header-check: build
	$(CARGO) test $(WS) --test header

# C suite (tests/c): -Wall -Wextra -Werror -pedantic, run under AddressSanitizer and under
# Valgrind against a real registry; the C++ header test; the C example's shutdown.
test-c: build ffi-release
	bash tests/setup.sh
	SFC_BIN=$(SFC_BIN) bash tests/c/run.sh

# Go binding (bindings/go) and example (examples/go): gofmt-clean, go vet, go test -race. The
# binding finds libsfc through pkg-config (sfc-static); here the .pc files under
# target/pkgconfig name include/ and target/release/.
GO_PC := PKG_CONFIG_PATH=$(CURDIR)/target/pkgconfig
test-go: build ffi-release
	bash tests/setup.sh
	@cd bindings/go && unformatted=$$(gofmt -l . ../../examples/go) && \
		{ [ -z "$$unformatted" ] || { echo "not gofmt-clean: $$unformatted"; exit 1; }; }
	bash scripts/dist-c.sh dev-pc target/pkgconfig
	cd bindings/go && $(GO_PC) go vet ./... && $(GO_PC) go test -race -count=1 ./...
	cd examples/go && $(GO_PC) go vet ./... && $(GO_PC) go build -o $(SFC_TEST_OUT)/example-go .

# Footprint benchmark (not a test): a C host reporting once a second vs the same host without
# the client, for 60 s. Figures go to BENCHMARKS.md.
bench-footprint-c: build ffi-release
	bash examples/c/footprint.sh 60

# The same for Node.js (a benchmark, not a test): an idle Node.js process vs the same with a
# Client (default options, runtime metrics on), and variants with parts turned off, side by side
# for 60 s, twice, with the release client addon. Figures: BENCHMARKS.md "Client footprint (Node, C)".
.PHONY: bench-footprint-node
bench-footprint-node: ffi-release
	cd bindings/node && node bench/footprint.js --seconds 60 --repeat 2 --addon ../../target/release/libsfc_node.so \
	  --variant 'no-runtime={"runtimeMetrics":false}' --variant 'no-sampling={"sampleMetrics":false,"runtimeMetrics":false}' \
	  --load-only --compat

# The same for Go: one Go binary with the client (defaults, runtime figures on) and a watch vs
# the same binary with the client off, side by side for 60 s, twice. Figures go to BENCHMARKS.md.
.PHONY: bench-footprint-go
bench-footprint-go: build ffi-release
	bash scripts/dist-c.sh dev-pc target/pkgconfig
	bash bindings/go/bench/footprint.sh 60 2

# Release artifacts for the build machine's platform, in dist/ (README "Install"), one version
# from the workspace's Cargo.toml: `make dist`. dist-bin: the operator's
# dist/sfc-<version>-<target>.tar.gz (bin/sfc, release, stripped, with etcd support);
# dist-npm: dist/npm/service-fleet-control-<version>.tgz (JavaScript, no binary) and
# service-fleet-control-<platform>-<version>.tgz (the stripped addons), from the release build.
.PHONY: dist dist-bin dist-npm test-dist-node
dist: dist-bin dist-npm dist-c

dist-bin: ffi-release
	CARGO="$(CARGO)" bash scripts/dist-bin.sh

dist-npm: ffi-release
	cd bindings/node && SFC_NODE_CARGO_ARGS="$(RELEASE_SELECTION)" node scripts/pack.js

# tests/dist, operator and Node.js parts: one version everywhere (tests/dist/version.sh), then,
# in a scratch directory outside the checkout with nothing from target/ on any path, the sfc
# tarball's registry (SQLite, and etcd) and a service installed from the two npm tarballs,
# shut down by `sfc shutdown` (tests/dist/node.sh).
test-dist-node: dist-bin dist-npm
	bash tests/dist/version.sh
	bash tests/dist/node.sh

# libsfc for C/C++ and Go users (scripts/dist-c.sh), from the release build: `make install
# PREFIX=DIR` installs include/sfc.h, lib/libsfc.so.<x.y.z> (SONAME libsfc.so.<x>) and its two
# symlinks, lib/libsfc.a (only sfc_* global), lib/pkgconfig/sfc.pc + sfc-static.pc, the CMake
# package lib/cmake/sfc and share/sfc/valgrind.supp, plus bin/sfc from dist-bin's tarball;
# `make dist-c` writes dist/libsfc-<version>-<target>.tar.gz (the same C layout, LICENSE,
# README.md). test-dist-c (tests/dist/c.sh) builds and runs C, CMake and Go programs from them
# outside the checkout.
PREFIX ?= /usr/local
.PHONY: install dist-c test-dist-c
install: ffi-release dist-bin
	bash scripts/dist-c.sh install "$(PREFIX)"
	bash scripts/dist-c.sh install-bin "$(PREFIX)"

dist-c: ffi-release
	bash scripts/dist-c.sh tarball dist

test-dist-c: build dist-c
	bash tests/setup.sh
	SFC_BIN=$(SFC_BIN) bash tests/dist/c.sh
