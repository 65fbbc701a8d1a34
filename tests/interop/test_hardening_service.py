"""Service-side hardening: each test reproduces one finding of the hardening review and asserts
its bound.
- work nobody waits for stops: a call past its deadline frees its worker at once;
- the test-only models (scale, sleep, spin) are off unless --enable-test-models;
- training input: NaN/Inf in grad_output or a training input is refused naming the element; an
  optimizer step that would make a weight non-finite is refused and changes nothing;
- budgets: session ids <= --max-session-id-bytes; a training forward larger than the whole
  --activation-memory-mb is refused before anything is allocated;
- request metadata: entry count and key/value sizes checked on the wire before decoding; NUL
  bytes in ids refused (model_id "identity\\0x" used to route to identity);
- config files: regular files only, 1 MiB, nesting depth 32 (YAML and the gpt2 config.json);
- a failed drain checkpoint makes the daemon exit 1 and says why.
"""
import os
import signal
import subprocess
import tempfile
import threading
import time

import grpc
import numpy as np

import sslib
from sslib import SC, T, make_req, result, expect_error, assert_alive

TMP = None
HZ = os.sysconf("SC_CLK_TCK")


def setup():
    global TMP
    TMP = tempfile.mkdtemp(prefix="ss-hardsvc-")


def _cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime


def _info(c):
    return dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info)


def test_cancel_frees_workers():
    """Two 20 s spin calls with a 1 s deadline: both workers are free again right after the
    deadline (CPU stops, a third call runs at once) instead of spinning for 20 s."""
    srv = sslib.Server("--workers", "2")
    c = sslib.connect(srv)
    try:
        x = np.zeros((1, 4), np.float32)
        t0 = time.monotonic()
        futs = [c.compute.future(make_req(x, model="spin", ms=20000), timeout=1.0)
                for _ in range(2)]
        for f in futs:
            try:
                f.result()
                raise AssertionError("a 20 s spin with a 1 s deadline succeeded")
            except grpc.RpcError as e:
                assert e.code() == SC.DEADLINE_EXCEEDED, e
        time.sleep(0.3)
        cpu0 = _cpu_s(srv.pid)
        time.sleep(1.0)
        burnt = _cpu_s(srv.pid) - cpu0
        print("  CPU in the second after the deadline: %.2f s (2 spinning workers: ~2 s)" % burnt)
        assert burnt < 0.5, burnt
        t1 = time.monotonic()
        for _ in range(2):  # both workers are free: two calls at once, promptly
            fs = [c.compute.future(make_req(x, model="spin", ms=10), timeout=T(5)) for _ in range(2)]
            for f in fs:
                f.result()
        print("  third/fourth calls answered %.2f s after the first two started (%.3f s)"
              % (time.monotonic() - t0, time.monotonic() - t1))
        assert time.monotonic() - t1 < T(1.0)
        assert_alive(c)
    finally:
        c.close()
        srv.stop()


def test_test_models_disabled_by_default():
    """Without --enable-test-models: scale, sleep, spin answer NOT_FOUND saying they exist but are
    disabled; identity and mlp serve; a --model of a test kind refuses to start."""
    srv = sslib.Server("--workers", "1", test_models=False)
    c = sslib.connect(srv)
    try:
        x = np.ones((1, 4), np.float32)
        for name in ("spin", "sleep", "scale"):
            expect_error(lambda: c.compute(make_req(x, model=name), timeout=T(5)), SC.NOT_FOUND,
                         "'%s' exists but is disabled" % name, "--enable-test-models")
        assert_alive(c)
        r = c.compute(make_req(np.ones((1, 768), np.float32), model="mlp"), timeout=T(5))
        assert list(r.shape) == [1, 768]
        info = _info(c)
        assert info["enable_test_models"] == "off" and "spin" not in info["models"], info
    finally:
        c.close()
        srv.stop()
    rc, out = sslib.run_cli("--model", "x=spin")
    assert rc != 0 and "--enable-test-models" in out, (rc, out)


def _raw_compute(c, body, timeout=10):
    return c.raw(sslib.SVC + "Compute")(body, timeout=T(timeout))


def test_metadata_limits():
    """Entry count, key and value sizes are checked on the wire before decoding: a 40 MB request
    of empty map entries is refused at once (it used to cost GBs and block the loop)."""
    srv = sslib.Server("--workers", "1", "--max-message-bytes", str(64 << 20))
    c = sslib.connect(srv)
    try:
        x = np.ones((1, 4), np.float32)
        meta = {"k%d" % i: "v" for i in range(65)}
        expect_error(lambda: c.compute(make_req(x, model="identity", **meta), timeout=T(5)),
                     SC.RESOURCE_EXHAUSTED, "more than 64 entries", "--max-metadata-entries")
        meta = {"k%d" % i: "v" for i in range(64)}
        c.compute(make_req(x, model="identity", **meta), timeout=T(5))  # at the limit: fine
        req = make_req(x, model="identity")
        req.metadata["k" * 257] = "v"
        expect_error(lambda: c.compute(req, timeout=T(5)), SC.RESOURCE_EXHAUSTED,
                     "key of 257 bytes", "--max-metadata-key-bytes")
        req = make_req(x, model="identity")
        req.metadata["k"] = "v" * 4097
        expect_error(lambda: c.compute(req, timeout=T(5)), SC.RESOURCE_EXHAUSTED,
                     "value of 4097 bytes", "--max-metadata-value-bytes")
        body = make_req(x, model="identity").SerializeToString() + b"\x22\x00" * (20 << 20)
        rss0 = srv.rss_kib()
        t0 = time.monotonic()
        expect_error(lambda: _raw_compute(c, body, timeout=30), SC.RESOURCE_EXHAUSTED,
                     "--max-metadata-entries")
        dt = time.monotonic() - t0
        grow = (srv.rss_kib("VmHWM") - rss0) / 1024
        print("  40 MB of empty metadata entries: refused in %.2f s, peak RSS +%.0f MB" % (dt, grow))
        assert dt < T(3.0) and grow < 200, (dt, grow)
        # NUL bytes: a C string would end there
        bad = make_req(x, model="identity")
        bad.model_id = "identity\0x"
        expect_error(lambda: c.compute(bad, timeout=T(5)), SC.INVALID_ARGUMENT, "model_id", "NUL")
        bad = make_req(x, model="identity")
        bad.metadata["dtype"] = "float32\0junk"
        expect_error(lambda: c.compute(bad, timeout=T(5)), SC.INVALID_ARGUMENT, "NUL")
        bad = make_req(x, model="identity")
        bad.forward_id = "f\0x"
        expect_error(lambda: c.compute(bad, timeout=T(5)), SC.INVALID_ARGUMENT, "forward_id", "NUL")
        breq = sslib.pb.BackwardRequest(grad_output_data=x.tobytes(), forward_id="a\0b")
        breq.grad_output_shape.extend([1, 4])
        expect_error(lambda: c.backward(breq, timeout=T(5)), SC.INVALID_ARGUMENT, "forward_id", "NUL")
        # session ids
        expect_error(lambda: c.compute(make_req(x, model="identity", session="s" * 257),
                                       timeout=T(5)),
                     SC.INVALID_ARGUMENT, "257 bytes", "--max-session-id-bytes")
        info = _info(c)
        for k, v in (("max_metadata_entries", "64"), ("max_metadata_key_bytes", "256"),
                     ("max_metadata_value_bytes", "4096"), ("max_session_id_bytes", "256"),
                     ("config_max_bytes", str(1 << 20)), ("config_max_depth", "32")):
            assert info[k] == v, (k, info)
        assert_alive(c)
    finally:
        c.close()
        srv.stop()


def _train_fwd(c, x, fid, model="mlp"):
    req = make_req(x, model=model)
    req.training_mode = True
    req.forward_id = fid
    return c.compute(req, timeout=T(20))


def _backward(c, g, fid, lr=None, model="mlp"):
    g = np.asarray(g, np.float32)
    req = sslib.pb.BackwardRequest(grad_output_data=g.tobytes(), forward_id=fid, model_id=model)
    req.grad_output_shape.extend(g.shape)
    if lr is not None:
        req.learning_rate = lr
    return c.backward(req, timeout=T(20))


def test_nonfinite_training_refused():
    """Against the default mlp: a NaN gradient, an Inf training input and a step that would make
    a weight infinite are refused; the outputs other clients see do not change."""
    srv = sslib.Server("--workers", "2")
    c = sslib.connect(srv)
    try:
        probe = sslib.rng(1).standard_normal((2, 768)).astype(np.float32)
        before = result(c.compute(make_req(probe, model="mlp"), timeout=T(10)))
        x = sslib.rng(2).standard_normal((1, 3, 768)).astype(np.float32)
        _train_fwd(c, x, "nan-1")
        g = np.ones((1, 3, 768), np.float32)
        g[0, 2, 5] = np.nan
        expect_error(lambda: _backward(c, g, "nan-1", lr=0.1), SC.INVALID_ARGUMENT,
                     "grad_output_data[1541]", "[0,2,5]", "NaN")
        xi = x.copy()
        xi[0, 1, 7] = -np.inf
        expect_error(lambda: _train_fwd(c, xi, "inf-1"), SC.INVALID_ARGUMENT,
                     "data[775]", "[0,1,7]", "-Inf")
        # a step to infinity: huge gradient x huge learning rate
        _train_fwd(c, x, "big-1")
        expect_error(lambda: _backward(c, np.full((1, 3, 768), 1e30, np.float32), "big-1",
                                       lr=1e30),
                     SC.INVALID_ARGUMENT, "optimizer step refused", "weights are unchanged")
        after = result(c.compute(make_req(probe, model="mlp"), timeout=T(10)))
        assert np.array_equal(before, after), np.abs(before - after).max()
        # the record of nan-1 was kept: a corrected gradient trains normally
        _backward(c, np.zeros((1, 3, 768), np.float32), "nan-1", lr=0.1)
        assert_alive(c)
    finally:
        c.close()
        srv.stop()


def test_activation_budget_before_allocation():
    """--activation-memory-mb 8: a training forward of [1,4096,768] on the default mlp would keep
    25 MB; it is refused at once with RESOURCE_EXHAUSTED, before the worker allocates it."""
    srv = sslib.Server("--workers", "1", "--activation-memory-mb", "8",
                       "--max-message-bytes", str(64 << 20))
    c = sslib.connect(srv)
    try:
        x = np.zeros((1, 4096, 768), np.float32)
        rss0 = srv.rss_kib("VmHWM")
        expect_error(lambda: _train_fwd(c, x, "huge"), SC.RESOURCE_EXHAUSTED,
                     "activation budget", "--activation-memory-mb")
        grow = (srv.rss_kib("VmHWM") - rss0) / 1024
        print("  refused training forward: peak RSS +%.0f MB (request 12.6 MB)" % grow)
        assert grow < 40, grow
        r = _train_fwd(c, x[:, :16], "small")  # fits
        info = _info(c)
        assert int(info["activation_bytes"]) > 16 * 768 * 8, info
        assert int(info["activation_bytes"]) <= 8 << 20, info
        _backward(c, np.zeros((1, 16, 768), np.float32), r.forward_id)
    finally:
        c.close()
        srv.stop()


def test_ended_sessions_bounded():
    """Ended sessions with long ids: refused above 256 bytes; the memory of ended ids stays
    within the session budget (600 ended sessions with 1 MB ids used to keep 617 MB)."""
    srv = sslib.Server("--workers", "1", "--session-memory-mb", "1")
    c = sslib.connect(srv)
    try:
        info = _info(c)
        assert int(info["session_memory_mb"]) == 1, info
        x = np.ones((1, 4), np.float32)
        # a 1 MB id is stopped on the wire by the metadata value limit, before any decoding
        expect_error(lambda: c.compute(make_req(x, model="identity", session="s" * (1 << 20)),
                                       timeout=T(5)),
                     SC.RESOURCE_EXHAUSTED, "--max-metadata-value-bytes")
        assert int(_info(c)["session_bytes"]) <= 1 << 20
    finally:
        c.close()
        srv.stop()


def test_config_files_bounded():
    """--config: a FIFO is refused at once (it used to hang start-up), a file over 1 MiB is
    refused, nesting deeper than 32 is refused fast (200 KB of it took 5 s); the same for a
    gpt2 config.json."""
    fifo = os.path.join(TMP, "cfg.fifo")
    os.mkfifo(fifo)
    t0 = time.monotonic()
    rc, out = sslib.run_cli("--config", fifo, timeout=10)
    assert rc != 0 and "not a regular file" in out and "FIFO" in out, (rc, out)
    big = os.path.join(TMP, "big.yaml")
    with open(big, "w") as f:
        f.write("# " + "x" * (1 << 20) + "\nworkers: 1\n")
    rc, out = sslib.run_cli("--config", big, timeout=10)
    assert rc != 0 and "over the limit" in out, (rc, out)
    deep = os.path.join(TMP, "deep.yaml")
    with open(deep, "w") as f:
        f.write("models: " + "[" * 100000 + "]" * 100000 + "\n")
    t1 = time.monotonic()
    rc, out = sslib.run_cli("--config", deep, timeout=10)
    dt = time.monotonic() - t1
    print("  200 KB of nested YAML refused in %.3f s" % dt)
    assert rc != 0 and "nesting deeper than 32" in out and dt < T(2), (rc, dt, out)
    ok = os.path.join(TMP, "ok.yaml")
    with open(ok, "w") as f:
        f.write("workers: 1\nmax_metadata_entries: 8\nenable_test_models: true\n")
    srv = sslib.Server("--config", ok, test_models=False)
    c = sslib.connect(srv)
    try:
        info = _info(c)
        assert info["max_metadata_entries"] == "8" and info["enable_test_models"] == "on", info
    finally:
        c.close()
        srv.stop()
    jfifo = os.path.join(TMP, "config.json")
    os.mkfifo(jfifo)
    rc, out = sslib.run_cli("--model", "t=gpt2,weights=/nonexistent.safetensors,config=" + jfifo,
                            timeout=10)
    assert rc != 0, (rc, out)
    assert time.monotonic() - t0 < T(8)


def test_failed_drain_checkpoint_exits_1():
    """mlp with save=PATH where PATH cannot be written (its directory is a regular file):
    SIGTERM drains, the checkpoint fails, the daemon exits 1 and its log says why."""
    blocker = os.path.join(TMP, "not-a-dir")
    with open(blocker, "w") as f:
        f.write("x")
    path = os.path.join(blocker, "ckpt.safetensors")
    srv = sslib.Server("--workers", "1", "--model", "m=mlp,save=" + path)
    c = sslib.connect(srv)
    try:
        c.compute(make_req(np.ones((1, 768), np.float32), model="m"), timeout=T(10))
    finally:
        c.close()
    srv.signal(signal.SIGTERM)
    rc = srv.wait(T(20))
    log = srv.log
    assert rc == 1, (rc, log)
    assert "checkpoint" in log and path in log and "exit status 1" in log, log


def teardown():
    if TMP:
        subprocess.run(["rm", "-rf", TMP])


if __name__ == "__main__":
    sslib.main(globals())
