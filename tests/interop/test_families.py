"""The llama kind's newer families against the independent float64 reference
(tests/interop/llama_ref.py, written from the Hugging Face definitions), one small random
checkpoint each, written here in Hugging Face layout:
    q3   qwen3: q_norm/k_norm, head_dim 24 != hidden/heads, GQA 4:2, attention_bias, F32 file
    q3s  qwen3 with use_sliding_window (window 4 from max_window_layers 1 on), F16
    g2   gemma2: four norms, query_pre_attn_scalar, attention logit soft-capping (cap 2: it
         bites), sliding window 3 on the even layers, BF16 directory, no prefix
    g3   gemma3_text: gemma2's block plus (1 + w) q/k norms, sliding_window_pattern 2 (layers
         0, 2 slide), local rope base for sliding layers, linear rope_scaling for full ones
    q2v  qwen2_vl: qwen2's block, M-RoPE sections [2, 3, 3] (chunked), sharded, model.
    q3v  qwen3_vl: text settings in text_config, weights under model.language_model.,
         interleaved M-RoPE [4, 4, 4]
prefill, client-cache decode, server sessions and batched decode steps; M-RoPE with explicit
3-stream positions (metadata mrope_positions) on prefill and session decode, equal streams ==
plain positions; full fine-tuning (3 AdamW steps: grad_input and every weight within 1e-4
relative of torch autograd) and LoRA (adapters with B != 0 on all seven projections, 3 AdamW
steps vs a PyTorch LoRA); refusals (unknown model_type, bad layer_types / mrope_section,
mrope_positions on a model without M-RoPE or of the wrong length)."""
import json
import os
import tempfile

import numpy as np

import llama_ref
import sslib
import train_ref
import trunk_checks
from sslib import SC, T, make_req, result, expect_error, assert_alive

TOL = 1e-4
TMP = None
S = None
C = None
CK = None  # trunk_checks.Checks
CFGS = {
    "q3": llama_ref.Config("qwen3", hidden=64, heads=4, kv_heads=2, head_dim=24, intermediate=96,
                           n_layer=3, max_pos=48, rope_theta=1000000.0, attention_bias=True),
    "q3s": llama_ref.Config("qwen3", hidden=48, heads=4, kv_heads=4, intermediate=80, n_layer=3,
                            max_pos=48, use_sliding_window=True, sliding_window=4,
                            max_window_layers=1),
    "g2": llama_ref.Config("gemma2", hidden=64, heads=4, kv_heads=2, head_dim=16,
                           intermediate=96, n_layer=4, max_pos=48, sliding_window=3,
                           query_pre_attn_scalar=24, softcap=2.0),
    "g3": llama_ref.Config("gemma3_text", hidden=64, heads=4, kv_heads=1, head_dim=32,
                           intermediate=96, n_layer=3, max_pos=48, sliding_window=3,
                           sliding_window_pattern=2, rope_theta=1000000.0,
                           rope_local_base_freq=10000.0, query_pre_attn_scalar=32,
                           rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "q2v": llama_ref.Config("qwen2_vl", hidden=64, heads=4, kv_heads=2, intermediate=96,
                            n_layer=3, max_pos=48, rope_theta=1000000.0,
                            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
    "q3v": llama_ref.Config("qwen3_vl", hidden=64, heads=4, kv_heads=2, head_dim=24,
                            intermediate=96, n_layer=3, max_pos=48, rope_theta=5000000.0,
                            rope_scaling={"rope_type": "default", "mrope_section": [4, 4, 4],
                                          "mrope_interleaved": True}),
}
# storage, prefix, layout, layers
LAYOUT = {"q3": ("F32", "model.", "file", (1, 3)), "q3s": ("F16", "model.", "file", (0, 3)), "g2": ("BF16", "", "dir", (0, 3)),
          "g3": ("F32", "model.", "file", (0, 3)),
          "q2v": ("F32", "model.", "sharded", (0, 2)),
          "q3v": ("BF16", "model.language_model.", "dir", (1, 3))}
MODELS = {}  # id -> (Trunk, (a, b), cfg)
PATHS = {}   # id -> (weights path, config path, stored)
LORA = {}    # id -> adapters, scale, ...
# full fine-tuning with SGD: AdamW's step is blind to the scale of a gradient, SGD's is not
FULL_OPT = train_ref.optim_defaults("sgd")
FULL_LR = 1e-3


def setup():
    global TMP, S, C, CK
    TMP = tempfile.mkdtemp(prefix="ss-fam-")
    args = ["--workers", "2"]
    for mid, cfg in CFGS.items():
        storage, prefix, layout, layers = LAYOUT[mid]
        w, c, stored = llama_ref.write_checkpoint(TMP, mid, cfg, seed=3 + len(mid) + ord(mid[1]),
                                                  storage=storage, prefix=prefix, layout=layout)
        PATHS[mid] = (w, c, stored)
        MODELS[mid] = (llama_ref.Trunk(cfg, stored, *layers), layers, cfg)
        spec = "%s=llama,weights=%s,config=%s,layers=%d:%d" % ((mid, w, c) + layers)
        args += ["--model", spec]
        args += ["--model", spec.replace(mid + "=", mid + "b=", 1)
                 + ",max_batch_rows=64,batch_delay_us=20000"]
        # full fine-tuning
        args += ["--model", "%s=llama,weights=%s,config=%s,layers=%d:%d%s,save=%s"
                 % (("t" + mid, w, c) + layers
                    + (train_ref.spec_keys(FULL_OPT),
                       os.path.join(TMP, "t" + mid + ".ckpt.safetensors")))]
        # LoRA from an adapter written here: every projection, B != 0
        g = np.random.default_rng(7 + len(mid))
        ad_dir = os.path.join(TMP, mid + ".adapter")
        os.makedirs(ad_dir)
        r, alpha = 4, 8.0
        targets = tuple(llama_ref.PROJ)
        blk = llama_ref.Block(cfg, stored, layers[0])
        adapters, tensors = {}, {}
        lprefix = prefix or "model."
        for layer in range(*layers):
            adapters[layer] = {}
            for short in targets:
                lin = blk.proj[short]
                A = (g.uniform(-1, 1, (r, lin.in_features))
                     / np.sqrt(lin.in_features)).astype(np.float32)
                B = (0.05 * g.standard_normal((lin.out_features, r))).astype(np.float32)
                adapters[layer][short] = (A, B)
                base = "base_model.model.%slayers.%d.%s" % (lprefix, layer, llama_ref.PROJ[short])
                tensors[base + ".lora_A.weight"] = A
                tensors[base + ".lora_B.weight"] = B
        sslib.write_safetensors(os.path.join(ad_dir, "adapter_model.safetensors"), tensors)
        with open(os.path.join(ad_dir, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                       "target_modules": list(targets)}, f)
        LORA[mid] = dict(adapters=adapters, scale=alpha / r, prefix=lprefix,
                         out=os.path.join(TMP, mid + ".lora.out"))
        args += ["--model", "l%s=llama,weights=%s,config=%s,layers=%d:%d,adapter=%s,"
                 "optimizer=adamw,save=%s" % ((mid, w, c) + layers + (ad_dir, LORA[mid]["out"]))]
    S = sslib.Server(*args)
    C = sslib.connect(S)
    CK = trunk_checks.Checks(C, TOL)


def teardown():
    CK.finish(S, TMP, "max abs errors")


def _call(*args, **kw):
    return CK.call(*args, **kw)


def _close(*args, **kw):
    return CK.close(*args, **kw)


_x = trunk_checks.x_of


def _positions(batch, seq, seed, shared=False):
    """Image-like M-RoPE positions [3, batch, seq]: text, a 2 x 3 grid at one temporal index,
    text again (the streams differ on the grid); rows start at 0..2 (shared: all the same)."""
    g = np.random.default_rng(seed)
    pos = np.zeros((3, batch, seq), np.int64)
    t0 = int(g.integers(1, 3))
    for b in range(batch):
        t = t0 if shared else int(g.integers(0, 3))
        for i in range(seq):
            if 2 <= i < 8:
                j = i - 2
                pos[:, b, i] = (t + 2, t + 2 + j // 3, t + 2 + j % 3)
            else:
                p = t + i if i < 2 else t + 2 + 3 + (i - 8)
                pos[:, b, i] = p
    return pos


def _meta_pos(pos):
    return ",".join(str(int(v)) for v in pos.reshape(-1))


def test_describe_in_info():
    info = C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5))
    blob = " ".join("%s=%s" % kv for kv in info.custom_info.items())
    for w in ("llama (qwen3)", "llama (gemma2)", "llama (gemma3_text)", "llama (qwen2_vl)",
              "llama (qwen3_vl)"):
        assert w in blob, (w, blob)


def test_prefill():
    CK.prefill(MODELS)


def test_client_cache_decode():
    CK.client_cache(MODELS)


def test_sessions_and_batched_steps():
    CK.sessions_and_batched(MODELS)


def test_mrope_positions():
    """Explicit 3-stream positions (an image grid inside the text) on prefill, then session decode
    steps with their own positions; [3, seq] shared by the batch or [3, batch, seq]; equal
    streams give the plain result."""
    for mid in ("q2v", "q3v"):
        ref, _, cfg = MODELS[mid]
        total, first = 12, 9
        x = _x(cfg, 2, total, seed=5)
        pos = _positions(2, total, seed=6)
        y, _ = ref(x, positions=pos)
        y_plain, _ = ref(x)
        assert np.max(np.abs(y - y_plain)) > 1e-3  # the positions matter
        got = result(_call(mid, x, mrope_positions=_meta_pos(pos))).reshape(y.shape)
        _close(got, y, mid + " prefill, [3, B, S] positions", key=mid + " mrope")
        y1, _ = ref(x[:1], positions=pos[:, :1])
        got = result(_call(mid, x[:1], mrope_positions=_meta_pos(pos[:, 0]))).reshape(y1.shape)
        _close(got, y1, mid + " prefill, [3, S] positions", key=mid + " mrope")
        same = np.broadcast_to(np.arange(total), (3, 2, total))
        got = result(_call(mid, x, mrope_positions=_meta_pos(same))).reshape(y.shape)
        _close(got, y_plain, mid + " equal streams == plain rope", key=mid + " mrope")
        # session: prefill with the grid, then text tokens one by one at their own positions
        pos = _positions(2, total, seed=7, shared=True)
        y, _ = ref(x, positions=pos)
        sid = "m-" + mid
        r = _call(mid, x[:, :first], session=sid, mrope_positions=_meta_pos(pos[:, :, :first]))
        _close(result(r).reshape(2, first, -1), y[:, :first], mid + " session prefill",
               key=mid + " mrope")
        for t in range(first, total):
            r = _call(mid, x[:, t:t + 1], session=sid,
                      mrope_positions=_meta_pos(pos[:, :, t:t + 1]))
            _close(result(r).reshape(2, 1, -1), y[:, t:t + 1], "%s session step %d" % (mid, t),
                   key=mid + " mrope")
        # the same text steps by position_offset (all streams are equal after the image)
        sid = "o-" + mid
        _call(mid, x[:, :first], session=sid, mrope_positions=_meta_pos(pos[:, :, :first]))
        for t in range(first, total):
            assert len(set(pos[:, :, t].reshape(-1))) == 1
            r = _call(mid, x[:, t:t + 1], session=sid, position_offset=int(pos[0, 0, t]))
            _close(result(r).reshape(2, 1, -1), y[:, t:t + 1], "%s offset step %d" % (mid, t),
                   key=mid + " mrope")
        # refusals
        expect_error(lambda: _call(mid, x, mrope_positions="1,2,3"), SC.INVALID_ARGUMENT,
                     "mrope_positions", "has 3 values")
        expect_error(lambda: _call(mid, x[:, :2], mrope_positions="0,1,0,1,0,x"),
                     SC.INVALID_ARGUMENT, "mrope_positions")
        expect_error(lambda: _call(mid, x[:, :1], mrope_positions="0,0,0", position_offset=2),
                     SC.INVALID_ARGUMENT, "exclude each other")
    x = _x(CFGS["q3"], 1, 2, seed=1)
    expect_error(lambda: _call("q3", x, mrope_positions="0,1,0,1,0,1"), SC.INVALID_ARGUMENT,
                 "needs an M-RoPE model")
    req = make_req(_x(CFGS["q2v"], 1, 2, seed=1), model="tq2v", mrope_positions="0,1,0,1,0,1")
    req.training_mode = True
    expect_error(lambda: C.compute(req, timeout=T(10)), SC.INVALID_ARGUMENT, "mrope_positions",
                 "inference only")
    assert_alive(C)


def test_train_full():
    """3 SGD steps vs torch autograd: grad_input of every call, every weight's change in the
    checkpoint (SIGUSR1; the new norms included) within 1e-4 relative, and the outputs."""
    opt = FULL_OPT
    done = {}
    for mid, (ref, (a, b), cfg) in MODELS.items():
        lr = FULL_LR
        gins, xs, grads = CK.play("t" + mid, cfg, lr, 3, seed=11, shape=(2, 7))
        rg, rw = llama_ref.train_full(cfg, PATHS[mid][2], a, b, xs, grads, opt, lr)
        for i, (got, want) in enumerate(zip(gins, rg)):
            CK.rel(got, want, "%s call %d grad_input" % (mid, i), mid + " train grad_input (rel)")
        done[mid] = rw
        # the trained weights, through the outputs: a trunk built from torch's weights
        trained = dict(PATHS[mid][2])
        trained.update({k: v.astype(np.float64) for k, v in rw.items()})
        x = _x(cfg, 1, 9, seed=4)
        want, _ = llama_ref.Trunk(cfg, trained, a, b)(x)
        _close(result(_call("t" + mid, x)).reshape(want.shape), want,
               mid + " output after 3 steps", key=mid + " trained output")
    sslib_ckpt(["t" + m for m in done])
    for mid, rw in done.items():
        prefix = LAYOUT[mid][1]
        got = train_ref.read_safetensors(os.path.join(TMP, "t" + mid + ".ckpt.safetensors"))
        assert float(got["optimizer.step"][0]) == 3.0
        names = [k for k in got if not k.startswith("optimizer.")]
        assert sorted(names) == sorted(prefix + k for k in rw), sorted(
            set(names) ^ set(prefix + k for k in rw))
        init = PATHS[mid][2]
        for k, v in rw.items():
            w0 = np.asarray(init[k], np.float64)
            assert np.max(np.abs(v - w0)) > 0, "%s %s did not train" % (mid, k)
            CK.rel(got[prefix + k] - w0, v - w0, "t%s %s change after 3 steps" % (mid, k),
                 mid + " train weight change (rel)")
        if CFGS[mid].qk_norm or CFGS[mid].sandwich:
            assert any("norm" in k and ("q_norm" in k or "feedforward" in k) for k in rw)


def test_lora():
    """Adapters on every projection (B != 0) after 3 AdamW steps vs a PyTorch LoRA: grad_input,
    the saved PEFT adapters, and the outputs."""
    opt = train_ref.optim_defaults("adamw")
    outs = []
    for mid, (ref, (a, b), cfg) in MODELS.items():
        case = LORA[mid]
        lr = 1e-2
        gins, xs, grads = CK.play("l" + mid, cfg, lr, 3, seed=21)
        rg, rw = llama_ref.train_lora(cfg, PATHS[mid][2], a, b, case["adapters"], case["scale"],
                                      xs, grads, opt, lr, prefix=case["prefix"])
        for i, (got, want) in enumerate(zip(gins, rg)):
            CK.rel(got, want, "l%s call %d grad_input" % (mid, i), mid + " lora grad_input (rel)")
        case["rw"] = rw
        outs.append(mid)
    sslib_ckpt(["l" + m for m in outs])
    for mid in outs:
        case = LORA[mid]
        ref, (a, b), cfg = MODELS[mid]
        got = train_ref.read_safetensors(os.path.join(case["out"], "adapter_model.safetensors"))
        assert set(got) == set(case["rw"]), sorted(set(got) ^ set(case["rw"]))
        for k, v in case["rw"].items():
            CK.rel(got[k], v, "l%s %s after 3 steps" % (mid, k), mid + " lora adapters (rel)")
        trained = {}
        for layer in range(a, b):
            trained[layer] = {}
            for short in llama_ref.PROJ:
                base = "base_model.model.%slayers.%d.%s" % (case["prefix"], layer,
                                                           llama_ref.PROJ[short])
                trained[layer][short] = (got[base + ".lora_A.weight"], got[base + ".lora_B.weight"])
        x = _x(cfg, 1, 7, seed=3)
        want, _ = llama_ref.Trunk(cfg, PATHS[mid][2], a, b, trained, case["scale"])(x)
        _close(result(_call("l" + mid, x)).reshape(want.shape), want, "l%s after training" % mid,
               key=mid + " lora output")


def sslib_ckpt(ids):
    S.checkpoint(ids)


_refused = sslib.model_refused


def test_gemma3_multimodal_checkpoint():
    """model_type gemma3 (the multimodal checkpoint): text settings in text_config (rope_theta
    left to Gemma3TextConfig's default 1e6), weights under language_model.model.; the trunk is
    g3's."""
    cfg = CFGS["g3"]
    stored = PATHS["g3"][2]
    d = os.path.join(TMP, "g3m")
    os.makedirs(d)
    sslib.write_safetensors(os.path.join(d, "model.safetensors"),
                            {"language_model.model." + k: v for k, v in stored.items()})
    text = cfg.json()
    del text["rope_theta"]
    text["model_type"] = "gemma3_text"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "gemma3", "text_config": text,
                   "vision_config": {"hidden_size": 32}}, f)
    s2 = sslib.Server("--workers", "1", "--model", "g3m=llama,weights=%s,layers=0:3" % d)
    c2 = sslib.connect(s2)
    try:
        x = _x(cfg, 2, 13, seed=8)
        y, _ = MODELS["g3"][0](x)
        _close(result(_call("g3m", x, c=c2)).reshape(y.shape), y, "gemma3 multimodal prefill",
               key="g3 prefill")
    finally:
        c2.close()
        s2.stop_ok()


def test_transformers5_rope_parameters():
    """Configs saved by transformers 5: rope_parameters instead of rope_theta / rope_scaling (one
    object; Gemma 3: one per layer type, the sliding one replacing rope_local_base_freq); and
    model_type qwen2_5_vl, qwen3_vl_text for the same trunks."""
    specs, refs = [], {}
    for mid in ("g3", "q3v", "q2v"):
        cfg = CFGS[mid]
        d = cfg.json()
        text = d.get("text_config", d)
        rp = dict(text.pop("rope_scaling") or {"rope_type": "default"})
        rp["rope_theta"] = text.pop("rope_theta")
        if mid == "g3":
            rp = {"full_attention": rp, "sliding_attention": {
                "rope_type": "default", "rope_theta": text.pop("rope_local_base_freq")}}
        text["rope_parameters"] = rp
        cpath = os.path.join(TMP, mid + ".v5.json")
        with open(cpath, "w") as f:
            json.dump(d, f)
        specs += ["--model", "v5%s=llama,weights=%s,config=%s,layers=%d:%d"
                  % ((mid, PATHS[mid][0], cpath) + LAYOUT[mid][3])]
    # the same trunks under the other model_types of their families: Qwen2.5-VL (Qwen2-VL's
    # language model), a Qwen3-VL text_config on its own
    d = CFGS["q2v"].json()
    d["model_type"] = "qwen2_5_vl"
    cpath = os.path.join(TMP, "q25v.json")
    with open(cpath, "w") as f:
        json.dump(d, f)
    specs += ["--model", "v5q25v=llama,weights=%s,config=%s,layers=%d:%d"
              % ((PATHS["q2v"][0], cpath) + LAYOUT["q2v"][3])]
    cpath = os.path.join(TMP, "q3vt.json")
    with open(cpath, "w") as f:
        json.dump(CFGS["q3v"].json()["text_config"], f)
    specs += ["--model", "v5q3vt=llama,weights=%s,config=%s,layers=%d:%d"
              % ((PATHS["q3v"][0], cpath) + LAYOUT["q3v"][3])]
    s2 = sslib.Server("--workers", "1", *specs)
    c2 = sslib.connect(s2)
    try:
        for mid, src in (("g3", "g3"), ("q3v", "q3v"), ("q2v", "q2v"), ("q25v", "q2v"),
                         ("q3vt", "q3v")):
            ref, _, cfg = MODELS[src]
            x = _x(cfg, 2, 13, seed=8)
            kw, pos = {}, None
            if src != "g3":
                pos = _positions(2, 13, seed=9)
                kw["mrope_positions"] = _meta_pos(pos)
            y, _ = ref(x, positions=pos)
            _close(result(_call("v5" + mid, x, c=c2, **kw)).reshape(y.shape), y,
                   mid + " (rope_parameters or another model_type)", key=src + " prefill")
    finally:
        c2.close()
        s2.stop_ok()


def test_startup_refusals():
    w, _, _ = PATHS["g2"]
    cfg = CFGS["g2"]
    _, c, _ = llama_ref.write_checkpoint(TMP, "bad1", cfg, seed=1,
                                         config_override={"model_type": "gemma4"})
    _refused("x=llama,weights=%s,config=%s" % (w, c), "model_type 'gemma4'", "gemma2",
             "qwen3_vl")
    _, c, _ = llama_ref.write_checkpoint(TMP, "bad2", cfg, seed=1,
                                         config_override={"layer_types": ["full_attention"]})
    _refused("x=llama,weights=%s,config=%s" % (w, c), "layer_types", "4")
    cfg = CFGS["q2v"]
    _, c, _ = llama_ref.write_checkpoint(TMP, "bad3", cfg, seed=1, config_override={
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 4]}})
    _refused("x=llama,weights=%s,config=%s" % (PATHS["q2v"][0], c), "mrope_section sums to 9",
             "8")
    # a gemma2 checkpoint without the extra norms
    w4, c4, _ = llama_ref.write_checkpoint(TMP, "miss", CFGS["g2"], seed=1,
                                           skip=("layers.1.pre_feedforward_layernorm.weight",))
    _refused("x=llama,weights=%s,config=%s" % (w4, c4), "missing",
             "layers.1.pre_feedforward_layernorm.weight")


if __name__ == "__main__":
    sslib.main(globals())
