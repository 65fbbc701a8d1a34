"""Keepalive: the real grpcio client pinging (grpc.keepalive_time_ms) keeps an idle connection
open against a server with a short --idle-timeout (PINGs count as activity, and the server
never GOAWAYs a client for pinging), and calls keep working on it; without pings the idle
connection is closed. Connections are counted through GetServiceInfo (custom_info
"connections") from a separate probe connection, and idle closes from the server log.
"""
import time

import grpc

import sslib
from sslib import T, assert_alive


def _info(srv):
    st = sslib.connect(srv, separate=True)
    try:
        info = st.info(sslib.pb.ServiceInfoRequest(), timeout=T(5))
        return dict(info.custom_info)
    finally:
        st.close()


def _pinging_channel(srv, ms=500):
    opts = list(sslib.GRPC_OPTIONS) + [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # grpcio 1.51 also spaces pings without data by this (default 5 minutes)
        ("grpc.http2.min_time_between_pings_ms", ms),
    ]
    st = sslib.Stubs(grpc.insecure_channel(srv.target, options=opts))
    # grpcio's sync API polls a channel's transport only while a call is active or someone
    # watches its connectivity; without that, PING ACKs are not read and keepalive stalls (a
    # long-lived client watches its channel the same way).
    st.channel.subscribe(lambda state: None)
    return st


def test_pings_keep_idle_connection_open():
    # grpcio 1.51 sends keepalive pings at most once a second whatever keepalive_time_ms says,
    # so the idle timeout is 2 s here (in production: pings every 30 s, idle timeout 300 s).
    srv = sslib.Server("--idle-timeout", "2")
    try:
        st = _pinging_channel(srv)
        assert_alive(st)
        assert int(_info(srv)["connections"]) == 2  # ours + the probe
        time.sleep(T(7))  # several idle timeouts, pinged every second
        info = _info(srv)
        assert int(info["connections"]) == 2, info  # ours (still open) + the new probe
        assert_alive(st)
        time.sleep(T(2))
        assert_alive(st)
        assert int(_info(srv)["connections"]) == 2
        assert "idle for" not in srv.log, sslib.tail(srv.log)
        st.close()
    finally:
        srv.stop_ok()


def test_idle_connection_without_pings_is_closed():
    srv = sslib.Server("--idle-timeout", "1")
    try:
        st = sslib.connect(srv, separate=True)
        assert_alive(st)
        time.sleep(T(3))
        assert srv.wait_for_line(r"idle for 1\.0 s", timeout=T(3)), sslib.tail(srv.log)
        info = _info(srv)
        assert int(info["connections"]) == 1, info  # only the probe
        assert_alive(st)  # grpcio reconnects after the GOAWAY
        st.close()
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
