"""The gpt2 trunk model against an independent PyTorch GPT-2 block (tests/interop/gpt2_ref.py)
with random weights written here in Hugging Face layout (with and without the `transformer.`
prefix, F32 and F16 storage): prefill, decode steps with the client-side cache
(past_key_values / present_key_values), and the refusals (bad hidden width, seq beyond
n_positions, cache entries of the wrong count or shape, bad checkpoints at start-up)."""
import os
import shutil
import time
import tempfile

import numpy as np

import gpt2_ref
import sslib
from sslib import SC, T, make_req, result, expect_error, assert_alive

TOL = 1e-4
TMP = None
S = None
C = None
CFG = gpt2_ref.Config(n_embd=64, n_head=4, n_layer=4, n_positions=48)
MODELS = {}  # model id -> (Trunk reference, a, b)


def setup():
    global TMP, S, C
    TMP = tempfile.mkdtemp(prefix="ss-gpt2-")
    args = []
    weights = gpt2_ref.random_weights(CFG, seed=7)
    for mid, storage, prefix, layers in (("t", "F32", "", (1, 3)),
                                         ("tf16", "F16", "transformer.", (0, 4)),
                                         ("tp", "F32", "transformer.", (2, 4))):
        wpath, cpath, stored = gpt2_ref.write_checkpoint(TMP, mid, CFG, storage=storage,
                                                         prefix=prefix, weights=weights)
        MODELS[mid] = (gpt2_ref.Trunk(CFG, stored, *layers), layers)
        args += ["--model", "%s=gpt2,weights=%s,config=%s,layers=%d:%d" % ((mid, wpath, cpath)
                                                                           + layers)]
        if mid == "tp":  # the same checkpoint sharded (index + 3 shards), weights=DIR
            shard_dir = os.path.join(TMP, "tp.sharded")
            os.makedirs(shard_dir)
            sslib.write_sharded(shard_dir, {prefix + k: (v, "F32") for k, v in stored.items()})
            shutil.copy(cpath, os.path.join(shard_dir, "config.json"))
            args += ["--model", "stp=gpt2,weights=%s,layers=%d:%d" % ((shard_dir,) + layers)]
    S = sslib.Server("--workers", "2", *args)
    C = sslib.connect(S)


def teardown():
    C.close()
    S.stop_ok()
    shutil.rmtree(TMP, ignore_errors=True)


_kv_entries = sslib.kv_entries
_presents = sslib.presents


def _call(model, x, past=None, use_cache=None, **meta):
    req = make_req(x, model=model, **meta)
    if past is not None:
        req.past_key_values.extend(_kv_entries(past))
    if use_cache is not None:
        req.use_cache = use_cache
    return C.compute(req, timeout=T(20))


def _close(got, ref, what, tol=TOL):
    assert got.shape == ref.shape, "%s: shape %s, expected %s" % (what, got.shape, ref.shape)
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    assert err <= tol, "%s: max abs err %.3g > %.1g (max |ref| %.3g)" % (
        what, err, tol, float(np.max(np.abs(ref))))
    return err


def _x(batch, seq, seed):
    return np.random.default_rng(seed).standard_normal((batch, seq, CFG.n_embd)).astype(np.float32)


def test_describe_in_info():
    info = C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5))
    blob = " ".join("%s=%s" % kv for kv in info.custom_info.items())
    assert "gpt2" in blob, blob


def test_prefill():
    worst = 0.0
    for mid, (ref, _) in MODELS.items():
        for batch in (1, 2):
            for seq in (1, 2, 5, 17, 40, CFG.n_positions):
                x = _x(batch, seq, seed=seq * 10 + batch)
                r = _call(mid, x)
                assert len(r.present_key_values) == 0, "no use_cache: no present expected"
                y, _ = ref(x)
                worst = max(worst, _close(result(r).reshape(y.shape), y,
                                          "%s batch %d seq %d" % (mid, batch, seq)))
    print("  prefill max abs err %.3g" % worst)


def test_sharded_checkpoint():
    """weights=DIR of a sharded checkpoint (models/ckpt.c, shared by every trunk) serves exactly
    what the single file does."""
    x = _x(2, 7, seed=5)
    one, sharded = result(_call("tp", x)), result(_call("stp", x))
    assert np.array_equal(one, sharded), float(np.max(np.abs(one - sharded)))


def test_prefill_presents():
    for mid, (ref, (a, b)) in MODELS.items():
        x = _x(2, 9, seed=3)
        r = _call(mid, x, use_cache=True)
        y, pres = ref(x)
        _close(result(r).reshape(y.shape), y, mid)
        got = _presents(r)
        assert len(got) == b - a, (len(got), b - a)
        for i, ((k, v), (rk, rv)) in enumerate(zip(got, pres)):
            assert k.shape == (2, CFG.n_head, 9, CFG.head_dim), k.shape
            _close(k, rk, "%s present[%d].key" % (mid, i))
            _close(v, rv, "%s present[%d].value" % (mid, i))


def test_decode_client_cache():
    """Prefill 6 tokens with use_cache, then one token per step with the previous present as
    past: every step's output equals the reference prefill of the whole sequence."""
    for mid, (ref, _) in MODELS.items():
        for batch in (1, 2):
            total, first = 14, 6
            x = _x(batch, total, seed=40 + batch)
            y_full, _ = ref(x)
            r = _call(mid, x[:, :first], use_cache=True)
            _close(result(r).reshape(batch, first, -1), y_full[:, :first], mid + " prefill")
            past = _presents(r)
            for t in range(first, total):
                r = _call(mid, x[:, t:t + 1], past=past, use_cache=True)
                _close(result(r).reshape(batch, 1, -1), y_full[:, t:t + 1],
                       "%s batch %d decode step at position %d" % (mid, batch, t))
                past = _presents(r)
                assert all(k.shape[2] == t + 1 and v.shape[2] == t + 1 for k, v in past)
            # a chunk with past and no use_cache: no present in the reply
            r = _call(mid, x[:, :3], use_cache=True)
            r2 = _call(mid, x[:, 3:10], past=_presents(r))
            _close(result(r2).reshape(batch, 7, -1), y_full[:, 3:10], mid + " chunked")
            assert len(r2.present_key_values) == 0


def test_decode_server_session():
    """metadata session=ID keeps the cache on the server: prefill, then one token per call,
    equal to the reference prefill; no cache on the wire; session_end=1 frees it, and the ended
    id is refused (FAILED_PRECONDITION) while the server remembers it."""
    for mid, (ref, _) in MODELS.items():
        for batch in (1, 2):
            sid = "%s-%d" % (mid, batch)
            total, first = 12, 5
            x = _x(batch, total, seed=70 + batch)
            y_full, _ = ref(x)
            r = _call(mid, x[:, :first], session=sid)
            assert len(r.present_key_values) == 0
            _close(result(r).reshape(batch, first, -1), y_full[:, :first], mid + " session prefill")
            for t in range(first, total):
                meta = {"session_end": 1} if t == total - 1 else {}
                r = _call(mid, x[:, t:t + 1], session=sid, **meta)
                assert len(r.present_key_values) == 0
                _close(result(r).reshape(batch, 1, -1), y_full[:, t:t + 1],
                       "%s batch %d session step at position %d" % (mid, batch, t))
            # ended: the id is not reused (a late step must not start an empty session)
            for meta in ({}, {"session_end": 1}):
                expect_error(lambda: _call(mid, x[:, :1], session=sid, **meta),
                             SC.FAILED_PRECONDITION, "session '%s'" % sid, "ended", "new id")
            r = _call(mid, x[:, :1], session=sid + "-new", session_end=1)
            _close(result(r).reshape(batch, 1, -1), y_full[:, :1], mid + " new session")
    x = _x(1, 3, seed=5)
    r = _call("t", x, use_cache=True)
    expect_error(lambda: _call("t", x[:, :1], past=_presents(r), session="s"),
                 SC.INVALID_ARGUMENT, "past_key_values must be empty")
    _call("t", np.zeros((1, 47, 64), np.float32), session="s3")
    expect_error(lambda: _call("t", np.zeros((1, 2, 64), np.float32), session="s3"),
                 SC.INVALID_ARGUMENT, "past_len 47 + seq 2 exceeds n_positions 48", "session")
    _call("t", np.zeros((1, 1, 64), np.float32), session="s3", session_end=1)


def test_session_cache_grows():
    """A session's cache is written in place and grows by doubling: a 3-token prefill, then
    one token per call to 40 (the buffer moves at 17 and 33 tokens, keeping its past): every
    step equals the reference prefill, and session_bytes counts the capacity held (16, 32,
    then 48 = n_positions keys: 2 layers x K, V x 4 heads x 16 floats = 1 KiB per key)."""
    ref, _ = MODELS["t"]
    total = 40
    x = _x(1, total, seed=90)
    y_full, _ = ref(x)

    def session_bytes():
        return int(dict(C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
                   ["session_bytes"])
    base = session_bytes()
    r = _call("t", x[:, :3], session="grow")
    _close(result(r).reshape(1, 3, -1), y_full[:, :3], "grow prefill")
    held = {3: session_bytes() - base}
    for t in range(3, total):
        r = _call("t", x[:, t:t + 1], session="grow")
        _close(result(r).reshape(1, 1, -1), y_full[:, t:t + 1], "grow step at position %d" % t)
        held[t + 1] = session_bytes() - base
    assert held[16] == held[3] and held[32] == held[17] and held[40] == held[33], held
    assert held[17] - held[16] == 16 * 1024 and held[33] - held[32] == 16 * 1024, held
    _call("t", np.zeros((1, 1, 64), np.float32), session="grow", session_end=1)


def test_session_eviction():
    """Sessions past --session-ttl, or pushed out by --session-memory-mb (least recently used
    first), answer FAILED_PRECONDITION saying they were evicted and why; the id then starts over."""
    wpath = os.path.join(TMP, "t.safetensors")
    cpath = os.path.join(TMP, "t.json")
    if not (os.path.exists(wpath) and os.path.exists(cpath)):
        wpath, cpath, _ = gpt2_ref.write_checkpoint(TMP, "t", CFG, storage="F32", prefix="",
                                                    weights=gpt2_ref.random_weights(CFG, seed=7))
    srv = sslib.Server("--workers", "1", "--session-ttl", "1", "--session-memory-mb", "1",
                       "--model", "t=gpt2,weights=%s,config=%s,layers=1:3" % (wpath, cpath))
    c = sslib.connect(srv)
    try:
        def call(x, **meta):
            return c.compute(make_req(x, model="t", **meta), timeout=T(10))
        x = _x(1, 40, 3)
        # memory: 40 tokens x 2 layers x (K + V) x 64 floats = 40 KiB per session; 30 > 1 MiB
        for k in range(30):
            call(x, session="m%d" % k)
        expect_error(lambda: call(x[:, :1], session="m0"), SC.FAILED_PRECONDITION,
                     "session 'm0'", "evicted", "memory budget")
        call(x[:, :1], session="m0")  # reported once: the id starts a new session
        info = dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        assert int(info["session_bytes"]) <= 1 << 20, info
        assert int(info["sessions_evicted"]) >= 1, info
        # time-to-live
        call(x[:, :4], session="idle")
        time.sleep(T(2.6))
        expect_error(lambda: call(x[:, :1], session="idle"), SC.FAILED_PRECONDITION,
                     "session 'idle'", "evicted", "time-to-live")
    finally:
        c.close()
        srv.stop_ok()


def test_decode_up_to_n_positions():
    ref, _ = MODELS["t"]
    x = _x(1, CFG.n_positions, seed=99)
    y_full, _ = ref(x)
    r = _call("t", x[:, :CFG.n_positions - 1], use_cache=True)
    r = _call("t", x[:, -1:], past=_presents(r), use_cache=True)
    _close(result(r).reshape(1, 1, -1), y_full[:, -1:], "last position")
    expect_error(lambda: _call("t", x[:, -1:], past=_presents(r)), SC.INVALID_ARGUMENT,
                 "exceeds n_positions 48")


def test_bad_input():
    expect_error(lambda: _call("t", np.zeros((1, 4, 32), np.float32)), SC.INVALID_ARGUMENT,
                 "hidden size 64, got 32")
    expect_error(lambda: _call("t", np.zeros((4, 64), np.float32)), SC.INVALID_ARGUMENT,
                 "3 dims")
    expect_error(lambda: _call("t", np.zeros((1, 49, 64), np.float32)), SC.INVALID_ARGUMENT,
                 "seq 49 exceeds n_positions 48")
    x = _x(2, 5, seed=1)
    r = _call("t", x, use_cache=True)
    past = _presents(r)  # 2 layers, [2, 4, 5, 16]
    expect_error(lambda: _call("t", x[:, :1], past=past[:1]), SC.INVALID_ARGUMENT,
                 "2 past_key_values entries", "got 1")
    expect_error(lambda: _call("t", x[:, :1], past=past * 2), SC.INVALID_ARGUMENT,
                 "got 4")
    bad = [past[0], (past[1][0], past[1][1][:, :, :4])]
    expect_error(lambda: _call("t", x[:, :1], past=bad), SC.INVALID_ARGUMENT,
                 "past_key_values[1].value_shape is [2,4,4,16], expected [2,4,5,16]")
    bad = [(past[0][0][:, :3], past[0][1][:, :3]), past[1]]
    expect_error(lambda: _call("t", x[:, :1], past=bad), SC.INVALID_ARGUMENT,
                 "past_key_values[0].key_shape")
    # batch of the cache != batch of the input
    expect_error(lambda: _call("t", x[:1, :1], past=past), SC.INVALID_ARGUMENT,
                 "past_key_values[0].key_shape is [2,4,5,16], expected [1,4,past_len,16]")
    # bytes that disagree with the shape
    req = make_req(x[:, :1], model="t")
    req.past_key_values.extend(_kv_entries(past))
    req.past_key_values[1].key_data = req.past_key_values[1].key_data[:-4]
    expect_error(lambda: C.compute(req, timeout=T(5)), SC.INVALID_ARGUMENT,
                 "past_key_values[1].key")
    assert_alive(C)


_refused = sslib.model_refused


def test_startup_refusals():
    w, c, _ = gpt2_ref.write_checkpoint(TMP, "ok", CFG, seed=1)
    _refused("x=gpt2,weights=%s,config=%s,layers=2:5" % (w, c), "layers 2:5 outside 0:4")
    _refused("x=gpt2,weights=%s,config=%s,layers=3:3" % (w, c), "empty")
    w2, c2, _ = gpt2_ref.write_checkpoint(TMP, "miss", CFG, seed=1,
                                          skip=("h.2.attn.c_proj.weight", "h.3.ln_2.bias"))
    _refused("x=gpt2,weights=%s,config=%s,layers=1:4" % (w2, c2), "2 tensors", "missing",
             "h.2.attn.c_proj.weight", "h.3.ln_2.bias")
    w3, c3, _ = gpt2_ref.write_checkpoint(
        TMP, "shape", CFG, seed=1, prefix="transformer.",
        reshape={"h.1.mlp.c_fc.weight": np.zeros((64, 100), np.float32)})
    _refused("x=gpt2,weights=%s,config=%s" % (w3, c3), "transformer.h.1.mlp.c_fc.weight",
             "[64,100]", "[64,256]")
    _, c4, _ = gpt2_ref.write_checkpoint(TMP, "relu", CFG, seed=1,
                                         config_override={"activation_function": "relu"})
    _refused("x=gpt2,weights=%s,config=%s" % (w, c4), "activation_function 'relu'")
    _, c5, _ = gpt2_ref.write_checkpoint(TMP, "nohead", CFG, seed=1,
                                         config_override={"n_head": ...})
    _refused("x=gpt2,weights=%s,config=%s" % (w, c5), "missing 'n_head'")
    _refused("x=gpt2,weights=%s" % os.path.join(TMP, "nope.safetensors"), "nope.safetensors")


if __name__ == "__main__":
    sslib.main(globals())
