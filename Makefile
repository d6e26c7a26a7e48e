# mnemo - top-level entry points. `make run` and `make test` work on a fresh
# Debian 12 machine: they install what is missing, build, then run.

BUILD     ?= build
JOBS      ?= $(shell nproc)
CMAKE_ARGS ?=
PORT      ?= 3001
DATA_DIR  ?= ./data

# What `make run` needs: the toolchain and the libraries mnemod links
# (cmocka too: the unit tests are configured with the build).
PKGS = cmake pkg-config gcc g++ make libwebsockets-dev libjansson-dev \
       liblmdb-dev libopenblas-dev liblapacke-dev libcmocka-dev
# What `make test` adds: the real clients and programs the tests drive.
# haproxy, openssl, prometheus (for promtool) and lmdb-utils (mdb_copy) are
# for the deploy/ tests (tests/deploy); on a machine with systemd, Debian
# starts the haproxy and prometheus services when it installs them.
TEST_PKGS = python3 python3-numpy python3-websockets python3-pytest nodejs \
       npm chromium haproxy openssl prometheus lmdb-utils
BENCH_PKGS = python3-sklearn python3-faiss

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-test deps-bench configure build test test-asan bench run clean \
        format help

all: build

help:
	@echo "make run    install what is missing, build, start mnemod on :$(PORT)"
	@echo "make test   install, build, run every test (ctest)"
	@echo "make bench  run the benchmarks against their peers, print ratios"
	@echo "make test-asan  the suite under AddressSanitizer + UBSan"

# Installs only the packages of the list $(1) that are missing; silent
# when everything is there. node and npm count as present when their
# commands work (they may come from outside Debian, where apt cannot
# replace them).
define apt_install
	@missing=$$(for p in $(1); do \
	  case $$p in nodejs|npm) command -v $${p%js} >/dev/null && continue;; \
	  esac; \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null || exit 1; \
	fi
endef

deps:
	$(call apt_install,$(PKGS))

# The npm packages of tests/node are installed again when package.json or
# package-lock.json is newer than the last install (npm's
# node_modules/.package-lock.json) or one is missing.
deps-test: deps
	$(call apt_install,$(TEST_PKGS))
	@n=tests/node; stamp=$$n/node_modules/.package-lock.json; \
	if [ -f $$n/package.json ] && { [ ! -d $$n/node_modules/ws ] || \
	    [ ! -d $$n/node_modules/playwright-core ] || \
	    [ ! -d $$n/node_modules/typescript ] || \
	    [ $$n/package.json -nt $$stamp ] || \
	    [ $$n/package-lock.json -nt $$stamp ]; }; then \
	  echo "installing npm packages for tests/node"; \
	  (cd $$n && npm install --no-audit --no-fund --silent) || exit 1; \
	  touch $$stamp; \
	fi

deps-bench: deps-test
	$(call apt_install,$(BENCH_PKGS))

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_ARGS) >/dev/null

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: deps-test build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan:
	$(MAKE) test BUILD=build-asan \
	  CMAKE_ARGS="-DMNEMO_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug"

bench: deps-bench build
	/usr/bin/python3 bench/run_bench.py --build $(BUILD)

# Foreground, port $(PORT), data in $(DATA_DIR); Ctrl-C drains and stops.
run: build
	@mkdir -p $(DATA_DIR)
	exec $(BUILD)/bin/mnemod --port $(PORT) --data-dir $(DATA_DIR)

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD) build-asan
