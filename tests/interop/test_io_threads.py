"""--io-threads N: connections spread over N I/O loops (SO_REUSEPORT) in front of one worker
pool; every kind of call is answered the same whatever loop its connection landed on (unary,
errors, deadlines, cancellation, server streams, drain); the process has N + W x T threads.
(The whole interop suite also runs with SS_IO_THREADS=2: ctest interop.io2.*.)"""
import os
import re
import signal
import socket
import shutil
import tempfile
import threading
import time
import urllib.request

import grpc
import numpy as np

import sslib
from sslib import SC, T, hpb, pb, make_req, result, expect_error, assert_alive

METRICS_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
X = np.arange(16, dtype=np.float32).reshape(4, 4)


def _start(io, workers=2, *extra):
    srv = sslib.Server("--io-threads", io, "--workers", workers, "--metrics-listen",
                       "127.0.0.1:0", *extra)
    line = srv.wait_for_line(METRICS_RE.pattern, timeout=5)
    assert line, "no 'metrics on' line:\n" + srv.log
    srv.mport = int(METRICS_RE.search(line).group(1))
    return srv


def _io_connections(srv):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv.mport, timeout=T(5)) as r:
        text = r.read().decode()
    return {int(m.group(1)): int(m.group(2)) for m in
            re.finditer(r'^splitserve_io_connections\{io="(\d+)"\} (\d+)$', text, re.M)}


def _channels(srv, n):
    stubs = [sslib.connect(srv, separate=True) for _ in range(n)]
    for s in stubs:
        assert_alive(s)
    return stubs


def test_connections_spread_and_threads():
    """16 connections over 2 loops: both loops hold some (the kernel hashes each connection to
    one listener: all 16 on one loop has probability 2^-15); threads are exactly N + W x T."""
    srv = _start(2)
    try:
        stubs = _channels(srv, 16)
        per = _io_connections(srv)
        print("    connections per I/O loop: %s" % per)
        assert sorted(per) == [0, 1], per
        assert sum(per.values()) == 16, per
        assert min(per.values()) >= 1, "every connection landed on one loop: %s" % per
        info = dict(stubs[0].info(pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        assert info["io_threads"] == "2", info
        assert info["thread_budget"] == "4", info
        assert srv.threads() == 4 + sslib.TSAN_THREADS == int(info["threads"]), (srv.threads(), info)
        for s in stubs:
            s.close()
    finally:
        srv.stop_ok()


def test_results_equal_on_every_loop():
    """Concurrent mlp and identity calls with distinct inputs over 12 connections: each result
    equals the one computed alone (the answer travels back to the right stream)."""
    srv = _start(3)
    try:
        stubs = _channels(srv, 12)
        g = sslib.rng(11)
        xs = [g.standard_normal((1, 10, 768)).astype(np.float32) for _ in range(24)]
        alone = [result(stubs[0].compute(make_req(x, model="mlp"), timeout=T(20))) for x in xs]
        errors = []

        def worker(k):
            try:
                for rep in range(4):
                    for i in range(k % 3, len(xs), 3):
                        s = stubs[(k + i + rep) % len(stubs)]
                        r = s.compute(make_req(xs[i], model="mlp", request_id=i), timeout=T(20))
                        assert r.request_id == i
                        np.testing.assert_array_equal(result(r), alone[i])
                        e = g_local.standard_normal((2, 5)).astype(np.float32)
                        r = s.compute(make_req(e, model="identity"), timeout=T(20))
                        np.testing.assert_array_equal(result(r).reshape(2, 5), e)
            except BaseException as e:  # noqa: B902 - reported by the main thread
                errors.append(repr(e))

        g_local = np.random.default_rng(5)
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[:3]
        for s in stubs:
            s.close()
    finally:
        srv.stop_ok()


def test_errors_deadlines_cancellation():
    """A refusal from the service, a deadline the server enforces, and a cancelled call, on
    connections of every loop; the server stays healthy and its threads fixed."""
    srv = _start(2)
    try:
        stubs = _channels(srv, 8)
        idle = srv.threads()
        for s in stubs:
            expect_error(lambda: s.compute(make_req(X, model="nosuch"), timeout=T(5)),
                         SC.NOT_FOUND, "nosuch")
            t0 = time.perf_counter()
            expect_error(lambda: s.compute(make_req(X, model="sleep", ms=3000), timeout=0.2),
                         SC.DEADLINE_EXCEEDED)
            assert time.perf_counter() - t0 < T(2.5), "deadline not enforced"
            f = s.compute.future(make_req(X, model="sleep", ms=3000), timeout=T(10))
            time.sleep(0.05)
            f.cancel()
        for s in stubs:
            assert_alive(s)
            r = s.compute(make_req(X, model="scale", factor=2), timeout=T(5))
            np.testing.assert_array_equal(result(r), 2 * X)
        assert srv.threads() == idle
        for s in stubs:
            s.close()
    finally:
        srv.stop_ok()


def test_drain_under_load_with_watch_streams():
    """SIGTERM with calls in flight on every loop and a health Watch stream on each connection:
    every in-flight call answers OK, every Watch sees NOT_SERVING and ends, exit code 0."""
    srv = _start(2)
    try:
        stubs = _channels(srv, 8)
        watches = [s.h_watch(hpb.HealthCheckRequest(service=""), timeout=T(20)) for s in stubs]
        for w in watches:
            assert next(w).status == hpb.HealthCheckResponse.SERVING
        fs = [stubs[i % 8].compute.future(make_req(X, model="sleep", ms=400, request_id=i),
                                          timeout=T(20)) for i in range(32)]
        time.sleep(0.15)
        srv.signal(signal.SIGTERM)
        for i, f in enumerate(fs):
            r = f.result()
            assert r.request_id == i
            np.testing.assert_array_equal(result(r), X)
        for w in watches:
            seen = [m.status for m in w]  # ends when the server ends the stream
            assert hpb.HealthCheckResponse.NOT_SERVING in seen, seen
        rc = srv.wait(T(10))
        assert rc == 0, "exit code %r:\n%s" % (rc, sslib.tail(srv.log))
        assert re.search(r"served \d+", srv.log), sslib.tail(srv.log)
    finally:
        if srv.alive():
            srv.kill()


def test_connection_limits_count_across_loops():
    """--max-connections-per-peer is one count for the whole server, not one per loop: 16
    connections spread over 2 loops fill it, the 17th gets GOAWAY naming the flag."""
    srv = _start(2, 1, "--max-connections-per-peer", "16")
    try:
        stubs = _channels(srv, 16)
        per = _io_connections(srv)
        assert min(per.values()) >= 1, "all 16 on one loop: %s" % per
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.settimeout(T(5))
        data = b""
        try:
            while True:
                chunk = extra.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        extra.close()
        assert b"--max-connections-per-peer" in data, data
        for s in stubs:
            assert_alive(s)
            s.close()
    finally:
        srv.stop_ok()


def test_second_server_on_the_port_is_refused():
    """The loops share their port with SO_REUSEPORT, but only among themselves: a second server
    on the same port fails to start ("address already in use"), as it does with one loop."""
    srv = _start(2)
    try:
        for io in ("2", "1"):
            rc, out = sslib.run_cli("--listen", "127.0.0.1:%d" % srv.port, "--io-threads", io)
            assert rc > 0 and "address already in use" in out.lower(), (io, rc, out)
        c = sslib.connect(srv)
        assert_alive(c)
        c.close()
    finally:
        srv.stop_ok()


def test_config_key_and_bounds():
    """io_threads in the YAML file; values outside 1..64 are refused with the key named."""
    d = tempfile.mkdtemp(prefix="ss-io-")
    good = os.path.join(d, "good.yaml")
    with open(good, "w") as f:
        f.write("io_threads: 3\nworkers: 1\n")
    io, sslib.IO_THREADS = sslib.IO_THREADS, 1  # the file's value, not the suite-wide one
    try:
        srv = sslib.Server("--config", good)
    finally:
        sslib.IO_THREADS = io
    try:
        c = sslib.connect(srv)
        info = dict(c.info(pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        assert info["io_threads"] == "3", info
        assert srv.threads() == 3 + 1 + sslib.TSAN_THREADS
        c.close()
    finally:
        srv.stop_ok()
    bad = os.path.join(d, "bad.yaml")
    with open(bad, "w") as f:
        f.write("io_threads: 0\n")
    rc, out = sslib.run_cli("--config", bad)
    assert rc not in (0, None) and rc > 0 and "io_threads" in out, (rc, out)
    rc, out = sslib.run_cli("--io-threads", "65")
    assert rc > 0 and "--io-threads" in out, (rc, out)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sslib.main(globals())
