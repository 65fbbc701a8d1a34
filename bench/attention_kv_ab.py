"""bench/attention_kv_ab.py — A/B of attention and the session KV cache between two builds:
a GPT-2 trunk (768, 12 heads, 2 layers) and a Qwen2-0.5B-shaped one (896, 14 heads / 2 kv
heads, intermediate 4864, 2 layers), positions 2048, one worker, one intra-op thread:
  session decode steps after a past of 128 and of 1024 tokens (median of N steps),
  a prefill of T=1024 tokens without a cache (median of R calls).
Usage (run A and B alternately; results/2026-12-05-attention-kv.md):
  SS_BIN_DIR=<build>/bin SS_PY_DIR=<build>/py /usr/bin/python3 bench/attention_kv_ab.py LABEL
"""
import os, sys, time, tempfile, statistics, shutil
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
import numpy as np
import gpt2_ref, llama_ref, sslib
from sslib import T, make_req

N, R = 40, 3
tmp = tempfile.mkdtemp(prefix="ssb-")
g = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=2, n_positions=2048)
q = llama_ref.Config("qwen2", hidden=896, heads=14, kv_heads=2, intermediate=4864, n_layer=2,
                     max_pos=2048, attention_bias=True)
wg, cg, _ = gpt2_ref.write_checkpoint(tmp, "g", g, storage="F32", prefix="")
wq, cq, _ = llama_ref.write_checkpoint(tmp, "q", q, seed=1)
S = sslib.Server("--workers", "1", "--intra-op-threads", "1", "--session-memory-mb", "2048",
                 "--model", "g=gpt2,weights=%s,config=%s" % (wg, cg),
                 "--model", "q=llama,weights=%s,config=%s" % (wq, cq))
C = sslib.connect(S)
rng = np.random.default_rng(0)
out = []


def call(x, mid, **meta):
    t0 = time.perf_counter()
    C.compute(make_req(x, model=mid, **meta), timeout=T(120))
    return time.perf_counter() - t0


for mid, E in (("g", 768), ("q", 896)):
    x = rng.standard_normal((1, 1024 + N + 1, E)).astype(np.float32)
    res = []
    for P in (128, 1024):
        sid = "s%s%d" % (mid, P)
        call(x[:, :P], mid, session=sid)
        ts = [call(x[:, P + i:P + i + 1], mid, session=sid) for i in range(N)]
        call(x[:, P + N:P + N + 1], mid, session=sid, session_end=1)
        res.append("decode@%d %.3f ms" % (P, statistics.median(ts) * 1e3))
    call(x[:, :1024], mid)  # warm
    ts = [call(x[:, :1024], mid) for _ in range(R)]
    res.append("prefill@1024 %.1f ms" % (statistics.median(ts) * 1e3))
    out.append("%s %s" % (mid, ", ".join(res)))
C.close()
S.stop_ok()
shutil.rmtree(tmp, ignore_errors=True)
print(sys.argv[1] + ": " + " | ".join(out), flush=True)
