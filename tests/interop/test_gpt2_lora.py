"""LoRA on the gpt2 trunk (issue 19 item 4): adapters on the Conv1D layers c_attn, c_proj (both
attn.c_proj and mlp.c_proj, as PEFT matches names) and c_fc, in PEFT's layout (A [r, in],
B [out, r], fan_in_fan_out=true).

Against an independent PyTorch reference (gpt2_ref.LoraTrunk / train_lora, float64 autograd):
  - the forward with an adapter loaded from adapter=DIR (B != 0), with and without a cache, and
    session decode steps of several sequences batched through the adapted layers;
  - 3 AdamW steps and 4 SGD calls with accumulation_step 2: every grad_input and the adapters
    written by save=DIR (SIGUSR1) within 1e-4 relative; the optimizer state is saved;
  - the saved directory reloads (adapter=DIR) into a new server that gives the trained outputs;
  - a fresh adapter (lora_rank) starts as PEFT's (B = 0, A within 1/sqrt(in)) and leaves the
    output equal to the base model's;
  - refusals: an unknown target, a rank that disagrees with the adapter's;
  - LoRA dropout (lora_dropout=0.3, lora_seed=7; issue 19 item 5): inference is untouched, and
    3 SGD training calls match the reference with the masks of the server's counter-based
    generator written again in numpy (gpt2_ref.lora_keep), so every mask is reproduced exactly.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import torch

import gpt2_ref
import sslib
import train_ref
from sslib import T, make_req, result

TOL = 1e-4
TMP = None
S = None
C = None
CFG = gpt2_ref.Config(n_embd=32, n_head=4, n_layer=3, n_positions=16)
LAYERS = (1, 3)
R, ALPHA = 4, 8.0
STORED = None
WPATH = CPATH = None
ADAPTERS = {}  # layer -> {attr: (A, B)}
AD_DIR = None


def _dims(attr):
    E, NI = CFG.n_embd, CFG.n_inner
    return {"c_attn": (E, 3 * E), "attn_proj": (E, E), "c_fc": (E, NI), "mlp_proj": (NI, E)}[attr]


def setup():
    global TMP, S, C, STORED, WPATH, CPATH, AD_DIR
    TMP = tempfile.mkdtemp(prefix="ss-gpt2-lora-")
    WPATH, CPATH, STORED = gpt2_ref.write_checkpoint(TMP, "gpt2", CFG, seed=7,
                                                     prefix="transformer.")
    g = np.random.default_rng(3)
    AD_DIR = os.path.join(TMP, "adapter0")
    os.makedirs(AD_DIR)
    tensors = {}
    for layer in range(*LAYERS):
        ADAPTERS[layer] = {}
        for attr in ("c_attn", "attn_proj", "c_fc", "mlp_proj"):
            n_in, n_out = _dims(attr)
            A = (g.uniform(-1, 1, (R, n_in)) / np.sqrt(n_in)).astype(np.float32)
            B = (0.05 * g.standard_normal((n_out, R))).astype(np.float32)
            ADAPTERS[layer][attr] = (A, B)
            tensors[gpt2_ref.lora_key(layer, attr) + ".lora_A.weight"] = A
            tensors[gpt2_ref.lora_key(layer, attr) + ".lora_B.weight"] = B
    sslib.write_safetensors(os.path.join(AD_DIR, "adapter_model.safetensors"), tensors)
    with open(os.path.join(AD_DIR, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "fan_in_fan_out": True,
                   "target_modules": ["c_attn", "c_proj", "c_fc"]}, f)
    base = "weights=%s,config=%s,layers=%d:%d" % ((WPATH, CPATH) + LAYERS)
    args = ["--workers", "2",
            "--model", "lo=gpt2,%s,adapter=%s,optimizer=adamw,save=%s"
            % (base, AD_DIR, os.path.join(TMP, "lo.out")),
            "--model", "ls=gpt2,%s,adapter=%s,lora_rank=4,save=%s"
            % (base, AD_DIR, os.path.join(TMP, "ls.out")),
            "--model", "lf=gpt2,%s,lora_rank=4,lora_alpha=16,lora_targets=c_attn,c_proj,c_fc,"
            "save=%s" % (base, os.path.join(TMP, "lf.out")),
            "--model", "ld=gpt2,%s,adapter=%s,lora_dropout=0.3,lora_seed=7,save=%s"
            % (base, AD_DIR, os.path.join(TMP, "ld.out")),
            "--model", "lb=gpt2,%s,adapter=%s,max_batch_rows=64,batch_delay_us=20000"
            % (base, AD_DIR),
            "--model", "base=gpt2,%s" % base]
    S = sslib.Server(*args)
    C = sslib.connect(S)


def teardown():
    C.close()
    S.stop_ok()
    shutil.rmtree(TMP, ignore_errors=True)


def _x(batch, seq, seed):
    return np.random.default_rng(seed).standard_normal((batch, seq, CFG.n_embd)).astype(np.float32)


def _call(model, x, c=None, **kw):
    req = make_req(x, model=model)
    for k, v in kw.items():
        setattr(req, k, v)
    return (c or C).compute(req, timeout=T(20))


def _close(got, want, what, tol=TOL):
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= tol, "%s: max abs err %.3g > %.1g" % (what, err, tol)
    return err


def _play(model, n, lr, acc, seed):
    g = sslib.rng(seed)
    xs, grads, gins = [], [], []
    for i in range(n):
        x = g.standard_normal((2, 6, CFG.n_embd)).astype(np.float32)
        r = g.standard_normal((2, 6, CFG.n_embd)).astype(np.float32)
        req = make_req(x, model=model)
        req.training_mode = True
        req.forward_id = "%s-%d-%d" % (model, seed, i)
        C.compute(req, timeout=T(30))
        gr = np.ascontiguousarray(r, np.float32)
        b = sslib.pb.BackwardRequest(grad_output_data=gr.tobytes(), forward_id=req.forward_id,
                                     model_id=model, learning_rate=lr, accumulation_step=acc)
        b.grad_output_shape.extend(gr.shape)
        resp = C.backward(b, timeout=T(30))
        gins.append(np.frombuffer(resp.grad_input_data, np.float32).reshape(x.shape))
        xs.append(x)
        grads.append(r)
    return gins, xs, grads


def _checkpoint(ids):
    S.checkpoint(ids)


def test_forward_with_adapter():
    """adapter=DIR output == the PyTorch LoRA trunk; also through a cache (prefill + 1 step)."""
    ref = gpt2_ref.LoraTrunk(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R)
    worst = 0.0
    for batch, seq in ((1, 1), (2, 7)):
        x = _x(batch, seq, seed=seq)
        want, _ = ref(x)
        worst = max(worst, _close(result(_call("lo", x)).reshape(want.shape), want, "lo fwd"))
    x = _x(1, 5, seed=9)
    want, _ = ref(x)
    got = result(_call("lo", x[:, :4], use_cache=True)).reshape(1, 4, CFG.n_embd)
    worst = max(worst, _close(got, want[:, :4], "lo prefill with cache"))
    print("  forward max abs err %.3g" % worst)


def _batched_calls(model):
    info = C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info
    kv = dict(p.split("=", 1) for p in info["model." + model].split("; ") if "=" in p)
    return int(kv["batches"]), int(kv["batched_calls"])


def test_decode_batched_with_adapter():
    """Session decode steps of 4 sequences batched through the adapted layers
    (forward_kv_batch) == the PyTorch LoRA trunk over each whole sequence."""
    ref = gpt2_ref.LoraTrunk(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R)
    g = np.random.default_rng(8)
    n = 4
    seqs = [g.standard_normal((1, 3 + i + 2, CFG.n_embd)).astype(np.float32) for i in range(n)]
    for i in range(n):
        C.compute(make_req(seqs[i][:, :3 + i], model="lb", session="d%d" % i), timeout=T(10))
    b0, c0 = _batched_calls("lb")
    worst = 0.0
    for step in range(2):
        futs = [C.compute.future(make_req(seqs[i][:, 3 + i + step:4 + i + step], model="lb",
                                          session="d%d" % i), timeout=T(20)) for i in range(n)]
        for i, f in enumerate(futs):
            want, _ = ref(seqs[i][:, :4 + i + step])
            worst = max(worst, _close(result(f.result()).reshape(1, 1, CFG.n_embd),
                                      want[:, -1:], "decode step %d seq %d" % (step, i)))
    b1, c1 = _batched_calls("lb")
    assert c1 - c0 == 2 * n and b1 - b0 < 2 * n, (b0, b1, c0, c1)
    print("  batched decode with adapters: max abs err %.3g (%d calls in %d batches)"
          % (worst, c1 - c0, b1 - b0))


def test_train_adamw_and_reload():
    gins, xs, grads = _play("lo", 3, 1e-2, 1, seed=21)
    optim = train_ref.optim_defaults("adamw")

    def run(fn, params, xs_, grads_):
        return train_ref._run(fn, params, xs_, grads_, optim, 1e-2, 1)
    rg, rw = gpt2_ref.train_lora(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R, xs,
                                 grads, run)
    worst = 0.0
    for i, (got, want) in enumerate(zip(gins, rg)):
        e = train_ref.rel_err(got, want)
        worst = max(worst, e)
        assert e < TOL, "call %d: grad_input rel err %.3g" % (i, e)
    _checkpoint(["lo", "ls", "lf"])
    out = os.path.join(TMP, "lo.out")
    got = train_ref.read_safetensors(os.path.join(out, "adapter_model.safetensors"))
    assert set(got) == set(rw), sorted(set(got) ^ set(rw))
    for k, v in rw.items():
        e = train_ref.rel_err(got[k], v)
        worst = max(worst, e)
        assert e < TOL, "%s after 3 steps: rel err %.3g" % (k, e)
    print("  adamw: grad_input and adapters max rel err %.3g" % worst)
    opt = train_ref.read_safetensors(os.path.join(out, "optimizer.safetensors"))
    assert float(opt["optimizer.step"][0]) == 3.0
    with open(os.path.join(out, "adapter_config.json")) as f:
        ac = json.load(f)
    assert ac["r"] == R and ac["lora_alpha"] == ALPHA and ac["fan_in_fan_out"] is True, ac
    assert sorted(ac["target_modules"]) == ["c_attn", "c_fc", "c_proj"], ac
    assert ac["layers_to_transform"] == [1, 2], ac
    trained = {layer: {attr: (got[gpt2_ref.lora_key(layer, attr) + ".lora_A.weight"],
                              got[gpt2_ref.lora_key(layer, attr) + ".lora_B.weight"])
                       for attr in ADAPTERS[layer]} for layer in ADAPTERS}
    x = _x(1, 7, seed=3)
    want, _ = gpt2_ref.LoraTrunk(CFG, STORED, LAYERS[0], LAYERS[1], trained, ALPHA / R)(x)
    _close(result(_call("lo", x)).reshape(want.shape), want, "lo after training")
    s2 = sslib.Server("--workers", "1", "--model", "re=gpt2,weights=%s,config=%s,layers=%d:%d,"
                      "adapter=%s" % ((WPATH, CPATH) + LAYERS + (out,)))
    c2 = sslib.connect(s2)
    try:
        _close(result(_call("re", x, c=c2)).reshape(want.shape), want, "adapter reloaded")
    finally:
        c2.close()
        s2.stop_ok()


def test_train_sgd_accumulated():
    gins, xs, grads = _play("ls", 4, 0.05, 2, seed=33)
    optim = train_ref.optim_defaults("sgd")

    def run(fn, params, xs_, grads_):
        return train_ref._run(fn, params, xs_, grads_, optim, 0.05, 2)
    rg, rw = gpt2_ref.train_lora(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R, xs,
                                 grads, run)
    for i, (got, want) in enumerate(zip(gins, rg)):
        e = train_ref.rel_err(got, want)
        assert e < TOL, "call %d: grad_input rel err %.3g" % (i, e)
    _checkpoint(["ls"])
    got = train_ref.read_safetensors(os.path.join(TMP, "ls.out", "adapter_model.safetensors"))
    for k, v in rw.items():
        e = train_ref.rel_err(got[k], v)
        assert e < TOL, "%s after 2 SGD steps: rel err %.3g" % (k, e)


def test_fresh_adapter():
    _checkpoint(["lf"])
    fresh = train_ref.read_safetensors(os.path.join(TMP, "lf.out", "adapter_model.safetensors"))
    assert len(fresh) == 2 * 4 * 2, sorted(fresh)
    for k, v in fresh.items():
        assert k.startswith("base_model.model.transformer.h."), k
        if ".lora_B." in k:
            assert not np.any(v), k
        else:
            bound = 1.0 / np.sqrt(v.shape[1])
            assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.5 * bound, k
    # B = 0: the adapter adds exact zeros. Not bit for bit: without an adapter on c_fc the base
    # model's GELU runs fused into the product (a oneDNN post-op), the adapted one's after it.
    x = _x(2, 5, seed=4)
    np.testing.assert_allclose(result(_call("lf", x)), result(_call("base", x)), rtol=1e-5,
                               atol=1e-6)


def test_dropout():
    P, SEED = 0.3, 7
    ref = gpt2_ref.LoraTrunk(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R)
    x = _x(2, 7, seed=11)
    want, _ = ref(x)
    _close(result(_call("ld", x)).reshape(want.shape), want, "ld inference (no dropout)")
    gins, xs, grads = _play("ld", 3, 0.05, 1, seed=44)
    fids = ["ld-44-%d" % i for i in range(3)]
    optim = train_ref.optim_defaults("sgd")
    kept = []

    def masks(call, layer, attr, xx):
        n = int(np.prod(xx.shape))
        keep = gpt2_ref.lora_keep(SEED, fids[call], layer * 16 + gpt2_ref.LORA_UNIT[attr], n, P)
        kept.append(keep.mean())
        return xx * torch.from_numpy(keep.reshape(tuple(xx.shape)).astype(np.float64)) / (1 - P)

    def run(fn, params, xs_, grads_):
        return train_ref._run(fn, params, xs_, grads_, optim, 0.05, 1)
    rg, rw = gpt2_ref.train_lora(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R, xs,
                                 grads, run, masks=masks)
    worst = 0.0
    for i, (got, want) in enumerate(zip(gins, rg)):
        e = train_ref.rel_err(got, want)
        worst = max(worst, e)
        assert e < TOL, "call %d: grad_input rel err %.3g with dropout" % (i, e)
    _checkpoint(["ld"])
    got = train_ref.read_safetensors(os.path.join(TMP, "ld.out", "adapter_model.safetensors"))
    for k, v in rw.items():
        e = train_ref.rel_err(got[k], v)
        worst = max(worst, e)
        assert e < TOL, "%s after 3 steps with dropout: rel err %.3g" % (k, e)
    # the same run without the masks is far off: the masks matter, and they are the server's
    rg0, _ = gpt2_ref.train_lora(CFG, STORED, LAYERS[0], LAYERS[1], ADAPTERS, ALPHA / R, xs,
                                 grads, run)
    off = max(train_ref.rel_err(g0, w) for g0, w in zip(rg0, rg))
    assert off > 100 * TOL, off
    with open(os.path.join(TMP, "ld.out", "adapter_config.json")) as f:
        assert json.load(f)["lora_dropout"] == P
    print("  dropout: kept %.3f of the adapter inputs (1 - p = %.1f); grad_input and adapters max "
          "rel err %.3g (without the masks: %.3g)" % (np.mean(kept), 1 - P, worst, off))


def test_refusals():
    base = "weights=%s,config=%s" % (WPATH, CPATH)
    for spec, words in (("b1=gpt2,%s,lora_rank=2,lora_targets=q_proj" % base,
                         ("unknown module 'q_proj'", "c_attn, c_proj, c_fc")),
                        ("b2=gpt2,%s,adapter=%s,lora_rank=8" % (base, AD_DIR),
                         ("lora_rank 8 disagrees with the adapter's r 4",)),
                        ("b3=gpt2,%s,lora_rank=2,lora_dropout=1" % base,
                         ("lora_dropout must be a number in [0, 1), got '1'",)),
                        ("b4=gpt2,%s,lora_dropout=0.1" % base,
                         ("lora_dropout and lora_seed need LoRA",))):
        srv = sslib.Server("--model", spec, expect_start=False)
        rc = srv.wait(T(10))
        assert rc not in (0, None), (rc, srv.log)
        for w in words:
            assert w in srv.log, (w, srv.log)


if __name__ == "__main__":
    sslib.main(globals())
