# Keel top-level commands. `make demo` and `make test` work on a fresh
# Debian 12 machine: they install missing packages, configure and build.
BUILD ?= build
JOBS ?= 2
CTEST_ARGS ?=
# The sanitizer build (ASan + UBSan, gcc) that make test also runs the unit,
# integration and postgres labels in (not the chaos and demo tests), and the
# libFuzzer build (clang); docs/fuzzing.md.
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all deps browser-deps configure build package demo demo-postgres demo-cluster demo-host test test-asan asan-build fuzz bench clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: configure
	@cmake --build $(BUILD) -j$(JOBS)

# keel-coordinator, keel-agent and keel-tools .deb files in $(BUILD)/
# (packaging/; docs/deploy.md).
package: build
	@cmake --build $(BUILD) --target package

# A coordinator and two ledger agents on loopback doing real work,
# with a coordinator SIGKILL in the middle.
demo: build
	$(BUILD)/bin/keel-demo

# The bank on two PostgreSQL databases (postgres agents), then the same
# transfers without Keel: raw 2PC on the same databases, and local
# transactions in one database (docs/postgres.md, "The demo").
demo-postgres: build
	$(BUILD)/bin/keel-demo --adapter postgres --fault none --baseline

# bank-b is a host system that can only try, confirm and cancel (keel-host,
# the reference host, behind a host agent; docs/hosts.md); keel-host is
# SIGKILLed mid-load and restarted 5 s later.
demo-host: build
	$(BUILD)/bin/keel-demo --adapter host --fault host-kill --pause-seconds 5

# A coordinator cluster: 3 etcd members, 3 coordinators and two ledger agents
# on loopback; one coordinator SIGKILLed mid-load and taken over by a survivor.
demo-cluster: build
	$(BUILD)/bin/keel-demo --cluster

# The whole test suite through ctest (labels: unit, integration, crash, postgres,
# cluster, chaos, demo, host); it starts what it needs (PostgreSQL, etcd) on loopback.
# Then the unit, integration and postgres labels again in the ASan + UBSan
# build (without the chaos and demo tests).
test: build browser-deps
	cd $(BUILD) && ctest --output-on-failure --timeout 600 $(CTEST_ARGS)
	@$(MAKE) --no-print-directory test-asan

# puppeteer-core for the console's browser test (label browser), from npm,
# pinned by tests/browser/package-lock.json, into $(BUILD)/browser; it
# drives Debian's chromium (installed by deps), never a downloaded browser.
browser-deps: build
	@mkdir -p $(BUILD)/browser
	@cp tests/browser/package.json tests/browser/package-lock.json $(BUILD)/browser/
	@cd $(BUILD)/browser && if [ ! -d node_modules/puppeteer-core ]; then \
	  echo "keel: installing puppeteer-core into $(BUILD)/browser (npm ci)"; \
	  PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error; fi

# Only what those labels run, at -Og with line tables: every object
# instrumented (-fsanitize=address,undefined, UB fatal); ctest sets the
# sanitizers' options (tests/sanitizers/).
asan-build: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEEL_SANITIZE=address,undefined \
	  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-Og -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-Og -g1 -DNDEBUG" >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS) --target keel_ctest_sanitized

test-asan: asan-build
	cd $(ASAN_BUILD) && ctest --output-on-failure --timeout 600 -L 'unit|integration|postgres' -E '^(chaos|demo)\.'

# libFuzzer targets (tests/fuzz) for FUZZ_SECONDS each; fails on a crash.
fuzz:
	@scripts/install-deps.sh fuzz
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_BUILD) -DKEEL_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS)
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Micro benchmarks, then a short keel-bench run (ledger transfers at 64
# outstanding, with the floor); docs/performance.md has the full set.
bench: build
	$(BUILD)/bin/keel-bench-micro
	$(BUILD)/bin/keel-bench --concurrency 64 --duration 5 --warmup 2 --floor

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
