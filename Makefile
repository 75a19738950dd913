# Palisade. `make demo` runs the main job, `make test` runs every test; both install what they need.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps image-deps image build test e2e demo bench bench-policy bench-datapath bench-agent bench-l7 bench-source bench-controller clippy fmt crds

deps:
	@bash scripts/deps.sh

image-deps:
	@bash scripts/deps.sh image

# Root: the OCI image palisade:<version> as target/image/palisade-<version>.tar, from the release
# binaries (rebuilt only if stale) and Debian 12 packages; no base image, no registry. Prints its
# size as `name: value unit` lines and runs both binaries inside it (scripts/image.sh).
image: deps image-deps
	@bash scripts/image.sh

build: deps
	$(CARGO) build --release --workspace

# The datapath's kernel tests run twice: in the kernel's attach mode (TCX here), then with legacy tc.
test: deps
	$(CARGO) test --release --workspace --no-fail-fast
	PALISADE_ATTACH_MODE=tc $(CARGO) test --release -p palisade-datapath --no-fail-fast --tests

# Root: only the end-to-end tests (local mode, real eBPF, Git and traffic); `test` runs them too.
e2e: deps
	$(CARGO) test --release -p palisade --test e2e_examples --test e2e_story --test e2e_localhost --test e2e_services --test e2e_l7 --test e2e_dual_stack --test e2e_host

demo: build
	@bash scripts/demo.sh

# Each benchmark prints `name: value unit` lines on stdout (progress goes to stderr).
BENCHMARKS := policy datapath agent l7 source controller
BENCH_policy = $(CARGO) run --release --quiet -p palisade -- bench policy
BENCH_datapath = $(CARGO) run --release --quiet -p palisade-datapath --example bench-datapath
BENCH_agent = $(CARGO) run --release --quiet -p palisade-agent --example bench-agent
BENCH_l7 = $(CARGO) run --release --quiet -p palisade-agent --example bench-l7
BENCH_source = $(CARGO) run --release --quiet -p palisade-source --example bench-source
BENCH_controller = $(CARGO) run --release --quiet -p palisade --example bench-controller
BENCH_DIR := target/bench

# Root (bench-datapath, bench-agent and bench-l7 need it): every benchmark in turn, each one's
# output kept in $(BENCH_DIR)/NAME.txt, then results.json and results.md there with each figure
# against its goal.
bench:
	@[ "$$(id -u)" = 0 ] || { echo "make bench needs root: bench-datapath, bench-agent and bench-l7 load eBPF programs (sudo make bench)" >&2; exit 1; }
	@$(MAKE) --no-print-directory deps
	rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	@set -o pipefail; failed=; \
	$(foreach b,$(BENCHMARKS),echo "== bench-$(b)" >&2; $(BENCH_$(b)) | tee $(BENCH_DIR)/$(b).txt || failed="$$failed bench-$(b)";) \
	if [ -n "$$failed" ]; then echo "make bench: failed:$$failed (no report written)" >&2; exit 1; fi
	$(CARGO) run --release --quiet -p palisade -- bench report $(BENCH_DIR)

bench-policy: deps
	$(BENCH_policy)

# A generated 1,000-file repository served by git daemon on 127.0.0.1.
bench-source: deps
	$(BENCH_source)

# The real controller against the in-memory API server with 5,000 simulated agents writing
# through the agent's report writer; about six minutes.
bench-controller: deps
	$(BENCH_controller)

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerate crds/*.yaml from the Rust types (a test fails when they drift).
crds: deps
	UPDATE_CRDS=1 $(CARGO) test --quiet -p palisade-rollout --test crds

# Root: real eBPF, network namespaces and veths (cleaned up on exit).
bench-datapath: deps
	$(BENCH_datapath)

# Root: the agent over the real eBPF datapath pinned in a temporary bpffs directory (removed on
# exit): 10,000 pods, 100 local endpoints, 1,000 policies.
bench-agent: deps
	$(BENCH_agent)

# Root: the agent's L7 proxy on real packets between pods' network namespaces, over the real
# eBPF datapath pinned in a temporary bpffs directory (removed on exit): HTTP/1.1 keep-alive
# latency and throughput, and DNS queries, through the proxy against the same paths with L4-only
# allows; connections right after lookups through the proxy, allowed by toFQDNs.
bench-l7: deps
	$(BENCH_l7)
