#!/usr/bin/env bash
# bench/gpt2_bench.sh: the GPT-2 trunk (layers 2..10 of GPT-2 small: 8 blocks, n_embd 768,
# 12 heads, 56.7M parameters) served by splitserve vs the PyTorch peer (bench/peers/peer_server.py
# --gpt2-weights), same weights, same OpenBLAS (0.3.21, OpenMP flavour: the peer runs with
# LD_LIBRARY_PATH pointing torch's libblas at it), same 2-core thread budget, same load generator
# (build/bin/splitserve-bench, closed loop). About 2 minutes on 2 cores (first run: +~5 s to
# write the checkpoint). Prints everything; CSV and JSON Lines go to bench/.cache/gpt2.{csv,jsonl}
# (bench/results/gpt2.md is written by hand from this output).
#
#   1. a random GPT-2-small checkpoint in HF layout (bench/.cache/gpt2-small/, written once):
#      model.safetensors (F32, every key of a real HF file but the attn.bias mask buffers:
#      wte, wpe, h.0..11.*, ln_f; HF init: N(0, 0.02) weights, zero biases, unit LayerNorms)
#      and config.json;
#   2. OpenBLAS sgemm's own peak (bench/sgemm_peak.c, OMP_NUM_THREADS=1 and 2), and the
#      engine's own (bench/mm_probe.c: oneDNN, few-row kernels, OpenBLAS side by side);
#   3. servers: splitserve --workers 1 --intra-op-threads 2, splitserve --workers 2
#      --intra-op-threads 1, and the peer: --mode aio --torch-threads 2 (OMP_NUM_THREADS=2)
#      with --workers 2 (run_in_executor pool: 2 calls x 2 threads at concurrency 2) and with
#      --workers 1 (one call at a time, 2 threads: the peer's best use of 2 cores);
#      workloads: prefill [1,128,768] at concurrency 1 and 2; decode step [1,1,768] with 128
#      tokens of client-side past (--past 128 --use-cache) at concurrency 1; on splitserve also a
#      decode step with a server-side session (--session-decode 128: 128-token prefill, then 128
#      steps, then session_end);
#   4. RSS of splitserve with one trunk vs two trunks (two --model flags on the same file).
# Env: CHECKPOINT_ONLY=1: write the checkpoint (step 1) and stop.
# DURATION (s per level, default 5), WARMUP (default 1), PERF=1: perf record -g the
# splitserve prefill and decode runs (bench/.cache/perf-*.data, report in the log).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/bin
PY=/usr/bin/python3
CACHE=$ROOT/bench/.cache
CK=$CACHE/gpt2-small
W=$CK/model.safetensors
C=$CK/config.json
OUT=$ROOT/bench/results
CSV=$CACHE/gpt2.csv
JSONL=$CACHE/gpt2.jsonl
DUR=${DURATION:-5}
WARM=${WARMUP:-1}
OBLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp
mkdir -p "$CK" "$OUT"
rm -f "$CSV" "$JSONL"
LOGDIR=$(mktemp -d)
SRV_PID=""
T_START=$(date +%s)

# ---------------------------------------------------------------- 1. checkpoint ----
if [ ! -s "$W" ] || [ ! -s "$C" ]; then
  echo "=== writing a random GPT-2-small checkpoint to $CK (once)"
  "$PY" - "$W" "$C" <<'EOF'
import json, sys
import numpy as np
wpath, cpath = sys.argv[1], sys.argv[2]
cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
       "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "n_ctx": 1024,
       "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
       "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "initializer_range": 0.02,
       "bos_token_id": 50256, "eos_token_id": 50256}
E, V, P, L = 768, 50257, 1024, 12
shapes = [("wte.weight", (V, E)), ("wpe.weight", (P, E))]
for i in range(L):
    shapes += [(f"h.{i}.ln_1.weight", (E,)), (f"h.{i}.ln_1.bias", (E,)),
               (f"h.{i}.attn.c_attn.weight", (E, 3 * E)), (f"h.{i}.attn.c_attn.bias", (3 * E,)),
               (f"h.{i}.attn.c_proj.weight", (E, E)), (f"h.{i}.attn.c_proj.bias", (E,)),
               (f"h.{i}.ln_2.weight", (E,)), (f"h.{i}.ln_2.bias", (E,)),
               (f"h.{i}.mlp.c_fc.weight", (E, 4 * E)), (f"h.{i}.mlp.c_fc.bias", (4 * E,)),
               (f"h.{i}.mlp.c_proj.weight", (4 * E, E)), (f"h.{i}.mlp.c_proj.bias", (E,))]
shapes += [("ln_f.weight", (E,)), ("ln_f.bias", (E,))]
header, off = {"__metadata__": {"format": "pt"}}, 0
for name, shp in shapes:
    n = int(np.prod(shp)) * 4
    header[name] = {"dtype": "F32", "shape": list(shp), "data_offsets": [off, off + n]}
    off += n
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
rng = np.random.default_rng(2024)
with open(wpath + ".tmp", "wb") as f:
    f.write(len(h).to_bytes(8, "little"))
    f.write(h)
    for name, shp in shapes:
        if name.endswith(".bias"):
            a = np.zeros(shp, np.float32)
        elif ".ln_" in name or name.startswith("ln_f"):
            a = np.ones(shp, np.float32)
        else:
            a = rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02)
        f.write(a.astype("<f4").tobytes())
import os
os.replace(wpath + ".tmp", wpath)
with open(cpath, "w") as f:
    json.dump(cfg, f, indent=2)
print(f"{wpath}: {len(shapes)} tensors, {off / 2**20:.1f} MiB")
EOF
fi
if [ "${CHECKPOINT_ONLY:-0}" = 1 ]; then # the README's way to a GPT-2 checkpoint, alone
  echo "checkpoint: $W and $C"
  rmdir "$LOGDIR"
  exit 0
fi
WBYTES=$(stat -c %s "$W")
TRUNK_BYTES=$((56702976 * 4))

# ---------------------------------------------------------------- 2. sgemm peak ----
echo "=== OpenBLAS sgemm peak (GFLOP/s: best, median of ~0.4 s of calls)"
gcc -O2 -o "$CACHE/sgemm_peak" bench/sgemm_peak.c -I/usr/include/x86_64-linux-gnu/openblas-openmp \
  -L$OBLAS -Wl,-rpath,$OBLAS -lopenblas
for t in 1 2; do
  echo "--- OMP_NUM_THREADS=$t"
  OMP_NUM_THREADS=$t "$CACHE/sgemm_peak" | tee "$LOGDIR/sgemm$t.txt"
done

echo "=== the matmul engine (oneDNN) next to OpenBLAS on the same shapes (bench/mm_probe.c, ~15 s)"
cmake --build "$ROOT/build" --target mm_probe > /dev/null
"$BIN/mm_probe" 0.1 | tee "$LOGDIR/mm_probe.txt"

# ---------------------------------------------------------------- servers ----------
. bench/lib.sh  # (the script has cd-ed to the repository root)
trap 'stop; rm -rf "$LOGDIR"' EXIT

bench() { # label args...
  local label=$1; shift
  echo "--- $label"
  "$BIN/splitserve-bench" --addr 127.0.0.1:$PORT --model trunk --server-pid "$SRV_PID" \
    --duration "$DUR" --warmup "$WARM" --no-progress --label "$label" --csv "$CSV" \
    --json "$JSONL" --timeout 60 "$@"
}

rss() { # pid -> "VmRSS RssAnon RssFile" in MiB
  awk '/^VmRSS|^RssAnon|^RssFile/ {printf "%s %.1f  ", $1, $2/1024}' "/proc/$1/status"
}

perf_on() { # name: perf record -g the server while the next bench runs
  [ "${PERF:-0}" = 1 ] || return 0
  perf record -g -F 499 -o "$CACHE/perf-$1.data" -p "$SRV_PID" > /dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.3
}
perf_off() {
  [ "${PERF:-0}" = 1 ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  echo "--- perf report ($1): top symbols (children excluded)"
  perf report -i "$CACHE/perf-$1.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -25
}

SPEC="trunk=gpt2,weights=$W,config=$C,layers=2:10"
PREFILL=(--shape 1,128,768 --concurrency 1,2)
DECODE=(--shape 1,1,768 --past 128 --use-cache --kv-layers 8 --kv-heads 12 --kv-head-dim 64 --concurrency 1)
SESSION=(--shape 1,1,768 --session-decode 128 --session-reset 128 --concurrency 1)

# ---------------------------------------------------------------- 3. splitserve ----
for cfg in "1 2" "2 1"; do
  set -- $cfg
  name="splitserve w$1xt$2"
  start "ss-w$1t$2" "$BIN/splitserve" --listen 127.0.0.1:0 --workers "$1" --intra-op-threads "$2" \
    --model "$SPEC" --log-level warn
  echo "=== $name (pid $SRV_PID, port $PORT)"
  perf_on "prefill-w$1t$2"
  bench "$name prefill" "${PREFILL[@]}"
  perf_off "prefill-w$1t$2"
  perf_on "decode-w$1t$2"
  bench "$name decode client-cache" "${DECODE[@]}"
  perf_off "decode-w$1t$2"
  bench "$name decode session" "${SESSION[@]}"
  echo "RSS after the runs: $(rss "$SRV_PID")"
  stop
done

# ---------------------------------------------------------------- 3b. decode batching
# 8 server-side sessions decoding at once: without batching each step is its own pass over the
# weights; with max_batch_rows the steps of different sessions share one (attention per session).
for b in 0 64; do
  start "ss-batch$b" "$BIN/splitserve" --listen 127.0.0.1:0 --workers 2 --intra-op-threads 1 \
    --model "$SPEC,max_batch_rows=$b,batch_delay_us=300" --log-level warn
  echo "=== splitserve w2xt1, decode sessions, max_batch_rows=$b (pid $SRV_PID, port $PORT)"
  bench "splitserve w2xt1 decode sessions max_batch_rows=$b" --shape 1,1,768 --session-decode 128 \
    --session-reset 128 --concurrency 1,8
  stop
done

# ---------------------------------------------------------------- 3. the peer ------
for pw in 2 1; do
  start "peer-w$pw" env LD_LIBRARY_PATH=$OBLAS OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 "$PY" \
    bench/peers/peer_server.py --mode aio --workers "$pw" --torch-threads 2 --listen 127.0.0.1:0 \
    --gpt2-weights "$W" --gpt2-config "$C" --gpt2-layers 2:10
  echo "=== peer aio w$pw torch-threads 2 (pid $SRV_PID, port $PORT); BLAS mapped:" \
    "$(grep -oE '/[^ ]*openblas[^ ]*\.so[^ ]*' /proc/$SRV_PID/maps | sort -u | tr '\n' ' ')"
  bench "peer aio-w$pw-t2 prefill" "${PREFILL[@]}"
  bench "peer aio-w$pw-t2 decode client-cache" "${DECODE[@]}"
  echo "RSS after the runs: $(rss "$SRV_PID")"
  stop
done

# ---------------------------------------------------------------- 4. RSS -----------
echo "=== RSS of splitserve (--workers 2 --intra-op-threads 1) after 4 prefill calls per model"
echo "weights file $((WBYTES / 1048576)) MiB; trunk 2..10 tensors $((TRUNK_BYTES / 1048576)) MiB"
for n in 0 1 2; do
  models=()
  [ "$n" -ge 1 ] && models+=(--model "$SPEC")
  [ "$n" -ge 2 ] && models+=(--model "trunk2=gpt2,weights=$W,config=$C,layers=2:10")
  [ "$n" = 0 ] && models+=(--model mlp=mlp)
  start "rss$n" "$BIN/splitserve" --listen 127.0.0.1:0 --workers 2 --intra-op-threads 1 \
    "${models[@]}" --log-level warn
  base=$(rss "$SRV_PID")
  for m in trunk trunk2; do
    [ "$n" = 0 ] && break
    [ "$m" = trunk2 ] && [ "$n" -lt 2 ] && break
    "$BIN/splitserve-bench" --addr 127.0.0.1:$PORT --model $m --shape 1,128,768 \
      --concurrency 2 --duration 0.6 --warmup 0 --no-progress > /dev/null
  done
  echo "models: $n trunk(s)  at start: $base  after calls: $(rss "$SRV_PID")"
  # RSS counts a page once per mapping: two models mapping the same file count its pages twice
  # although the page cache holds them once. Show each mapping of the weights file.
  awk -v f="$W" '$NF == f {m = 1; next} /^[0-9a-f]+-[0-9a-f]+ / {m = 0} m && /^Rss:/ {
    printf "  mapping of %s: Rss %.1f MiB\n", f, $2 / 1024 }' "/proc/$SRV_PID/smaps"
  stop
done

echo "=== CSV ($CSV)"
cat "$CSV"
echo "total $(( $(date +%s) - T_START )) s"
