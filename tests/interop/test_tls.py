"""TLS (--tls-cert/--tls-key, mutual TLS with --tls-client-ca), certificate reload on SIGHUP,
the C clients' --tls-ca, against Python grpcio with ssl_channel_credentials; and a graceful close
(idle timeout, drain) ending with a TLS close_notify, seen by a raw Python ssl client.

Certificates are made with the openssl CLI in a temp dir: a CA, a server certificate for
127.0.0.1 / localhost, a client certificate, a second server certificate (the reload), and a
client certificate from another CA (refused by mutual TLS).
"""
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import numpy as np

import sslib
from sslib import SC, T, make_req, result

import grpc

TMP = None


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


def _ca(name):
    key, crt = os.path.join(TMP, name + ".key"), os.path.join(TMP, name + ".crt")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=" + name,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    return key, crt


def _leaf(name, ca, server=True):
    key, csr, crt = (os.path.join(TMP, name + ext) for ext in (".key", ".csr", ".crt"))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=" + ("localhost" if server else name))
    ext = os.path.join(TMP, name + ".ext")
    with open(ext, "w") as f:
        if server:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        else:
            f.write("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", ext)
    return key, crt


def _read(p):
    with open(p, "rb") as f:
        return f.read()


def setup():
    global TMP, CA, SRV, SRV2, CLI, EVIL_CA, EVIL_CLI
    TMP = tempfile.mkdtemp(prefix="ss-tls-")
    CA = _ca("ca")
    SRV = _leaf("server", CA)
    SRV2 = _leaf("server2", CA)
    CLI = _leaf("client", CA, server=False)
    EVIL_CA = _ca("evil-ca")
    EVIL_CLI = _leaf("evil-client", EVIL_CA, server=False)


def teardown():
    shutil.rmtree(TMP, ignore_errors=True)


def tls_server(*extra, cert=None, key=None):
    cert = cert or SRV[1]
    key = key or SRV[0]
    return sslib.Server("--tls-cert", cert, "--tls-key", key, *extra)


def secure_stubs(srv, client=None, root=None, target=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(root or CA[1]),
        private_key=_read(client[0]) if client else None,
        certificate_chain=_read(client[1]) if client else None)
    opts = list(sslib.GRPC_OPTIONS) + [("grpc.use_local_subchannel_pool", 1)]
    ch = grpc.secure_channel(target or srv.target, creds, options=opts)
    return sslib.Stubs(ch)


def check_compute(st):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    resp = st.compute(make_req(x, model="identity", request_id=7), timeout=T(10))
    assert resp.request_id == 7
    np.testing.assert_array_equal(result(resp), x)


def peer_cert_serial(port, cafile):
    """The serial of the certificate the server presents (Python's ssl module, ALPN h2)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=T(5)) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.selected_alpn_protocol() == "h2"
            der = t.getpeercert(binary_form=True)
    return der


def der_of(pem_path):
    return ssl.PEM_cert_to_DER_cert(_read(pem_path).decode())


# ------------------------------------------------------------------------------ tests -------

def test_tls_compute_and_health():
    srv = tls_server()
    try:
        st = secure_stubs(srv)
        check_compute(st)
        assert st.health(sslib.pb.HealthRequest(), timeout=T(5)).status == "ok"
        assert st.h_check(sslib.hpb.HealthCheckRequest(), timeout=T(5)).status == 1
        # the name in the certificate: localhost works as well as the IP address
        st2 = secure_stubs(srv, target="localhost:%d" % srv.port)
        check_compute(st2)
        st.close()
        st2.close()
    finally:
        srv.stop_ok()


def test_plaintext_client_fails_against_tls():
    srv = tls_server()
    try:
        st = sslib.Stubs(sslib.channel(srv, separate=True))
        sslib.expect_error(lambda: st.health(sslib.pb.HealthRequest(), timeout=T(3)),
                           SC.UNAVAILABLE)
        st.close()
        # a TLS client that does not offer h2 is refused in the handshake
        ctx = ssl.create_default_context(cafile=CA[1])
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", srv.port), timeout=T(5)) as s:
            try:
                ctx.wrap_socket(s, server_hostname="localhost")
                raise AssertionError("handshake without h2 succeeded")
            except ssl.SSLError as e:
                assert "NO_APPLICATION_PROTOCOL" in str(e).upper() or "ALERT" in str(e).upper(), e
        # the server still serves TLS clients
        check_compute(secure_stubs(srv))
    finally:
        srv.stop_ok()


def test_wrong_ca_client_fails():
    srv = tls_server()
    try:
        st = secure_stubs(srv, root=EVIL_CA[1])
        sslib.expect_error(lambda: st.health(sslib.pb.HealthRequest(), timeout=T(3)),
                           SC.UNAVAILABLE)
        st.close()
    finally:
        srv.stop_ok()


def test_mutual_tls():
    srv = tls_server("--tls-client-ca", CA[1])
    try:
        st = secure_stubs(srv)  # no client certificate
        sslib.expect_error(lambda: st.health(sslib.pb.HealthRequest(), timeout=T(3)),
                           SC.UNAVAILABLE)
        st.close()
        st = secure_stubs(srv, client=EVIL_CLI)  # a certificate from another CA
        sslib.expect_error(lambda: st.health(sslib.pb.HealthRequest(), timeout=T(3)),
                           SC.UNAVAILABLE)
        st.close()
        st = secure_stubs(srv, client=CLI)
        check_compute(st)
        st.close()
        assert srv.wait_for_line(r"TLS handshake failed", timeout=T(3)), sslib.tail(srv.log)
    finally:
        srv.stop_ok()


def test_sighup_reloads_certificate():
    cert, key = os.path.join(TMP, "live.crt"), os.path.join(TMP, "live.key")
    shutil.copy(SRV[1], cert)
    shutil.copy(SRV[0], key)
    srv = tls_server(cert=cert, key=key)
    try:
        assert peer_cert_serial(srv.port, CA[1]) == der_of(SRV[1])
        st = secure_stubs(srv)
        check_compute(st)
        # a broken certificate: the old one stays, an error is logged
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        srv.signal(signal.SIGHUP)
        assert srv.wait_for_line(r"TLS certificate not reloaded", timeout=T(5)), sslib.tail(srv.log)
        assert peer_cert_serial(srv.port, CA[1]) == der_of(SRV[1])
        # the replacement: new connections get it, the open one keeps working
        shutil.copy(SRV2[1], cert)
        shutil.copy(SRV2[0], key)
        srv.signal(signal.SIGHUP)
        assert srv.wait_for_line(r"TLS certificate reloaded", timeout=T(5)), sslib.tail(srv.log)
        assert peer_cert_serial(srv.port, CA[1]) == der_of(SRV2[1])
        check_compute(st)
        check_compute(secure_stubs(srv))
        st.close()
    finally:
        srv.stop_ok()


def test_sighup_fifo_key_refused():
    """A FIFO put where the key was (or the certificate, or a CA): SIGHUP logs that it is not a
    regular file and keeps the old context; the loop never blocks on it (the server keeps
    answering and SIGTERM still stops it). A FIFO at start-up is refused at once."""
    cert, key = os.path.join(TMP, "fifo.crt"), os.path.join(TMP, "fifo.key")
    shutil.copy(SRV[1], cert)
    shutil.copy(SRV[0], key)
    srv = tls_server(cert=cert, key=key)
    try:
        st = secure_stubs(srv)
        check_compute(st)
        os.unlink(key)
        os.mkfifo(key)
        srv.signal(signal.SIGHUP)
        assert srv.wait_for_line(r"TLS certificate not reloaded", timeout=T(5)), sslib.tail(srv.log)
        assert "FIFO, not a regular file" in srv.log, sslib.tail(srv.log)
        check_compute(st)
        check_compute(secure_stubs(srv))
        st.close()
        srv.stop_ok()
    finally:
        if srv.alive():
            srv.kill()
    for fifo in ("cert", "key", "ca"):
        f = os.path.join(TMP, "start-%s.fifo" % fifo)
        os.mkfifo(f)
        args = ["--tls-cert", f if fifo == "cert" else SRV[1], "--tls-key",
                f if fifo == "key" else SRV[0]] + (["--tls-client-ca", f] if fifo == "ca" else [])
        rc, out = sslib.run_cli(*args, timeout=T(10))
        assert rc not in (0, None) and "FIFO, not a regular file" in out, (fifo, rc, out)
        os.unlink(f)


def test_handshake_timeout_covers_tls():
    srv = tls_server("--handshake-timeout", "1")
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=T(10))
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        t0 = time.monotonic()
        s.settimeout(T(10))
        data = s.recv(100)
        assert data == b"", data
        assert time.monotonic() - t0 < T(5)
        s.close()
        check_compute(secure_stubs(srv))
    finally:
        srv.stop_ok()


def test_stop_with_pending_handshake():
    """A connection stuck in its TLS handshake does not hold the drain open."""
    srv = tls_server()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=T(10))
    s.sendall(b"\x16\x03\x01")
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.stop_ok()
    assert time.monotonic() - t0 < T(3), "stop took %.1f s" % (time.monotonic() - t0)
    s.close()


def test_c_client_tls():
    srv = tls_server()
    try:
        call = sslib.binary("splitserve-call")
        out = subprocess.run([call, "--addr", srv.target, "--tls-ca", CA[1], "health"],
                             capture_output=True, text=True, timeout=T(20))
        assert out.returncode == 0 and "ok" in out.stdout, (out.stdout, out.stderr)
        out = subprocess.run([call, "--addr", "localhost:%d" % srv.port, "--tls-ca", CA[1],
                              "compute", "--model", "identity", "--shape", "2,2"],
                             capture_output=True, text=True, timeout=T(20))
        assert out.returncode == 0, (out.stdout, out.stderr)
        # the wrong CA: refused, with the reason
        out = subprocess.run([call, "--addr", srv.target, "--tls-ca", EVIL_CA[1], "health"],
                             capture_output=True, text=True, timeout=T(20))
        assert out.returncode != 0, out.stdout
        assert "certificate" in (out.stderr + out.stdout).lower(), (out.stdout, out.stderr)
        # no --tls-ca against a TLS port (issue 20.14): the client reads a TLS record where it
        # wanted HTTP/2 SETTINGS and says so, not "connection lost: closed by the server"
        for cmd in (("health",), ("info",), ("compute", "--model", "identity", "--shape", "2")):
            out = subprocess.run([call, "--addr", srv.target] + list(cmd),
                                 capture_output=True, text=True, timeout=T(20))
            assert out.returncode == 1, (cmd, out.stdout, out.stderr)
            assert "speaks TLS" in out.stderr and "--tls-ca" in out.stderr, (cmd, out.stderr)
        # the bench over TLS
        bench = sslib.binary("splitserve-bench")
        out = subprocess.run([bench, "--addr", srv.target, "--tls-ca", CA[1], "--model", "identity",
                              "--shape", "1", "--concurrency", "4", "--duration", "1"],
                             capture_output=True, text=True, timeout=T(30))
        assert out.returncode == 0, (out.stdout, out.stderr)
    finally:
        srv.stop_ok()


def _h2_client(port):
    """A raw TLS client (Python's ssl module, ALPN h2) that sends the HTTP/2 preface and an empty
    SETTINGS frame, then only reads. A TCP end without close_notify raises an SSLError instead of
    reading as b'': suppress_ragged_eofs=False, and without OP_IGNORE_UNEXPECTED_EOF (which
    Python sets by default with OpenSSL 3)."""
    ctx = ssl.create_default_context(cafile=CA[1])
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    ctx.set_alpn_protocols(["h2"])
    s = socket.create_connection(("127.0.0.1", port), timeout=T(10))
    t = ctx.wrap_socket(s, server_hostname="localhost", suppress_ragged_eofs=False)
    assert t.selected_alpn_protocol() == "h2"
    t.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" +
              struct.pack(">I", 0))
    return t


def _read_until_closed(t, timeout):
    """Read until the server ends the connection: (bytes read, how it ended)."""
    got = b""
    deadline = time.monotonic() + T(timeout)
    while True:
        t.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = t.recv(65536)
        except ssl.SSLZeroReturnError:
            return got, "close_notify"
        except ssl.SSLError as e:  # SSLEOFError, or UNEXPECTED_EOF_WHILE_READING (3.11)
            return got, "TCP end without close_notify (%s)" % e
        except socket.timeout:
            return got, "not closed within %.1f s" % T(timeout)
        except OSError as e:
            return got, "socket error %r" % e
        if not chunk:
            return got, "close_notify"  # recv returns b'' only after a close_notify here
        got += chunk


def _frame_types(data):
    types, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        types.append(data[i + 3])
        i += 9 + n
    return types


def test_close_notify_on_idle_timeout():
    """--idle-timeout: GOAWAY, then a close_notify alert before the TCP FIN."""
    srv = tls_server("--idle-timeout", "1")
    try:
        t = _h2_client(srv.port)
        t0 = time.monotonic()
        data, how = _read_until_closed(t, 10)
        assert how == "close_notify", how
        assert 0x7 in _frame_types(data), _frame_types(data)  # the GOAWAY came first
        assert time.monotonic() - t0 < T(5)
        t.close()
        check_compute(secure_stubs(srv))
    finally:
        srv.stop_ok()


def test_close_notify_on_drain():
    """SIGTERM: shutdown notice, final GOAWAY, then a close_notify before the connection closes."""
    srv = tls_server()
    t = _h2_client(srv.port)
    time.sleep(0.2)  # the server has read the preface
    srv.signal(signal.SIGTERM)
    data, how = _read_until_closed(t, 10)
    t.close()
    assert how == "close_notify", how
    assert 0x7 in _frame_types(data), _frame_types(data)
    rc = srv.wait(T(10))
    assert rc == 0, (rc, sslib.tail(srv.log))


def test_bytes_after_close_notify_not_buffered():
    """Issue 20 (4): after a client's close_notify every further byte used to be buffered in
    the TLS input without limit (2000 MB sent, 2080 MB RSS). Now the server stops reading at
    the close_notify and closes the connection once it is answered: the bytes stay in the
    kernel (the sender blocks or is reset) and the server's memory does not move."""
    srv = tls_server()
    try:
        ctx = ssl.create_default_context(cafile=CA[1])
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=T(10))
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(out.read())
                data = raw.recv(65536)
                assert data, "server closed during the handshake"
                inc.write(data)
        obj.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" +
                  struct.pack(">I", 0))
        try:
            obj.unwrap()  # puts our close_notify in `out`; the server's is not awaited
        except ssl.SSLWantReadError:
            pass
        raw.sendall(out.read())
        time.sleep(0.2)
        rss0 = srv.rss_kib()
        junk = os.urandom(1 << 20)
        sent, how = 0, "all sent"
        raw.settimeout(T(3))
        t0 = time.monotonic()
        while sent < 512 << 20:
            try:
                raw.sendall(junk)
            except socket.timeout:
                how = "sender blocked"
                break
            except OSError as e:
                how = "reset (%s)" % e.__class__.__name__
                break
            sent += len(junk)
        time.sleep(0.2)
        grew = srv.rss_kib() - rss0
        print("    after close_notify: %d MiB sent in %.1f s (%s), server RSS +%d MiB"
              % (sent >> 20, time.monotonic() - t0, how, grew // 1024))
        raw.close()
        assert grew < 32 * 1024 + (300 * 1024 if sslib.SANITIZE else 0), grew
        assert sent < 256 << 20, "the server kept reading after close_notify"
        check_compute(secure_stubs(srv))
    finally:
        srv.stop_ok()


if __name__ == "__main__":
    sslib.main(globals())
