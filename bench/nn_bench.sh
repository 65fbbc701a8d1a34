#!/usr/bin/env bash
# bench/nn_bench.sh [THREADS] [REPS]: build bench/nn_bench.c against build/libsplitserve.a and run
# it (see the comment at the top of nn_bench.c). Needs a built build/.
set -euo pipefail
cd "$(dirname "$0")/.."
OB=/usr/lib/x86_64-linux-gnu/openblas-openmp
gcc -O2 -fopenmp -Isrc -Iinclude -Ibuild/gen -I/usr/include/x86_64-linux-gnu/openblas-openmp \
  bench/nn_bench.c build/libsplitserve.a -o build/nn_bench -L$OB -Wl,-rpath,$OB -lopenblas \
  $(pkg-config --libs libuv libnghttp2 libprotobuf-c jansson yaml-0.1) -lm -lpthread
exec build/nn_bench "$@"
