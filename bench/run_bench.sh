#!/usr/bin/env bash
# make bench: the side-by-side benchmark (bounded: ~10 minutes on 2 cores).
# Starts each server on a free port, drives it with build/bin/splitserve-bench (one process, one
# loop thread, closed loop), and writes bench/results/latest.{csv,md,png}.
#   1. the seeds' table: sync (spin 100 ms, --workers 0), pool 64 / pool 128 (sleep 100 ms with
#      --max-inflight 64 / 128), unbounded (sleep, no limit); and the Python peers on sleep.
#   2. raw RPC cost: identity on shape [1] and [1,10,768], splitserve vs both peers.
#   3. model compute: mlp 768 on [1,10,768] at 1..64, splitserve vs both peers.
# Thread budget: splitserve --workers 2 --intra-op-threads 1 (3 threads); peers run torch with
# 1 intra-op thread (torch.set_num_threads(1)) on Debian's torch + OpenBLAS (pthread flavour),
# whose own pool torch does not size: OPENBLAS_NUM_THREADS=1 holds it to the same one thread
# (uncapped, a peer's products ran on both cores).
# Env: DURATION (s per level, default 3), WARMUP (default 1), QUICK=1 (fewer levels).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=build/bin
PY=/usr/bin/python3
OUT=bench/results
CSV=$OUT/latest.csv
DUR=${DURATION:-3}
WARM=${WARMUP:-1}
mkdir -p "$OUT"
rm -f "$CSV" "$OUT"/latest.json
LOGDIR=$(mktemp -d)
SRV_PID=""

levels_seed="1,2,4,8,16,32,64,128,256,512,4096"
levels_sync="1,2,4,8,16,32"
levels_rpc="1,8,64,512"
levels_mlp="1,2,4,8,16,32,64"
if [ "${QUICK:-0}" = 1 ]; then
  levels_seed="1,64,512,4096"; levels_sync="1,8"; levels_rpc="1,64"; levels_mlp="1,16"
fi

. bench/lib.sh  # (the script has cd-ed to the repository root)
trap 'stop; rm -rf "$LOGDIR"' EXIT

bench() { # label levels args...
  local label=$1 levels=$2; shift 2
  echo "--- $label"
  "$BIN/splitserve-bench" --addr "127.0.0.1:$PORT" --server-pid "$SRV_PID" --label "$label" \
    --concurrency "$levels" --duration "$DUR" --warmup "$WARM" --csv "$CSV" "$@" |
    grep -E "concurrent\. Latency|threads|error" || true
}

SS="$BIN/splitserve --listen 127.0.0.1:0 --log-level warn --enable-test-models"
PEER="env OPENBLAS_NUM_THREADS=1 $PY bench/peers/peer_server.py --listen 127.0.0.1:0 --py-dir build/py"

echo "=== 1. the seeds' table (handler waits 100 ms)"
start ss-sync $SS --workers 0
bench "splitserve sync (spin 100ms, --workers 0)" "$levels_sync" --model spin --metadata ms=100 --shape 1
stop
start ss-pool64 $SS --workers 2 --max-inflight 64
bench "splitserve pool 64 (sleep 100ms)" "$levels_seed" --model sleep --metadata ms=100 --shape 1
stop
start ss-pool128 $SS --workers 2 --max-inflight 128
bench "splitserve pool 128 (sleep 100ms)" "$levels_seed" --model sleep --metadata ms=100 --shape 1
stop
start ss-unbounded $SS --workers 2
bench "splitserve unbounded (sleep 100ms)" "$levels_seed" --model sleep --metadata ms=100 --shape 1
stop
start peer-aio $PEER --mode aio --torch-threads 1
bench "grpc.aio peer (sleep 100ms)" "$levels_seed" --model sleep --metadata ms=100 --shape 1
stop
start peer-sync $PEER --mode sync --torch-threads 1
bench "grpc sync peer, 10 threads (sleep 100ms)" "${levels_seed%,4096}" --model sleep --metadata ms=100 --shape 1
stop

echo "=== 2. raw RPC cost (identity)"
for shape in 1 1,10,768; do
  start ss $SS --workers 2
  bench "splitserve identity [$shape]" "$levels_rpc" --model identity --shape "$shape"
  stop
  for mode in aio sync; do
    start "peer-$mode" $PEER --mode "$mode" --torch-threads 1
    bench "grpc $mode peer identity [$shape]" "$levels_rpc" --model identity --shape "$shape"
    stop
  done
done

echo "=== 3. model compute (mlp 768->768->768 on [1,10,768])"
start ss $SS --workers 2 --intra-op-threads 1
bench "splitserve mlp" "$levels_mlp" --model mlp --shape 1,10,768
stop
# dynamic batching: concurrent calls stacked into one GEMM (up to 160 rows = 16 calls)
start ss $SS --workers 2 --intra-op-threads 1 --model mlp=mlp,max_batch_rows=160,batch_delay_us=200
bench "splitserve mlp, batching (max_batch_rows=160)" "$levels_mlp" --model mlp --shape 1,10,768
stop
for mode in aio sync; do
  start "peer-$mode" $PEER --mode "$mode" --workers 2 --torch-threads 1
  bench "grpc $mode peer mlp (torch)" "$levels_mlp" --model mlp --shape 1,10,768
  stop
done

echo "=== 3b. mlp latency at 1 in flight, 2 BLAS threads for the one call on both sides"
start ss $SS --workers 1 --intra-op-threads 2
bench "splitserve mlp, 1 worker x 2 threads" 1 --model mlp --shape 1,10,768
stop
for mode in aio sync; do
  start "peer-$mode" $PEER --mode "$mode" --workers 1 --torch-threads 2
  bench "grpc $mode peer mlp (torch), 2 threads" 1 --model mlp --shape 1,10,768
  stop
done

$PY bench/report.py "$CSV" "$OUT/latest.md" "$OUT/latest.png"
echo "wrote $OUT/latest.md, $OUT/latest.csv, $OUT/latest.png"
