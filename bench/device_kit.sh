#!/bin/bash
# bench/device_kit.sh: the many-core measurements issues 9 and 11 ask for, prepared for a session
# that is lent the 16-core device machine (no package registry there: the binaries and their
# shared libraries travel from here).
#
#   here:   bash bench/device_kit.sh pack        -> .devpack.tar.xz (git-ignored, ~25 MB)
#   device: run(carry=[".devpack.tar.xz"], timeout_s=540,
#               command="bash bench/device_kit.sh run")   (results also in $OUT/device.txt)
#
# `run` measures, each against its anchor on the same machine:
#   1. tiny identity calls ([1] float32): splitserve --io-threads 1, 4, 8 (--workers 2) against
#      the grpc.aio peer (bench/peers/peer_server.py --mode aio); load from 6 splitserve-bench
#      processes at once (one thread each), QPS summed.
#   2. a GPT-2 trunk (blocks 2..10 of random GPT-2-small weights, tests/interop/gpt2_ref.py):
#      prefill [1,128,768] and a decode step with 128 past, splitserve --workers 1
#      --intra-op-threads 16 against the same blocks in-process in PyTorch (16 threads).
# Durations are short (DUR seconds per row, default 4) so it all fits one 9-minute call.
# `run` also works here (2 cores) as a dry run: DUR=1 NB=2 bash bench/device_kit.sh run (35 s)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
case "${1:-}" in
pack)
  set -e
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
  cmake --build build -j "$(nproc)" --target splitserve-bin splitserve-bench-bin pyproto > /dev/null
  P=$(mktemp -d)
  mkdir -p "$P/bin" "$P/lib" "$P/py"
  cp build/bin/splitserve build/bin/splitserve-bench "$P/bin/"
  cp build/py/*.py "$P/py/"
  for lib in $(ldd build/bin/splitserve build/bin/splitserve-bench | awk '/=> \// {print $3}' | sort -u); do
    case $(basename "$lib") in
    libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*) ;;
    *) cp -L "$lib" "$P/lib/" ;;
    esac
  done
  tar -C "$P" -cJf .devpack.tar.xz .
  rm -rf "$P"
  grep -qx '/.devpack.tar.xz' .git/info/exclude 2> /dev/null || echo '/.devpack.tar.xz' >> .git/info/exclude
  ls -la .devpack.tar.xz
  exit 0
  ;;
run) ;;
*)
  echo "usage: bash bench/device_kit.sh pack|run" >&2
  exit 2
  ;;
esac

DUR=${DUR:-4}
OUTF=${OUT:-/tmp}/device.txt
D=$(mktemp -d)
tar -C "$D" -xJf .devpack.tar.xz || { echo "no .devpack.tar.xz: run 'pack' here and carry it"; exit 1; }
BIN=$D/bin
# The carried libraries are for our binaries only (Python's torch must keep its own OpenMP).
LIBS=$D/lib
PY=${PY:-python3}
NCPU=$(nproc)
exec > >(tee "$OUTF") 2>&1
echo "=== $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $NCPU cores; flags: $(grep -o 'avx512[a-z_0-9]*\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
"$PY" -c 'import torch; print("torch", torch.__version__, torch.__config__.parallel_info().splitlines()[0:3])' 2> /dev/null

wait_port() { # log -> port
  local port=""
  for _ in $(seq 300); do
    port=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$1" 2> /dev/null | grep -oE '[0-9]+$' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  echo "$port"
}

# ---- 1. tiny calls: QPS summed over NB load processes
NB=${NB:-6}
tiny() { # label port
  local qps=0 f pids=()
  for i in $(seq "$NB"); do
    LD_LIBRARY_PATH=$LIBS "$BIN/splitserve-bench" --addr "127.0.0.1:$2" --model identity --shape 1 --concurrency 256 \
      --connections 8 --duration "$DUR" --warmup 1 --no-progress > "$D/tiny$i.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" # (not the server)
  for i in $(seq "$NB"); do
    f=$(grep -oE 'QPS [0-9.]+' "$D/tiny$i.txt" | head -1 | awk '{print $2}')
    qps=$(awk -v a="$qps" -v b="${f:-0}" 'BEGIN {print a + b}')
  done
  echo "$1: $qps QPS ($NB load processes x 256 in flight)"
}
IOS=${IOS:-1 4 8}
for n in $IOS; do
  LD_LIBRARY_PATH=$LIBS "$BIN/splitserve" --listen 127.0.0.1:0 --workers 2 --io-threads "$n" --log-level warn > "$D/ss.log" 2>&1 &
  pid=$!
  tiny "splitserve --io-threads $n" "$(wait_port "$D/ss.log")"
  kill -INT $pid
  wait $pid 2> /dev/null
done
SS_PY_DIR=$D/py "$PY" bench/peers/peer_server.py --mode aio --listen 127.0.0.1:0 --workers 2 \
  --torch-threads 1 --py-dir "$D/py" > "$D/peer.log" 2>&1 &
pid=$!
port=$(wait_port "$D/peer.log")
if [ -n "$port" ]; then tiny "grpc.aio peer" "$port"; else echo "grpc.aio peer did not start: $(tail -3 "$D/peer.log")"; fi
kill -INT $pid 2> /dev/null
wait $pid 2> /dev/null

# ---- 2. GPT-2 trunk 2..10 against in-process PyTorch
# Random GPT-2-small weights (Hugging Face layout) from the tests' independent reference
# (tests/interop/gpt2_ref.py); the in-process run rebuilds the same weights from the same seed.
G=$D/gpt2
mkdir -p "$G"
export SS_PY_DIR=$D/py PYTHONPATH=$ROOT/tests/interop
"$PY" -c 'import sys, gpt2_ref
cfg = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=12, n_positions=1024)
gpt2_ref.write_checkpoint(sys.argv[1], "model", cfg, seed=0)' "$G" || { echo "could not write GPT-2 weights"; exit 1; }
LD_LIBRARY_PATH=$LIBS "$BIN/splitserve" --listen 127.0.0.1:0 --workers 1 --intra-op-threads "$NCPU" --log-level warn \
  --model "trunk=gpt2,weights=$G/model.safetensors,config=$G/model.json,layers=2:10" > "$D/ss.log" 2>&1 &
pid=$!
port=$(wait_port "$D/ss.log")
for args in "prefill --shape 1,128,768" \
  "decode --shape 1,1,768 --past 128 --use-cache --kv-layers 8 --kv-heads 12 --kv-head-dim 64"; do
  set -- $args
  label=$1
  shift
  r=$(LD_LIBRARY_PATH=$LIBS "$BIN/splitserve-bench" --addr "127.0.0.1:$port" --model trunk --concurrency 1 \
    --duration "$DUR" --warmup 1 --no-progress "$@" 2>&1 | grep -oE 'p50 [0-9.]+' | head -1)
  echo "splitserve trunk 2..10 $label (1 worker x $NCPU threads): $r ms"
done
kill -INT $pid
wait $pid 2> /dev/null
"$PY" -c 'import sys, time, torch, gpt2_ref
dur = float(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))  # as many as splitserve uses: every core
cfg = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=12, n_positions=1024)
w = gpt2_ref.random_weights(cfg, 0)
blocks = [gpt2_ref.Block(cfg, w, i, dtype=torch.float32) for i in range(2, 10)]
def run(x, past=None):
    pres = []
    for i, b in enumerate(blocks):
        x, p = b(x, past[i] if past else None)
        pres.append(p)
    return x, pres
def p50(fn):
    ts, t_end = [], time.perf_counter() + dur
    fn()
    while time.perf_counter() < t_end or len(ts) < 5:
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3
with torch.inference_mode():
    n = torch.get_num_threads()
    x = torch.randn(1, 128, 768)
    _, past = run(x)
    print("pytorch in-process trunk 2..10 prefill (%d threads): p50 %.3f ms" % (n, p50(lambda: run(x))))
    t = torch.randn(1, 1, 768)
    print("pytorch in-process trunk 2..10 decode, 128 past (%d threads): p50 %.3f ms" % (n, p50(lambda: run(t, past))))
' "$DUR" "$NCPU"
echo "=== done: ratios are pytorch p50 / splitserve p50 (>= 1.0: splitserve faster), QPS splitserve / aio"
rm -rf "$D"
