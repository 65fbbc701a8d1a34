#!/usr/bin/env bash
# bench/nn_bench.sh [THREADS] [REPS]: build bench/nn_bench.c (CMake target nn_bench) and run
# it (see the comment at the top of nn_bench.c). Needs a built build/.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build build --target nn_bench >/dev/null
exec build/bin/nn_bench "$@"
