#!/bin/bash
# bench/decode_batch_ab.sh: 8 server-side GPT-2 decode sessions at once (trunk 2..10 of
# bench/.cache/gpt2-small, fetched by bench/gpt2_bench.sh; --workers 2 --intra-op-threads 1,
# max_batch_rows=64, batch_delay_us=300) and one session without batching, as steps/s and p50;
# with BASE=DIR/bin the same for another build, alternated (compare ratios within one run).
#   bash bench/decode_batch_ab.sh [ROUNDS]      (DUR seconds per run, default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${NEW:-build/bin}
BASE=${BASE:-}
ROUNDS=${1:-2}
G=bench/.cache/gpt2-small
SPEC="trunk=gpt2,weights=$G/model.safetensors,config=$G/config.json,layers=2:10"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
run() { # label bindir concurrency extra-model-keys
  local label=$1 bin=$2 conc=$3 keys=$4 port=""
  "$bin/splitserve" --listen 127.0.0.1:0 --workers 2 --intra-op-threads 1 --model "$SPEC$keys" \
    > "$LOG" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    port=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$LOG" | grep -oE '[0-9]+$' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  local out
  out=$("$NEW/splitserve-bench" --addr "127.0.0.1:$port" --model trunk --shape 1,1,768 \
    --session-decode 128 --session-reset 128 --concurrency "$conc" --duration "${DUR:-8}" \
    --warmup 1 --no-progress 2>&1)
  kill -INT "$pid"
  wait "$pid" 2> /dev/null || true
  echo "$label sessions=$conc $(echo "$out" | grep -oE 'QPS [0-9.]+|p50 [0-9.]+' | tr '\n' ' ')"
}
B=",max_batch_rows=64,batch_delay_us=300"
for _ in $(seq "$ROUNDS"); do
  [ -n "$BASE" ] && run base "$BASE" 8 "$B"
  run new "$NEW" 8 "$B"
done
[ -n "$BASE" ] && run base "$BASE" 1 ""
run new "$NEW" 1 ""
