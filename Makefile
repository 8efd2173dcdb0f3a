# Thin wrapper over Meson. `make run` and `make test` are the contract with a
# new user: each installs what it needs, builds, and does the thing.
BUILD ?= build
MESON_FLAGS ?=

.PHONY: all deps build run stop test unit e2e bench fuzz asan clean

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_FLAGS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: build
	scripts/run.sh $(BUILD)

test: build
	scripts/test.sh $(BUILD)

unit: build
	meson test -C $(BUILD) --print-errorlogs

e2e: build
	MOAT_BUILD=$(abspath $(BUILD)) /usr/bin/python3 -m pytest -q tests/e2e tests/security sdk/python/tests

bench: build
	@scripts/install-deps.sh --bench
	bench/run.sh $(BUILD)

# libFuzzer harnesses (fuzz/), FUZZ_SECONDS each, in their own clang build.
FUZZ_SECONDS ?= 60
FUZZ_BUILD ?= build-fuzz
fuzz: deps
	scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD)
