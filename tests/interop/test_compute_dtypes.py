"""compute=bf16 and compute=int8 (model key): the weight products of mlp, GPT-2 and Llama-family
trunks run from weights converted and packed once (nn/packed.c); everything else (norms,
attention, activations, backward) stays f32.
  bf16: oneDNN brgemm with f32 accumulation (avx512_bf16 or AMX);
  int8: weight-only, a scale per output channel, on any CPU (few rows read the int8 weights, more
        dequantize them per call).

What is checked, for each dtype against the same weights served in fp32 by the same server:
- the error of a prefill, a session decode step (few-row products) and a training backward
  stays within the bound (max abs error over the largest |fp32| output below 1e-2 for bf16,
  3e-2 for int8; printed per model);
- concurrent calls give exactly the lone answer (per-thread conversion buffers);
- an optimizer step refreshes the packed copy (the next forward sees the new weights);
- GetServiceInfo reports the packed bytes; the bf16 start-up refusal names the missing
  instructions (checked on every machine, with ONEDNN_MAX_CPU_ISA=AVX2).
bf16 runs natively and capped at AVX512_CORE_BF16 (avx512_bf16 without AMX) where the CPU has
those levels, and says plainly when the CPU has no bf16 at all (skipped); int8 runs natively and
capped at AVX2.
"""
import os
import re
import shutil
import sys
import tempfile
import threading

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpt2_ref  # noqa: E402
import isa_levels  # noqa: E402
import llama_ref  # noqa: E402
import sslib  # noqa: E402
from sslib import SC, T, make_req, result  # noqa: E402

TMP = None
BOUND = {"bf16": 1e-2, "int8": 3e-2}  # max abs error / max |fp32 output|
HAS_BF16 = dict(isa_levels.levels()).get("AVX512_CORE_BF16", False)
CAPS = {"bf16": [c for c in isa_levels.caps() if c is None or c == "AVX512_CORE_BF16"],
        "int8": [c for c in isa_levels.caps() if c is None or c == "AVX2"]}
REPORT = []


def setup():
    global TMP
    TMP = tempfile.mkdtemp(prefix="ss-bf16-")
    g = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=2, n_positions=128)
    gw, gc, _ = gpt2_ref.write_checkpoint(TMP, "g", g, seed=3)
    q = llama_ref.Config("qwen2", hidden=896, heads=14, kv_heads=2, intermediate=1024, n_layer=2,
                         max_pos=128, rope_theta=1000000.0)
    lw, lc, _ = llama_ref.write_checkpoint(TMP, "q", q, seed=4)
    setup.specs = {"m": "mlp", "g": "gpt2,weights=%s,config=%s" % (gw, gc),
                   "q": "llama,weights=%s,config=%s" % (lw, lc),
                   "t": "gpt2,weights=%s,config=%s" % (gw, gc)}


def teardown():
    shutil.rmtree(TMP, ignore_errors=True)
    for line in REPORT:
        print(line)


def _server(dt, cap):
    """mid32 in fp32 and mid16 in dt for every model (t: training twins, SGD)."""
    env = {"ONEDNN_MAX_CPU_ISA": cap or ""}
    args = []
    for mid, spec in setup.specs.items():
        args += ["--model", "%s32=%s" % (mid, spec), "--model", "%s16=%s,compute=%s" % (mid, spec, dt)]
    return sslib.Server("--workers", "2", *args, env=env, start_timeout=60)


def _err(a, b):
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _check(dt, name, cap, a, b):
    ab, rel = _err(a, b)
    REPORT.append("%s vs fp32, %-22s ISA %-17s max abs %.3g, relative to max |fp32| %.3g"
                  % (dt, name, cap or "native", ab, rel))
    assert rel < BOUND[dt], (dt, name, cap, ab, rel)


def _run(dt, cap):
    srv = _server(dt, cap)
    try:
        c = sslib.connect(srv)
        g = np.random.default_rng(7)
        shapes = {"m": (1, 10, 768), "g": (1, 64, 768), "q": (1, 64, 896)}
        for mid, shape in shapes.items():
            x = g.standard_normal(shape).astype(np.float32)
            a = result(c.compute(make_req(x, model=mid + "32"), timeout=T(60)))
            b = result(c.compute(make_req(x, model=mid + "16"), timeout=T(60)))
            _check(dt, "%s prefill %s" % (mid, list(shape)), cap, a, b)
        # session decode on the Qwen2-shaped trunk: prefill 16 tokens then 3 one-token steps
        x = g.standard_normal((1, 16, 896)).astype(np.float32)
        outs = {}
        for w in ("32", "16"):
            sid = "s-%s-%s" % (w, cap)
            outs[w] = [result(c.compute(make_req(x, model="q" + w, session=sid), timeout=T(60)))]
            for i in range(3):
                step = x[:, i:i + 1] * 0.5
                outs[w].append(result(c.compute(make_req(step, model="q" + w, session=sid),
                                                timeout=T(60))))
        for i in range(4):
            _check(dt, "q session step %d" % i, cap, outs["32"][i], outs["16"][i])
        # concurrency: lone answers, then the same from 4 threads at once, bit for bit
        xs = [g.standard_normal((1, 32, 768)).astype(np.float32) for _ in range(8)]
        lone = [result(c.compute(make_req(x, model="g16"), timeout=T(60))) for x in xs]
        bad = []

        def worker(k):
            cc = sslib.connect(srv, separate=True)
            for i in range(k % 2, len(xs), 2):
                got = result(cc.compute(make_req(xs[i], model="g16"), timeout=T(60)))
                if not np.array_equal(got, lone[i]):
                    bad.append(i)
            cc.close()

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not bad, "concurrent %s answers differ from the lone ones: %r" % (dt, bad)
        info = dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=T(10)).custom_info)
        assert int(info["packed_weight_bytes"]) > 0, info
        assert "compute " + dt in info["model.g16"], info["model.g16"]
        for k, v in info.items():  # a model's entry whole: describe line, then every counter
            if k.startswith("model."):
                assert re.search(r"; batched_calls=\d+$", v), (k, v)
        c.close()
    finally:
        srv.stop_ok(timeout=30)


def _train_step_refreshes(dt, cap):
    srv = _server(dt, cap)
    try:
        c = sslib.connect(srv)
        g = np.random.default_rng(3)
        x = g.standard_normal((1, 8, 768)).astype(np.float32)
        gr = g.standard_normal((1, 8, 768)).astype(np.float32)
        before = result(c.compute(make_req(x, model="t16"), timeout=T(60)))
        res = {}
        for w in ("32", "16"):
            req = make_req(x, model="t" + w)
            req.training_mode = True
            r = c.compute(req, timeout=T(60))
            b = c.backward(sslib.pb.BackwardRequest(
                grad_output_data=gr.tobytes(), grad_output_shape=list(gr.shape),
                forward_id=r.forward_id, learning_rate=0.05), timeout=T(60))
            res[w] = np.frombuffer(b.grad_input_data, np.float32).reshape(b.grad_input_shape)
        _check(dt, "t backward grad_input", cap, res["32"], res["16"])
        after32 = result(c.compute(make_req(x, model="t32"), timeout=T(60)))
        after16 = result(c.compute(make_req(x, model="t16"), timeout=T(60)))
        moved = _err(before, after16)[1]
        assert moved > 10 * BOUND[dt], "the step did not reach the packed copy (moved %.3g)" % moved
        _check(dt, "t forward after a step", cap, after32, after16)
        c.close()
    finally:
        srv.stop_ok(timeout=30)


def test_bf16_against_fp32():
    if not HAS_BF16:
        print("SKIPPED: this CPU has no avx512_bf16 (compute=bf16 cannot run here; the refusal "
              "is tested below)")
        return
    for cap in CAPS["bf16"]:
        _run("bf16", cap)
        _train_step_refreshes("bf16", cap)


def test_int8_against_fp32():
    for cap in CAPS["int8"]:
        _run("int8", cap)
        _train_step_refreshes("int8", cap)


def test_refused_without_bf16_instructions():
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--model", "x=mlp,compute=bf16",
                            env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert rc != 0 and "compute=bf16 needs avx512_bf16 or amx_bf16" in out, (rc, out)
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--model", "x=mlp,compute=fp16")
    assert rc != 0 and "compute must be fp32, bf16 or int8" in out, (rc, out)


if __name__ == "__main__":
    sslib.main(globals(), default_timeout=280.0)
