"""Every RPC of splitlearn.comm.ComputeService and grpc.health.v1.Health against the real daemon,
the built-in models, dtypes, deadlines and the command line."""
import signal
import threading
import time

import numpy as np

import h2raw
import sslib
from sslib import SC, T, pb, hpb, make_req, result, expect_error, assert_alive

S = None   # the shared server: --workers 2 --intra-op-threads 1
C = None   # its stubs


def setup():
    global S, C
    S = sslib.Server("--workers", "2", "--intra-op-threads", "1")
    C = sslib.connect(S)


def teardown():
    C.close()
    log = S.stop_ok()
    assert "listening on 127.0.0.1:%d" % S.port in log


# ------------------------------------------------------------------------------ health ------

def test_health_check():
    r = C.health(pb.HealthRequest(), timeout=T(5))
    assert r.status == "ok", r
    assert r.version, "HealthCheck has no version"
    assert r.HasField("uptime_seconds"), "uptime_seconds not set"
    assert 0 <= r.uptime_seconds < 3600, r.uptime_seconds
    time.sleep(0.3)
    r2 = C.health(pb.HealthRequest(), timeout=T(5))
    assert r2.uptime_seconds >= r.uptime_seconds + 0.2, (r.uptime_seconds, r2.uptime_seconds)


def test_grpc_health_check():
    for service in ("", "splitlearn.comm.ComputeService"):
        r = C.h_check(hpb.HealthCheckRequest(service=service), timeout=T(5))
        assert r.status == hpb.HealthCheckResponse.SERVING, (service, r)
    # The standard: an unknown service name is NOT_FOUND.
    expect_error(lambda: C.h_check(hpb.HealthCheckRequest(service="no.such.Service"),
                                   timeout=T(5)), SC.NOT_FOUND)


def test_grpc_health_watch():
    w = C.h_watch(hpb.HealthCheckRequest(service=""), timeout=T(10))
    first = next(w)
    assert first.status == hpb.HealthCheckResponse.SERVING, first
    w.cancel()
    # The standard: Watch on an unknown service sends SERVICE_UNKNOWN (and keeps the stream).
    w = C.h_watch(hpb.HealthCheckRequest(service="no.such.Service"), timeout=T(10))
    first = next(w)
    assert first.status == hpb.HealthCheckResponse.SERVICE_UNKNOWN, first
    w.cancel()
    assert_alive(C)


# ------------------------------------------------------------------------------ info --------

def test_service_info():
    before = C.info(pb.ServiceInfoRequest(), timeout=T(5))
    n = 5
    for i in range(n):
        assert_alive(C)
    info = C.info(pb.ServiceInfoRequest(), timeout=T(5))
    ci = dict(info.custom_info)
    print("    custom_info:", ci)
    assert info.service_name, "service_name empty"
    assert info.version, "version empty"
    assert info.HasField("uptime_seconds")
    assert info.total_requests >= before.total_requests + n, \
        (before.total_requests, info.total_requests)
    assert "threads" in ci, "custom_info has no 'threads': %r" % ci
    live = S.threads()
    assert int(ci["threads"]) == live, "custom_info threads=%s but /proc says %d" % (ci["threads"], live)
    assert live == sslib.IO + 2, "--workers 2 --intra-op-threads 1 should be %d threads, /proc says %d" % (
        sslib.IO + 2, live)
    assert ci.get("workers") == "2", "custom_info workers=%r" % ci.get("workers")
    assert ci.get("intra_op_threads") == "1", "custom_info intra_op_threads=%r" % ci.get("intra_op_threads")
    models = " ".join(v for k, v in ci.items() if "model" in k)
    for m in ("identity", "scale", "sleep", "spin", "mlp"):
        assert m in models, "custom_info does not list model %r: %r" % (m, ci)


# ------------------------------------------------------------------------------ Compute -----

def _check_monitoring(m):
    assert m.memory_mb > 0, m
    assert 0 < m.memory_percent <= 100, m
    assert m.cpu_percent >= 0, m
    assert m.gpu_available is False, m
    assert abs(m.timestamp - time.time()) < 120, "timestamp %r is not unix time" % m.timestamp


def test_identity_echo_and_fields():
    x = sslib.rng(1).standard_normal((2, 3, 5)).astype(np.float32)
    r = C.compute(make_req(x, model="identity", request_id=7), timeout=T(5))
    assert list(r.shape) == [2, 3, 5]
    np.testing.assert_array_equal(result(r), x)
    assert r.HasField("request_id") and r.request_id == 7, r.request_id
    assert r.HasField("compute_time_ms"), "compute_time_ms not set"
    assert 0 <= r.compute_time_ms < 1000, r.compute_time_ms
    assert r.HasField("monitoring_data"), "monitoring_data not set"
    _check_monitoring(r.monitoring_data)


def test_request_id_presence():
    x = np.ones((1, 4), np.float32)
    r = C.compute(make_req(x, model="identity"), timeout=T(5))
    assert not r.HasField("request_id"), "request_id present although the request had none"
    r = C.compute(make_req(x, model="identity", request_id=0), timeout=T(5))
    assert r.HasField("request_id") and r.request_id == 0, "request_id=0 was not echoed with presence"
    r = C.compute(make_req(x, model="identity", request_id=-5), timeout=T(5))
    assert r.request_id == -5
    r = C.compute(make_req(x, model="identity", request_id=2**31 - 1), timeout=T(5))
    assert r.request_id == 2**31 - 1


def test_identity_edge_shapes():
    r = C.compute(make_req(shape=[0, 4], data=b"", model="identity"), timeout=T(5))
    assert list(r.shape) == [0, 4] and r.data == b"", r
    x = np.arange(3, dtype=np.float32).reshape(1, 1, 1, 1, 1, 1, 1, 3)
    r = C.compute(make_req(x, model="identity"), timeout=T(5))
    assert list(r.shape) == [1] * 7 + [3]
    np.testing.assert_array_equal(result(r), x)


def test_scale():
    x = sslib.rng(2).standard_normal((4, 8)).astype(np.float32)
    for factor in ("2.5", "-3", "0"):
        r = C.compute(make_req(x, model="scale", factor=factor), timeout=T(5))
        np.testing.assert_array_equal(result(r), x * np.float32(float(factor)))
    r = C.compute(make_req(x, model="scale", factor="0.1"), timeout=T(5))
    np.testing.assert_allclose(result(r), x * np.float32(0.1), rtol=1e-6, atol=0)


def test_sleep():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t0 = time.perf_counter()
    r = C.compute(make_req(x, model="sleep", ms=300), timeout=T(5))
    dt = time.perf_counter() - t0
    np.testing.assert_array_equal(result(r), x)
    assert 0.29 <= dt < 0.3 + T(0.5), "sleep ms=300 took %.3fs" % dt
    t0 = time.perf_counter()
    r = C.compute(make_req(x, model="sleep"), timeout=T(5))
    dt = time.perf_counter() - t0
    np.testing.assert_array_equal(result(r), x)
    assert 0.095 <= dt < 0.1 + T(0.5), "sleep (default 100 ms) took %.3fs" % dt


def test_spin():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    t0 = time.perf_counter()
    r = C.compute(make_req(x, model="spin", ms=60), timeout=T(5))
    dt = time.perf_counter() - t0
    np.testing.assert_array_equal(result(r), x)
    assert 0.058 <= dt < 0.06 + T(0.5), "spin ms=60 took %.3fs" % dt
    t0 = time.perf_counter()
    r = C.compute(make_req(x, model="spin"), timeout=T(5))
    dt = time.perf_counter() - t0
    assert 0.0095 <= dt < 0.01 + T(0.5), "spin (default 10 ms) took %.3fs" % dt


def test_dtype_float16():
    # (10, 20): 400 bytes, so the data field's length takes two varint bytes and the tensor
    # bytes sit at an odd offset in the message (alignment must not matter).
    for shape in ((3, 7), (10, 20)):
        _dtype_float16(shape)


def _dtype_float16(shape):
    x = (sslib.rng(3).standard_normal(shape) * 10).astype(np.float16)
    raw = x.astype("<f2").tobytes()
    r = C.compute(make_req(shape=x.shape, data=raw, model="identity", dtype="float16"), timeout=T(5))
    assert r.data == raw and list(r.shape) == list(shape), "identity float16 did not echo the bytes"
    r = C.compute(make_req(shape=x.shape, data=raw, model="scale", dtype="float16", factor="2.5"),
                  timeout=T(5))
    assert len(r.data) == x.size * 2, "scale float16 reply is %d bytes, expected %d" % (len(r.data), x.size * 2)
    want = (x.astype(np.float32) * np.float32(2.5)).astype(np.float16)
    got = np.frombuffer(r.data, "<f2").reshape(x.shape)
    np.testing.assert_array_equal(got, want)


def test_dtype_bfloat16():
    for shape in ((5, 3), (20, 10)):
        _dtype_bfloat16(shape)


def _dtype_bfloat16(shape):
    x32 = (sslib.rng(4).standard_normal(shape) * 10).astype(np.float32)
    raw = sslib.encode(x32, "bfloat16")
    xb = sslib.decode(raw, x32.shape, "bfloat16")
    r = C.compute(make_req(shape=x32.shape, data=raw, model="identity", dtype="bfloat16"), timeout=T(5))
    assert r.data == raw, "identity bfloat16 did not echo the bytes"
    r = C.compute(make_req(shape=x32.shape, data=raw, model="scale", dtype="bfloat16", factor="2.5"),
                  timeout=T(5))
    assert len(r.data) == x32.size * 2
    want = sslib.f32_to_bf16_bits(xb * np.float32(2.5))
    got = np.frombuffer(r.data, "<u2").reshape(x32.shape)
    np.testing.assert_array_equal(got, want)
    # The same through torch, as a cross-check of the test's own bf16 rounding.
    import torch
    tb = torch.from_numpy(xb.copy()).to(torch.bfloat16) * 2.5
    np.testing.assert_array_equal(got, tb.view(torch.int16).numpy().view(np.uint16))


def test_dtype_explicit_float32():
    x = sslib.rng(5).standard_normal((2, 2)).astype(np.float32)
    r = C.compute(make_req(x, model="identity", dtype="float32"), timeout=T(5))
    np.testing.assert_array_equal(result(r), x)


def test_large_tensor():
    x = sslib.rng(6).standard_normal((16, 1024, 1024), dtype=np.float32)  # 64 MiB
    t0 = time.perf_counter()
    r = C.compute(make_req(x, model="identity", request_id=1), timeout=T(30))
    dt = time.perf_counter() - t0
    print("    64 MiB identity round trip: %.3fs" % dt)
    assert list(r.shape) == [16, 1024, 1024]
    assert r.data == x.tobytes(), "64 MiB identity reply differs"


def test_many_sequential_calls():
    x = np.arange(8, dtype=np.float32)
    for i in range(300):
        r = C.compute(make_req(x, model="identity", request_id=i), timeout=T(5))
        assert r.request_id == i
    assert S.threads() == sslib.IO + 2


# ------------------------------------------------------------------------------ streaming ---

def _snapshots(interval, n, timeout):
    req = pb.MonitoringStreamRequest()
    if interval is not None:
        req.sampling_interval = interval
    call = C.monitoring(req, timeout=T(timeout))
    got = []
    for msg in call:
        got.append((time.perf_counter(), msg))
        if len(got) == n:
            break
    call.cancel()
    assert len(got) == n, "stream ended after %d snapshots" % len(got)
    return got


def test_stream_monitoring():
    got = _snapshots(0.1, 5, 5)
    for _, m in got:
        assert m.HasField("snapshot")
        _check_monitoring(m.snapshot)
    gaps = [b[0] - a[0] for a, b in zip(got, got[1:])]
    ts = [m.snapshot.timestamp for _, m in got]
    assert all(b > a for a, b in zip(ts, ts[1:])), "timestamps not increasing: %r" % ts
    mean = sum(gaps) / len(gaps)
    assert 0.07 <= mean <= 0.1 + T(0.1), "mean gap %.3fs for sampling_interval 0.1 (%r)" % (mean, gaps)
    assert_alive(C)


def test_stream_monitoring_clamps():
    got = _snapshots(0.001, 4, 5)   # clamped up to 0.1 s
    span = got[-1][0] - got[0][0]
    assert span >= 0.25, "sampling_interval 0.001 was not clamped to 0.1 (3 gaps in %.3fs)" % span
    got = _snapshots(None, 2, 5)    # default 1 s
    gap = got[1][0] - got[0][0]
    assert 0.85 <= gap <= 1.0 + T(0.3), "default interval gave a %.3fs gap" % gap
    got = _snapshots(100.0, 2, 12)  # clamped down to 5 s
    gap = got[1][0] - got[0][0]
    assert 4.7 <= gap <= 5.0 + T(0.5), "sampling_interval 100 gave a %.3fs gap (want 5)" % gap
    assert S.threads() == sslib.IO + 2
    assert_alive(C)


def test_stream_cancel_many():
    calls = [C.monitoring(pb.MonitoringStreamRequest(sampling_interval=0.1), timeout=T(10))
             for _ in range(20)]
    for c in calls:
        next(c)
    for c in calls:
        c.cancel()
    time.sleep(0.3)
    assert S.threads() == sslib.IO + 2
    assert_alive(C)


# ------------------------------------------------------------------------------ backward ----

def test_compute_backward():
    g = np.ones((1, 4), np.float32)
    req = pb.BackwardRequest(grad_output_data=g.tobytes(), grad_output_shape=[1, 4],
                             forward_id="no-such-forward-123")
    expect_error(lambda: C.backward(req, timeout=T(5)), SC.NOT_FOUND, "no-such-forward-123")
    req = pb.BackwardRequest(grad_output_data=g.tobytes(), grad_output_shape=[1, 4])
    try:
        C.backward(req, timeout=T(5))
        raise AssertionError("ComputeBackward without a forward_id succeeded")
    except sslib.grpc.RpcError as e:
        print("    backward without forward_id: %s %r" % (e.code().name, e.details()))
        assert e.code() in (SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.UNIMPLEMENTED,
                            SC.FAILED_PRECONDITION), e.code()
        assert e.details(), "no message"
    assert_alive(C)


# ------------------------------------------------------------------------------ deadlines ---

def test_deadline_client_timeout():
    x = np.ones((1, 4), np.float32)
    _, dt = expect_error(lambda: C.compute(make_req(x, model="sleep", ms=2000), timeout=0.3),
                         SC.DEADLINE_EXCEEDED)
    assert dt < 0.3 + T(0.3), "DEADLINE_EXCEEDED after %.3fs" % dt
    assert_alive(C)


def test_deadline_server_side():
    """grpc-timeout alone (the raw client never resets the stream): the server must answer
    DEADLINE_EXCEEDED itself when the deadline passes."""
    body = h2raw.grpc_frame(make_req(np.ones((1, 4), np.float32), model="sleep",
                                     ms=2000).SerializeToString())
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        t0 = time.monotonic()
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", body, timeout="200m", wait_s=T(5))
        dt = (st.ended_at or time.monotonic()) - t0
        assert st.grpc_status == 4, "expected grpc-status 4 (DEADLINE_EXCEEDED), got %r" % st
        assert 0.18 <= dt < 0.2 + T(0.3), "server-side deadline answered after %.3fs" % dt
        # Other units (the spec allows at most 8 digits).
        for tmo, secs in (("150000u", 0.15), ("99999999n", 0.1), ("1S", 1.0)):
            t0 = time.monotonic()
            st = h2raw.grpc_unary(c, sslib.SVC + "Compute", body, timeout=tmo, wait_s=T(5))
            dt = (st.ended_at or time.monotonic()) - t0
            assert st.grpc_status == 4 and secs - 0.02 <= dt < secs + T(0.3), (tmo, st, dt)
        short = h2raw.grpc_frame(make_req(np.ones((1, 4), np.float32), model="sleep",
                                          ms=10).SerializeToString())
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", short, timeout="1S", wait_s=T(5))
        assert st.grpc_status == 0, st
    assert_alive(C)


def test_queued_jobs_past_deadline_not_computed():
    """--workers 1: one 500 ms spin runs; four more queue behind it with a 200 ms deadline; they
    must come back DEADLINE_EXCEEDED and must not be computed, so a later job finishes right after
    the first one, not 2 s later."""
    srv = sslib.Server("--workers", "1")
    try:
        c = sslib.connect(srv)
        x = np.ones((1, 4), np.float32)
        assert_alive(c)
        t0 = time.perf_counter()
        first = c.compute.future(make_req(x, model="spin", ms=500), timeout=T(10))
        time.sleep(0.05)
        doomed = [c.compute.future(make_req(x, model="spin", ms=500, request_id=i), timeout=0.2)
                  for i in range(4)]
        # The same through the raw client, which never resets the stream: the server's own
        # deadline handling has to drop these.
        raw = h2raw.H2Conn("127.0.0.1", srv.port)
        body = h2raw.grpc_frame(make_req(x, model="spin", ms=500).SerializeToString())
        raw_ids = []
        for _ in range(2):
            sid = h2raw.grpc_start(raw, sslib.SVC + "Compute", timeout="200m")
            raw.send_data(sid, body)
            raw_ids.append(sid)
        t_raw = time.monotonic()
        last = c.compute.future(make_req(x, model="spin", ms=10, request_id=99), timeout=T(10))
        for f in doomed:
            try:
                f.result()
                raise AssertionError("a queued call past its deadline succeeded")
            except sslib.grpc.RpcError as e:
                assert e.code() == SC.DEADLINE_EXCEEDED, e
        for sid in raw_ids:
            st = raw.wait(sid, T(5))
            assert st.grpc_status == 4, "raw queued call: %r" % st
            assert st.ended_at - t_raw < 0.2 + T(0.15), \
                "server answered the expired queued call after %.3fs" % (st.ended_at - t_raw)
        raw.close()
        first.result()
        r = last.result()
        done = time.perf_counter() - t0
        assert r.request_id == 99
        print("    last job done %.3fs after the first started" % done)
        assert done < (2.0 if sslib.SANITIZE else 1.2), \
            "the expired jobs were computed: the last job finished %.3fs after the first" % done
        c.close()
    finally:
        srv.stop_ok()


# ------------------------------------------------------------------------------ threads -----

def test_workers_zero_inline():
    srv = sslib.Server("--workers", "0")
    try:
        c = sslib.connect(srv)
        x = np.ones((2, 3), np.float32)
        r = c.compute(make_req(x, model="spin", ms=20), timeout=T(5))
        np.testing.assert_array_equal(result(r), x)
        r = c.compute(make_req(np.ones((1, 768), np.float32), model="mlp"), timeout=T(10))
        assert list(r.shape) == [1, 768]
        assert srv.threads() == sslib.IO, "--workers 0 should run on the loop thread(s), /proc says %d" % srv.threads()
        info = dict(c.info(pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        assert info.get("workers") == "0" and info.get("threads") == str(sslib.IO), info
        # Timer-based sleeps still overlap on the single thread.
        t0 = time.perf_counter()
        fs = [c.compute.future(make_req(x, model="sleep", ms=200, request_id=i), timeout=T(10))
              for i in range(100)]
        for i, f in enumerate(fs):
            assert f.result().request_id == i
        dt = time.perf_counter() - t0
        assert dt < T(1.0), "100 concurrent 200 ms sleeps took %.3fs with --workers 0" % dt
        assert srv.threads() == sslib.IO
        c.close()
    finally:
        srv.stop_ok()


def test_intra_op_threads():
    srv = sslib.Server("--workers", "1", "--intra-op-threads", "2")
    try:
        c = sslib.connect(srv)
        x = sslib.rng(7).standard_normal((64, 768)).astype(np.float32)
        for _ in range(5):
            r = c.compute(make_req(x, model="mlp"), timeout=T(20))
            assert list(r.shape) == [64, 768]
        n = srv.threads()
        info = dict(c.info(pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        print("    --workers 1 --intra-op-threads 2: %d threads, info %r" % (n, info))
        assert n <= sslib.IO + 1 * 2, "thread budget is N + W x T = %d, /proc says %d" % (sslib.IO + 2, n)
        assert int(info["threads"]) == srv.threads()
        assert info.get("intra_op_threads") == "2", info
        c.close()
    finally:
        srv.stop_ok()


# ------------------------------------------------------------------------------ CLI ---------

def _refused(args, *must_mention):
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", *args)
    assert rc != 0, "splitserve %s started (rc 0):\n%s" % (" ".join(args), out)
    assert rc > 0, "splitserve %s crashed (signal %d):\n%s" % (" ".join(args), -rc, out)
    assert "listening on" not in out, out
    assert out.strip(), "splitserve %s refused without a message" % " ".join(args)
    for m in must_mention:
        assert m.lower() in out.lower(), "refusal message does not mention %r:\n%s" % (m, out)
    sslib.check_no_sanitizer_report(out)
    return out


def test_cli_refuses_oversubscription():
    n = sslib.cores()
    _refused(["--workers", str(n + 1), "--intra-op-threads", "1"], "oversubscribe")
    _refused(["--workers", "1", "--intra-op-threads", str(n + 1)], "oversubscribe")
    srv = sslib.Server("--workers", str(n + 1), "--intra-op-threads", "1", "--oversubscribe")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        assert srv.threads() == sslib.IO + n + 1, "%d workers: /proc says %d threads" % (n + 1, srv.threads())
        c.close()
    finally:
        srv.stop_ok()


def test_cli_refuses_bad_model_spec():
    _refused(["--model", "nokindhere"], "nokindhere")
    _refused(["--model", "x=nosuchkind"], "nosuchkind")
    _refused(["--model", "=identity"])
    _refused(["--model", "x=scale,factor"])  # a key without a value
    _refused(["--bogus-flag"], "--bogus-flag")
    _refused(["--workers", "many"], "many")


def test_cli_model_aliases():
    """--model ID=KIND for built-in kinds; the first one is the default model."""
    srv = sslib.Server("--model", "echo=identity", "--model", "nap=sleep")
    try:
        c = sslib.connect(srv)
        x = np.arange(4, dtype=np.float32)
        for model in ("", "echo", "identity"):  # default = first given; built-ins stay
            r = c.compute(make_req(x, model=model), timeout=T(5))
            np.testing.assert_array_equal(result(r), x)
        t0 = time.perf_counter()
        r = c.compute(make_req(x, model="nap", ms=150), timeout=T(5))
        assert time.perf_counter() - t0 >= 0.145
        c.close()
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
