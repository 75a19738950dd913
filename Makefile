# Palisade. `make demo` runs the main job, `make test` runs every test; both install what they need.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build test demo bench-policy bench-datapath clippy fmt

deps:
	@bash scripts/deps.sh

build: deps
	$(CARGO) build --release --workspace

test: deps
	$(CARGO) test --release --workspace --no-fail-fast

demo: build
	@bash scripts/demo.sh

bench-policy: deps
	$(CARGO) run --release --quiet -p palisade -- bench policy

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Root: real eBPF, network namespaces and veths (cleaned up on exit).
bench-datapath: deps
	$(CARGO) run --release --quiet -p palisade-datapath --example bench
