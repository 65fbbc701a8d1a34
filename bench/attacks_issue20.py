"""Issue 20 (hardening II), transport defects 2, 3, 4, 8, 9: the attacks of the review, re-run
against a build, with what they cost the server: its peak RSS growth (VmHWM), the longest wait
of a probe client calling HealthCheck every 10 ms on its own connection meanwhile (the loop
stall), and the statuses the attacker got. Not a test (no assertion): numbers for the record.

    SS_BIN_DIR=<build>/bin /usr/bin/python3 bench/attacks_issue20.py [attack ...]

Sizes are about half the review's (the machine is shared); each attack runs on a fresh server.
"""
import gzip
import os
import socket
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
import numpy as np  # noqa: E402

import h2raw  # noqa: E402
import sslib  # noqa: E402
from sslib import make_req  # noqa: E402

MiB = 1 << 20


class Probe:
    """HealthCheck every 10 ms on its own connection; the longest call is the loop stall."""

    def __init__(self, srv):
        self.srv, self.worst, self.n, self.fail = srv, 0.0, 0, 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        time.sleep(0.2)

    def run(self):
        with h2raw.H2Conn("127.0.0.1", self.srv.port, timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    st = h2raw.grpc_unary(c, sslib.SVC + "HealthCheck", h2raw.grpc_frame(b""),
                                          wait_s=30)
                    ok = st.grpc_status == 0
                except Exception:  # noqa: BLE001
                    ok = False
                self.worst = max(self.worst, time.monotonic() - t0)
                self.n += 1
                self.fail += not ok
                time.sleep(0.01)

    def done(self):
        self.stop.set()
        self.t.join(35)
        return "probe: %d health calls, longest %.3f s, %d failed" % (self.n, self.worst, self.fail)


class NoWindowConn(h2raw.H2Conn):
    """A client that never opens its receive window (sends no WINDOW_UPDATE)."""

    def send_frame(self, ftype, flags, sid, payload=b""):
        if ftype == h2raw.WINDOW_UPDATE and getattr(self, "ready", False):
            return
        super().send_frame(ftype, flags, sid, payload)


def gz_req(mib, model="identity"):
    x = np.zeros((mib * MiB) // 4, np.float32)
    return gzip.compress(make_req(x, model=model).SerializeToString(), compresslevel=9)


def statuses(c, sids, timeout):
    out = {}
    for sid in sids:
        st = c.wait(sid, timeout)
        key = (st.grpc_status, (st.grpc_message or "")[:70])
        out[key] = out.get(key, 0) + 1
    return out


def report(name, srv, hwm0, probe, extra):
    print("%-28s peak RSS +%5d MiB; %s; %s" % (name, (srv.rss_kib("VmHWM") - hwm0) // 1024,
                                                 probe.done(), extra), flush=True)


def a2_gzip_budget():
    """12 gzip streams (~95 KB each, 98 MB inflated; unknown model, so no answer is echoed) on
    one connection, default limits."""
    srv = sslib.Server("--workers", "2")
    try:
        bomb = gz_req(98 - 1, model="no-such-model")
        hwm0 = srv.rss_kib("VmHWM")
        probe = Probe(srv)
        with h2raw.H2Conn("127.0.0.1", srv.port, timeout=60, recv_window=1 << 30) as c:
            sids = []
            for _ in range(12):
                sid = h2raw.grpc_start(c, sslib.SVC + "Compute", extra=[("grpc-encoding", "gzip")])
                c.send_data(sid, h2raw.grpc_frame(bomb, compressed=True), timeout=60)
                sids.append(sid)
            st = statuses(c, sids, 60)
        report("2 gzip x12 on one conn", srv, hwm0, probe, st)
    finally:
        srv.stop_ok(30)


def a2_unread():
    """6 connections, each one gzip request of 48 MB inflated whose answer it never reads."""
    srv = sslib.Server("--workers", "2", "--request-body-timeout", "5")
    try:
        bomb = gz_req(48)
        hwm0 = srv.rss_kib("VmHWM")
        probe = Probe(srv)
        conns = []
        for _ in range(6):
            c = NoWindowConn("127.0.0.1", srv.port, timeout=30, recv_window=1)
            c.ready = True
            sid = h2raw.grpc_start(c, sslib.SVC + "Compute", extra=[("grpc-encoding", "gzip")])
            c.send_data(sid, h2raw.grpc_frame(bomb, compressed=True))
            conns.append(c)
        time.sleep(2)
        held = srv.rss_kib() // 1024
        time.sleep(8)
        after = srv.rss_kib() // 1024
        closed = 0
        for c in conns:
            closed += c.wait_closed(0.5)
            c.close()
        report("2 unread answers x6", srv, hwm0, probe,
               "RSS %d MiB at 2 s, %d MiB at 10 s; %d of 6 connections closed by the server"
               % (held, after, closed))
    finally:
        srv.stop_ok(30)


def a3_preauth_inflate():
    """--auth-tokens: 12 gzip requests (98 MB inflated) with no token."""
    tmp = tempfile.mkdtemp(prefix="ss-a3-")
    tok = os.path.join(tmp, "tokens")
    with open(tok, "w") as f:
        f.write("a-token-for-the-probe\n")
    os.chmod(tok, 0o600)
    srv = sslib.Server("--workers", "2", "--auth-tokens", tok)
    try:
        bomb = gz_req(98 - 1)
        hwm0 = srv.rss_kib("VmHWM")
        probe = Probe(srv)
        with h2raw.H2Conn("127.0.0.1", srv.port, timeout=60) as c:
            sids = []
            for _ in range(12):
                sid = h2raw.grpc_start(c, sslib.SVC + "Compute", extra=[("grpc-encoding", "gzip")])
                c.send_data(sid, h2raw.grpc_frame(bomb, compressed=True), timeout=60)
                sids.append(sid)
            st = statuses(c, sids, 60)
        report("3 pre-auth gzip x12", srv, hwm0, probe, st)
    finally:
        srv.stop_ok(30)
        shutil.rmtree(tmp, ignore_errors=True)


def a3_stall():
    """The loop stall of inflation alone: 4 connections x 3 gzip requests of 60 MB inflated
    (within the budget), unknown model (refused once decoded)."""
    srv = sslib.Server("--workers", "2")
    try:
        bomb = gz_req(60, model="no-such-model")
        hwm0 = srv.rss_kib("VmHWM")
        probe = Probe(srv)
        out = {}

        def one():
            with h2raw.H2Conn("127.0.0.1", srv.port, timeout=60) as c:
                sids = []
                for _ in range(3):
                    sid = h2raw.grpc_start(c, sslib.SVC + "Compute",
                                           extra=[("grpc-encoding", "gzip")])
                    c.send_data(sid, h2raw.grpc_frame(bomb, compressed=True), timeout=60)
                    sids.append(sid)
                for k, v in statuses(c, sids, 60).items():
                    out[k] = out.get(k, 0) + v
        ts = [threading.Thread(target=one) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        report("3 inflate stall 4x3x60MB", srv, hwm0, probe, out)
    finally:
        srv.stop_ok(30)


def a4_tls():
    """TLS: close_notify, then up to 1000 MB of junk."""
    tmp = tempfile.mkdtemp(prefix="ss-a4-")
    key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt, "-days",
                    "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    srv = sslib.Server("--tls-cert", crt, "--tls-key", key)
    try:
        ctx = ssl.create_default_context(cafile=crt)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, outb, server_hostname="127.0.0.1")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outb.read())
                inc.write(raw.recv(65536))
        obj.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        raw.sendall(outb.read())
        hwm0 = srv.rss_kib("VmHWM")
        junk, sent, how = os.urandom(MiB), 0, "all sent"
        raw.settimeout(3)
        while sent < 1000 * MiB:
            try:
                raw.sendall(junk)
            except socket.timeout:
                how = "sender blocked"
                break
            except OSError as e:
                how = "reset (%s)" % e.__class__.__name__
                break
            sent += MiB
        rss = srv.rss_kib() // 1024
        raw.close()
        print("%-28s peak RSS +%5d MiB; RSS %d MiB; %d MiB sent after close_notify (%s)"
              % ("4 TLS after close_notify", (srv.rss_kib("VmHWM") - hwm0) // 1024, rss,
                 sent // MiB, how), flush=True)
    finally:
        srv.stop_ok(30)
        shutil.rmtree(tmp, ignore_errors=True)


def a8_metrics():
    """70 idle + 10 half-sent connections to /metrics, then 5 scrapes."""
    import re
    import urllib.request
    srv = sslib.Server("--metrics-listen", "127.0.0.1:0")
    try:
        line = srv.wait_for_line(r"metrics on http://[^:]+:(\d+)/metrics", timeout=5)
        port = int(re.search(r":(\d+)/metrics", line).group(1))
        socks = []
        for i in range(80):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i >= 70:
                s.sendall(b"GET /metr")
            socks.append(s)
        time.sleep(0.3)
        res = []
        for _ in range(5):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
                    res.append(str(r.status))
            except Exception as e:  # noqa: BLE001
                res.append(e.__class__.__name__)
        for s in socks:
            s.close()
        print("%-28s scrapes: %s" % ("8 metrics 80 idle conns", ", ".join(res)), flush=True)
    finally:
        srv.stop_ok(30)


def a9_decode():
    """30 MB of unknown fields in a (pre-auth) HealthCheck; 45 MB of shape entries in a
    Compute; 30 MB of unknown fields in a Compute."""
    tmp = tempfile.mkdtemp(prefix="ss-a9-")
    tok = os.path.join(tmp, "tokens")
    with open(tok, "w") as f:
        f.write("a-token\n")
    os.chmod(tok, 0o600)
    base = make_req(np.ones(3, np.float32), model="identity").SerializeToString()
    cases = [("HealthCheck", b"\x98\x06\x00" * (30 * MiB // 3), []),
             ("Compute", base + b"\x10\x01" * (45 * MiB // 2), [("authorization", "Bearer a-token")]),
             ("Compute", base + b"\x98\x06\x00" * (30 * MiB // 3), [("authorization", "Bearer a-token")])]
    for (method, body, extra), what in zip(cases, ("9 Health+30MB unknown", "9 Compute+45MB shape",
                                                   "9 Compute+30MB unknown")):
        srv = sslib.Server("--workers", "2", "--auth-tokens", tok)
        try:
            hwm0 = srv.rss_kib("VmHWM")
            probe = Probe(srv)
            with h2raw.H2Conn("127.0.0.1", srv.port, timeout=60) as c:
                st = h2raw.grpc_unary(c, sslib.SVC + method, h2raw.grpc_frame(body), extra=extra,
                                      wait_s=60)
            report(what, srv, hwm0, probe, "%s %s" % (st.grpc_status, (st.grpc_message or "")[:80]))
        finally:
            srv.stop_ok(30)
    shutil.rmtree(tmp, ignore_errors=True)


ATTACKS = [a2_gzip_budget, a2_unread, a3_preauth_inflate, a3_stall, a4_tls, a8_metrics, a9_decode]

if __name__ == "__main__":
    print("binaries: %s" % sslib.BIN_DIR, flush=True)
    for a in ATTACKS:
        if len(sys.argv) == 1 or any(x in a.__name__ for x in sys.argv[1:]):
            a()
