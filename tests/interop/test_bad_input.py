"""Bad input: every case gets the right status and a message that names the problem, and the
server answers a good call right after. Malformed HTTP/2 and gRPC framing go through h2raw."""
import socket
import time

import grpc
import numpy as np

import h2raw
import sslib
from sslib import SC, T, MiB, pb, make_req, result, expect_error, assert_alive

LIMIT = 4 * MiB
S = None   # shared server: --max-message-bytes 4 MiB
C = None


def setup():
    global S, C
    S = sslib.Server("--workers", "2", "--max-message-bytes", str(LIMIT))
    C = sslib.connect(S)
    assert_alive(C)


def teardown():
    C.close()
    S.stop_ok()


def call(req, timeout=5):
    return lambda: C.compute(req, timeout=T(timeout))


# ------------------------------------------------------------------------------ tensors -----

def test_length_mismatch():
    expect_error(call(make_req(shape=[2, 3], data=b"\0" * 20, model="identity")),
                 SC.INVALID_ARGUMENT, "20", "24")
    expect_error(call(make_req(shape=[2, 3], data=b"\0" * 24, model="identity", dtype="float16")),
                 SC.INVALID_ARGUMENT, "24", "12")
    expect_error(call(make_req(shape=[5], data=b"\0" * 8, model="identity", dtype="bfloat16")),
                 SC.INVALID_ARGUMENT, "8", "10")
    # The default model (mlp) too.
    expect_error(call(make_req(shape=[1, 768], data=b"\0" * 3000)), SC.INVALID_ARGUMENT, "3000", "3072")
    assert_alive(C)


def test_empty_request():
    # No shape, no data: a scalar needs 4 bytes, or an empty shape is refused; either way
    # INVALID_ARGUMENT, never a crash.
    expect_error(lambda: C.compute(pb.ComputeRequest(model_id="identity"), timeout=T(5)),
                 SC.INVALID_ARGUMENT)
    expect_error(lambda: C.compute(pb.ComputeRequest(), timeout=T(5)), SC.INVALID_ARGUMENT)
    assert_alive(C)


def test_negative_dims():
    expect_error(call(make_req(shape=[-1, 4], data=b"\0" * 16, model="identity")),
                 SC.INVALID_ARGUMENT, ("-1", "negative"))
    expect_error(call(make_req(shape=[4, -4], data=b"\0" * 64, model="identity")),
                 SC.INVALID_ARGUMENT, ("-4", "negative"))
    expect_error(call(make_req(shape=[-2, -2], data=b"\0" * 16, model="identity")),
                 SC.INVALID_ARGUMENT, ("-2", "negative"))
    assert_alive(C)


def test_shape_overflow():
    big = 2**31 - 1
    for shape in ([big] * 3, [big] * 4, [big, big, 2, 2, 2]):
        expect_error(call(make_req(shape=shape, data=b"\0" * 4, model="identity")),
                     SC.INVALID_ARGUMENT, ("overflow", "too large", "too big"))
    # 2^48 elements does not overflow 64 bits: a plain length mismatch that says both sizes.
    expect_error(call(make_req(shape=[65536] * 3, data=b"\0" * 4, model="identity")),
                 SC.INVALID_ARGUMENT, "1125899906842624")
    assert_alive(C)


def test_unknown_dtype():
    for dt in ("float64", "int8", "float32x"):
        expect_error(call(make_req(shape=[2], data=b"\0" * 8, model="identity", dtype=dt)),
                     SC.INVALID_ARGUMENT, dt)
    assert_alive(C)


def test_unknown_model():
    expect_error(call(make_req(np.ones(4, np.float32), model="nope-model")),
                 SC.NOT_FOUND, "nope-model", "identity", "mlp")
    # grpc-message is percent-encoded on the wire: this one must come back intact.
    odd = "m%d\u00fcn\u00efc\u00f8d\u00e9 x"
    expect_error(call(make_req(np.ones(4, np.float32), model=odd)), SC.NOT_FOUND, odd)
    assert_alive(C)


def test_model_width_mismatch():
    expect_error(call(make_req(np.ones((1, 10), np.float32))), SC.INVALID_ARGUMENT, "768", "10")
    expect_error(call(make_req(np.ones((2, 5, 767), np.float32), model="mlp")),
                 SC.INVALID_ARGUMENT, "768", "767")
    assert_alive(C)


def test_bad_metadata_values():
    x = np.ones(4, np.float32)
    expect_error(call(make_req(x, model="scale", factor="abc")), SC.INVALID_ARGUMENT, "factor")
    expect_error(call(make_req(x, model="sleep", ms="soon")), SC.INVALID_ARGUMENT, "ms")
    expect_error(call(make_req(x, model="spin", ms="-5")), SC.INVALID_ARGUMENT, "ms")
    assert_alive(C)


# ------------------------------------------------------------------------------ size limit --

def test_message_over_limit():
    x = np.zeros(LIMIT // 4 + 1024, np.float32)  # just over 4 MiB
    details, dt = expect_error(call(make_req(x, model="identity")), SC.RESOURCE_EXHAUSTED,
                               (str(LIMIT), "limit", "too large"))
    # Just under the limit passes.
    y = np.zeros(LIMIT // 4 - 1024, np.float32)
    r = C.compute(make_req(y, model="identity"), timeout=T(10))
    assert len(r.data) == y.nbytes
    assert_alive(C)


def test_message_over_limit_not_buffered():
    """A 96 MiB message to a 4 MiB-limit server: refused without buffering it (the peak RSS
    does not grow by anything like 96 MiB), and the same connection still works after."""
    assert_alive(C)
    hwm0 = S.rss_kib("VmHWM")
    x = np.zeros(24 * MiB, np.float32)  # 96 MiB
    req = make_req(x, model="identity")
    for _ in range(2):
        expect_error(lambda: C.compute(req, timeout=T(20)), SC.RESOURCE_EXHAUSTED)
        assert_alive(C)
    grow = (S.rss_kib("VmHWM") - hwm0) / 1024.0
    print("    peak RSS grew by %.1f MiB for two refused 96 MiB messages" % grow)
    assert grow < 48, "peak RSS grew by %.1f MiB: the oversized message was buffered" % grow


def test_limit_refused_from_prefix():
    """Only the 5-byte prefix (declaring 1 GiB) and no body: the answer must come at once."""
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        sid = h2raw.grpc_start(c, sslib.SVC + "Compute")
        t0 = time.monotonic()
        c.send_data(sid, h2raw.grpc_frame(b"", declared_length=1 << 30), end_stream=False)
        st = c.wait(sid, T(3))
        assert st.grpc_status == 8, "expected RESOURCE_EXHAUSTED from the prefix alone: %r" % st
        assert st.ended_at - t0 < T(0.5)
        # And the connection is still usable.
        body = h2raw.grpc_frame(make_req(np.ones(3, np.float32), model="identity").SerializeToString())
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", body, wait_s=T(5))
        assert st.grpc_status == 0, st
    assert_alive(C)


def test_default_limit():
    """The default --max-message-bytes is 104857600 (100 MiB)."""
    srv = sslib.Server("--workers", "1")
    try:
        with h2raw.H2Conn("127.0.0.1", srv.port) as c:
            sid = h2raw.grpc_start(c, sslib.SVC + "Compute")
            c.send_data(sid, h2raw.grpc_frame(b"", declared_length=104857601), end_stream=False)
            st = c.wait(sid, T(3))
            assert st.grpc_status == 8, "104857601 bytes declared: %r" % st
            sid = h2raw.grpc_start(c, sslib.SVC + "Compute")
            c.send_data(sid, h2raw.grpc_frame(b"", declared_length=104857600), end_stream=False)
            try:
                st = c.wait(sid, 0.5)
                raise AssertionError("a message of exactly 100 MiB was refused: %r" % st)
            except TimeoutError:
                pass  # the server waits for the body, as it should
    finally:
        srv.stop_ok()


# ------------------------------------------------------------------------------ protobuf ----

def test_invalid_protobuf():
    raw = C.raw(sslib.SVC + "Compute")
    for junk in (b"\xff\xff\xff\xff\xff", b"\x0a\xff\x01abc", b"\x12\x05\x01", b"\x07"):
        expect_error(lambda: raw(junk, timeout=T(5)), SC.INVALID_ARGUMENT)
    expect_error(lambda: C.raw(sslib.SVC + "HealthCheck")(b"\xff\xff", timeout=T(5)),
                 SC.INVALID_ARGUMENT)
    assert_alive(C)


def test_unknown_method_and_service():
    expect_error(lambda: C.raw(sslib.SVC + "NoSuchMethod")(b"", timeout=T(5)),
                 SC.UNIMPLEMENTED, ("NoSuchMethod", "method"))
    expect_error(lambda: C.raw("/no.such.Service/Compute")(b"", timeout=T(5)),
                 SC.UNIMPLEMENTED, ("no.such.Service", "service", "method"))
    expect_error(lambda: C.raw("/grpc.health.v1.Health/Nope")(b"", timeout=T(5)), SC.UNIMPLEMENTED)
    # Unary-stream on an unknown method too.
    st = C.channel.unary_stream("/no.such.Service/Stream")(b"", timeout=T(5))
    try:
        list(st)
        raise AssertionError("unknown streaming method succeeded")
    except grpc.RpcError as e:
        assert e.code() == SC.UNIMPLEMENTED, e
    assert_alive(C)


# ------------------------------------------------------------------------------ encoding ----

def test_compressed_gzip():
    """grpcio sends grpc-encoding: gzip with the compressed flag: the server inflates it
    (test_compression.py covers the limits)."""
    x = np.arange(64, dtype=np.float32)
    resp = C.compute(make_req(x, model="identity"), timeout=T(5), compression=grpc.Compression.Gzip)
    np.testing.assert_array_equal(result(resp), x)
    assert_alive(C)


def test_compressed_unknown_encoding_raw():
    body = h2raw.grpc_frame(b"\x78\x9c not really compressed", compressed=True)
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", body,
                              extra=[("grpc-encoding", "x-snappy-ish")], wait_s=T(5))
        assert st.grpc_status == 12, "unsupported grpc-encoding: expected 12, got %r" % st
        assert "x-snappy-ish" in st.grpc_message, st.grpc_message
        # gRPC compression spec: the UNIMPLEMENTED answer carries grpc-accept-encoding, the
        # algorithms the server does accept.
        accept = st.header("grpc-accept-encoding")
        assert accept is not None and "x-snappy-ish" not in accept, \
            "UNIMPLEMENTED for an unsupported encoding without grpc-accept-encoding: %r" % st
        # The compressed flag without any grpc-encoding is a protocol error, not a crash.
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", body, wait_s=T(5))
        assert st.grpc_status in (3, 12, 13), "compressed flag, no encoding: %r" % st
        # A grpc-encoding of identity with uncompressed messages is plain gRPC.
        good = h2raw.grpc_frame(make_req(np.ones(3, np.float32), model="identity").SerializeToString())
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", good, extra=[("grpc-encoding", "identity")],
                              wait_s=T(5))
        assert st.grpc_status == 0, st
    assert_alive(C)


# ------------------------------------------------------------------------------ HTTP/2 ------

def test_wrong_content_type():
    good = h2raw.grpc_frame(make_req(np.ones(3, np.float32), model="identity").SerializeToString())
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        for ct in ("text/plain", "application/json", "application/octet-stream"):
            st = h2raw.grpc_unary(c, sslib.SVC + "Compute", good, content_type=ct, wait_s=T(5))
            assert st.http_status == 415, "content-type %r: expected HTTP 415, got %r" % (ct, st)
        # application/grpc+proto is gRPC.
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", good, content_type="application/grpc+proto",
                              wait_s=T(5))
        assert st.http_status == 200 and st.grpc_status == 0, st
        msgs = st.grpc_messages()
        assert len(msgs) == 1
        r = pb.ComputeResponse.FromString(msgs[0][1])
        np.testing.assert_array_equal(result(r), np.ones(3, np.float32))
    assert_alive(C)


def test_missing_content_type():
    """No content-type at all does not begin with application/grpc either: HTTP 415 (the gRPC
    spec's SHOULD; grpc-go answers a missing content-type this way)."""
    good = h2raw.grpc_frame(make_req(np.ones(3, np.float32), model="identity").SerializeToString())
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", good, content_type=None, wait_s=T(5))
        assert st.http_status == 415, "no content-type: expected HTTP 415, got %r" % st
    assert_alive(C)


def test_truncated_message():
    """The prefix promises 100 bytes, the stream ends after 10."""
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute",
                              h2raw.grpc_frame(b"\x2a" * 10, declared_length=100), wait_s=T(5))
        assert st.done, "no answer to a truncated message"
        assert st.grpc_status not in (None, 0), "truncated message: %r" % st
        print("    truncated message: grpc-status %r %r" % (st.grpc_status, st.grpc_message))
        # A request with no message at all.
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", b"", wait_s=T(5))
        assert st.grpc_status not in (None, 0), "empty unary request: %r" % st
        print("    no message: grpc-status %r %r" % (st.grpc_status, st.grpc_message))
    assert_alive(C)


def test_two_messages_in_unary():
    one = h2raw.grpc_frame(make_req(np.ones(3, np.float32), model="identity").SerializeToString())
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        st = h2raw.grpc_unary(c, sslib.SVC + "Compute", one + one, wait_s=T(5))
        assert st.grpc_status not in (None, 0), "two messages in a unary call: %r" % st
        print("    two messages: grpc-status %r %r" % (st.grpc_status, st.grpc_message))
    assert_alive(C)


def test_client_resets_and_disconnects():
    x = np.ones(4, np.float32)
    body = h2raw.grpc_frame(make_req(x, model="sleep", ms=300).SerializeToString())
    for _ in range(3):
        with h2raw.H2Conn("127.0.0.1", S.port) as c:
            # Reset half-way through the body.
            sid = h2raw.grpc_start(c, sslib.SVC + "Compute")
            c.send_data(sid, body[:7], end_stream=False)
            c.send_rst(sid)
            # Reset while the call sleeps.
            sid = h2raw.grpc_start(c, sslib.SVC + "Compute")
            c.send_data(sid, body)
            time.sleep(0.05)
            c.send_rst(sid)
            # Leave calls in flight and close the socket.
            for _ in range(5):
                sid = h2raw.grpc_start(c, sslib.SVC + "Compute")
                c.send_data(sid, body)
            time.sleep(0.05)
    time.sleep(0.5)
    assert_alive(C)
    assert S.threads() == sslib.IO + 2


def test_not_http2():
    s = socket.create_connection(("127.0.0.1", S.port), timeout=T(3))
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    s.settimeout(T(3))
    closed = False
    try:
        while s.recv(65536):
            pass
        closed = True
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    s.close()
    assert closed, "the server kept an HTTP/1.1 connection open"
    # A valid preface followed by garbage frames.
    with h2raw.H2Conn("127.0.0.1", S.port) as c:
        c.send_frame(h2raw.SETTINGS, 0, 3, b"\x00")  # SETTINGS on a stream, bad length
        c.send_raw(b"\xff" * 64)
        assert c.wait_closed(T(3)), "the server kept a broken HTTP/2 connection open"
    # Just connect and close, many times.
    for _ in range(50):
        socket.create_connection(("127.0.0.1", S.port), timeout=T(3)).close()
    assert_alive(C)


def test_bad_inputs_do_not_leak_threads_or_memory():
    assert_alive(C)
    rss0 = S.rss_kib()
    bad = make_req(shape=[2, 3], data=b"\0" * 20, model="identity")
    for _ in range(500):
        try:
            C.compute(bad, timeout=T(5))
        except grpc.RpcError as e:
            assert e.code() == SC.INVALID_ARGUMENT
    grow = (S.rss_kib() - rss0) / 1024.0
    print("    RSS grew %.1f MiB over 500 bad calls" % grow)
    assert grow < 16, "RSS grew by %.1f MiB over 500 bad calls" % grow
    assert S.threads() == sslib.IO + 2
    assert_alive(C)


# ------------------------------------------------------------------------------ queue -------

def test_full_queue():
    srv = sslib.Server("--workers", "1", "--max-inflight", "1", "--max-queue", "1")
    try:
        c = sslib.connect(srv)
        assert_alive(c)
        x = np.ones(4, np.float32)
        running = c.compute.future(make_req(x, model="spin", ms=400), timeout=T(10))
        time.sleep(0.05)
        queued = c.compute.future(make_req(x, model="spin", ms=10), timeout=T(10))
        time.sleep(0.05)
        _, dt = expect_error(lambda: c.compute(make_req(x, model="spin", ms=10), timeout=T(5)),
                             SC.RESOURCE_EXHAUSTED, "queue")
        assert dt < T(0.1), "RESOURCE_EXHAUSTED took %.3fs" % dt
        running.result()
        queued.result()
        assert_alive(c)
        c.close()
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
