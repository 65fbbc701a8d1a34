"""Graceful shutdown: SIGTERM/SIGINT -> health NOT_SERVING, new calls refused (UNAVAILABLE),
in-flight calls finish (up to --drain-timeout), exit 0 with a one-line summary; a second
signal exits at once."""
import re
import signal
import threading
import time

import grpc
import numpy as np

import sslib
from sslib import SC, T, hpb, make_req, result, assert_alive

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _summary(log, after):
    """The summary line printed on exit (it names served/rejected/cancelled counts)."""
    lines = [l for l in log.splitlines()[after:] if re.search(r"\bserved\b", l)]
    assert lines, "no summary line (served/rejected/cancelled) on stderr after the signal:\n%s" % \
        sslib.tail(log)
    line = lines[-1]
    for word in ("served", "rejected", "cancelled"):
        assert word in line, "summary line %r does not mention %r" % (line, word)
    return line


def _count(line, word):
    m = re.search(r"\b%s\b\D{0,3}(\d+)|(\d+)\s+%s\b" % (word, word), line)
    return int(m.group(1) or m.group(2)) if m else None


def test_sigterm_with_64_in_flight():
    srv = sslib.Server("--workers", "2")
    c = sslib.connect(srv)
    assert_alive(c)
    watch = c.h_watch(hpb.HealthCheckRequest(service=""), timeout=T(10))
    first = next(watch)
    assert first.status == hpb.HealthCheckResponse.SERVING, first
    fs = [c.compute.future(make_req(X, model="sleep", ms=500, request_id=i), timeout=T(10))
          for i in range(64)]
    time.sleep(0.15)
    nlines = len(srv.log.splitlines())
    t_sig = time.perf_counter()
    srv.signal(signal.SIGTERM)

    # A new connection made once the server is draining is refused. (Not merely after kill():
    # the signal is handled on the server's next loop iteration, and a connection accepted
    # before that is a client of the running server, whose calls the drain serves.)
    deadline = time.monotonic() + T(5)  # every I/O loop logs its drain
    while srv.log.count("draining: ") < sslib.IO_THREADS and time.monotonic() < deadline:
        time.sleep(0.005)
    assert srv.log.count("draining: ") >= sslib.IO_THREADS, sslib.tail(srv.log)
    late = sslib.connect(srv, separate=True)
    t0 = time.perf_counter()
    try:
        late.compute(make_req(X, model="identity"), timeout=T(3))
        raise AssertionError("a new call after SIGTERM succeeded")
    except grpc.RpcError as e:
        assert e.code() == SC.UNAVAILABLE, "new call after SIGTERM: %s %r" % (e.code().name, e.details())
    assert time.perf_counter() - t0 < T(1.0), "the refusal was not immediate"
    late.close()

    # Health goes NOT_SERVING.
    nxt = next(watch)
    assert nxt.status == hpb.HealthCheckResponse.NOT_SERVING, nxt

    # Every in-flight call is answered correctly.
    bad = []
    for i, f in enumerate(fs):
        try:
            r = f.result()
            assert r.request_id == i
            np.testing.assert_array_equal(result(r), X)
        except grpc.RpcError as e:
            bad.append((i, e.code().name, e.details()))
    assert not bad, "%d of 64 in-flight calls failed during drain: %r" % (len(bad), bad[:3])
    rc = srv.wait(T(5))
    took = time.perf_counter() - t_sig
    assert rc is not None, "still running 5 s after SIGTERM with nothing left in flight"
    sslib.check_no_sanitizer_report(srv.log)
    assert rc == 0, "exit code %r after SIGTERM:\n%s" % (rc, sslib.tail(srv.log))
    line = _summary(srv.log, nlines)
    print("    exited %.2fs after SIGTERM; summary: %s" % (took, line))
    served = _count(line, "served")
    assert served is None or served >= 64 + 1, "summary says served %r, expected >= 65" % served
    assert took < 0.5 + T(1.5), "exit took %.2fs after SIGTERM (calls ended at ~0.35 s)" % took
    c.close()


def test_drain_timeout():
    srv = sslib.Server("--workers", "2", "--drain-timeout", "1")
    c = sslib.connect(srv)
    assert_alive(c)
    fs = [c.compute.future(make_req(X, model="sleep", ms=8000), timeout=T(20)) for _ in range(4)]
    spins = [c.compute.future(make_req(X, model="spin", ms=3000), timeout=T(20)) for _ in range(2)]
    time.sleep(0.2)
    t_sig = time.perf_counter()
    srv.signal(signal.SIGTERM)
    for f in fs + spins:
        try:
            f.result()
            raise AssertionError("a call longer than the drain timeout succeeded")
        except grpc.RpcError as e:
            assert e.code() in (SC.UNAVAILABLE, SC.CANCELLED, SC.DEADLINE_EXCEEDED), e
    answered = time.perf_counter() - t_sig
    rc = srv.wait(T(5))
    took = time.perf_counter() - t_sig
    print("    drain-timeout 1: calls answered after %.2fs, exit %r after %.2fs" % (answered, rc, took))
    assert rc == 0, "exit code %r after the drain timeout:\n%s" % (rc, sslib.tail(srv.log))
    sslib.check_no_sanitizer_report(srv.log)
    assert 0.9 <= answered < 1.0 + T(1.0), "calls were answered %.2fs after SIGTERM" % answered
    assert took < 1.0 + T(1.5), "exit %.2fs after SIGTERM with --drain-timeout 1" % took
    c.close()


def test_second_signal_exits_at_once():
    srv = sslib.Server("--workers", "1", "--drain-timeout", "30")
    c = sslib.connect(srv)
    assert_alive(c)
    fs = [c.compute.future(make_req(X, model="sleep", ms=20000), timeout=T(40)) for _ in range(4)]
    time.sleep(0.2)
    srv.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert srv.alive(), "exited on the first signal with calls in flight"
    t0 = time.perf_counter()
    srv.signal(signal.SIGTERM)
    rc = srv.wait(T(2))
    took = time.perf_counter() - t0
    assert rc is not None, "still running after a second SIGTERM"
    print("    second SIGTERM: exit %r after %.2fs" % (rc, took))
    assert rc >= 0, "killed by signal %d on the second SIGTERM" % -rc
    sslib.check_no_sanitizer_report(srv.log)
    assert took < T(1.0)
    for f in fs:  # the clients learn of it (connection gone), nothing hangs
        try:
            f.result(timeout=T(5))
            raise AssertionError("a 20 s sleep succeeded")
        except grpc.RpcError as e:
            assert e.code() in (SC.UNAVAILABLE, SC.CANCELLED), e
    c.close()


def test_sigint_idle_with_open_connection():
    srv = sslib.Server("--workers", "2")
    c = sslib.connect(srv)
    assert_alive(c)  # an idle but open connection must not hold up the exit
    nlines = len(srv.log.splitlines())
    t0 = time.perf_counter()
    rc, log = srv.stop(timeout=5, sig=signal.SIGINT)
    took = time.perf_counter() - t0
    assert rc == 0, "exit code %r after SIGINT" % rc
    sslib.check_no_sanitizer_report(log)
    _summary(log, nlines)
    assert took < T(1.0), "idle server took %.2fs to exit on SIGINT" % took
    c.close()


def test_sigterm_with_streams_open():
    """Open server streams (StreamMonitoring, Health Watch) end on drain; they do not hold the
    server until the drain timeout."""
    srv = sslib.Server("--workers", "1", "--drain-timeout", "10")
    c = sslib.connect(srv)
    mon = c.monitoring(sslib.pb.MonitoringStreamRequest(sampling_interval=0.1), timeout=T(20))
    next(mon)
    w = c.h_watch(hpb.HealthCheckRequest(), timeout=T(20))
    next(w)
    got = []

    def drain_stream():
        try:
            for m in mon:
                got.append(m)
        except grpc.RpcError as e:
            got.append(e.code())

    th = threading.Thread(target=drain_stream, daemon=True)
    th.start()
    t0 = time.perf_counter()
    srv.signal(signal.SIGTERM)
    rc = srv.wait(T(5))
    took = time.perf_counter() - t0
    assert rc == 0, "exit %r:\n%s" % (rc, sslib.tail(srv.log))
    sslib.check_no_sanitizer_report(srv.log)
    print("    exit %.2fs after SIGTERM with two open streams" % took)
    assert took < T(2.0), "open streams held the drain for %.2fs" % took
    th.join(T(5))
    assert not th.is_alive(), "the monitoring stream never ended"
    c.close()


def test_calls_racing_the_signal():
    """Calls sent continuously while SIGTERM arrives: each gets OK or UNAVAILABLE, none hangs
    or gets another status."""
    srv = sslib.Server("--workers", "2")
    c = sslib.connect(srv)
    assert_alive(c)
    stop = threading.Event()
    codes = {}
    lock = threading.Lock()

    def pump():
        while not stop.is_set():
            try:
                c.compute(make_req(X, model="sleep", ms=20), timeout=T(5))
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with lock:
                codes[code] = codes.get(code, 0) + 1

    ths = [threading.Thread(target=pump, daemon=True) for _ in range(8)]
    for th in ths:
        th.start()
    time.sleep(0.3)
    srv.signal(signal.SIGTERM)
    rc = srv.wait(T(5))
    stop.set()
    for th in ths:
        th.join(T(10))
    print("    outcomes: %r" % codes)
    assert rc == 0, "exit %r:\n%s" % (rc, sslib.tail(srv.log))
    sslib.check_no_sanitizer_report(srv.log)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes.get("OK", 0) > 10
    c.close()


if __name__ == "__main__":
    sslib.main(globals())
