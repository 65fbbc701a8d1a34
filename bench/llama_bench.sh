#!/usr/bin/env bash
# bench/llama_bench.sh: a Qwen2-0.5B-shaped llama trunk (hidden 896, 14 heads over 2 KV heads,
# head_dim 64, intermediate 4864, layers 0..13 of 24: 14 decoder layers, 209M parameters, random
# weights, F32) served by splitserve vs the PyTorch peer (bench/peers/peer_server.py
# --llama-weights, class LlamaTrunk), same weights, same OpenBLAS (OpenMP flavour; the peer runs
# with LD_LIBRARY_PATH pointing torch's libblas at it), same 2-core budget, same closed-loop load
# generator (build/bin/splitserve-bench), batch 1:
#   prefill [1,128,896];  one decode step [1,1,896] with 128 tokens of client-side past
#   (past_key_values [1,2,128,64] x 14 layers, use_cache);  RSS after the runs.
# Servers: splitserve --workers 1 --intra-op-threads 2; peer --mode aio --workers 1
# --torch-threads 2 (one call at a time on 2 threads: its best use of 2 cores).
# The checkpoint (bench/.cache/qwen2-0.5b-trunk/, ~800 MiB) is written once. Env: DURATION (s per
# level, default 5), WARMUP (default 1). CSV/JSON Lines: bench/.cache/llama.{csv,jsonl}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/bin
PY=/usr/bin/python3
CACHE=$ROOT/bench/.cache
CK=$CACHE/qwen2-0.5b-trunk
W=$CK/model.safetensors
C=$CK/config.json
CSV=$CACHE/llama.csv
JSONL=$CACHE/llama.jsonl
DUR=${DURATION:-5}
WARM=${WARMUP:-1}
OBLAS=/usr/lib/x86_64-linux-gnu/openblas-openmp
LAYERS=0:14
mkdir -p "$CK"
rm -f "$CSV" "$JSONL"
LOGDIR=$(mktemp -d)
SRV_PID=""

if [ ! -s "$W" ] || [ ! -s "$C" ]; then
  echo "=== writing a random Qwen2-0.5B-shaped checkpoint (layers 0..13) to $CK (once)"
  "$PY" - "$W" "$C" <<'EOF'
import json, os, sys
import numpy as np
wpath, cpath = sys.argv[1], sys.argv[2]
E, H, KV, D, I, L = 896, 14, 2, 64, 4864, 14
cfg = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": E,
       "num_attention_heads": H, "num_key_value_heads": KV, "intermediate_size": I,
       "num_hidden_layers": 24, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
       "rope_theta": 1000000.0, "hidden_act": "silu", "use_sliding_window": False,
       "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "float32",
       "vocab_size": 151936}
shapes = []
for i in range(L):
    p = f"model.layers.{i}."
    shapes += [(p + "input_layernorm.weight", (E,)), (p + "post_attention_layernorm.weight", (E,)),
               (p + "self_attn.q_proj.weight", (H * D, E)), (p + "self_attn.q_proj.bias", (H * D,)),
               (p + "self_attn.k_proj.weight", (KV * D, E)), (p + "self_attn.k_proj.bias", (KV * D,)),
               (p + "self_attn.v_proj.weight", (KV * D, E)), (p + "self_attn.v_proj.bias", (KV * D,)),
               (p + "self_attn.o_proj.weight", (E, H * D)), (p + "mlp.gate_proj.weight", (I, E)),
               (p + "mlp.up_proj.weight", (I, E)), (p + "mlp.down_proj.weight", (E, I))]
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
        if "layernorm" in name:
            a = np.ones(shp, np.float32)
        elif name.endswith(".bias"):
            a = rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02)
        else:
            a = rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02)
        f.write(a.astype("<f4").tobytes())
os.replace(wpath + ".tmp", wpath)
with open(cpath, "w") as f:
    json.dump(cfg, f, indent=2)
print(f"{wpath}: {len(shapes)} tensors, {off / 2**20:.1f} MiB")
EOF
fi

. bench/lib.sh
trap 'stop; rm -rf "$LOGDIR"' EXIT

bench() { # label args...
  local label=$1; shift
  echo "--- $label"
  "$BIN/splitserve-bench" --addr 127.0.0.1:$PORT --model trunk --server-pid "$SRV_PID" \
    --duration "$DUR" --warmup "$WARM" --no-progress --label "$label" --csv "$CSV" \
    --json "$JSONL" --timeout 120 "$@"
}
rss() { awk '/^VmRSS|^RssAnon|^RssFile/ {printf "%s %.1f  ", $1, $2/1024}' "/proc/$1/status"; }

PREFILL=(--shape 1,128,896 --concurrency 1)
DECODE=(--shape 1,1,896 --past 128 --use-cache --kv-layers 14 --kv-heads 2 --kv-head-dim 64 --concurrency 1)

start ss "$BIN/splitserve" --listen 127.0.0.1:0 --workers 1 --intra-op-threads 2 \
  --model "trunk=llama,weights=$W,config=$C,layers=$LAYERS" --log-level warn
echo "=== splitserve w1xt2 (pid $SRV_PID)"
bench "splitserve prefill" "${PREFILL[@]}"
bench "splitserve decode client-cache" "${DECODE[@]}"
echo "RSS after the runs: $(rss "$SRV_PID")"
stop

start peer env LD_LIBRARY_PATH=$OBLAS OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 "$PY" \
  bench/peers/peer_server.py --mode aio --workers 1 --torch-threads 2 --listen 127.0.0.1:0 \
  --llama-weights "$W" --llama-config "$C" --llama-layers $LAYERS
echo "=== peer aio w1 torch-threads 2 (pid $SRV_PID)"
bench "peer prefill" "${PREFILL[@]}"
bench "peer decode client-cache" "${DECODE[@]}"
echo "RSS after the runs: $(rss "$SRV_PID")"
stop

echo "=== CSV ($CSV)"
cat "$CSV"
