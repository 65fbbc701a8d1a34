"""How tensors travel when the request says nothing: model keys wire_dtype / wire_codec and the
server flags --wire-dtype / --wire-codec.

The Python client's own codecs send no metadata: TensorCodec(dtype=np.float16) sends
`array.astype(np.float16).tobytes()` and CompressedTensorCodec sends `zlib.compress(raw bytes)`,
and both decode the reply the same way. These tests encode exactly like that (the client library
itself is not packaged in Debian), check the reply decodes the same way, that the gradients of a
training forward travel in the forward's encoding, and that a zip bomb costs nothing."""
import os
import shutil
import tempfile
import zlib

import numpy as np

import llama_ref
import sslib
from sslib import SC, T, make_req, result, expect_error

S = None
C = None
TMP = None
LLAMA = llama_ref.Config("qwen2", hidden=64, heads=4, kv_heads=2, intermediate=96, n_layer=2,
                         max_pos=32)


def setup():
    global S, C, TMP
    TMP = tempfile.mkdtemp(prefix="ss-codecs-")
    w, c, _ = llama_ref.write_checkpoint(TMP, "q", LLAMA, seed=2)
    S = sslib.Server("--workers", "1", "--max-message-bytes", str(8 << 20),
                     "--model", "mlp=mlp",
                     "--model", "m16=mlp,wire_dtype=float16",
                     "--model", "mz=mlp,wire_codec=zlib",
                     "--model", "mz16=mlp,wire_dtype=float16,wire_codec=zlib",
                     "--model", "qz=llama,weights=%s,config=%s,wire_codec=zlib" % (w, c))
    C = sslib.connect(S)


def teardown():
    sslib.shutdown(C, S)
    shutil.rmtree(TMP, ignore_errors=True)


def _raw(x, shape, model, **meta):
    return sslib.pb.ComputeRequest(data=x, shape=list(shape), model_id=model, metadata=meta)


def _ref(x):
    return result(C.compute(make_req(x, model="mlp"), timeout=T(10)))


X = np.random.default_rng(0).standard_normal((1, 10, 768)).astype(np.float32)


def test_float16_codec_without_metadata():
    r = C.compute(_raw(X.astype(np.float16).tobytes(), X.shape, "m16"), timeout=T(10))
    got = np.frombuffer(r.data, np.float16).reshape(r.shape).astype(np.float32)
    ref = result(C.compute(make_req(X, model="mlp", dtype="float16"), timeout=T(10)), "float16")
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_zlib_codec_without_metadata():
    r = C.compute(_raw(zlib.compress(X.tobytes(), 6), X.shape, "mz"), timeout=T(10))
    got = np.frombuffer(zlib.decompress(r.data), np.float32).reshape(r.shape)
    np.testing.assert_allclose(got, _ref(X), rtol=1e-5, atol=1e-5)


def test_zlib_float16_together():
    r = C.compute(_raw(zlib.compress(X.astype(np.float16).tobytes()), X.shape, "mz16"), timeout=T(10))
    got = np.frombuffer(zlib.decompress(r.data), np.float16).reshape(r.shape).astype(np.float32)
    np.testing.assert_allclose(got, _ref(X.astype(np.float16).astype(np.float32)), rtol=3e-3, atol=3e-3)


def test_metadata_still_wins():
    r = C.compute(_raw(X.tobytes(), X.shape, "m16", dtype="float32"), timeout=T(10))
    np.testing.assert_allclose(result(r), _ref(X), rtol=1e-5, atol=1e-5)
    r = C.compute(_raw(X.tobytes(), X.shape, "mz", codec="none"), timeout=T(10))
    np.testing.assert_allclose(result(r), _ref(X), rtol=1e-5, atol=1e-5)
    r = C.compute(_raw(zlib.compress(X.tobytes()), X.shape, "mlp", codec="zlib"), timeout=T(10))
    np.testing.assert_allclose(np.frombuffer(zlib.decompress(r.data), np.float32).reshape(r.shape),
                               _ref(X), rtol=1e-5, atol=1e-5)


def test_bad_payloads():
    # Without the model key, the float16 codec's bytes are half of what float32 needs: a clear error.
    expect_error(lambda: C.compute(_raw(X.astype(np.float16).tobytes(), X.shape, "mlp"), timeout=T(5)),
                 SC.INVALID_ARGUMENT, "15360 bytes", "30720")
    expect_error(lambda: C.compute(_raw(b"not zlib at all", X.shape, "mz"), timeout=T(5)),
                 SC.INVALID_ARGUMENT, "zlib")
    short = zlib.compress(X[:, :5].tobytes())
    expect_error(lambda: C.compute(_raw(short, X.shape, "mz"), timeout=T(5)),
                 SC.INVALID_ARGUMENT, "inflates to 15360 bytes", "30720")
    expect_error(lambda: C.compute(_raw(zlib.compress(X.tobytes()), X.shape, "mz", codec="gzip"),
                                   timeout=T(5)), SC.INVALID_ARGUMENT, "codec")
    sslib.assert_alive(C)


def test_empty_zlib_payload_is_refused():
    """An empty (or too short) data field under the zlib codec once crashed the server (a NULL
    view read by the model): every way of asking for zlib gets INVALID_ARGUMENT instead."""
    cases = [(_raw(b"", X.shape, "mlp", codec="zlib"), "metadata codec"),
             (_raw(b"", X.shape, "mz"), "model key wire_codec"),
             (_raw(b"x\x9c", X.shape, "mz"), "two bytes"),
             (_raw(b"", (1, 3, 64), "qz"), "llama"),
             (_raw(b"", (1, 3, 64), "qz", session="s-empty"), "llama session")]
    tr = _raw(b"", X.shape, "mz")
    tr.training_mode = True
    cases.append((tr, "training forward"))
    for req, what in cases:
        expect_error(lambda: C.compute(req, timeout=T(10)), SC.INVALID_ARGUMENT,
                     "too few for a zlib stream")
        sslib.assert_alive(C)
    # a backward of a zlib forward with no gradient data; the record stays for a corrected retry
    x = X[0, :4][None]
    rz = C.compute(sslib.pb.ComputeRequest(data=zlib.compress(x.tobytes()), shape=list(x.shape),
                                           model_id="mz", training_mode=True), timeout=T(10))
    shape = list(rz.shape)
    expect_error(lambda: C.backward(sslib.pb.BackwardRequest(
        grad_output_data=b"", grad_output_shape=shape, forward_id=rz.forward_id), timeout=T(10)),
        SC.INVALID_ARGUMENT, "grad_output_data has 0 bytes", "zlib")
    g = np.ones(shape, np.float32)
    C.backward(sslib.pb.BackwardRequest(grad_output_data=zlib.compress(g.tobytes()),
                                        grad_output_shape=shape, forward_id=rz.forward_id),
               timeout=T(10))
    # the server-wide flag
    srv = sslib.Server("--wire-codec", "zlib", "--model", "mlp=mlp")
    try:
        c = sslib.connect(srv)
        expect_error(lambda: c.compute(_raw(b"", X.shape, "mlp"), timeout=T(10)),
                     SC.INVALID_ARGUMENT, "too few for a zlib stream")
        sslib.assert_alive(c)
        c.close()
    finally:
        srv.stop_ok()


def test_zip_bomb_costs_nothing():
    # 1 GB of zeros compresses to ~1 MB; the shape says what it inflates to, and that is over the
    # message limit: refused before anything is allocated.
    bomb = zlib.compress(b"\0" * (64 << 20), 9)
    rss0 = S.rss_kib()
    expect_error(lambda: C.compute(_raw(bomb, (16, 1024, 1024), "mz"), timeout=T(10)),
                 SC.RESOURCE_EXHAUSTED, "inflates to", "--max-message-bytes")
    # A bomb whose shape is small: inflation stops at the size the shape gives.
    expect_error(lambda: C.compute(_raw(bomb, (1, 10, 768), "mz"), timeout=T(10)),
                 SC.INVALID_ARGUMENT, "more than the 30720 bytes")
    assert S.rss_kib() - rss0 < 32 * 1024, (rss0, S.rss_kib())


def test_training_gradients_travel_like_the_forward():
    x = X[0, :4][None]
    # plain float32 reference on the uncompressed twin model (same embedded weights)
    req = make_req(x, model="mlp")
    req.training_mode = True
    r = C.compute(req, timeout=T(10))
    g = np.random.default_rng(1).standard_normal(result(r).shape).astype(np.float32)
    ref = C.backward(sslib.pb.BackwardRequest(grad_output_data=g.tobytes(), grad_output_shape=list(g.shape),
                                              forward_id=r.forward_id), timeout=T(10))
    ref_gi = np.frombuffer(ref.grad_input_data, np.float32).reshape(ref.grad_input_shape)
    rz = C.compute(sslib.pb.ComputeRequest(data=zlib.compress(x.tobytes()), shape=list(x.shape),
                                           model_id="mz", training_mode=True), timeout=T(10))
    bz = C.backward(sslib.pb.BackwardRequest(grad_output_data=zlib.compress(g.tobytes()),
                                             grad_output_shape=list(g.shape), forward_id=rz.forward_id),
                    timeout=T(10))
    gi = np.frombuffer(zlib.decompress(bz.grad_input_data), np.float32).reshape(bz.grad_input_shape)
    np.testing.assert_allclose(gi, ref_gi, rtol=1e-5, atol=1e-6)


def test_zlib_nan_gradient_keeps_the_record():
    """A zlib gradient with NaN (checked on the worker, once inflated), or a corrupt zlib
    stream, is refused and the forward's record is kept, as without zlib: the corrected retry
    for the same forward_id gets its grad_input (it used to get NOT_FOUND, "already used")."""
    x = X[0, :4][None]
    rz = C.compute(sslib.pb.ComputeRequest(data=zlib.compress(x.tobytes()), shape=list(x.shape),
                                           model_id="mz", training_mode=True), timeout=T(10))
    g = np.random.default_rng(2).standard_normal(list(rz.shape)).astype(np.float32)
    bad = g.copy()
    bad[0, 1, 3] = np.nan
    for payload, want in ((zlib.compress(bad.tobytes()), "nan"),
                          (zlib.compress(g.tobytes())[:-6] + b"garbage", "grad_output_data")):
        expect_error(lambda: C.backward(sslib.pb.BackwardRequest(
            grad_output_data=payload, grad_output_shape=list(g.shape), forward_id=rz.forward_id),
            timeout=T(10)), SC.INVALID_ARGUMENT, want)
    bz = C.backward(sslib.pb.BackwardRequest(grad_output_data=zlib.compress(g.tobytes()),
                                             grad_output_shape=list(g.shape),
                                             forward_id=rz.forward_id), timeout=T(10))
    gi = np.frombuffer(zlib.decompress(bz.grad_input_data), np.float32).reshape(bz.grad_input_shape)
    req = make_req(x, model="mlp")
    req.training_mode = True
    r = C.compute(req, timeout=T(10))
    ref = C.backward(sslib.pb.BackwardRequest(grad_output_data=g.tobytes(),
                                              grad_output_shape=list(g.shape),
                                              forward_id=r.forward_id), timeout=T(10))
    ref_gi = np.frombuffer(ref.grad_input_data, np.float32).reshape(ref.grad_input_shape)
    np.testing.assert_allclose(gi, ref_gi, rtol=1e-5, atol=1e-6)
    expect_error(lambda: C.backward(sslib.pb.BackwardRequest(
        grad_output_data=zlib.compress(g.tobytes()), grad_output_shape=list(g.shape),
        forward_id=rz.forward_id), timeout=T(10)), SC.NOT_FOUND, "already used")


def test_server_wide_flags():
    srv = sslib.Server("--wire-dtype", "float16", "--wire-codec", "zlib", "--model", "mlp=mlp")
    try:
        c = sslib.connect(srv)
        r = c.compute(_raw(zlib.compress(X.astype(np.float16).tobytes()), X.shape, "mlp"), timeout=T(10))
        got = np.frombuffer(zlib.decompress(r.data), np.float16).reshape(r.shape)
        assert got.shape == X.shape
        c.close()
    finally:
        srv.stop_ok()
    rc, out = sslib.run_cli("--wire-codec", "gzip")
    assert rc != 0 and "--wire-codec" in out, out


if __name__ == "__main__":
    sslib.main(globals())
