# Palisade. `make demo` runs the main job, `make test` runs every test; both install what they need.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build test e2e demo bench-policy bench-datapath bench-agent bench-source clippy fmt crds

deps:
	@bash scripts/deps.sh

build: deps
	$(CARGO) build --release --workspace

test: deps
	$(CARGO) test --release --workspace --no-fail-fast

# Root: only the end-to-end tests (local mode, real eBPF, Git and traffic); `test` runs them too.
e2e: deps
	$(CARGO) test --release -p palisade --test e2e_examples --test e2e_story --test e2e_localhost --test e2e_services

demo: build
	@bash scripts/demo.sh

bench-policy: deps
	$(CARGO) run --release --quiet -p palisade -- bench policy

# A generated 1,000-file repository served by git daemon on 127.0.0.1.
bench-source: deps
	$(CARGO) run --release --quiet -p palisade-source --example bench-source

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerate crds/*.yaml from the Rust types (a test fails when they drift).
crds: deps
	UPDATE_CRDS=1 $(CARGO) test --quiet -p palisade-rollout --test crds

# Root: real eBPF, network namespaces and veths (cleaned up on exit).
bench-datapath: deps
	$(CARGO) run --release --quiet -p palisade-datapath --example bench-datapath

# Root: the agent over the real eBPF datapath pinned in a temporary bpffs directory (removed on
# exit): 10,000 pods, 100 local endpoints, 1,000 policies.
bench-agent: deps
	$(CARGO) run --release --quiet -p palisade-agent --example bench-agent
