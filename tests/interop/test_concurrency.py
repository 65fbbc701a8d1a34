"""Concurrency with a fixed thread budget: 512 concurrent timer-based calls, overload with a
bounded queue (fail fast), per-model in-flight limits, many connections, cancellation."""
import threading
import time

import grpc
import numpy as np

import sslib
from sslib import SC, T, pb, make_req, result, expect_error, assert_alive

X = np.arange(16, dtype=np.float32).reshape(4, 4)


class ThreadSampler:
    """Samples /proc/PID/status Threads: every few ms while the load runs."""

    def __init__(self, server, period=0.005):
        self.server = server
        self.period = period
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.server.threads())
            except (OSError, AssertionError):
                return
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _sleep_burst(server, stubs_list, n, ms=100):
    """n concurrent sleep calls spread over stubs_list; returns (wall, thread samples)."""
    reqs = [make_req(X, model="sleep", ms=ms, request_id=i) for i in range(n)]
    with ThreadSampler(server) as ts:
        t0 = time.perf_counter()
        fs = [stubs_list[i % len(stubs_list)].compute.future(reqs[i], timeout=T(10))
              for i in range(n)]
        errors = []
        for i, f in enumerate(fs):
            try:
                r = f.result()
                assert r.request_id == i, (i, r.request_id)
                assert list(r.shape) == [4, 4]
                np.testing.assert_array_equal(result(r), X)
            except grpc.RpcError as e:
                errors.append((i, e.code().name, e.details()))
        wall = time.perf_counter() - t0
    assert not errors, "%d of %d calls failed, e.g. %r" % (len(errors), n, errors[:3])
    return wall, ts.samples


def test_512_concurrent_sleep():
    srv = sslib.Server("--workers", "2", "--intra-op-threads", "1")
    try:
        stubs = [sslib.connect(srv, separate=True) for _ in range(4)]
        for s in stubs:
            assert_alive(s)
        idle = srv.threads()
        info = dict(stubs[0].info(pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        assert idle == sslib.IO + 2, "--workers 2 --intra-op-threads 1: %d threads idle (want %d)" % (idle, sslib.IO + 2)
        assert int(info["threads"]) == idle, (info, idle)
        wall, samples = _sleep_burst(srv, stubs, 512)
        print("    512 x sleep(100 ms) over 4 connections: %.3fs wall; threads sampled %d times: %s"
              % (wall, len(samples), sorted(set(samples))))
        assert samples, "no thread samples"
        assert set(samples) == {idle}, "thread count moved under load: %s (idle %d)" % (
            sorted(set(samples)), idle)
        if sslib.SANITIZE:
            print("    (sanitizer build: wall time not asserted)")
        else:
            assert wall < 1.0, "512 concurrent 100 ms sleeps took %.3fs" % wall
        info = dict(stubs[0].info(pb.ServiceInfoRequest(), timeout=T(5)).custom_info)
        assert int(info["threads"]) == idle
        for s in stubs:
            s.close()
    finally:
        srv.stop_ok()


def test_512_concurrent_sleep_one_connection():
    srv = sslib.Server("--workers", "2", "--intra-op-threads", "1")
    try:
        c = sslib.connect(srv, separate=True)
        assert_alive(c)
        idle = srv.threads()
        wall, samples = _sleep_burst(srv, [c], 512)
        print("    512 x sleep(100 ms) on one connection: %.3fs wall; threads %s"
              % (wall, sorted(set(samples))))
        assert set(samples) == {idle} and idle == sslib.IO + 2, (sorted(set(samples)), idle)
        if sslib.SANITIZE:
            print("    (sanitizer build: wall time not asserted)")
        else:
            assert wall < 1.0, "512 concurrent 100 ms sleeps on one connection took %.3fs" % wall
        c.close()
    finally:
        srv.stop_ok()


def test_many_connections_fixed_threads():
    srv = sslib.Server("--workers", "2")
    try:
        idle = srv.threads()
        stubs = [sslib.connect(srv, separate=True) for _ in range(64)]
        wall, samples = _sleep_burst(srv, stubs, 256, ms=200)
        print("    256 calls over 64 connections: %.3fs; threads %s" % (wall, sorted(set(samples))))
        assert set(samples) == {idle}, (sorted(set(samples)), idle)
        for s in stubs:
            s.close()
        time.sleep(0.2)
        assert srv.threads() == idle
    finally:
        srv.stop_ok()


def test_overload_fails_fast():
    """--workers 1 --max-queue 4 --max-inflight 1, 20 concurrent 200 ms spins: 1 runs, 4 wait,
    15 are refused at once with RESOURCE_EXHAUSTED."""
    srv = sslib.Server("--workers", "1", "--max-queue", "4", "--max-inflight", "1")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        done_at = {}
        lock = threading.Lock()

        def on_done(i):
            def cb(_f):
                with lock:
                    done_at[i] = time.perf_counter()
            return cb

        reqs = [make_req(X, model="spin", ms=200, request_id=i) for i in range(20)]
        sent_at = []
        fs = []
        for i in range(20):
            sent_at.append(time.perf_counter())
            f = c.compute.future(reqs[i], timeout=T(10))
            f.add_done_callback(on_done(i))
            fs.append(f)
        # Another model is not starved by spin's full queue.
        t0 = time.perf_counter()
        r = c.compute(make_req(X, model="identity", request_id=777), timeout=T(5))
        other = time.perf_counter() - t0
        assert r.request_id == 777
        ok, refused, other_err = [], [], []
        for i, f in enumerate(fs):
            try:
                f.result()
                ok.append(i)
            except grpc.RpcError as e:
                if e.code() == SC.RESOURCE_EXHAUSTED:
                    refused.append((i, e.details()))
                else:
                    other_err.append((i, e.code().name, e.details()))
        time.sleep(0.05)
        lat = {i: done_at[i] - sent_at[i] for i in done_at}
        ok_lat = sorted(lat[i] for i in ok)
        re_lat = [lat[i] for i, _ in refused]
        print("    ok %s; refused %d (slowest refusal %.1f ms, message %r); identity meanwhile %.1f ms"
              % (["%.2f" % v for v in ok_lat], len(refused), 1000 * max(re_lat or [0]),
                 refused[0][1] if refused else None, 1000 * other))
        assert not other_err, other_err
        assert len(ok) == 5 and len(refused) == 15, "ok %d, refused %d (want 5 and 15)" % (
            len(ok), len(refused))
        assert max(re_lat) < T(0.1), "a refusal took %.3fs" % max(re_lat)
        assert all("queue" in d.lower() for _, d in refused), refused[0]
        assert ok_lat[-1] >= 0.95, "5 serial 200 ms spins done in %.3fs: not one at a time" % ok_lat[-1]
        assert ok_lat[-1] < 1.0 + T(0.5), ok_lat
        assert other < T(0.5), "identity waited %.3fs behind spin's queue" % other
        # Afterwards the model works again.
        r = c.compute(make_req(X, model="spin", ms=10), timeout=T(5))
        np.testing.assert_array_equal(result(r), X)
        c.close()
    finally:
        srv.stop_ok()


def test_workers_run_in_parallel():
    srv = sslib.Server("--workers", "2")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        t0 = time.perf_counter()
        fs = [c.compute.future(make_req(X, model="spin", ms=200), timeout=T(10)) for _ in range(4)]
        for f in fs:
            f.result()
        wall = time.perf_counter() - t0
        print("    4 x spin(200 ms) on 2 workers: %.3fs" % wall)
        assert 0.38 <= wall < 0.4 + T(0.2), "4 x 200 ms spins on 2 workers took %.3fs" % wall
        c.close()
    finally:
        srv.stop_ok()


def test_max_inflight_per_model():
    srv = sslib.Server("--workers", "2", "--max-inflight", "1")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        t0 = time.perf_counter()
        fs = [c.compute.future(make_req(X, model="spin", ms=200), timeout=T(10)) for _ in range(3)]
        time.sleep(0.05)
        # A different model is not held back by spin's limit.
        t1 = time.perf_counter()
        c.compute(make_req(X, model="scale", factor=2), timeout=T(5))
        other = time.perf_counter() - t1
        for f in fs:
            f.result()
        wall = time.perf_counter() - t0
        print("    3 x spin(200 ms) with --max-inflight 1: %.3fs; scale meanwhile %.1f ms"
              % (wall, 1000 * other))
        assert wall >= 0.58, "--max-inflight 1 let spins overlap (%.3fs)" % wall
        assert other < T(0.1), "scale waited %.3fs behind spin's in-flight limit" % other
        c.close()
    finally:
        srv.stop_ok()


def test_sleep_does_not_hold_workers():
    srv = sslib.Server("--workers", "1")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        fs = [c.compute.future(make_req(X, model="sleep", ms=500), timeout=T(10)) for _ in range(50)]
        time.sleep(0.05)
        t0 = time.perf_counter()
        c.compute(make_req(X, model="spin", ms=50), timeout=T(5))
        dt = time.perf_counter() - t0
        assert dt < 0.05 + T(0.15), "a spin waited %.3fs behind sleeping calls" % dt
        for f in fs:
            f.result()
        c.close()
    finally:
        srv.stop_ok()


def test_cancel_under_load():
    srv = sslib.Server("--workers", "2")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        idle = srv.threads()
        fs = [c.compute.future(make_req(X, model="sleep", ms=400, request_id=i), timeout=T(10))
              for i in range(200)]
        spins = [c.compute.future(make_req(X, model="spin", ms=100), timeout=T(10)) for _ in range(10)]
        time.sleep(0.1)
        for f in fs[::2] + spins[::2]:
            f.cancel()
        for i, f in enumerate(fs):
            if i % 2:
                assert f.result().request_id == i
            else:
                assert f.cancelled()
        for i, f in enumerate(spins):
            if i % 2:
                f.result()
        assert srv.threads() == idle
        assert_alive(c)
        c.close()
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
