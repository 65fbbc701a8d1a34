# splitserve — top-level driver. `make run` and `make test` work on a fresh Debian 12 (as root).
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
LISTEN     ?= 127.0.0.1:50051
ARGS       ?=
CMAKE_FLAGS ?=
ifeq ($(CI),true)
CMAKE_FLAGS += -DSS_WERROR=ON
endif

.PHONY: all deps build run test test-fast test-asan test-tsan bench fuzz clean format

all: build

deps:
	@bash scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

run: build
	@echo "starting splitserve on $(LISTEN) (default model: embedded mlp 768->768->768); Ctrl-C drains and exits"
	@$(BUILD)/bin/splitserve --listen $(LISTEN) $(ARGS)

# Every test: the normal build, then the same suite under ASan+UBSan.
test: build
	@bash scripts/run_tests.sh $(BUILD) $(ASAN_BUILD) $(JOBS) "$(CMAKE_FLAGS)"

test-fast: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSS_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	@cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS)

# The side-by-side benchmark (bounded, ~10 minutes on 2 cores): bench/results/latest.{md,csv,png}.
bench: build
	@SS_DEPS_BENCH=1 bash scripts/deps.sh
	@bash bench/run_bench.sh

# The whole suite under ThreadSanitizer (`make test` runs the suites that cross threads under it;
# TSan adds a thread of its own, which the tests know through SS_TSAN=1; every race report fails).
test-tsan: deps
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS="-fsanitize=thread -O1 -g" \
	  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-tsan -j $(JOBS)
	@cd build-tsan && SS_TSAN=1 TSAN_OPTIONS="report_signal_unsafe=0:report_thread_leaks=0" ctest --output-on-failure -j $(JOBS)

# libFuzzer harnesses (tests/fuzz; clang): build into $(FUZZ_BUILD) and run each for FUZZ_SECONDS
# (FUZZ=name runs one), then print its executions and coverage. Not part of `make test` (there,
# ctest fuzz.<name> only replays the seed corpora). New inputs go to $(FUZZ_BUILD)/fuzz-work/,
# crashes to $(FUZZ_BUILD)/fuzz-work/<name>/artifacts/.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ         ?=
fuzz:
	@SS_DEPS_FUZZ=1 bash scripts/deps.sh
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSS_FUZZ=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_all -- --no-print-directory
	@bash scripts/run_fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ)

# Every C file git tracks (scripts/check_format.sh checks them; make test runs that check).
format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
