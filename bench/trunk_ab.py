"""bench/trunk_ab.py — A/B latency of two builds: gpt2 (768, 2 layers) and qwen2-shaped llama (512, 2 layers): prefill [1,64],
session decode steps, training forward+backward [2,32]; median ms over N calls. Usage:
SS_BIN_DIR=<build>/bin SS_PY_DIR=<build>/py /usr/bin/python3 bench/trunk_ab.py LABEL
(run A and B alternately; results/2026-12-04-trunk-runtime-ab.md)."""
import os, sys, time, tempfile, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
import numpy as np
import gpt2_ref, llama_ref, sslib
from sslib import T, make_req, result

N = 30
tmp = tempfile.mkdtemp(prefix="ssb-")
g = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=2, n_positions=128)
q = llama_ref.Config("qwen2", hidden=512, heads=8, kv_heads=2, intermediate=1024, n_layer=2, max_pos=128)
wg, cg, _ = gpt2_ref.write_checkpoint(tmp, "g", g, storage="F32", prefix="")
wq, cq, _ = llama_ref.write_checkpoint(tmp, "q", q, seed=1)
S = sslib.Server("--workers", "1", "--intra-op-threads", "1",
                 "--model", "g=gpt2,weights=%s,config=%s,optimizer=sgd" % (wg, cg),
                 "--model", "q=llama,weights=%s,config=%s,optimizer=sgd" % (wq, cq))
C = sslib.connect(S)
rng = np.random.default_rng(0)
out = []
for mid, E in (("g", 768), ("q", 512)):
    x = rng.standard_normal((1, 64, E)).astype(np.float32)
    C.compute(make_req(x, model=mid), timeout=T(30))
    ts = []
    for _ in range(N):
        t0 = time.perf_counter(); C.compute(make_req(x, model=mid), timeout=T(30)); ts.append(time.perf_counter() - t0)
    pre = statistics.median(ts) * 1e3
    ts = []
    C.compute(make_req(x[:, :8], model=mid, session="s" + mid), timeout=T(30))
    for i in range(N):
        t0 = time.perf_counter(); C.compute(make_req(x[:, 8 + i:9 + i], model=mid, session="s" + mid), timeout=T(30)); ts.append(time.perf_counter() - t0)
    dec = statistics.median(ts) * 1e3
    ts = []
    xt = rng.standard_normal((2, 32, E)).astype(np.float32)
    for i in range(N // 2):
        req = make_req(xt, model=mid); req.training_mode = True; req.forward_id = "f%d" % i
        t0 = time.perf_counter()
        C.compute(req, timeout=T(30))
        b = sslib.pb.BackwardRequest(grad_output_data=xt.tobytes(), forward_id=req.forward_id, model_id=mid)
        b.grad_output_shape.extend(xt.shape)
        C.backward(b, timeout=T(30))
        ts.append(time.perf_counter() - t0)
    trn = statistics.median(ts) * 1e3
    out.append("%s prefill %.2f ms, decode step %.2f ms, train fwd+bwd %.2f ms" % (mid, pre, dec, trn))
C.close(); S.stop_ok()
import shutil; shutil.rmtree(tmp, ignore_errors=True)
print(sys.argv[1] + ": " + " | ".join(out))
