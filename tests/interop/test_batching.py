"""Dynamic batching (model keys max_batch_rows, batch_delay_us, decode_batch): concurrent Compute
calls of one model are stacked into one forward, and every call gets the result it gets alone (up
to float rounding), keeps its own dtype, deadline and cancellation. mlp and gpt2 prefill; decode
steps of sessions and client caches, which batch by default."""
import re
import shutil
import tempfile
import time
import urllib.request

import grpc
import numpy as np

import gpt2_ref
import sslib
from sslib import SC, T, make_req, result

TMP = None
S = None
C = None
CFG = gpt2_ref.Config(n_embd=64, n_head=4, n_layer=2, n_positions=32)


def setup():
    global TMP, S, C
    TMP = tempfile.mkdtemp(prefix="ss-batch-")
    wpath, cpath, _ = gpt2_ref.write_checkpoint(TMP, "g", CFG, seed=3)
    gspec = "weights=%s,config=%s,layers=0:2" % (wpath, cpath)
    # Same weights with and without batching: "alone" is the reference for "batched".
    S = sslib.Server("--workers", "1", "--metrics-listen", "127.0.0.1:0",
                     "--model", "mlp=mlp",
                     "--model", "mb=mlp,max_batch_rows=64,batch_delay_us=20000",
                     "--model", "g=gpt2," + gspec,
                     "--model", "gb=gpt2,%s,max_batch_rows=64,batch_delay_us=20000" % gspec,
                     "--model", "gb0=gpt2,%s,max_batch_rows=64" % gspec,
                     "--model", "gnb=gpt2,%s,decode_batch=0" % gspec)
    C = sslib.connect(S)


def teardown():
    sslib.shutdown(C, S)
    if TMP:
        shutil.rmtree(TMP, ignore_errors=True)


def _info():
    return dict(C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info)


def _batched_calls(model):
    desc = _info()["model." + model]
    kv = dict(p.split("=", 1) for p in desc.split("; ") if "=" in p)
    return int(kv["batches"]), int(kv["batched_calls"])


def test_mlp_many_concurrent_calls_equal_alone():
    rng = np.random.default_rng(1)
    shapes = [(1, 10, 768), (2, 10, 768), (1, 3, 768), (3, 768), (1, 10, 768)]
    xs = [rng.standard_normal(shapes[i % len(shapes)]).astype(np.float32) for i in range(40)]
    alone = [result(C.compute(make_req(x, model="mlp"), timeout=T(10))) for x in xs]
    b0, c0 = _batched_calls("mb")
    futs = [C.compute.future(make_req(x, model="mb"), timeout=T(20)) for x in xs]
    got = [result(f.result()) for f in futs]
    for i, (a, g) in enumerate(zip(alone, got)):
        assert g.shape == a.shape, (i, g.shape, a.shape)
        np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-5, err_msg="call %d" % i)
    b1, c1 = _batched_calls("mb")
    assert c1 - c0 == 40, (c0, c1)
    assert b1 - b0 < 40, "no call was batched with another (%d batches for 40 calls)" % (b1 - b0)


def test_dtypes_in_one_batch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 768)).astype(np.float32)
    f16 = C.compute.future(make_req(x, model="mb", dtype="float16"), timeout=T(10))
    f32 = C.compute.future(make_req(x, model="mb"), timeout=T(10))
    r16, r32 = f16.result(), f32.result()
    a16 = result(C.compute(make_req(x, model="mlp", dtype="float16"), timeout=T(10)), "float16")
    np.testing.assert_allclose(result(r16, "float16"), a16, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(result(r32), result(C.compute(make_req(x, model="mlp"), timeout=T(10))),
                               rtol=1e-5, atol=1e-5)


def test_deadline_and_cancel_inside_a_batch():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 10, 768)).astype(np.float32) for _ in range(6)]
    # One call with a deadline shorter than the batch delay, one cancelled by its client.
    short = C.compute.future(make_req(xs[0], model="mb"), timeout=0.005)
    gone = C.compute.future(make_req(xs[1], model="mb"), timeout=T(10))
    others = [C.compute.future(make_req(x, model="mb"), timeout=T(10)) for x in xs[2:]]
    gone.cancel()
    try:
        short.result()
        raise AssertionError("the 5 ms deadline should have expired inside a 20 ms batch delay")
    except grpc.RpcError as e:
        assert e.code() == SC.DEADLINE_EXCEEDED, e
    for x, f in zip(xs[2:], others):
        np.testing.assert_allclose(result(f.result()),
                                   result(C.compute(make_req(x, model="mlp"), timeout=T(10))),
                                   rtol=1e-5, atol=1e-5)
    sslib.assert_alive(C)


def test_gpt2_prefill_batches_equal_alone():
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 12, CFG.n_embd)).astype(np.float32) for _ in range(8)]
    alone = [result(C.compute(make_req(x, model="g"), timeout=T(10))) for x in xs]
    b0, c0 = _batched_calls("gb")
    futs = [C.compute.future(make_req(x, model="gb"), timeout=T(20)) for x in xs]
    for i, (a, f) in enumerate(zip(alone, futs)):
        np.testing.assert_allclose(result(f.result()), a, rtol=1e-5, atol=1e-5, err_msg="call %d" % i)
    b1, c1 = _batched_calls("gb")
    assert c1 - c0 == 8 and b1 - b0 < 8, (b0, b1, c0, c1)
    # Calls with a cache or a session never batch: they still work next to batched ones.
    r = C.compute(make_req(xs[0], model="gb", session="s1"), timeout=T(10))
    np.testing.assert_allclose(result(r), alone[0], rtol=1e-5, atol=1e-5)


def _kv(resp):
    return list(resp.present_key_values)


def test_gpt2_decode_steps_batch_across_sessions():
    """8 sessions with different prefix lengths decode one token each, concurrently: the steps go
    through the dense layers as batches (forward_kv_batch), attention per session, and every step
    equals the same step on the unbatched twin."""
    rng = np.random.default_rng(5)
    n = 8
    prefixes = [rng.standard_normal((1, 2 + i, CFG.n_embd)).astype(np.float32) for i in range(n)]
    for i, x in enumerate(prefixes):  # same prefixes on both models
        C.compute(make_req(x, model="gb", session="b%d" % i), timeout=T(10))
        C.compute(make_req(x, model="g", session="a%d" % i), timeout=T(10))
    b0, c0 = _batched_calls("gb")
    for step in range(3):
        toks = [rng.standard_normal((1, 1, CFG.n_embd)).astype(np.float32) for _ in range(n)]
        futs = [C.compute.future(make_req(t, model="gb", session="b%d" % i), timeout=T(20))
                for i, t in enumerate(toks)]
        alone = [result(C.compute(make_req(t, model="g", session="a%d" % i), timeout=T(10)))
                 for i, t in enumerate(toks)]
        for i, f in enumerate(futs):
            np.testing.assert_allclose(result(f.result()), alone[i], rtol=1e-5, atol=1e-5,
                                       err_msg="step %d session %d" % (step, i))
    b1, c1 = _batched_calls("gb")
    assert c1 - c0 == 3 * n and b1 - b0 < 3 * n, (b0, b1, c0, c1)
    # Client-side caches of different lengths batch too, and their presents are right.
    outs = []
    for i in range(3):
        q = make_req(prefixes[i], model="g")
        q.use_cache = True
        r = C.compute(q, timeout=T(10))
        assert len(r.present_key_values) == CFG.n_layer and r.present_key_values[0].key_shape[2] == 2 + i
        outs.append(r)
    tok = rng.standard_normal((1, 1, CFG.n_embd)).astype(np.float32)
    reqs = []
    for r in outs:
        q = make_req(tok, model="gb")
        q.use_cache = True
        q.past_key_values.extend(_kv(r))
        reqs.append(q)
    futs = [C.compute.future(q, timeout=T(20)) for q in reqs]
    for q, f in zip(reqs, futs):
        q.model_id = "g"
        want = C.compute(q, timeout=T(10))
        got = f.result()
        np.testing.assert_allclose(result(got), result(want), rtol=1e-5, atol=1e-5)
        assert len(got.present_key_values) == len(want.present_key_values)
        for a, b in zip(got.present_key_values, want.present_key_values):
            np.testing.assert_allclose(np.frombuffer(a.key_data, np.float32),
                                       np.frombuffer(b.key_data, np.float32), rtol=1e-5, atol=1e-5)
            assert list(a.key_shape) == list(b.key_shape)


def test_decode_steps_batch_by_default():
    """Without any batching key, one-token steps of different sessions batch on --workers 1:
    steps that arrive while a step computes wait in one batch that keeps taking them until the
    worker is free. Each equals the step on a twin with decode_batch=0 (which never batches)."""
    rng = np.random.default_rng(9)
    n = 8
    for i in range(n):
        x = rng.standard_normal((1, 3 + i, CFG.n_embd)).astype(np.float32)
        C.compute(make_req(x, model="g", session="d%d" % i), timeout=T(10))
        C.compute(make_req(x, model="gnb", session="e%d" % i), timeout=T(10))
    b0, c0 = _batched_calls("g")
    n0 = _batched_calls("gnb")
    chans = [sslib.connect(S, separate=True) for _ in range(4)]
    for step in range(4):
        toks = [rng.standard_normal((1, 1, CFG.n_embd)).astype(np.float32) for _ in range(n)]
        # The one worker spins for 300 ms: the first step waits in the pool holding g's slot,
        # the others arrive meanwhile and must gather in one batch waiting for that slot.
        spin = C.compute.future(make_req(np.ones((1, 4), np.float32), model="spin", ms="300"),
                                timeout=T(20))
        time.sleep(0.05)
        futs = [chans[i % 4].compute.future(make_req(t, model="g", session="d%d" % i),
                                            timeout=T(20)) for i, t in enumerate(toks)]
        spin.result()
        alone = [result(C.compute(make_req(t, model="gnb", session="e%d" % i), timeout=T(10)))
                 for i, t in enumerate(toks)]
        for i, f in enumerate(futs):
            np.testing.assert_allclose(result(f.result()), alone[i], rtol=1e-5, atol=1e-5,
                                       err_msg="step %d session %d" % (step, i))
    for ch in chans:
        ch.close()
    b1, c1 = _batched_calls("g")
    assert c1 - c0 == 4 * n and b1 - b0 <= 4 * 3, (b0, b1, c0, c1)
    assert _batched_calls("gnb") == n0  # decode_batch=0: never batched
    # /metrics counts them too (decode batching needs no key): its ratio is the mean batch size
    line = S.wait_for_line(r"metrics on http://[^:]+:(\d+)/metrics", timeout=5)
    port = int(re.search(r"metrics on http://[^:]+:(\d+)/metrics", line).group(1))
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=T(5)) as r:
        text = r.read().decode()
    assert 'splitserve_batches_total{model="g"} %d' % b1 in text, text
    assert 'splitserve_batched_calls_total{model="g"} %d' % c1 in text, text
    assert 'splitserve_batched_calls_total{model="gnb"}' not in text, text


def test_batches_and_single_calls_share_one_queue():
    """Calls that never batch (a session prefill) and batches wait in the same admission queue of
    a model; whoever frees a slot starts the next waiter of either kind (this crashed once)."""
    rng = np.random.default_rng(6)
    futs = []
    for i in range(40):
        x = rng.standard_normal((1, 24 if i % 2 else 4, CFG.n_embd)).astype(np.float32)
        meta = {"session": "q%d" % i, "session_end": "1"} if i % 2 else {}
        futs.append((x, C.compute.future(make_req(x, model="gb0", **meta), timeout=T(20))))
    for x, f in futs:
        np.testing.assert_allclose(result(f.result()),
                                   result(C.compute(make_req(x, model="g"), timeout=T(10))),
                                   rtol=1e-5, atol=1e-5)
    sslib.assert_alive(C)


def test_bad_batching_keys_refused():
    for spec, want in (("x=mlp,max_batch_rows=-1", "max_batch_rows"),
                       ("x=mlp,batch_delay_us=abc", "batch_delay_us"),
                       ("x=mlp,decode_batch=2", "decode_batch must be 0 or 1")):
        rc, out = sslib.run_cli("--model", spec)
        assert rc != 0 and want in out, (spec, rc, out)


if __name__ == "__main__":
    sslib.main(globals())
