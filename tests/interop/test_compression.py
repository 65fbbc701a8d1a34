"""gRPC message compression: compressed requests (grpc-encoding gzip / deflate) are inflated
with --max-message-bytes as the limit on the inflated size (a zip bomb is refused with
RESOURCE_EXHAUSTED without the server allocating more than the limit), and with
--compress-responses the response is compressed with what the client lists in
grpc-accept-encoding. Python grpcio (channel and per-call compression) and raw HTTP/2 (h2raw).
"""
import gzip
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


if __name__ == "__main__":
    sslib.main(globals())
