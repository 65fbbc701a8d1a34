"""BF16 and F16 checkpoints used as they are stored (issue 18 item 1): a trunk whose weight
products all run on packed copies (compute=bf16, compute=int8, and fp32 where oneDNN has brgemm)
keeps no float32 copy of a narrow checkpoint's matrices: they are packed from the checkpoint's
values, and a float32 array is made only when training or saving reads it (nn/deferred.h).

What is checked, against a twin model served from an F32 checkpoint that holds exactly the narrow
values (widening bf16/f16 to f32 is exact, so every answer must be the same bit for bit):
- GetServiceInfo's describe line says "bf16 as stored" / "f16 as stored" (and "bf16->f32" where
  the matrices must be converted: fp32 capped at AVX2, where products read the f32 weight);
- prefill, session decode steps, batched steps: equal bit for bit, for GPT-2 and Llama trunks;
- a training call (forward, backward with an SGD step) on a full and a LoRA model: the same
  grad_input, the same answers after the step; the checkpoints written by SIGUSR1 are the same
  bytes;
- memory: a Qwen2-shaped BF16 trunk in compute=bf16 (int8 where the CPU has no bf16) grows the
  server's anonymous RSS (RssAnon: the process's own memory, not the checkpoint's page cache) by
  less than 0.7x its float32 size after a prefill (before: the f32 copy plus the packed one,
  1.5x).
Runs each dtype natively and capped (bf16 at AVX512_CORE_BF16; int8 and fp32 at AVX2) where the
CPU has those levels; bf16 says plainly when this CPU has none.
"""
import os
import shutil
import signal
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpt2_ref  # noqa: E402
import isa_levels  # noqa: E402
import llama_ref  # noqa: E402
import sslib  # noqa: E402
from sslib import T, make_req, result  # noqa: E402

TMP = None
SPECS = {}
HAS_BF16 = dict(isa_levels.levels()).get("AVX512_CORE_BF16", False)
CAPS = {"bf16": [c for c in isa_levels.caps() if c is None or c == "AVX512_CORE_BF16"],
        "int8": [c for c in isa_levels.caps() if c is None or c == "AVX2"],
        "fp32": [c for c in isa_levels.caps() if c is None or c == "AVX2"]}
RAN = []


def setup():
    global TMP
    TMP = tempfile.mkdtemp(prefix="ss-narrow-")
    g = gpt2_ref.Config(n_embd=64, n_head=4, n_layer=2, n_positions=64)
    _, _, gs = gpt2_ref.write_checkpoint(TMP, "g16", g, seed=5, storage="BF16")
    gpt2_ref.write_checkpoint(TMP, "g32", g, weights=gs)
    q = llama_ref.Config("qwen2", hidden=64, heads=4, kv_heads=2, intermediate=160, n_layer=2,
                         max_pos=64, attention_bias=True)
    _, _, qs = llama_ref.write_checkpoint(TMP, "q16", q, seed=6, storage="BF16")
    llama_ref.write_checkpoint(TMP, "q32", q, weights=qs)
    _, _, hs = llama_ref.write_checkpoint(TMP, "h16", q, seed=7, storage="F16")
    llama_ref.write_checkpoint(TMP, "h32", q, weights=hs)
    for k in ("g16", "g32", "q16", "q32", "h16", "h32"):
        kind = "gpt2" if k[0] == "g" else "llama"
        SPECS[k] = "%s,weights=%s,config=%s" % (kind, os.path.join(TMP, k + ".safetensors"),
                                                os.path.join(TMP, k + ".json"))


def teardown():
    shutil.rmtree(TMP, ignore_errors=True)
    print("ran: " + ", ".join(RAN))


def _server(dt, cap):
    """For every checkpoint pair: NAME16 (narrow) and NAME32 (its F32 twin), in compute dt; a full
    and a LoRA training twin of the GPT-2 pair (SGD, save=PATH)."""
    args = ["--workers", "2"]
    for k, spec in SPECS.items():
        args += ["--model", "%s=%s,compute=%s" % (k, spec, dt)]
    for k in ("g16", "g32"):
        args += ["--model", "t%s=%s,compute=%s,save=%s" % (k, SPECS[k], dt,
                                                          os.path.join(TMP, "t%s.out" % k)),
                 "--model", "l%s=%s,compute=%s,lora_rank=2,save=%s"
                 % (k, SPECS[k], dt, os.path.join(TMP, "l%s.out" % k))]
    return sslib.Server(*args, env={"ONEDNN_MAX_CPU_ISA": cap or ""}, start_timeout=60)


def _same(a, b, what):
    assert a.shape == b.shape and np.array_equal(a, b), \
        "%s: narrow and f32 twin differ (max abs %.3g)" % (what, float(np.max(np.abs(a - b))))


def _train(c, model, x, gr):
    req = make_req(x, model=model)
    req.training_mode = True
    r = c.compute(req, timeout=T(60))
    b = c.backward(sslib.pb.BackwardRequest(
        grad_output_data=gr.tobytes(), grad_output_shape=list(gr.shape), forward_id=r.forward_id,
        learning_rate=0.05), timeout=T(60))
    return np.frombuffer(b.grad_input_data, np.float32).reshape(b.grad_input_shape)


def _run(dt, cap):
    srv = _server(dt, cap)
    try:
        c = sslib.connect(srv)
        info = dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=T(10)).custom_info)
        converted = dt == "fp32" and cap == "AVX2"  # products read the f32 weight there
        for k, word in (("g16", "bf16"), ("q16", "bf16"), ("h16", "f16")):
            want = word + ("->f32" if converted else " as stored")
            assert want in info["model." + k], (k, cap, info["model." + k])
        g = np.random.default_rng(11)
        for k in ("g", "q", "h"):
            x = g.standard_normal((2, 12, 64)).astype(np.float32)
            _same(result(c.compute(make_req(x, model=k + "16"), timeout=T(60))),
                  result(c.compute(make_req(x, model=k + "32"), timeout=T(60))), k + " prefill")
            outs = {}
            for w in ("16", "32"):  # a session: prefill, then 3 one-token steps
                sid = "s-%s-%s-%s" % (k, w, cap)
                outs[w] = [result(c.compute(make_req(x[:1, :8], model=k + w, session=sid),
                                            timeout=T(60)))]
                for i in range(3):
                    outs[w].append(result(c.compute(
                        make_req(x[:1, 8 + i:9 + i], model=k + w, session=sid), timeout=T(60))))
            for i in range(4):
                _same(outs["16"][i], outs["32"][i], "%s session call %d" % (k, i))
        x = g.standard_normal((1, 8, 64)).astype(np.float32)
        gr = g.standard_normal((1, 8, 64)).astype(np.float32)
        for k in ("t", "l"):
            _same(_train(c, k + "g16", x, gr), _train(c, k + "g32", x, gr), k + " grad_input")
            _same(result(c.compute(make_req(x, model=k + "g16"), timeout=T(60))),
                  result(c.compute(make_req(x, model=k + "g32"), timeout=T(60))),
                  k + " forward after a step")
        srv.signal(signal.SIGUSR1)
        for k in ("tg16", "tg32", "lg16", "lg32"):
            assert srv.wait_for_line(r"checkpoint \(SIGUSR1\): model '%s' written" % k, 30)
        with open(os.path.join(TMP, "tg16.out"), "rb") as f16, \
                open(os.path.join(TMP, "tg32.out"), "rb") as f32:
            assert f16.read() == f32.read(), "the saved full checkpoints differ"
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            with open(os.path.join(TMP, "lg16.out", name), "rb") as f16, \
                    open(os.path.join(TMP, "lg32.out", name), "rb") as f32:
                assert f16.read() == f32.read(), "the saved adapters differ: " + name
        c.close()
    finally:
        srv.stop_ok(timeout=30)
    RAN.append("%s %s" % (dt, cap or "native"))


def test_bf16():
    if not HAS_BF16:
        print("SKIPPED: this CPU has no avx512_bf16 (compute=bf16 cannot run here)")
        return
    for cap in CAPS["bf16"]:
        _run("bf16", cap)


def test_int8():
    for cap in CAPS["int8"]:
        _run("int8", cap)


def test_fp32():
    for cap in CAPS["fp32"]:
        _run("fp32", cap)


def test_rss_no_f32_copy():
    dt = "bf16" if HAS_BF16 else "int8"
    q = llama_ref.Config("qwen2", hidden=896, heads=14, kv_heads=2, intermediate=4864, n_layer=2,
                         max_pos=128, attention_bias=True)
    wpath, cpath, stored = llama_ref.write_checkpoint(TMP, "big", q, seed=8, storage="BF16")
    f32_mib = sum(v.size for v in stored.values()) * 4 / 2**20
    base = sslib.Server("--workers", "1", "--model", "m=mlp")
    try:
        rss0 = base.rss_kib("RssAnon") / 1024
    finally:
        base.stop_ok(timeout=30)
    srv = sslib.Server("--workers", "1", "--model",
                       "q=llama,weights=%s,config=%s,compute=%s" % (wpath, cpath, dt),
                       start_timeout=60)
    try:
        c = sslib.connect(srv)
        loaded = srv.rss_kib("RssAnon") / 1024
        x = np.random.default_rng(1).standard_normal((1, 32, 896)).astype(np.float32)
        result(c.compute(make_req(x, model="q"), timeout=T(60)))
        used = srv.rss_kib("RssAnon") / 1024
        file_mib = srv.rss_kib("RssFile") / 1024
        info = dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=T(10)).custom_info)
        c.close()
    finally:
        srv.stop_ok(timeout=30)
    print("Qwen2-shaped 2 layers, BF16 checkpoint, compute=%s: f32 size %.0f MiB; RssAnon over a "
          "bare server %.0f MiB after load, %.0f MiB after a prefill (packed %s bytes, deferred "
          "%s); RssFile %.0f MiB" % (dt, f32_mib, loaded - rss0, used - rss0,
                                     info.get("packed_weight_bytes"),
                                     info.get("deferred_weight_bytes"), file_mib))
    assert "bf16 as stored" in info["model.q"], info["model.q"]
    assert int(info["deferred_weight_bytes"]) > 0.9 * f32_mib * 2**20, info  # the matrices
    assert used - rss0 < 0.7 * f32_mib, (used - rss0, f32_mib)


if __name__ == "__main__":
    sslib.main(globals())
