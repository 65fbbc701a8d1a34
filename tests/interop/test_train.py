"""Split training against PyTorch autograd (tests/interop/train_ref.py): a client plays the
split-learning protocol (Compute with training_mode=true, then ComputeBackward with the gradient
of the trunk's output and a learning_rate), and the server's grad_input and its weights after 3
optimizer steps (read from a save=PATH checkpoint written on SIGUSR1) match torch within 1e-4
relative, for the mlp (relu, gelu) and a 2-layer GPT-2 trunk, SGD and AdamW, accumulation_step 1
and 2. Then: the checkpoint reloads into a server that computes with the trained weights, the
original weights file is untouched (copy on first write), and the refusals (grad shape, second
backward, learning_rate <= 0 or NaN, a model kind with no backward)."""
import os
import shutil
import signal
import tempfile

import numpy as np

import gpt2_ref
import sslib
import train_ref
from sslib import SC, T, make_req, result, expect_error

TOL = 1e-4
STEPS = 3
TMP = None
S = None
C = None
CFG = gpt2_ref.Config(n_embd=32, n_head=4, n_layer=3, n_positions=16)
LAYERS = (1, 3)
MLP_WIDTHS = [24, 40, 32, 16]
CASES = []  # dicts: id, kind, optim, acc, lr, activation, ckpt, and what the reference needs
RESULTS = {}  # model id -> (server grad_inputs, reference grad_inputs, reference weights)
SRC = {}  # weights path -> bytes at start (copy on write leaves them untouched)


def setup():
    global TMP, S, C
    TMP = tempfile.mkdtemp(prefix="ss-train-")
    mlp_t = sslib.random_mlp(MLP_WIDTHS, seed=11)
    mlp_path = os.path.join(TMP, "mlp.safetensors")
    mlp_stored = sslib.write_safetensors(mlp_path, {"net." + k: v for k, v in mlp_t.items()})
    gpath, cpath, gstored = gpt2_ref.write_checkpoint(TMP, "gpt2", CFG, seed=5,
                                                      prefix="transformer.")
    for path in (mlp_path, gpath):
        with open(path, "rb") as f:
            SRC[path] = f.read()
    args = ["--workers", "2"]
    for kind in ("sgd", "adamw"):
        opt = train_ref.optim_defaults(kind)
        lr = 0.05 if kind == "sgd" else 2e-3
        for acc in (1, 2):
            for model, act in (("mlp", "relu"), ("mlp", "gelu"), ("gpt2", None)):
                mid = "%s_%s_%s_a%d" % (model, act or "trunk", kind, acc)
                ckpt = os.path.join(TMP, mid + ".ckpt.safetensors")
                if model == "mlp":
                    spec = "%s=mlp,weights=%s,activation=%s" % (mid, mlp_path, act)
                else:
                    spec = "%s=gpt2,weights=%s,config=%s,layers=%d:%d" % ((mid, gpath, cpath)
                                                                           + LAYERS)
                spec += train_ref.spec_keys(opt) + ",save=" + ckpt
                args += ["--model", spec]
                CASES.append(dict(id=mid, model=model, act=act, optim=opt, acc=acc, lr=lr,
                                  ckpt=ckpt, stored=mlp_stored if model == "mlp" else gstored,
                                  weights=mlp_path if model == "mlp" else gpath, config=cpath))
    args += ["--model", "plain=scale"]
    S = sslib.Server(*args)
    C = sslib.connect(S)


def teardown():
    C.close()
    S.stop_ok()
    shutil.rmtree(TMP, ignore_errors=True)


def _backward(grad, forward_id, model, lr=None, acc=None, timeout=20):
    g = np.ascontiguousarray(grad, np.float32)
    req = sslib.pb.BackwardRequest(grad_output_data=g.tobytes(), forward_id=forward_id,
                                   model_id=model)
    req.grad_output_shape.extend(g.shape)
    if lr is not None:
        req.learning_rate = lr
    if acc is not None:
        req.accumulation_step = acc
    return C.backward(req, timeout=T(timeout))


def _train_forward(x, model, forward_id):
    req = make_req(x, model=model)
    req.training_mode = True
    req.forward_id = forward_id
    return C.compute(req, timeout=T(20))


def _play(case, seed):
    """The client's side: 3 x acc forward/backward calls. Returns the server's grad_inputs and
    the (xs, grads) it sent."""
    g = sslib.rng(seed)
    shape_in = (2, 5, MLP_WIDTHS[0]) if case["model"] == "mlp" else (2, 6, CFG.n_embd)
    shape_out = (2, 5, MLP_WIDTHS[-1]) if case["model"] == "mlp" else shape_in
    xs, grads, gins = [], [], []
    for i in range(STEPS * case["acc"]):
        x = g.standard_normal(shape_in).astype(np.float32)
        r = g.standard_normal(shape_out).astype(np.float32)
        fid = "%s-%d" % (case["id"], i)
        resp = _train_forward(x, case["id"], fid)
        assert resp.forward_id == fid, (resp.forward_id, fid)
        assert tuple(resp.shape) == shape_out, resp.shape
        b = _backward(r, fid, case["id"], lr=case["lr"], acc=case["acc"])
        assert tuple(b.grad_input_shape) == shape_in, b.grad_input_shape
        gins.append(np.frombuffer(b.grad_input_data, np.float32).reshape(shape_in))
        xs.append(x)
        grads.append(r)
    return gins, xs, grads


def test_train_all():
    """Every case: the protocol against the server, the same against torch."""
    for n, case in enumerate(CASES):
        gins, xs, grads = _play(case, seed=100 + n)
        case["played"] = (xs, grads)
        if case["model"] == "mlp":
            rg, rw = train_ref.train_mlp(case["stored"], xs, grads, case["optim"], case["lr"],
                                         case["acc"], case["act"], prefix="net.")
        else:
            rg, rw = train_ref.train_gpt2(CFG, case["stored"], LAYERS[0], LAYERS[1], xs, grads,
                                          case["optim"], case["lr"], case["acc"])
            rw = {"transformer." + k: v for k, v in rw.items()}
        RESULTS[case["id"]] = (gins, rg, rw)
        for i, (got, want) in enumerate(zip(gins, rg)):
            e = train_ref.rel_err(got, want)
            assert e < TOL, "%s call %d: grad_input rel err %.3g" % (case["id"], i, e)


def test_checkpoints_match_torch():
    """SIGUSR1 writes every model's checkpoint; the weights after 3 steps match torch."""
    assert RESULTS, "test_train_all did not run"
    S.signal(signal.SIGUSR1)
    for case in CASES:
        line = S.wait_for_line(r"checkpoint \(SIGUSR1\): model '%s' written" % case["id"], 20)
        assert line, "no checkpoint line for %s:\n%s" % (case["id"], sslib.tail(S.log))
    for case in CASES:
        got = train_ref.read_safetensors(case["ckpt"])
        _, _, rw = RESULTS[case["id"]]
        opt = {k: v for k, v in got.items() if k.startswith("optimizer.")}
        got = {k: v for k, v in got.items() if not k.startswith("optimizer.")}
        assert set(got) == set(rw), (case["id"], sorted(set(got) ^ set(rw)))
        assert float(opt["optimizer.step"][0]) == STEPS, sorted(opt)
        if case["optim"]["kind"] == "adamw":  # the moments of every parameter travel along
            assert set(opt) == {"optimizer.step"} | {"optimizer.%s.%s" % (m, k) for k in rw
                                                     for m in ("exp_avg", "exp_avg_sq")}
        for k in rw:
            e = train_ref.rel_err(got[k], rw[k])
            assert e < TOL, "%s %s after %d steps: rel err %.3g" % (case["id"], k, STEPS, e)
            moved = float(np.max(np.abs(rw[k] - case["stored"][k[len("transformer."):]
                                                                if case["model"] == "gpt2"
                                                                else k])))
            assert moved > 0, "%s %s did not move" % (case["id"], k)
        assert not os.path.exists(case["ckpt"] + ".tmp")


def test_sources_untouched():
    for path, data in SRC.items():
        with open(path, "rb") as f:
            assert f.read() == data, "%s changed (copy on first write broken)" % path


def test_reload_continues():
    """A server started from a checkpoint computes with the trained weights."""
    case = next(c for c in CASES if c["model"] == "gpt2" and c["optim"]["kind"] == "adamw")
    case_m = next(c for c in CASES if c["model"] == "mlp" and c["act"] == "gelu")
    s2 = sslib.Server("--workers", "1",
                      "--model", "g=gpt2,weights=%s,config=%s,layers=%d:%d"
                      % ((case["ckpt"], case["config"]) + LAYERS),
                      "--model", "m=mlp,weights=%s,activation=gelu" % case_m["ckpt"])
    c2 = sslib.connect(s2)
    try:
        x = sslib.rng(3).standard_normal((1, 4, CFG.n_embd)).astype(np.float32)
        trained = {k[len("transformer."):]: v.astype(np.float32)
                   for k, v in RESULTS[case["id"]][2].items()}
        want, _ = gpt2_ref.Trunk(CFG, trained, *LAYERS)(x)
        got = result(c2.compute(make_req(x, model="g"), timeout=T(10)))
        assert train_ref.rel_err(got, want) < TOL
        xm = sslib.rng(4).standard_normal((3, MLP_WIDTHS[0])).astype(np.float32)
        wm = {k[len("net."):]: v.astype(np.float32) for k, v in RESULTS[case_m["id"]][2].items()}
        wantm = sslib.mlp_reference(xm, wm, "gelu")
        gotm = result(c2.compute(make_req(xm, model="m"), timeout=T(10)))
        assert train_ref.rel_err(gotm, wantm) < TOL
    finally:
        c2.close()
        s2.stop_ok()


def test_resume_optimizer_state():
    """The checkpoint carries the optimizer state: a server restarted from it (AdamW, after 3
    steps) takes 3 more steps == torch's 6 uninterrupted steps, for mlp and gpt2 (the llama kind
    is checked in test_llama.py)."""
    assert RESULTS, "test_train_all did not run"
    for model in ("mlp", "gpt2"):
        case = next(c for c in CASES if c["model"] == model and c["optim"]["kind"] == "adamw"
                    and c["acc"] == 1)
        assert os.path.exists(case["ckpt"])
        ckpt2 = case["ckpt"] + ".resumed"
        if model == "mlp":
            spec = "r=mlp,weights=%s,activation=%s" % (case["ckpt"], case["act"])
        else:
            spec = "r=gpt2,weights=%s,config=%s,layers=%d:%d" % ((case["ckpt"], case["config"])
                                                                  + LAYERS)
        s2 = sslib.Server("--workers", "1", "--model",
                          spec + train_ref.spec_keys(case["optim"]) + ",save=" + ckpt2)
        c2 = sslib.connect(s2)
        global C
        c_saved, C = C, c2
        try:
            gins, xs, grads = _play(dict(case, id="r"), seed=600)
            s2.signal(signal.SIGUSR1)
            assert s2.wait_for_line(r"checkpoint \(SIGUSR1\): model 'r' written", 20)
        finally:
            C = c_saved
            c2.close()
            s2.stop_ok()
        xs_all, grads_all = case["played"][0] + xs, case["played"][1] + grads
        if model == "mlp":
            rg, rw = train_ref.train_mlp(case["stored"], xs_all, grads_all, case["optim"],
                                         case["lr"], 1, case["act"], prefix="net.")
        else:
            rg, rw = train_ref.train_gpt2(CFG, case["stored"], LAYERS[0], LAYERS[1], xs_all,
                                          grads_all, case["optim"], case["lr"], 1)
            rw = {"transformer." + k: v for k, v in rw.items()}
        for i, (got, want) in enumerate(zip(gins, rg[STEPS:])):
            e = train_ref.rel_err(got, want)
            assert e < TOL, "%s resumed call %d: grad_input rel err %.3g" % (model, i, e)
        got = train_ref.read_safetensors(ckpt2)
        assert float(got["optimizer.step"][0]) == 2 * STEPS
        for k in rw:
            e = train_ref.rel_err(got[k], rw[k])
            assert e < TOL, "%s %s after %d + %d steps: rel err %.3g" % (model, k, STEPS, STEPS, e)


def test_refusals():
    case = CASES[0]
    x = np.ones((1, 2, MLP_WIDTHS[0]), np.float32)
    _train_forward(x, case["id"], "bad-1")
    expect_error(lambda: _backward(np.ones((1, 3, MLP_WIDTHS[-1])), "bad-1", case["id"]),
                 SC.INVALID_ARGUMENT, "grad")
    _train_forward(x, case["id"], "bad-2")
    for lr in (0.0, -1.0, float("nan")):
        expect_error(lambda: _backward(np.ones((1, 2, MLP_WIDTHS[-1])), "bad-2", case["id"],
                                       lr=lr), SC.INVALID_ARGUMENT, "learning_rate")
    _backward(np.zeros((1, 2, MLP_WIDTHS[-1])), "bad-2", case["id"])  # no lr: no step
    expect_error(lambda: _backward(np.zeros((1, 2, MLP_WIDTHS[-1])), "bad-2", case["id"]),
                 SC.NOT_FOUND, "bad-2")
    expect_error(lambda: _train_forward(x, "plain", "bad-3"), SC.UNIMPLEMENTED, "plain")
    sslib.assert_alive(C)

def test_zero_rows():
    """A training forward and its backward with 0 rows: the mlp answers empty tensors (it handed
    a NULL pointer to memcpy: the sanitizer build aborted), a GPT-2 trunk refuses batch 0."""
    case = CASES[0]
    shape_in, shape_out = (0, 5, MLP_WIDTHS[0]), (0, 5, MLP_WIDTHS[-1])
    resp = _train_forward(np.zeros(shape_in, np.float32), case["id"], "zero-rows")
    assert tuple(resp.shape) == shape_out and resp.data == b"", (resp.shape, len(resp.data))
    b = _backward(np.zeros(shape_out, np.float32), "zero-rows", case["id"])
    assert tuple(b.grad_input_shape) == shape_in and b.grad_input_data == b"", b.grad_input_shape
    g = [c for c in CASES if c["model"] == "gpt2"][0]
    expect_error(lambda: _train_forward(np.zeros((0, 6, CFG.n_embd), np.float32), g["id"],
                                        "zero-rows-g"), SC.INVALID_ARGUMENT, "batch >= 1")
    sslib.assert_alive(C)
    assert S.alive()


if __name__ == "__main__":
    sslib.main(globals())
