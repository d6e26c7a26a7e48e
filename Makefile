# mnemo - top-level entry points. `make run` and `make test` work on a fresh
# Debian 12 machine: they install what is missing, build, then run.

BUILD     ?= build
JOBS      ?= $(shell nproc)
CMAKE_ARGS ?=
PORT      ?= 3001
DATA_DIR  ?= ./data

# haproxy, openssl, prometheus (for promtool) and lmdb-utils (mdb_copy) are
# for the deploy/ tests (tests/deploy); on a machine with systemd, Debian
# starts the haproxy and prometheus services when it installs them.
PKGS = cmake pkg-config gcc g++ make libwebsockets-dev libjansson-dev \
       liblmdb-dev libopenblas-dev liblapacke-dev libcmocka-dev \
       python3 python3-numpy python3-websockets python3-pytest nodejs npm \
       haproxy openssl prometheus lmdb-utils
BENCH_PKGS = python3-sklearn python3-faiss

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-bench configure build test test-asan bench run clean \
        format help

all: build

help:
	@echo "make run    install what is missing, build, start mnemod on :$(PORT)"
	@echo "make test   install, build, run every test (ctest)"
	@echo "make bench  run the benchmarks against their peers, print ratios"
	@echo "make test-asan  the suite under AddressSanitizer + UBSan"

# Installs only what is missing; silent when everything is there. node and
# npm count as present when their commands work (they may come from outside
# Debian, where apt cannot replace them).
deps:
	@missing=$$(for p in $(PKGS); do \
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
	@if [ -f tests/node/package.json ] && [ ! -d tests/node/node_modules ]; then \
	  echo "installing npm packages for tests/node"; \
	  cd tests/node && npm install --no-audit --no-fund --silent || exit 1; \
	fi

deps-bench: deps
	@missing=$$(for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_ARGS) >/dev/null

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
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
