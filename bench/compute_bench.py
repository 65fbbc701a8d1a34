#!/usr/bin/env python3
"""bench/compute_bench.py — the trunks in each compute dtype against in-process PyTorch.

Side by side in one run, on the same cores (default 2 threads; --threads N):
  splitserve --workers W --intra-op-threads N (--workers, default 1), one model per compute dtype
  (fp32, bf16 where the CPU has avx512_bf16/AMX, int8), same weights;
  PyTorch in-process (Debian torch; torch.set_num_threads(N), its OpenBLAS capped at N threads:
  see _torch_env), the tests' independent float32
  blocks (tests/interop/gpt2_ref.py, llama_ref.py): fp32, and bf16 autocast
  (torch.autocast("cpu", torch.bfloat16)) where the CPU has bf16.
Workloads: GPT-2 trunk 2..10 (GPT-2 small shapes, 8 blocks) and a Qwen2-0.5B-shaped trunk
(hidden 896, 14 heads over 2 KV heads, intermediate 4864; --qwen-layers, default 14): prefill
[1,128,E]; one decode step with 128 tokens of past (splitserve: a server-side session; PyTorch:
the blocks' KV cache); and 8 concurrent sessions' decode steps (splitserve: decode batching
by default; 20 or --reps steps each after one warm step; the mean batch from GetServiceInfo).
Every figure is a p50 of repeated calls (--reps); rows print as they finish, then one table in
Markdown (paste into bench/results/). Random weights, written once under
bench/.cache/compute/.

Run: /usr/bin/python3 bench/compute_bench.py [--threads 2] [--workers 1] [--reps 15]
     [--qwen-layers 14]
     [--dtypes fp32,bf16,int8] [--skip-torch] [--skip-server]
"""
import argparse
import os
import sys
import threading
import time


def _torch_env():
    """Debian's torch calls a generic BLAS (OpenBLAS, pthreads) with a thread pool of its own, not
    torch.set_num_threads's: uncapped, PyTorch's "1 thread" rows ran their products on both
    cores (1.99 cores busy, 253 vs 133 GFLOP/s on Qwen2's up_proj at 128 rows), and its OpenMP
    pool spinning against OpenBLAS's threads made the 2-thread rows 2x slower than 1. So torch
    loads with OpenBLAS capped at --threads and OMP_WAIT_POLICY=PASSIVE, and the environment goes
    back as it was right after (the splitserve servers started later inherit the original)."""
    n = "2"
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = sys.argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    want = {"OPENBLAS_NUM_THREADS": n, "OMP_WAIT_POLICY": "PASSIVE"}
    saved = {k: os.environ.get(k) for k in want}
    os.environ.update(want)
    return saved


_SAVED_ENV = _torch_env()
import numpy as np  # noqa: E402 (numpy loads the same OpenBLAS first: after the cap)
import torch  # noqa: E402

for _k, _v in _SAVED_ENV.items():
    if _v is None:
        os.environ.pop(_k, None)
    else:
        os.environ[_k] = _v

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
import gpt2_ref  # noqa: E402
import isa_levels  # noqa: E402
import llama_ref  # noqa: E402
import sslib  # noqa: E402
from sslib import make_req, result  # noqa: E402

HAS_BF16 = dict(isa_levels.levels()).get("AVX512_CORE_BF16", False)
ROWS = []


def p50(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def row(what, ms):
    ROWS.append((what, ms))
    print("%-62s %9.2f ms" % (what, ms), flush=True)


def checkpoints(cache, qlayers):
    os.makedirs(cache, exist_ok=True)
    g = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=12, n_positions=1024)
    gw = os.path.join(cache, "gpt2.safetensors")
    if not os.path.exists(gw):
        gpt2_ref.write_checkpoint(cache, "gpt2", g, seed=0)
    q = llama_ref.Config("qwen2", hidden=896, heads=14, kv_heads=2, intermediate=4864,
                         n_layer=qlayers, max_pos=1024, rope_theta=1000000.0)
    qw = os.path.join(cache, "qwen%d.safetensors" % qlayers)
    if not os.path.exists(qw):
        llama_ref.write_checkpoint(cache, "qwen%d" % qlayers, q, seed=1)
    return (g, gw, os.path.join(cache, "gpt2.json")), (q, qw, os.path.join(cache, "qwen%d.json" % qlayers))


def batches(c, mid):
    """(batches, batched calls) of model mid so far, from GetServiceInfo."""
    info = dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=30).custom_info)
    kv = dict(p.strip().split("=", 1) for p in info["model." + mid].split(";") if "=" in p)
    return int(kv["batches"]), int(kv["batched_calls"])


def bench_server(args, g, q, dtypes):
    (gcfg, gw, gc), (qcfg, qw, qc) = g, q
    models = []
    for dt in dtypes:
        models += ["--model", "g%s=gpt2,weights=%s,config=%s,layers=2:10,compute=%s" % (dt, gw, gc, dt),
                   "--model", "q%s=llama,weights=%s,config=%s,compute=%s" % (dt, qw, qc, dt)]
    srv = sslib.Server("--workers", str(args.workers), "--intra-op-threads", str(args.threads),
                       "--oversubscribe",
                       "--log-level", "warn", *models, start_timeout=300)
    try:
        c = sslib.connect(srv)
        rng = np.random.default_rng(0)
        for dt in dtypes:
            for kind, E in (("g", 768), ("q", 896)):
                mid = kind + dt
                name = "GPT-2 2..10" if kind == "g" else "Qwen2-0.5B-shaped 0..%d" % qcfg.n_layer
                x = rng.standard_normal((1, 128, E)).astype(np.float32)
                row("splitserve %s prefill [1,128,%d] %s" % (name, E, dt),
                    p50(lambda: c.compute(make_req(x, model=mid), timeout=300), args.reps))
                sid = "s-" + mid
                c.compute(make_req(x, model=mid, session=sid), timeout=300)
                t = rng.standard_normal((1, 1, E)).astype(np.float32) * 0.1
                row("splitserve %s decode step, 128 past %s" % (name, dt),
                    p50(lambda: c.compute(make_req(t, model=mid, session=sid), timeout=300),
                        args.reps))
                c.compute(make_req(t, model=mid, session=sid, session_end="1"), timeout=300)
                # 8 sessions stepping at once: steps per second
                chans = [sslib.connect(srv, separate=True) for _ in range(8)]
                for i, ch in enumerate(chans):
                    ch.compute(make_req(x, model=mid, session="%s-%d" % (sid, i)), timeout=300)
                for i, ch in enumerate(chans):  # one step each first: every session warm
                    ch.compute(make_req(t, model=mid, session="%s-%d" % (sid, i)), timeout=300)
                n = max(20, args.reps)
                b0 = batches(c, mid)
                t0 = time.perf_counter()

                def steps(i):
                    for _ in range(n):
                        chans[i].compute(make_req(t, model=mid, session="%s-%d" % (sid, i)),
                                         timeout=300)
                ts = [threading.Thread(target=steps, args=(i,)) for i in range(8)]
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
                rate = 8 * n / (time.perf_counter() - t0)
                b1 = batches(c, mid)
                mean = (b1[1] - b0[1]) / max(1, b1[0] - b0[0])
                ROWS.append(("splitserve %s 8 sessions decode %s (steps/s)" % (name, dt), rate))
                print("%-62s %9.1f steps/s (mean batch %.1f steps)"
                      % ("splitserve %s 8 sessions decode %s" % (name, dt), rate, mean), flush=True)
                for i, ch in enumerate(chans):
                    ch.close()
        info = dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=30).custom_info)
        print("splitserve threads %s, RSS %.0f MiB, packed_weight_bytes %s"
              % (info["threads"], srv.rss_kib() / 1024, info["packed_weight_bytes"]), flush=True)
        c.close()
    finally:
        srv.stop_ok(timeout=60)


class Qwen2Block(torch.nn.Module):
    """A float32 Qwen2 decoder layer as Hugging Face's eager Qwen2DecoderLayer computes it
    (RMSNorm, q/k/v with biases, rotate-half rope, GQA attention with a KV cache, SwiGLU MLP):
    the peer's fastest plain-PyTorch form on torch 1.13 (no scaled_dot_product_attention)."""

    def __init__(self, cfg, w, layer):
        super().__init__()
        t = lambda n: torch.from_numpy(np.array(w["layers.%d.%s" % (layer, n)], np.float32))  # noqa
        self.p = {}
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            self.p[n] = (t("self_attn.%s.weight" % n),
                         t("self_attn.%s.bias" % n) if n != "o_proj" else None)
        for n in ("gate_proj", "up_proj", "down_proj"):
            self.p[n] = (t("mlp.%s.weight" % n), None)
        self.n1, self.n2 = t("input_layernorm.weight"), t("post_attention_layernorm.weight")
        self.H, self.KV, self.D = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.inv = (1.0 / (cfg.rope_theta ** (torch.arange(0, self.D, 2).float() / self.D)))
        self.eps = cfg.eps

    def lin(self, n, x):
        W, b = self.p[n]
        return torch.nn.functional.linear(x, W, b)

    def norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):
        f = torch.outer(pos, self.inv)
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos(), emb.sin()
        h = x.shape[-1] // 2
        rot = torch.cat((-x[..., h:], x[..., :h]), -1)
        return x * cos + rot * sin

    def forward(self, x, past=None, pos0=0):
        B, S, _ = x.shape
        n = self.norm(x, self.n1)
        q = self.lin("q_proj", n).view(B, S, self.H, self.D).transpose(1, 2)
        k = self.lin("k_proj", n).view(B, S, self.KV, self.D).transpose(1, 2)
        v = self.lin("v_proj", n).view(B, S, self.KV, self.D).transpose(1, 2)
        pos = torch.arange(pos0, pos0 + S).float()
        q, k = self.rope(q, pos), self.rope(k, pos)
        if past is not None:
            k, v = torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)
        rep = self.H // self.KV
        kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        sc = (q @ kk.transpose(-1, -2)) / (self.D ** 0.5)
        T = kk.shape[2]
        if S > 1:
            mask = torch.ones(S, T, dtype=torch.bool).tril(T - S)
            sc = sc.masked_fill(~mask, float("-inf"))
        a = (torch.softmax(sc.float(), -1).to(q.dtype) @ vv).transpose(1, 2).reshape(B, S, -1)
        h = x + self.lin("o_proj", a)
        n2 = self.norm(h, self.n2)
        m = self.lin("down_proj", torch.nn.functional.silu(self.lin("gate_proj", n2)) *
                     self.lin("up_proj", n2))
        return h + m, (k, v)


def bench_torch(args, g, q):
    (gcfg, gw, gc), (qcfg, qw, qc) = g, q
    torch.set_num_threads(args.threads)
    gwts = gpt2_ref.random_weights(gcfg, 0)
    gblocks = [gpt2_ref.Block(gcfg, gwts, i, dtype=torch.float32) for i in range(2, 10)]
    qwts = llama_ref.random_weights(qcfg, 1)
    qblocks = [Qwen2Block(qcfg, qwts, i) for i in range(qcfg.n_layer)]
    modes = [("fp32", None)] + ([("bf16 autocast", torch.bfloat16)] if HAS_BF16 else [])

    def run(blocks, x, past=None, pos0=0):
        pres = []
        for i, b in enumerate(blocks):
            if blocks is gblocks:
                x, p = b(x, past[i] if past else None)
            else:
                x, p = b(x, past[i] if past else None, pos0)
            pres.append(p)
        return x, pres

    with torch.inference_mode():
        for label, dt in modes:
            for name, blocks, E in (("GPT-2 2..10", gblocks, 768),
                                    ("Qwen2-0.5B-shaped 0..%d" % qcfg.n_layer, qblocks, 896)):
                def ctx():
                    return torch.autocast("cpu", dtype=dt) if dt else torch.autocast("cpu", enabled=False)
                x = torch.randn(1, 128, E)
                with ctx():
                    row("pytorch %s prefill [1,128,%d] %s" % (name, E, label),
                        p50(lambda: run(blocks, x), args.reps))
                    _, past = run(blocks, x)
                    t = torch.randn(1, 1, E)
                    row("pytorch %s decode step, 128 past %s" % (name, label),
                        p50(lambda: run(blocks, t, past, 128), args.reps))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1,
                    help="splitserve workers (each with --threads intra-op threads)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--qwen-layers", type=int, default=14)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--dtypes", default="", help="comma-separated subset of fp32,bf16,int8 "
                    "(e.g. fp32 under ONEDNN_MAX_CPU_ISA=AVX2, where bf16 is refused)")
    args = ap.parse_args()
    g, q = checkpoints(os.path.join(ROOT, "bench", ".cache", "compute"), args.qwen_layers)
    dtypes = ["fp32"] + (["bf16"] if HAS_BF16 else []) + ["int8"]
    if args.dtypes:
        dtypes = [d for d in dtypes if d in args.dtypes.split(",")]
    print("CPU: %s; threads %d; torch %s (%s)" % (isa_levels.summary([None]), args.threads,
                                                  torch.__version__,
                                                  torch.__config__.parallel_info().split("\n")[1]))
    if not args.skip_server:
        bench_server(args, g, q, dtypes)
    if not args.skip_torch:
        bench_torch(args, g, q)
    print("\n| workload | p50 |\n|---|---|")
    for what, v in ROWS:
        print("| %s | %.2f %s |" % (what, v, "steps/s" if "steps/s" in what else "ms"))


if __name__ == "__main__":
    main()
