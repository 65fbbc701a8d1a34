#!/usr/bin/env bash
# Run every test: the normal build's ctest suite (unit + interop), then the same suite built
# with ASan+UBSan (leaks fail the daemon's exit code, so start/serve/drain is leak-checked),
# then the daemon built with ThreadSanitizer under the suites that cross threads most (I/O
# loops handing calls to the service loop, drain, deadlines, batching): any race report fails.
# Prints ctest's summaries and a closing "N passed, M failed" line; exit 1 on any failure.
# usage: run_tests.sh BUILD_DIR ASAN_BUILD_DIR JOBS "EXTRA_CMAKE_FLAGS"
set -uo pipefail
BUILD=${1:-build}
ASAN=${2:-build-asan}
JOBS=${3:-2}
FLAGS=${4:-}
total_pass=0
total_fail=0

run_suite() { # name dir [ctest args...]
  local name=$1 dir=$2 log
  shift 2
  log=$(mktemp)
  echo "=== $name: ctest in $dir"
  (cd "$dir" && ctest --output-on-failure -j "$JOBS" --timeout 600 "$@") 2>&1 | tee "$log"
  local line ran failed
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -1)
  if [ -z "$line" ]; then
    echo "$name: ctest printed no summary"; total_fail=$((total_fail + 1)); rm -f "$log"; return
  fi
  failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
  ran=$(echo "$line" | sed -E 's/.* tests failed out of ([0-9]+).*/\1/')
  total_pass=$((total_pass + ran - failed))
  total_fail=$((total_fail + failed))
  rm -f "$log"
}

run_suite "normal build" "$BUILD"

echo "=== ASan+UBSan build in $ASAN"
# shellcheck disable=SC2086
if cmake -S . -B "$ASAN" -DCMAKE_BUILD_TYPE=Debug -DSS_SANITIZE=ON $FLAGS >/dev/null &&
   cmake --build "$ASAN" -j "$JOBS"; then
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  run_suite "ASan+UBSan build" "$ASAN"
else
  echo "ASan build failed"; total_fail=$((total_fail + 1))
fi

TSAN=${TSAN_BUILD:-build-tsan}
echo "=== ThreadSanitizer build in $TSAN (the daemon; suites that cross threads)"
# shellcheck disable=SC2086
if cmake -S . -B "$TSAN" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS="-fsanitize=thread -O1 -g" \
     -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" $FLAGS >/dev/null &&
   cmake --build "$TSAN" -j "$JOBS" --target splitserve-bin splitserve-call-bin splitserve-bench-bin pyproto; then
  # Races only: a drain that times out exits with workers still computing (by design: their
  # results are abandoned), which TSan would report as thread leaks.
  export TSAN_OPTIONS=${TSAN_OPTIONS:-report_signal_unsafe=0:report_thread_leaks=0}
  SS_TSAN=1 run_suite "ThreadSanitizer build" "$TSAN" \
    -R 'interop\.(test_io_threads|io2\.test_(drain|rpcs|batching|concurrency|tls|train))$'
else
  echo "TSan build failed"; total_fail=$((total_fail + 1))
fi

echo "${total_pass} passed, ${total_fail} failed"
[ "$total_fail" -eq 0 ]
