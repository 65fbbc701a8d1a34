"""The llama trunk against an independent PyTorch reference (tests/interop/llama_ref.py) with
random checkpoints written here in Hugging Face layout, one per family:
    ll  llama, llama3 rope scaling, GQA 4:2, attention and mlp biases, F32 single file, model.
    qw  qwen2, q/k/v biases, GQA 14:2 (7:1), BF16, sharded (index + 3 shards), model.
    mi  mistral, sliding window 5 < the test's sequences, linear rope scaling, F32 directory,
        no prefix
    ge  gemma, head_dim 24 != hidden/heads, (1 + w) norms, GeGLU (gelu tanh), 1 kv head, BF16
        single file, no prefix
prefill, decode with the client cache (past_key_values / present_key_values), server sessions,
position_offset, the refusals (hidden width, seq beyond max_position_embeddings, cache count and
shapes, unsupported model_type / rope_scaling, missing tensors); split training (full fine-tuning
vs torch autograd + AdamW, grad_input and weights within 1e-4 relative; 3 steps, checkpoint,
restart, 3 more steps == 6 uninterrupted); LoRA (adapters after 3 steps vs a PyTorch LoRA, the
saved PEFT directory reloads and gives the same outputs, a fresh adapter starts as PEFT does)."""
import json
import os
import shutil
import signal
import tempfile
import time

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
CFGS = {
    "ll": llama_ref.Config("llama", hidden=64, heads=4, kv_heads=2, intermediate=96, n_layer=3,
                           max_pos=48, attention_bias=True, mlp_bias=True, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16}),
    "qw": llama_ref.Config("qwen2", hidden=112, heads=14, kv_heads=2, intermediate=160,
                           n_layer=3, max_pos=48, rope_theta=1000000.0),
    "mi": llama_ref.Config("mistral", hidden=64, heads=4, kv_heads=2, intermediate=96, n_layer=3,
                           max_pos=48, sliding_window=5,
                           rope_scaling={"type": "linear", "factor": 2.0}),
    "ge": llama_ref.Config("gemma", hidden=64, heads=4, kv_heads=1, head_dim=24,
                           intermediate=96, n_layer=3, max_pos=48),
}
LAYOUT = {"ll": ("F32", "model.", "file", (1, 3)), "qw": ("BF16", "model.", "sharded", (0, 2)),
          "mi": ("F32", "", "dir", (0, 3)), "ge": ("BF16", "", "file", (1, 3))}
MODELS = {}  # id -> (Trunk, (a, b), cfg)
PATHS = {}   # id -> (weights path, config path, stored)
TRAIN = {}   # training cases


def setup():
    global TMP, S, C
    TMP = tempfile.mkdtemp(prefix="ss-llama-")
    args = ["--workers", "2"]
    for mid, cfg in CFGS.items():
        storage, prefix, layout, layers = LAYOUT[mid]
        w, c, stored = llama_ref.write_checkpoint(TMP, mid, cfg, seed=len(mid) + ord(mid[0]),
                                                  storage=storage, prefix=prefix, layout=layout)
        PATHS[mid] = (w, c, stored)
        MODELS[mid] = (llama_ref.Trunk(cfg, stored, *layers), layers, cfg)
        spec = "%s=llama,weights=%s,layers=%d:%d" % ((mid, w) + layers)
        if layout == "file":
            spec += ",config=" + c
        args += ["--model", spec]
        # its twin with dynamic batching: decode steps of different sessions batch together
        args += ["--model", spec.replace(mid + "=", mid + "b=", 1)
                 + ",max_batch_rows=64,batch_delay_us=20000"]
    # training: full fine-tuning (AdamW) of a qwen2 trunk and a gemma trunk
    for mid in ("qw", "ge"):
        tid = "t" + mid
        w, c, stored = PATHS[mid]
        ckpt = os.path.join(TMP, tid + ".ckpt.safetensors")
        opt = train_ref.optim_defaults("adamw")
        TRAIN[tid] = dict(src=mid, ckpt=ckpt, optim=opt, lr=3e-3, layers=LAYOUT[mid][3])
        args += ["--model", "%s=llama,weights=%s,config=%s,layers=%d:%d%s,save=%s"
                 % ((tid, w, c) + LAYOUT[mid][3] + (train_ref.spec_keys(opt), ckpt))]
    # LoRA from an adapter written here (B != 0), targets q, v, down; and a fresh one
    cfg = CFGS["ll"]
    g = np.random.default_rng(5)
    ad_dir = os.path.join(TMP, "adapter0")
    os.makedirs(ad_dir)
    adapters, tensors = {}, {}
    r, alpha = 4, 8.0
    targets = ("q_proj", "v_proj", "down_proj")
    blk = llama_ref.Block(cfg, PATHS["ll"][2], 1)
    for layer in (1, 2):
        adapters[layer] = {}
        for short in targets:
            lin = blk.proj[short]
            A = (g.uniform(-1, 1, (r, lin.in_features)) / np.sqrt(lin.in_features)).astype(np.float32)
            B = (0.05 * g.standard_normal((lin.out_features, r))).astype(np.float32)
            adapters[layer][short] = (A, B)
            base = "base_model.model.model.layers.%d.%s" % (layer, llama_ref.PROJ[short])
            tensors[base + ".lora_A.weight"] = A
            tensors[base + ".lora_B.weight"] = B
    sslib.write_safetensors(os.path.join(ad_dir, "adapter_model.safetensors"), tensors)
    with open(os.path.join(ad_dir, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                   "target_modules": list(targets)}, f)
    TRAIN["lo"] = dict(src="ll", ckpt=os.path.join(TMP, "lo.out"), adapters=adapters,
                       scale=alpha / r, optim=train_ref.optim_defaults("adamw"), lr=1e-2,
                       layers=(1, 3))
    w, c, _ = PATHS["ll"]
    args += ["--model", "lo=llama,weights=%s,config=%s,layers=1:3,adapter=%s,optimizer=adamw,"
             "save=%s" % (w, c, ad_dir, TRAIN["lo"]["ckpt"])]
    # fresh adapter: lora_targets as a comma list on the command line
    args += ["--model", "lf=llama,weights=%s,config=%s,layers=1:3,lora_rank=4,lora_alpha=16,"
             "lora_targets=q_proj,v_proj,o_proj,save=%s" % (w, c, os.path.join(TMP, "lf.out"))]
    S = sslib.Server(*args)
    C = sslib.connect(S)


def teardown():
    C.close()
    S.stop_ok()
    shutil.rmtree(TMP, ignore_errors=True)


_kv_entries = sslib.kv_entries
_presents = sslib.presents


def _call(model, x, past=None, use_cache=None, c=None, **meta):
    return sslib.compute_kv(c or C, model, x, past, use_cache, **meta)


def _close(got, ref, what, tol=TOL):
    assert got.shape == ref.shape, "%s: shape %s, expected %s" % (what, got.shape, ref.shape)
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    assert err <= tol, "%s: max abs err %.3g > %.1g (max |ref| %.3g)" % (
        what, err, tol, float(np.max(np.abs(ref))))
    return err


def _x(cfg, batch, seq, seed):
    return np.random.default_rng(seed).standard_normal((batch, seq, cfg.hidden)).astype(np.float32)


def test_describe_in_info():
    info = C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5))
    blob = " ".join("%s=%s" % kv for kv in info.custom_info.items())
    for w in ("llama (llama)", "llama (qwen2)", "llama (mistral)", "llama (gemma)", "LoRA r 4"):
        assert w in blob, (w, blob)


def test_prefill():
    worst = 0.0
    for mid, (ref, _, cfg) in MODELS.items():
        for batch in (1, 2):
            for seq in (1, 4, 11, cfg.max_pos):
                x = _x(cfg, batch, seq, seed=seq * 10 + batch)
                r = _call(mid, x)
                assert len(r.present_key_values) == 0
                y, _ = ref(x)
                worst = max(worst, _close(result(r).reshape(y.shape), y,
                                          "%s batch %d seq %d" % (mid, batch, seq)))
    print("  prefill max abs err %.3g" % worst)


def test_presents_and_client_cache():
    """Prefill with use_cache (presents == the reference's), then one token per step with the
    previous present as past == the reference prefill of the whole sequence; a chunk with past
    and no use_cache."""
    for mid, (ref, (a, b), cfg) in MODELS.items():
        for batch in (1, 2):
            total, first = 12, 4
            x = _x(cfg, batch, total, seed=40 + batch)
            y_full, pres = ref(x)
            r = _call(mid, x[:, :first], use_cache=True)
            _close(result(r).reshape(batch, first, -1), y_full[:, :first], mid + " prefill")
            past = _presents(r)
            assert len(past) == b - a
            _, pres_first = ref(x[:, :first])
            for i, ((k, v), (rk, rv)) in enumerate(zip(past, pres_first)):
                assert k.shape == (batch, cfg.kv_heads, first, cfg.head_dim), k.shape
                _close(k, rk, "%s present[%d].key" % (mid, i))
                _close(v, rv, "%s present[%d].value" % (mid, i))
            for t in range(first, total):
                r = _call(mid, x[:, t:t + 1], past=past, use_cache=True)
                _close(result(r).reshape(batch, 1, -1), y_full[:, t:t + 1],
                       "%s batch %d decode at position %d" % (mid, batch, t))
                past = _presents(r)
            r = _call(mid, x[:, :3], use_cache=True)
            r2 = _call(mid, x[:, 3:10], past=_presents(r))
            _close(result(r2).reshape(batch, 7, -1), y_full[:, 3:10], mid + " chunked")
            assert len(r2.present_key_values) == 0


def test_sessions():
    for mid, (ref, _, cfg) in MODELS.items():
        sid = "s-" + mid
        total, first = 10, 4
        x = _x(cfg, 2, total, seed=70)
        y_full, _ = ref(x)
        r = _call(mid, x[:, :first], session=sid)
        _close(result(r).reshape(2, first, -1), y_full[:, :first], mid + " session prefill")
        for t in range(first, total):
            meta = {"session_end": 1} if t == total - 1 else {}
            r = _call(mid, x[:, t:t + 1], session=sid, **meta)
            assert len(r.present_key_values) == 0
            _close(result(r).reshape(2, 1, -1), y_full[:, t:t + 1],
                   "%s session step at position %d" % (mid, t))


def test_decode_steps_batch_across_sessions():
    """4 sessions per family with prefixes of different lengths decode concurrently on the
    batched twin: one batch through the projections (rope and attention per session), every step
    equal to the reference."""
    for mid, (ref, _, cfg) in MODELS.items():
        total, n = 9, 4
        xs = [_x(cfg, 1, total, seed=90 + i) for i in range(n)]
        ys = [ref(x)[0] for x in xs]
        firsts = [3 + i for i in range(n)]
        for i in range(n):
            _call(mid + "b", xs[i][:, :firsts[i]], session="bs-%s-%d" % (mid, i))
        for step in range(2):
            futs = []
            for i in range(n):
                t = firsts[i] + step
                futs.append((i, t, C.compute.future(
                    make_req(xs[i][:, t:t + 1], model=mid + "b", session="bs-%s-%d" % (mid, i)),
                    timeout=T(20))))
            for i, t, f in futs:
                _close(result(f.result()).reshape(1, 1, -1), ys[i][:, t:t + 1],
                       "%s batched step, session %d position %d" % (mid, i, t))
        desc = dict(C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info)["model." + mid + "b"]
        kv = dict(x.split("=", 1) for x in desc.split("; ") if "=" in x)
        assert int(kv["batches"]) < int(kv["batched_calls"]), desc


def test_position_offset():
    """metadata position_offset: the call's positions start there instead of at the past length
    (without a cache an offset changes nothing: rotary attention sees relative positions)."""
    for mid in ("ll", "ge", "mi"):
        ref, _, cfg = MODELS[mid]
        x = _x(cfg, 1, 8, seed=9)
        y, _ = ref(x, pos0=7)
        _close(result(_call(mid, x, position_offset=7)).reshape(y.shape), y, mid + " offset 7")
        r = _call(mid, x[:, :4], use_cache=True)
        past = _presents(r)
        y, _ = ref(x[:, 4:], past=past, pos0=10)
        got = result(_call(mid, x[:, 4:], past=past, position_offset=10)).reshape(y.shape)
        _close(got, y, mid + " past 4, offset 10")
        y0, _ = ref(x[:, 4:], past=past)
        assert np.max(np.abs(y - y0)) > 1e-3  # the offset matters
    cfg = CFGS["ll"]
    expect_error(lambda: _call("ll", _x(cfg, 1, 5, 1), position_offset=45), SC.INVALID_ARGUMENT,
                 "position_offset 45 + seq 5 exceeds max_position_embeddings 48")
    expect_error(lambda: _call("ll", _x(cfg, 1, 5, 1), position_offset="x"), SC.INVALID_ARGUMENT,
                 "position_offset")


def test_bad_input():
    cfg = CFGS["qw"]
    expect_error(lambda: _call("qw", np.zeros((1, 4, 64), np.float32)), SC.INVALID_ARGUMENT,
                 "hidden size 112, got 64")
    expect_error(lambda: _call("qw", np.zeros((1, 49, 112), np.float32)), SC.INVALID_ARGUMENT,
                 "seq 49 exceeds max_position_embeddings 48")
    x = _x(cfg, 2, 5, seed=1)
    r = _call("qw", x, use_cache=True)
    past = _presents(r)  # 2 layers, [2, 2, 5, 8]
    expect_error(lambda: _call("qw", x[:, :1], past=past[:1]), SC.INVALID_ARGUMENT,
                 "2 past_key_values entries", "got 1")
    bad = [past[0], (past[1][0], past[1][1][:, :, :4])]
    expect_error(lambda: _call("qw", x[:, :1], past=bad), SC.INVALID_ARGUMENT,
                 "past_key_values[1].value_shape (layer 1) is [2,2,4,8], expected [2,2,5,8]")
    bad = [(np.repeat(past[0][0], 7, axis=1), past[0][1]), past[1]]  # 14 heads, not 2 kv heads
    expect_error(lambda: _call("qw", x[:, :1], past=bad), SC.INVALID_ARGUMENT,
                 "past_key_values[0].key_shape (layer 0) is [2,14,5,8], expected [2,2,past_len,8]")
    _call("qw", np.zeros((1, 47, 112), np.float32), session="full")
    expect_error(lambda: _call("qw", np.zeros((1, 2, 112), np.float32), session="full"),
                 SC.INVALID_ARGUMENT, "past_len 47 + seq 2 exceeds max_position_embeddings 48")
    assert_alive(C)


_refused = sslib.model_refused


def test_startup_refusals():
    cfg = CFGS["ll"]
    w, c, _ = PATHS["ll"]
    _, c2, _ = llama_ref.write_checkpoint(TMP, "gpt", cfg, seed=1,
                                          config_override={"model_type": "gpt_neox"})
    _refused("x=llama,weights=%s,config=%s" % (w, c2), "model_type 'gpt_neox'",
             "llama, qwen2, mistral, gemma")
    _, c3, _ = llama_ref.write_checkpoint(TMP, "yarn", cfg, seed=1, config_override={
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    _refused("x=llama,weights=%s,config=%s" % (w, c3), "rope_scaling type 'yarn'", "llama3")
    w4, c4, _ = llama_ref.write_checkpoint(
        TMP, "miss", cfg, seed=1, skip=("layers.2.mlp.up_proj.weight", "layers.1.self_attn.q_proj.bias"))
    _refused("x=llama,weights=%s,config=%s,layers=1:3" % (w4, c4), "2 tensors", "missing",
             "model.layers.2.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.bias")
    _refused("x=llama,weights=%s,config=%s,layers=2:4" % (w, c), "layers 2:4 outside 0:3")
    _refused("x=llama,weights=%s,config=%s,lora_rank=4,lora_targets=q_proj,x_proj" % (w, c),
             "unknown module 'x_proj'")
    _refused("x=llama,weights=%s" % os.path.join(TMP, "nope"), "nope")


def test_fifo_files_refused():
    """config.json, model.safetensors.index.json and adapter_config.json as FIFOs: refused at
    once at start-up, naming the file ("is a FIFO, not a regular file"), and on a --config
    reload the worker does not block on one: the reload is refused, the other models serve."""
    cfg = CFGS["ll"]
    w, c, _ = PATHS["ll"]
    d = os.path.join(TMP, "fifo-dir")
    os.makedirs(d)
    shutil.copy(w, os.path.join(d, "model.safetensors"))
    os.mkfifo(os.path.join(d, "config.json"))
    _refused("x=llama,weights=%s" % d, os.path.join(d, "config.json"), "FIFO, not a regular file")
    idx = os.path.join(TMP, "fifo-idx")
    os.makedirs(idx)
    shutil.copy(c, os.path.join(idx, "config.json"))
    os.mkfifo(os.path.join(idx, "model.safetensors.index.json"))
    _refused("x=llama,weights=%s" % idx, "model.safetensors.index.json", "FIFO, not a regular file")
    ad = os.path.join(TMP, "fifo-adapter")
    os.makedirs(ad)
    os.mkfifo(os.path.join(ad, "adapter_config.json"))
    _refused("x=llama,weights=%s,config=%s,adapter=%s" % (w, c, ad), "adapter_config.json",
             "FIFO, not a regular file")
    # on reload (SIGHUP with --config): refused, the old models keep serving
    conf = os.path.join(TMP, "fifo.yaml")
    with open(conf, "w") as f:
        f.write("models:\n  - id: a\n    kind: identity\n")
    srv = sslib.Server("--config", conf, "--workers", "1")
    c2 = sslib.connect(srv)
    try:
        with open(conf, "w") as f:
            f.write("models:\n  - id: a\n    kind: identity\n  - id: l\n    kind: llama\n"
                    "    weights: %s\n" % d)
        srv.signal(signal.SIGHUP)
        assert srv.wait_for_line(r"config reload of .* refused: .*FIFO, not a regular file",
                                 T(10)), sslib.tail(srv.log)
        x = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(result(c2.compute(make_req(x, model="a"), timeout=T(5))), x)
    finally:
        c2.close()
        srv.stop_ok()


def test_lora_alpha_refused():
    """lora_alpha that would make every output NaN or that was silently replaced: 1e39 (finite
    as a double, infinite as a float) in the spec; 1e300, -8, 0 and the string "8" in
    adapter_config.json. Each is refused at start-up naming lora_alpha and the value."""
    w, c, _ = PATHS["ll"]
    _refused("x=llama,weights=%s,config=%s,lora_rank=4,lora_alpha=1e39" % (w, c), "lora_alpha",
             "1e39")
    for i, (alpha, shown) in enumerate(((1e300, "1e+300"), (-8, "-8"), (0, "0"),
                                        ("8", 'string "8"'))):
        ad = os.path.join(TMP, "alpha%d" % i)
        os.makedirs(ad)
        shutil.copy(os.path.join(TMP, "adapter0", "adapter_model.safetensors"), ad)
        with open(os.path.join(ad, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": alpha,
                       "target_modules": ["q_proj", "v_proj", "down_proj"]}, f)
        _refused("x=llama,weights=%s,config=%s,layers=1:3,adapter=%s" % (w, c, ad),
                 "lora_alpha", shown)


# ------------------------------------------------------------------ training ----

def _play(model, cfg, lr, n, seed, c=None, shape=(2, 6)):
    """n rounds of (training forward, ComputeBackward): trunk_checks.Checks.play on this suite's
    connection."""
    return trunk_checks.Checks(C, TOL).play(model, cfg, lr, n, seed, shape=shape, c=c)


def _checkpoint(ids, srv=None):
    (srv or S).checkpoint(ids)


def test_train_full_and_resume():
    """3 AdamW steps vs torch (grad_input, weights); then a server restarted from the checkpoint
    (weights + optimizer state) takes 3 more steps == torch's 6 uninterrupted steps."""
    for tid, case in TRAIN.items():
        if "adapters" in case:
            continue
        cfg = CFGS[case["src"]]
        a, b = case["layers"]
        gins, xs, grads = _play(tid, cfg, case["lr"], 3, seed=11)
        rg, rw = llama_ref.train_full(cfg, PATHS[case["src"]][2], a, b, xs, grads, case["optim"],
                                      case["lr"])
        for i, (got, want) in enumerate(zip(gins, rg)):
            e = train_ref.rel_err(got, want)
            assert e < TOL, "%s call %d: grad_input rel err %.3g" % (tid, i, e)
        case.update(xs=xs, grads=grads)
    _checkpoint([t for t in TRAIN if "adapters" not in TRAIN[t]])
    for tid, case in TRAIN.items():
        if "adapters" in case:
            continue
        cfg = CFGS[case["src"]]
        a, b = case["layers"]
        _, rw = llama_ref.train_full(cfg, PATHS[case["src"]][2], a, b, case["xs"], case["grads"],
                                     case["optim"], case["lr"])
        prefix = LAYOUT[case["src"]][1]
        got = train_ref.read_safetensors(case["ckpt"])
        assert float(got["optimizer.step"][0]) == 3.0
        for k, v in rw.items():
            e = train_ref.rel_err(got[prefix + k], v)
            assert e < TOL, "%s %s after 3 steps: rel err %.3g" % (tid, k, e)
            assert ("optimizer.exp_avg." + prefix + k) in got
        # restart from the checkpoint, 3 more steps
        s2 = sslib.Server("--workers", "1", "--model",
                          "r=llama,weights=%s,config=%s,layers=%d:%d%s,save=%s"
                          % ((case["ckpt"], PATHS[case["src"]][1]) + case["layers"]
                             + (train_ref.spec_keys(case["optim"]), case["ckpt"] + ".2")))
        c2 = sslib.connect(s2)
        try:
            gins2, xs2, grads2 = _play("r", cfg, case["lr"], 3, seed=12, c=c2)
            s2.signal(signal.SIGUSR1)
            assert s2.wait_for_line(r"checkpoint \(SIGUSR1\): model 'r' written", 30)
        finally:
            c2.close()
            s2.stop_ok()
        rg6, rw6 = llama_ref.train_full(cfg, PATHS[case["src"]][2], a, b,
                                        case["xs"] + xs2, case["grads"] + grads2, case["optim"],
                                        case["lr"])
        for i, (got_g, want) in enumerate(zip(gins2, rg6[3:])):
            e = train_ref.rel_err(got_g, want)
            assert e < TOL, "%s resumed call %d: grad_input rel err %.3g" % (tid, i, e)
        got = train_ref.read_safetensors(case["ckpt"] + ".2")
        assert float(got["optimizer.step"][0]) == 6.0
        for k, v in rw6.items():
            e = train_ref.rel_err(got[prefix + k], v)
            assert e < TOL, "%s %s after 3 + 3 steps: rel err %.3g" % (tid, k, e)


def test_lora():
    """Adapters (from adapter=DIR, B != 0) after 3 AdamW steps vs a PyTorch LoRA; the saved PEFT
    directory reloads into a new server that gives the trained outputs; a fresh adapter starts as
    PEFT's (B = 0, A within 1/sqrt(in)) and does not change the output."""
    case = TRAIN["lo"]
    cfg = CFGS["ll"]
    stored = PATHS["ll"][2]
    gins, xs, grads = _play("lo", cfg, case["lr"], 3, seed=21)
    rg, rw = llama_ref.train_lora(cfg, stored, 1, 3, case["adapters"], case["scale"], xs, grads,
                                  case["optim"], case["lr"])
    for i, (got, want) in enumerate(zip(gins, rg)):
        e = train_ref.rel_err(got, want)
        assert e < TOL, "lo call %d: grad_input rel err %.3g" % (i, e)
    _checkpoint(["lo", "lf"])
    out = case["ckpt"]
    got = train_ref.read_safetensors(os.path.join(out, "adapter_model.safetensors"))
    assert set(got) == set(rw), sorted(set(got) ^ set(rw))
    for k, v in rw.items():
        e = train_ref.rel_err(got[k], v)
        assert e < TOL, "lo %s after 3 steps: rel err %.3g" % (k, e)
    opt = train_ref.read_safetensors(os.path.join(out, "optimizer.safetensors"))
    assert float(opt["optimizer.step"][0]) == 3.0
    with open(os.path.join(out, "adapter_config.json")) as f:
        ac = json.load(f)
    assert ac["r"] == 4 and ac["lora_alpha"] == 8.0 and ac["peft_type"] == "LORA", ac
    assert sorted(ac["target_modules"]) == ["down_proj", "q_proj", "v_proj"], ac
    # the trained weights of the base never moved: the trunk is frozen
    x = _x(cfg, 1, 7, seed=3)
    trained = {}
    for layer in (1, 2):
        trained[layer] = {}
        for short in ("q_proj", "v_proj", "down_proj"):
            base = "base_model.model.model.layers.%d.%s" % (layer, llama_ref.PROJ[short])
            trained[layer][short] = (got[base + ".lora_A.weight"], got[base + ".lora_B.weight"])
    want, _ = llama_ref.Trunk(cfg, stored, 1, 3, trained, case["scale"])(x)
    _close(result(_call("lo", x)).reshape(want.shape), want, "lo after training")
    w, c, _ = PATHS["ll"]
    s2 = sslib.Server("--workers", "1", "--model",
                      "re=llama,weights=%s,config=%s,layers=1:3,adapter=%s" % (w, c, out))
    c2 = sslib.connect(s2)
    try:
        _close(result(_call("re", x, c=c2)).reshape(want.shape), want, "adapter reloaded")
    finally:
        c2.close()
        s2.stop_ok()
    # fresh adapter
    fresh = train_ref.read_safetensors(os.path.join(TMP, "lf.out", "adapter_model.safetensors"))
    assert len(fresh) == 2 * 2 * 3, sorted(fresh)
    for k, v in fresh.items():
        if ".lora_B." in k:
            assert not np.any(v), k
        else:
            bound = 1.0 / np.sqrt(v.shape[1])
            assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.5 * bound, k
    base, _ = MODELS["ll"][0](x)
    _close(result(_call("lf", x)).reshape(base.shape), base, "fresh adapter == base")

def test_checkpoint_never_follows_tmp_link():
    """A symbolic link planted at PATH.tmp (a weights checkpoint, the LoRA
    adapter_config.json.tmp) is never written through: its target stays as it was, and the
    checkpoint is written whole at PATH."""
    ckpt = TRAIN["tqw"]["ckpt"]
    ad_cfg = os.path.join(TRAIN["lo"]["ckpt"], "adapter_config.json")
    os.makedirs(TRAIN["lo"]["ckpt"], exist_ok=True)
    victims = []
    for i, path in enumerate((ckpt, ad_cfg, os.path.join(TRAIN["lo"]["ckpt"],
                                                         "adapter_model.safetensors"))):
        victim = os.path.join(TMP, "victim%d" % i)
        with open(victim, "w") as f:
            f.write("precious %d\n" % i)
        if os.path.lexists(path + ".tmp"):
            os.unlink(path + ".tmp")
        os.symlink(victim, path + ".tmp")
        victims.append((victim, "precious %d\n" % i))
    _checkpoint(["tqw", "lo"])
    for victim, text in victims:
        with open(victim) as f:
            assert f.read() == text, victim + " was written through the link"
    assert not os.path.islink(ckpt) and not os.path.islink(ad_cfg)
    assert train_ref.read_safetensors(ckpt), ckpt
    with open(ad_cfg) as f:
        assert json.load(f)["peft_type"] == "LORA"


if __name__ == "__main__":
    sslib.main(globals())
