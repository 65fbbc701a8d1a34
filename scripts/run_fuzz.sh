#!/usr/bin/env bash
# Run the libFuzzer harnesses of a SS_FUZZ build, each for a bounded time, and print per harness
# its executions, executions per second and coverage (libFuzzer's cov: edges, ft: features).
# Each harness starts from its seed corpus (tests/fuzz/corpus/NAME, read-only) plus what earlier
# runs found (BUILD/fuzz-work/NAME/corpus, where new inputs go); a crash leaves its input in
# BUILD/fuzz-work/NAME/artifacts/ and the log in BUILD/fuzz-work/NAME/log.txt. Exit 1 if any
# harness crashed.
# usage: run_fuzz.sh BUILD_DIR SECONDS [NAME]
set -uo pipefail
BUILD=${1:-build-fuzz}
SECONDS_EACH=${2:-60}
ONLY=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$BUILD/tests/fuzz
WORK=$BUILD/fuzz-work
failed=0
printf '%-12s %10s %8s %7s %7s %6s  %s\n' harness execs exec/s cov ft corpus result
for exe in "$BIN"/fuzz_*; do
  name=${exe##*/fuzz_}
  [ -n "$ONLY" ] && [ "$ONLY" != "$name" ] && continue
  dir=$WORK/$name
  mkdir -p "$dir/corpus" "$dir/artifacts"
  "$exe" "$dir/corpus" "$ROOT/tests/fuzz/corpus/$name" -max_total_time="$SECONDS_EACH" \
    -timeout=10 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" >"$dir/log.txt" 2>&1
  rc=$?
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$dir/log.txt" | tail -1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$dir/log.txt" | tail -1)
  last=$(grep -E '^#[0-9]+.* cov: [0-9]+ ft: [0-9]+' "$dir/log.txt" | tail -1)
  cov=$(echo "$last" | sed -nE 's/.* cov: ([0-9]+).*/\1/p')
  ft=$(echo "$last" | sed -nE 's/.* ft: ([0-9]+).*/\1/p')
  corp=$(echo "$last" | sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p')
  result=ok
  if [ $rc -ne 0 ]; then
    result="CRASH (rc $rc): $(ls -t "$dir/artifacts" | head -1) — see $dir/log.txt"
    failed=1
  fi
  printf '%-12s %10s %8s %7s %7s %6s  %s\n' "$name" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
    "${ft:-?}" "${corp:-?}" "$result"
done
exit $failed
