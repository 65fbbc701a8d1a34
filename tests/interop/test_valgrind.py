"""The daemon's whole life under valgrind memcheck: start, serve every kind of call (good ones on
every model, bad inputs, deadlines, a cancelled stream, streaming RPCs), drain on SIGTERM with
calls in flight. valgrind must report no errors and no definite or indirect leaks.
Skipped for sanitizer builds (ASan and valgrind do not mix; ASan's LeakSanitizer covers those)."""
import os
import shutil
import sys
import time

import grpc
import numpy as np

import sslib
from sslib import T, make_req

VALGRIND = ["valgrind", "--error-exitcode=97", "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect", "--show-leak-kinds=definite,indirect",
            "--track-fds=no", "--quiet",
            # oneDNN's JIT kernels over-read their own buffers by a vector (see the file)
            "--suppressions=" + os.path.join(os.path.dirname(os.path.abspath(__file__)), "valgrind.supp")]


def test_start_serve_drain_is_clean():
    if sslib.SANITIZE or not shutil.which("valgrind"):
        print("skipped: sanitizer build or no valgrind")
        return
    # m8: compute=int8 (packed weights, per-worker dequantization buffers: freed with the model
    # and when each worker ends)
    srv = sslib.Server("--workers", "2", "--drain-timeout", "20", "--model", "mlp=mlp",
                       "--model", "m8=mlp,compute=int8", prefix=VALGRIND, start_timeout=60)
    c = sslib.connect(srv)
    x = np.random.default_rng(1).standard_normal((2, 3, 768)).astype(np.float32)
    for model in ("", "mlp", "identity", "scale", "spin"):
        r = c.compute(make_req(x, model=model, ms="5", factor="2"), timeout=60)
        assert list(r.shape) == [2, 3, 768]
    r = c.compute(make_req(x, model="mlp", dtype="float16"), timeout=60)
    assert len(r.data) == x.size * 2
    for rows in (2, 40):  # the int8 few-row kernel, then dequantization into the worker's buffer
        xr = np.random.default_rng(rows).standard_normal((1, rows, 768)).astype(np.float32)
        for _ in range(2):
            assert list(c.compute(make_req(xr, model="m8"), timeout=60).shape) == [1, rows, 768]
    c.health(sslib.pb.HealthRequest(), timeout=60)
    c.info(sslib.pb.ServiceInfoRequest(), timeout=60)
    it = c.monitoring(sslib.pb.MonitoringStreamRequest(sampling_interval=0.1), timeout=60)
    next(it)
    it.cancel()
    # bad inputs
    bad_dtype = make_req(x)
    bad_dtype.metadata["dtype"] = "int8"
    for req in (make_req(data=b"abc", shape=[1, 10, 768]), make_req(x, model="nope"),
                make_req(x[..., :5], model="mlp"), bad_dtype):
        try:
            c.compute(req, timeout=60)
            raise AssertionError("bad input accepted")
        except grpc.RpcError:
            pass
    try:
        c.raw("/splitlearn.comm.ComputeService/Compute")(b"\xff\xff\xff", timeout=60)
    except grpc.RpcError:
        pass
    # a deadline that expires while waiting, and a call the client cancels
    try:
        c.compute(make_req(x, model="sleep", ms="3000"), timeout=0.5)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    f = c.compute.future(make_req(x, model="spin", ms="300"), timeout=60)
    time.sleep(0.1)
    f.cancel()
    # drain with calls in flight
    futs = [c.compute.future(make_req(x, model="sleep", ms="800"), timeout=60) for _ in range(16)]
    time.sleep(0.3)
    rc, log = srv.stop(timeout=60)
    ok = sum(1 for f in futs if f.exception() is None)
    assert ok == 16, "only %d of 16 in-flight calls finished during the drain" % ok
    assert rc == 0, "valgrind/splitserve exited %r:\n%s" % (rc, sslib.tail(log, 60))
    assert "definitely lost" not in log and "Invalid" not in log, sslib.tail(log, 60)


if __name__ == "__main__":
    sslib.main(globals(), default_timeout=280)
