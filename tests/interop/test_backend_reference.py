"""backend=reference (src/models/nn/backend/reference.c: plain loops accumulating in double, the
numerical oracle) against backend=cpu (oneDNN, few-row kernels, vectorized element-wise ops):
every architecture served both ways from the same random checkpoint, and compared within 1e-4
(max |cpu - ref| / max(1, max |ref|)):
    mlp     relu and gelu (erf) stacks
    gpt2    layers 1:3 of 4
    llama   every family of test_llama.py and test_families.py (llama with llama3 rope scaling,
            qwen2, mistral with a sliding window, gemma, qwen3, qwen3 sliding, gemma2 soft-cap,
            gemma3, qwen2-vl and qwen3-vl M-RoPE), all layers
    gpt_neox  the cases of test_gpt_neox.py (parallel and sequential residual, partial and
            whole-head rotary, with and without attention biases)
    LoRA    gpt2, llama and gpt_neox with fresh adapters and LoRA dropout
on prefill, server-session decode steps (forward_kv), concurrent session steps (batched decode,
forward_kv_batch), client-cache decode (past/present), M-RoPE positions, and training: two
training forwards + ComputeBackward with an SGD step each (grad_input, then the outputs of the
trained trunks). GetServiceInfo names each model's backend; backend=reference with compute=int8
and an unknown backend are refused at start-up."""
import os
import shutil
import tempfile

import numpy as np

import gpt2_ref
import llama_ref
import sslib
import test_families
import test_gpt_neox
import test_llama
from sslib import T, make_req, result

TOL = 1e-4
TMP = None
S = None
C = None
ARCH = {}   # name -> hidden width (input features)
WORST = {}  # what -> largest difference seen


def setup():
    global TMP, S, C
    TMP = tempfile.mkdtemp(prefix="ss-backend-")
    specs = {}
    for name, widths, act in (("mrelu", [48, 64, 16], "relu"), ("mgelu", [64, 80, 32], "gelu")):
        path = os.path.join(TMP, name + ".safetensors")
        sslib.write_safetensors(path, sslib.random_mlp(widths, 5))
        specs[name] = "mlp,weights=%s,activation=%s" % (path, act)
        ARCH[name] = widths[0]
    gcfg = gpt2_ref.Config(n_embd=64, n_head=4, n_layer=4, n_positions=48)
    w, c, _ = gpt2_ref.write_checkpoint(TMP, "gpt2", gcfg, storage="F32", prefix="")
    specs["gpt2"] = "gpt2,weights=%s,config=%s,layers=1:3" % (w, c)
    ARCH["gpt2"] = gcfg.n_embd
    cfgs = dict(test_llama.CFGS)
    cfgs.update(test_families.CFGS)
    for mid, cfg in cfgs.items():
        w, c, _ = llama_ref.write_checkpoint(TMP, mid, cfg, seed=len(mid) + ord(mid[0]))
        specs[mid] = "llama,weights=%s,config=%s" % (w, c)
        ARCH[mid] = cfg.hidden
    test_gpt_neox.TMP = TMP
    for mid, cfg in test_gpt_neox.CFGS.items():
        storage, prefix, _ = test_gpt_neox.LAYOUT[mid]
        w, c, _ = test_gpt_neox.write_checkpoint("nx-" + mid, cfg, 5, storage, prefix)
        specs["nx-" + mid] = "gpt_neox,weights=%s,config=%s" % (w, c)
        ARCH["nx-" + mid] = cfg.hidden
    for name in ("gpt2", "ll", "nx-par"):  # LoRA on every target, fresh adapters (B = 0 until a step)
        specs["lora-" + name] = specs[name] + ",lora_rank=4,lora_alpha=8,lora_dropout=0.25"
        ARCH["lora-" + name] = ARCH[name]
    args = ["--workers", "2"]
    for name, spec in specs.items():
        for be in ("cpu", "reference"):
            args += ["--model", "%s-%s=%s,backend=%s" % (name, be, spec, be)]
            args += ["--model", "t%s-%s=%s,backend=%s,optimizer=sgd" % (name, be, spec, be)]
    S = sslib.Server(*args)
    C = sslib.connect(S)


def teardown():
    C.close()
    S.stop_ok()
    shutil.rmtree(TMP, ignore_errors=True)
    print("  max |cpu - reference| / max(1, |reference|):")
    for what, e in sorted(WORST.items()):
        print("    %-34s %.3g" % (what, e))


def _close(got, want, what, key):
    assert got.shape == want.shape, "%s: shape %s vs %s" % (what, got.shape, want.shape)
    e = float(np.max(np.abs(got.astype(np.float64) - want))) / max(1.0, float(np.max(np.abs(want))))
    assert e <= TOL, "%s: cpu vs reference %.3g > %.1g" % (what, e, TOL)
    WORST[key] = max(WORST.get(key, 0.0), e)


def _x(name, shape, seed):
    return np.random.default_rng(seed).standard_normal(shape + (ARCH[name],)).astype(np.float32)


def _both(name, x, **meta):
    out = []
    for be in ("cpu", "reference"):
        r = C.compute(make_req(x, model="%s-%s" % (name, be), **meta), timeout=T(60))
        out.append(result(r).reshape(x.shape[:-1] + (-1,)))
    return out


MLPS = ("mrelu", "mgelu")


def _trunks():
    return [n for n in ARCH if n not in MLPS]


def test_info_names_backend():
    info = C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5))
    for name in ARCH:
        for be in ("cpu", "reference"):
            d = info.custom_info["model.%s-%s" % (name, be)]
            assert "backend " + be in d, (name, be, d)


def test_prefill():
    for name in ARCH:
        for shape in ((1, 1), (2, 7)) if name in _trunks() else ((1,), (5,)):
            x = _x(name, shape, seed=len(name) + shape[-1])
            cpu, ref = _both(name, x)
            _close(cpu, ref, "%s prefill %s" % (name, shape), name + " prefill")


def test_session_decode():
    for name in _trunks():
        x = _x(name, (2, 8), seed=3)
        sid = "s-" + name
        outs = {}
        for be in ("cpu", "reference"):
            m = "%s-%s" % (name, be)
            ys = [result(C.compute(make_req(x[:, :4], model=m, session=sid + be),
                                   timeout=T(60))).reshape(2, 4, -1)]
            for t in range(4, 8):
                meta = {"session_end": 1} if t == 7 else {}
                ys.append(result(C.compute(make_req(x[:, t:t + 1], model=m, session=sid + be,
                                                    **meta), timeout=T(60))).reshape(2, 1, -1))
            outs[be] = np.concatenate(ys, axis=1)
        _close(outs["cpu"], outs["reference"], name + " session decode", name + " session")


def test_batched_decode_steps():
    """Three sessions' one-token steps sent together: they run as one forward_kv_batch."""
    for name in _trunks():
        xs = [_x(name, (1, 6), seed=20 + i) for i in range(3)]
        outs = {}
        for be in ("cpu", "reference"):
            m = "%s-%s" % (name, be)
            for i in range(3):
                C.compute(make_req(xs[i][:, :2 + i], model=m, session="b%d-%s-%s" % (i, name, be)),
                          timeout=T(60))
            futs = [C.compute.future(make_req(xs[i][:, 2 + i:3 + i], model=m,
                                              session="b%d-%s-%s" % (i, name, be)),
                                     timeout=T(60)) for i in range(3)]
            outs[be] = np.stack([result(f.result()) for f in futs])
        _close(outs["cpu"], outs["reference"], name + " batched steps", name + " session")


def test_client_cache_decode():
    for name in _trunks():
        x = _x(name, (1, 6), seed=9)
        outs = {}
        for be in ("cpu", "reference"):
            req = make_req(x[:, :4], model="%s-%s" % (name, be))
            req.use_cache = True
            r = C.compute(req, timeout=T(60))
            req = make_req(x[:, 4:5], model="%s-%s" % (name, be))
            req.past_key_values.extend(r.present_key_values)
            req.use_cache = True
            r2 = C.compute(req, timeout=T(60))
            pres = [np.frombuffer(e.key_data + e.value_data, np.float32)
                    for e in r2.present_key_values]
            outs[be] = np.concatenate([result(r2).reshape(-1)] + pres)
        _close(outs["cpu"], outs["reference"], name + " client cache", name + " client cache")


def test_mrope_positions():
    for name in ("q2v", "q3v"):
        x = _x(name, (2, 12), seed=5)
        pos = test_families._positions(2, 12, seed=6)
        cpu, ref = _both(name, x, mrope_positions=test_families._meta_pos(pos))
        _close(cpu, ref, name + " M-RoPE prefill", name + " prefill")


def test_training():
    """Two training forwards, each followed by ComputeBackward with an SGD step, on both
    backends: grad_input of each, then the outputs of the trained models."""
    for name in ARCH:
        shape = (2, 5) if name in _trunks() else (6,)
        g = np.random.default_rng(11)
        xs = [g.standard_normal(shape + (ARCH[name],)).astype(np.float32) for _ in range(2)]
        gins = {}
        for be in ("cpu", "reference"):
            m = "t%s-%s" % (name, be)
            gins[be] = []
            gr = np.random.default_rng(12)
            for i, x in enumerate(xs):
                req = make_req(x, model=m)
                req.training_mode = True
                req.forward_id = "f-%s-%d" % (name, i)  # the same on both: LoRA dropout masks
                y = result(C.compute(req, timeout=T(60)))
                d = gr.standard_normal(y.shape).astype(np.float32)
                b = sslib.pb.BackwardRequest(grad_output_data=d.tobytes(),
                                             forward_id=req.forward_id, model_id=m,
                                             learning_rate=1e-2)
                b.grad_output_shape.extend(y.reshape(x.shape[:-1] + (-1,)).shape)
                r = C.backward(b, timeout=T(60))
                gins[be].append(np.frombuffer(r.grad_input_data, np.float32))
        for i in range(2):
            _close(gins["cpu"][i], gins["reference"][i], "%s backward %d grad_input" % (name, i),
                   name + " backward")
        x = xs[0]
        outs = [result(C.compute(make_req(x, model="t%s-%s" % (name, be)), timeout=T(60)))
                for be in ("cpu", "reference")]
        _close(outs[0], outs[1], name + " output after 2 steps", name + " trained")


def _refused(spec, *words):
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--model", spec)
    assert rc > 0, "splitserve --model %s: rc %d\n%s" % (spec, rc, out)
    for w in words:
        assert w in out, "refusal of --model %s does not name %r:\n%s" % (spec, w, out)


def test_refusals():
    _refused("m=mlp,backend=reference,compute=int8", "backend=reference", "fp32 only",
             "compute=int8")
    _refused("m=mlp,backend=cuda", "backend must be cpu or reference", "'cuda'")


if __name__ == "__main__":
    sslib.main(globals(), default_timeout=300.0)
