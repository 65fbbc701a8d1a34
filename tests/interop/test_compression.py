"""gRPC message compression: compressed requests (grpc-encoding gzip / deflate) are inflated
with --max-message-bytes as the limit on the inflated size (a zip bomb is refused with
RESOURCE_EXHAUSTED without the server allocating more than the limit), and with
--compress-responses the response is compressed with what the client lists in
grpc-accept-encoding. Python grpcio (channel and per-call compression) and raw HTTP/2 (h2raw).
"""
import gzip
import time
import zlib

import numpy as np

import grpc

import h2raw
import sslib
from sslib import SC, T, make_req, result, expect_error, assert_alive


def _check(st, x, **kw):
    resp = st.compute(make_req(x, model="identity", request_id=3), timeout=T(10), **kw)
    assert resp.request_id == 3
    np.testing.assert_array_equal(result(resp), x)


def test_grpcio_gzip_and_deflate_requests():
    srv = sslib.Server()
    try:
        x = np.arange(4096, dtype=np.float32).reshape(16, 256) % 7  # compressible
        # channel-wide gzip
        ch = sslib.channel(srv, separate=True)
        ch = grpc.insecure_channel(srv.target, options=sslib.GRPC_OPTIONS + [
            ("grpc.use_local_subchannel_pool", 1)], compression=grpc.Compression.Gzip)
        st = sslib.Stubs(ch)
        _check(st, x)
        assert st.health(sslib.pb.HealthRequest(), timeout=T(5)).status == "ok"
        st.close()
        # per call: gzip and deflate on an identity channel
        st = sslib.connect(srv, separate=True)
        _check(st, x, compression=grpc.Compression.Gzip)
        _check(st, x, compression=grpc.Compression.Deflate)
        _check(st, x)
        st.close()
    finally:
        srv.stop_ok()


def _raw_compute(port, body, extra, wait=5.0):
    with h2raw.H2Conn("127.0.0.1", port) as c:
        return h2raw.grpc_unary(c, sslib.SVC + "Compute", body, extra=extra, wait_s=T(wait))


def test_raw_gzip_deflate_and_corrupt():
    srv = sslib.Server()
    try:
        x = np.ones(1000, np.float32)
        msg = make_req(x, model="identity").SerializeToString()
        for name, data in (("gzip", gzip.compress(msg)), ("deflate", zlib.compress(msg))):
            st = _raw_compute(srv.port, h2raw.grpc_frame(data, compressed=True),
                              [("grpc-encoding", name)])
            assert st.grpc_status == 0, (name, st)
            assert st.header("grpc-accept-encoding") == "identity,deflate,gzip", st
            assert st.header("grpc-encoding") in (None, "identity"), st  # responses off by default
            (flag, out), = st.grpc_messages()
            assert flag == 0
            np.testing.assert_array_equal(result(sslib.pb.ComputeResponse.FromString(out)), x)
        # corrupt and truncated streams: INTERNAL, the server lives on
        for data in (b"\x1f\x8b\x08\x00garbage-garbage", gzip.compress(msg)[:-10]):
            st = _raw_compute(srv.port, h2raw.grpc_frame(data, compressed=True),
                              [("grpc-encoding", "gzip")])
            assert st.grpc_status == 13, st
            assert "gzip" in st.grpc_message, st.grpc_message
        assert_alive(sslib.connect(srv))
    finally:
        srv.stop_ok()


def test_zip_bomb():
    """64 MiB of zeros in ~64 KiB of gzip against a 1 MiB limit: RESOURCE_EXHAUSTED, and the
    server's peak memory grows by about the limit, not by the inflated size."""
    limit = 1 << 20
    srv = sslib.Server("--max-message-bytes", limit, "--workers", "1")
    try:
        st = sslib.connect(srv)
        assert_alive(st)
        hwm0 = srv.rss_kib("VmHWM")
        bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
        assert len(bomb) < limit
        for _ in range(3):
            s = _raw_compute(srv.port, h2raw.grpc_frame(bomb, compressed=True),
                             [("grpc-encoding", "gzip")], wait=20)
            assert s.grpc_status == 8, s
            assert "inflates" in s.grpc_message and "max-message-bytes" in s.grpc_message, s
        grew = srv.rss_kib("VmHWM") - hwm0
        print("    zip bomb: %d-byte message (64 MiB inflated) refused; peak RSS +%d KiB"
              % (len(bomb), grew))
        assert grew < 24 * 1024, "peak RSS grew by %d KiB" % grew
        # just under the limit inflates fine
        x = np.zeros((limit - 4096) // 4, np.float32)
        msg = make_req(x, model="identity").SerializeToString()
        s = _raw_compute(srv.port, h2raw.grpc_frame(gzip.compress(msg), compressed=True),
                         [("grpc-encoding", "gzip")], wait=20)
        assert s.grpc_status == 0, s
        assert_alive(st)
    finally:
        srv.stop_ok()


def test_compress_responses():
    srv = sslib.Server("--compress-responses")
    try:
        x = (np.arange(20000, dtype=np.float32) % 5).reshape(100, 200)
        msg = make_req(x, model="identity").SerializeToString()
        for accept, enc, unz in (("gzip", "gzip", gzip.decompress),
                                 ("identity, deflate", "deflate", zlib.decompress),
                                 ("deflate,gzip", "deflate", zlib.decompress)):
            st = _raw_compute(srv.port, h2raw.grpc_frame(msg), [("grpc-accept-encoding", accept)])
            assert st.grpc_status == 0, st
            assert st.header("grpc-encoding") == enc, (accept, st)
            (flag, out), = st.grpc_messages()
            assert flag == 1
            assert len(out) < len(msg) // 4, (len(out), len(msg))
            np.testing.assert_array_equal(
                result(sslib.pb.ComputeResponse.FromString(unz(out))), x)
        # a client that accepts only identity gets identity
        st = _raw_compute(srv.port, h2raw.grpc_frame(msg), [("grpc-accept-encoding", "identity")])
        assert st.grpc_status == 0 and st.header("grpc-encoding") in (None, "identity"), st
        assert st.grpc_messages()[0][0] == 0
        # errors stay trailers-only, uncompressed
        st = _raw_compute(srv.port, h2raw.grpc_frame(b"\xff\xff"), [("grpc-accept-encoding", "gzip")])
        assert st.grpc_status not in (None, 0), st
        # grpcio (accepts gzip/deflate by default) decodes them transparently
        stubs = sslib.connect(srv, separate=True)
        _check(stubs, x)
        _check(stubs, x, compression=grpc.Compression.Gzip)
        assert stubs.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).service_name
        stubs.close()
    finally:
        srv.stop_ok()


MiB = 1 << 20
# ASan keeps freed memory in its quarantine: RSS bounds get that much slack there.
RSS_SLACK_KIB = 300 * 1024 if sslib.SANITIZE else 0


def _gz_request(mib, model="identity"):
    """A ComputeRequest whose tensor is `mib` MiB of zeros, gzip'd (about 1 KB per MiB)."""
    x = np.zeros((mib * MiB) // 4, np.float32)
    return gzip.compress(make_req(x, model=model).SerializeToString(), compresslevel=9)


class _Batch:
    """Socket stand-in: frames are gathered and go out in one sendall (one TCP write)."""

    def __init__(self, sock):
        self.sock, self.parts = sock, []

    def sendall(self, b):
        self.parts.append(bytes(b))

    def flush(self):
        self.sock.sendall(b"".join(self.parts))


def test_gzip_counted_against_budget():
    """Issue 20 (2): inflated bytes count against the connection's buffer budget. Six 48 MiB
    requests of ~48 KB gzip each on one connection (16 MiB budget): each is refused with
    RESOURCE_EXHAUSTED naming the budget, and the server holds at most about the budget (it used
    to inflate every one: 6 x 48 MiB). A request that fits the budget is served."""
    srv = sslib.Server("--max-message-bytes", 128 * MiB, "--max-connection-buffer-mb", 16,
                       "--workers", "1")
    try:
        bomb = _gz_request(48)
        hwm0 = srv.rss_kib("VmHWM")
        with h2raw.H2Conn("127.0.0.1", srv.port, timeout=T(30)) as c:
            sids = []
            for _ in range(6):
                sid = h2raw.grpc_start(c, sslib.SVC + "Compute", extra=[("grpc-encoding", "gzip")])
                c.send_data(sid, h2raw.grpc_frame(bomb, compressed=True), end_stream=True)
                sids.append(sid)
            for sid in sids:
                st = c.wait(sid, T(30))
                assert st.grpc_status == SC.RESOURCE_EXHAUSTED.value[0], st
                assert "buffer budget of 16 MiB (--max-connection-buffer-mb)" in \
                    st.grpc_message, st.grpc_message
        grew = srv.rss_kib("VmHWM") - hwm0
        print("    6 x %d-byte gzip requests (48 MiB inflated each), 16 MiB budget: "
              "RESOURCE_EXHAUSTED; peak RSS +%d MiB" % (len(bomb), grew // 1024))
        assert grew < 48 * 1024 + RSS_SLACK_KIB, "peak RSS grew by %d KiB" % grew
        s = _raw_compute(srv.port, h2raw.grpc_frame(_gz_request(8), compressed=True),
                         [("grpc-encoding", "gzip")], wait=30)
        assert s.grpc_status == 0, s
        assert_alive(sslib.connect(srv))
    finally:
        srv.stop_ok()


def test_gzip_refused_before_inflating_without_token():
    """Issue 20 (3): with --auth-tokens a request without a token is refused from its headers
    (UNAUTHENTICATED) before its body is buffered or inflated: 4 x 48 MiB gzip requests cost
    nothing (each used to be inflated first, then refused)."""
    import os
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="ss-gz-auth-")
    tok = os.path.join(tmp, "tokens")
    with open(tok, "w") as f:
        f.write("gz-token-1234\n")
    os.chmod(tok, 0o600)
    srv = sslib.Server("--auth-tokens", tok, "--max-message-bytes", 128 * MiB,
                       "--max-connection-buffer-mb", 256)
    try:
        bomb = _gz_request(48)
        hwm0 = srv.rss_kib("VmHWM")
        with h2raw.H2Conn("127.0.0.1", srv.port, timeout=T(30)) as c:
            sids = []
            for i in range(4):
                extra = [("grpc-encoding", "gzip")]
                if i % 2:
                    extra.append(("authorization", "Bearer wrong-token"))
                sid = h2raw.grpc_start(c, sslib.SVC + "Compute", extra=extra)
                c.send_data(sid, h2raw.grpc_frame(bomb, compressed=True), end_stream=True)
                sids.append(sid)
            for sid in sids:
                st = c.wait(sid, T(30))
                assert st.grpc_status == SC.UNAUTHENTICATED.value[0], st
                assert "credentials" in st.grpc_message or "invalid token" in st.grpc_message, st
        grew = srv.rss_kib("VmHWM") - hwm0
        print("    4 x 48 MiB gzip requests without a valid token: UNAUTHENTICATED; peak RSS "
              "+%d MiB" % (grew // 1024))
        assert grew < 24 * 1024 + RSS_SLACK_KIB, "peak RSS grew by %d KiB" % grew
        # with the token the same kind of request is inflated and served
        s = _raw_compute(srv.port, h2raw.grpc_frame(_gz_request(1), compressed=True),
                         [("grpc-encoding", "gzip"), ("authorization", "Bearer gz-token-1234")])
        assert s.grpc_status == 0, s
    finally:
        srv.stop_ok()
        shutil.rmtree(tmp, ignore_errors=True)


def test_gzip_inflated_in_slices():
    """Issue 20 (3): a big compressed request is inflated a slice per loop iteration, so the
    loop keeps serving in between. One TCP write carries a 96 MiB (inflated) Compute for an
    unknown model (answered on the loop as soon as it is inflated and decoded) and then a
    HealthCheck: the health answer comes first. (Inflated in one go on the loop, the Compute
    was answered first: the health request waited for the whole inflation.)"""
    srv = sslib.Server("--max-message-bytes", 128 * MiB, "--max-connection-buffer-mb", 256)
    try:
        bomb = _gz_request(96, model="no-such-model")
        with h2raw.H2Conn("127.0.0.1", srv.port, timeout=T(30)) as c:
            deadline = time.monotonic() + T(5)
            while not c.peer_settings_seen:
                c.process_one(deadline)
            real = c.sock
            c.sock = _Batch(real)
            big = h2raw.grpc_start(c, sslib.SVC + "Compute", extra=[("grpc-encoding", "gzip")])
            c.stream_send_window[big] = 1 << 30  # (the server grants 1 MiB; the body is ~95 KB)
            c.conn_send_window = 1 << 30
            c.send_data(big, h2raw.grpc_frame(bomb, compressed=True), end_stream=True)
            small = h2raw.grpc_start(c, sslib.SVC + "HealthCheck")
            c.send_data(small, h2raw.grpc_frame(b""), end_stream=True)
            t0 = time.monotonic()
            c.sock.flush()
            c.sock = real
            order = []
            deadline = time.monotonic() + T(30)
            while len(order) < 2:
                c.process_one(deadline)
                for sid in (big, small):
                    if sid not in order and c.streams.get(sid) and c.streams[sid].done:
                        order.append(sid)
                        print("    %s answered after %.3f s" % (
                            "Compute (96 MiB gzip)" if sid == big else "HealthCheck",
                            time.monotonic() - t0))
            assert c.streams[small].grpc_status == 0, c.streams[small]
            assert c.streams[big].grpc_status not in (None, 0), c.streams[big]
            assert order == [small, big], "the health check waited for the inflation"
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
