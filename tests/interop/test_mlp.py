"""The mlp model against numpy/torch: weights the test writes as safetensors (F32, F16, BF16
storage, ReLU and GELU), request dtypes, the embedded default 768->768->768 model, and weight
files the server must refuse."""
import os
import shutil
import struct
import tempfile

import grpc
import numpy as np
import torch

import sslib
from sslib import SC, T, make_req, result, expect_error, assert_alive, mlp_reference

TMP = None
S = None
C = None
W = {}  # model id -> (stored weights, activation, widths)


def _torch_state_dict(widths, seed):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    return net, {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def setup():
    global TMP, S, C
    TMP = tempfile.mkdtemp(prefix="ss-mlp-")
    args = []

    # F32, from a real torch.nn.Sequential state_dict.
    net, sd = _torch_state_dict([64, 96, 48, 32], seed=1)
    path = os.path.join(TMP, "torch32.safetensors")
    W["t32"] = (sslib.write_safetensors(path, {k: (v, "F32") for k, v in sd.items()}), "relu", net)
    args += ["--model", "t32=mlp,weights=" + path]

    for mid, storage, widths, seed in (("m32", "F32", [64, 96, 48, 32], 2),
                                       ("m16", "F16", [64, 96, 48, 32], 3),
                                       ("mb16", "BF16", [64, 96, 48, 32], 4),
                                       ("odd", "F32", [37, 200, 17, 130, 3], 5)):
        path = os.path.join(TMP, mid + ".safetensors")
        W[mid] = (sslib.write_safetensors(path, sslib.random_mlp(widths, seed, storage),
                                          metadata={"format": "pt"}), "relu", None)
        args += ["--model", "%s=mlp,weights=%s" % (mid, path)]
    path = os.path.join(TMP, "gelu.safetensors")
    W["gelu"] = (sslib.write_safetensors(path, sslib.random_mlp([64, 80, 32], 6)), "gelu", None)
    args += ["--model", "gelu=mlp,weights=%s,activation=gelu" % path]

    S = sslib.Server("--workers", "2", *args)
    C = sslib.connect(S)


def teardown():
    C.close()
    S.stop_ok()
    shutil.rmtree(TMP, ignore_errors=True)


def _check(model, x, tol=1e-4, dtype=None):
    stored, act, _ = W[model]
    r = C.compute(make_req(x, model=model, dtype=dtype), timeout=T(10))
    got = result(r, dtype or "float32")
    ref = mlp_reference(sslib.rounded(x, dtype) if dtype else x, stored, act)
    assert list(r.shape) == list(ref.shape), (list(r.shape), ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    if dtype == "float16":
        bound = np.abs(ref) * 2.0**-10 + 1e-4
    elif dtype == "bfloat16":
        bound = np.abs(ref) * 2.0**-8 + 1e-4
    else:
        bound = np.full(ref.shape, tol)
    worst = float(np.max(err - bound)) if err.size else 0.0
    assert worst <= 0, "%s %s: max abs err %.3g (max |ref| %.3g)" % (
        model, dtype or "float32", float(err.max()), float(np.abs(ref).max()))
    return got, ref


# ------------------------------------------------------------------------------ numerics ----

def test_f32_weights_match_torch():
    x = sslib.rng(10).standard_normal((3, 5, 64)).astype(np.float32)
    got, ref = _check("t32", x)
    net = W["t32"][2].double()
    with torch.no_grad():
        tref = net(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.max(np.abs(tref - ref)) < 1e-12, "test reference disagrees with torch"
    assert np.max(np.abs(got - tref)) <= 1e-4


def test_f32_weights():
    for shape in ((1, 64), (7, 64), (2, 3, 64), (256, 64)):
        _check("m32", sslib.rng(11).standard_normal(shape).astype(np.float32))


def test_f16_weights():
    _check("m16", sslib.rng(12).standard_normal((4, 6, 64)).astype(np.float32))


def test_bf16_weights():
    _check("mb16", sslib.rng(13).standard_normal((4, 6, 64)).astype(np.float32))


def test_odd_widths_four_layers():
    _check("odd", sslib.rng(14).standard_normal((9, 37)).astype(np.float32))
    _check("odd", sslib.rng(15).standard_normal((1, 1, 37)).astype(np.float32))


def test_gelu_activation():
    """activation=gelu is PyTorch's nn.GELU() (exact erf form)."""
    x = sslib.rng(16).standard_normal((5, 64)).astype(np.float32)
    got, ref = _check("gelu", x)
    # Cross-check the reference against torch.
    stored = W["gelu"][0]
    net = torch.nn.Sequential(torch.nn.Linear(64, 80), torch.nn.GELU(), torch.nn.Linear(80, 32)).double()
    net.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in stored.items()})
    with torch.no_grad():
        tref = net(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.max(np.abs(tref - ref)) < 1e-9


def test_request_float16_and_bfloat16():
    x = sslib.rng(17).standard_normal((3, 4, 64)).astype(np.float32)
    for model in ("m32", "m16", "mb16"):
        _check(model, x, dtype="float16")
        _check(model, x, dtype="bfloat16")


def test_default_model_is_first_given():
    x = sslib.rng(18).standard_normal((2, 64)).astype(np.float32)
    r = C.compute(make_req(x), timeout=T(10))
    ref = mlp_reference(x, W["t32"][0])
    assert np.max(np.abs(result(r) - ref)) <= 1e-4, "empty model_id is not the first --model"


def test_builtins_still_present():
    assert_alive(C)
    r = C.compute(make_req(np.ones((1, 768), np.float32), model="mlp"), timeout=T(10))
    assert list(r.shape) == [1, 768]


def test_wrong_width():
    expect_error(lambda: C.compute(make_req(np.ones((2, 65), np.float32), model="m32"),
                                   timeout=T(5)), SC.INVALID_ARGUMENT, "64", "65")
    expect_error(lambda: C.compute(make_req(np.ones((2, 64), np.float32), model="odd"),
                                   timeout=T(5)), SC.INVALID_ARGUMENT, "37", "64")
    assert_alive(C)


def test_one_dimensional_input():
    x = sslib.rng(19).standard_normal(64).astype(np.float32)
    try:
        r = C.compute(make_req(x, model="m32"), timeout=T(5))
    except grpc.RpcError as e:
        assert e.code() == SC.INVALID_ARGUMENT, e
        print("    1-D input refused: %r" % e.details())
        return
    assert list(r.shape) == [32], "1-D input [64] gave shape %r (torch gives [32])" % list(r.shape)
    assert np.max(np.abs(result(r) - mlp_reference(x, W["m32"][0]))) <= 1e-4


def test_concurrent_requests_do_not_mix():
    xs = [sslib.rng(100 + i).standard_normal((1 + i % 5, 64)).astype(np.float32) for i in range(60)]
    models = ["m32", "m16", "mb16"]
    fs = [C.compute.future(make_req(x, model=models[i % 3], request_id=i), timeout=T(20))
          for i, x in enumerate(xs)]
    for i, (x, f) in enumerate(zip(xs, fs)):
        r = f.result()
        assert r.request_id == i
        ref = mlp_reference(x, W[models[i % 3]][0])
        assert np.max(np.abs(result(r) - ref)) <= 1e-4, "request %d got someone else's answer" % i


# ------------------------------------------------------------------------------ embedded ----

def test_embedded_default_mlp():
    srv = sslib.Server("--workers", "2")
    srv2 = None
    try:
        c = sslib.connect(srv)
        x = sslib.rng(20).standard_normal((1, 10, 768)).astype(np.float32)
        r = c.compute(make_req(x), timeout=T(10))
        y = result(r)
        assert list(r.shape) == [1, 10, 768], list(r.shape)
        assert np.all(np.isfinite(y)), "non-finite output"
        assert np.std(y) > 1e-3 and len(np.unique(y)) > 1000, "output looks constant"
        r2 = c.compute(make_req(x, model="mlp"), timeout=T(10))
        np.testing.assert_array_equal(result(r2), y)  # deterministic
        # Rows are independent: a batch of two gives each row's own answer.
        xx = np.concatenate([x, sslib.rng(21).standard_normal((1, 10, 768)).astype(np.float32)])
        rb = result(c.compute(make_req(xx), timeout=T(10)))
        np.testing.assert_allclose(rb[0], y[0], rtol=0, atol=1e-5)
        # f16 request through the default model.
        r16 = c.compute(make_req(x, dtype="float16"), timeout=T(10))
        assert len(r16.data) == x.size * 2
        y16 = result(r16, "float16")
        assert np.all(np.isfinite(y16))
        assert np.max(np.abs(y16 - y)) < 0.05 * max(1.0, float(np.abs(y).max()))
        c.close()
        # Seeded: another server (another worker count) computes the same function.
        srv2 = sslib.Server("--workers", "1")
        c2 = sslib.connect(srv2)
        y2 = result(c2.compute(make_req(x), timeout=T(10)))
        np.testing.assert_allclose(y2, y, rtol=0, atol=1e-5)
        c2.close()
    finally:
        srv.stop_ok()
        if srv2 is not None:
            srv2.stop_ok()


# ------------------------------------------------------------------------------ refusals ----

def _refused(spec, *any_of):
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--model", spec)
    assert rc != 0, "splitserve --model %s started:\n%s" % (spec, out)
    assert rc > 0, "splitserve --model %s crashed (signal %d):\n%s" % (spec, -rc, out)
    assert "listening on" not in out
    sslib.check_no_sanitizer_report(out)
    if any_of:
        assert any(a.lower() in out.lower() for a in any_of), \
            "refusal of --model %s names none of %r:\n%s" % (spec, any_of, out)


def _write(name, data):
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _header_file(name, header, body):
    h = header.encode()
    h += b" " * ((-len(h)) % 8)
    return _write(name, struct.pack("<Q", len(h)) + h + body)


def test_refuses_bad_weight_files():
    good, _ = sslib.safetensors_bytes(sslib.random_mlp([8, 16, 4], 7))
    missing = os.path.join(TMP, "does-not-exist.safetensors")
    _refused("x=mlp,weights=" + missing, "does-not-exist.safetensors")
    p = _write("truncated.safetensors", good[:-100])
    _refused("x=mlp,weights=" + p, "truncated.safetensors")
    p = _write("tiny.safetensors", b"\x01\x02\x03")
    _refused("x=mlp,weights=" + p, "tiny.safetensors")
    p = _write("hugeheader.safetensors", struct.pack("<Q", 1 << 40) + b"{}      ")
    _refused("x=mlp,weights=" + p, "hugeheader.safetensors")
    p = _header_file("badjson.safetensors", '{"0.weight": {"dtype": "F32", "shape": [2,2]', b"\0" * 16)
    _refused("x=mlp,weights=" + p, "badjson.safetensors")
    p = _header_file("offsets.safetensors",
                     '{"0.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,1600]},'
                     '"0.bias":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}', b"\0" * 24)
    _refused("x=mlp,weights=" + p, "offsets.safetensors", "0.weight")
    p = _header_file("sizemismatch.safetensors",
                     '{"0.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]},'
                     '"0.bias":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}', b"\0" * 20)
    _refused("x=mlp,weights=" + p, "sizemismatch.safetensors", "0.weight")
    p = _header_file("i32.safetensors",
                     '{"0.weight":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},'
                     '"0.bias":{"dtype":"I32","shape":[2],"data_offsets":[16,24]}}', b"\0" * 24)
    _refused("x=mlp,weights=" + p, "i32.safetensors", "I32")
    tensors = sslib.random_mlp([8, 16, 4], 8)
    tensors["2.weight"] = (np.zeros((4, 10), np.float32), "F32")  # 16 -> 4 expected, 10 given
    p = os.path.join(TMP, "chain.safetensors")
    sslib.write_safetensors(p, tensors)
    _refused("x=mlp,weights=" + p, "chain.safetensors", "2.weight")
    tensors = sslib.random_mlp([8, 16, 4], 9)
    tensors["0.bias"] = (np.zeros(15, np.float32), "F32")
    p = os.path.join(TMP, "bias.safetensors")
    sslib.write_safetensors(p, tensors)
    _refused("x=mlp,weights=" + p, "bias.safetensors", "0.bias")
    p = os.path.join(TMP, "ok.safetensors")
    sslib.write_safetensors(p, sslib.random_mlp([8, 16, 4], 10))
    _refused("x=mlp,weights=%s,activation=swish" % p, "swish")
    _refused("x=mlp,weights=%s,nosuchkey=1" % p, "nosuchkey")
    # The good file itself loads.
    srv = sslib.Server("--model", "x=mlp,weights=" + p)
    try:
        c = sslib.connect(srv)
        r = c.compute(make_req(np.ones((1, 8), np.float32)), timeout=T(5))
        assert list(r.shape) == [1, 4]
        c.close()
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
