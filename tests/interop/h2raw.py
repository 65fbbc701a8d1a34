"""A deliberately small HTTP/2 (h2c, prior knowledge) client for the interop tests.

grpcio always sends well-formed gRPC, so the tests that need a malformed or unusual request
(wrong content-type, an unsupported grpc-encoding, a truncated message, a grpc-timeout without a
client-side RST_STREAM, a length prefix larger than the limit with no body behind it) talk
HTTP/2 themselves with hand-made frames.

Sending: HPACK "literal header field without indexing, new name", no Huffman.
Receiving: a full HPACK decoder (static + dynamic table, Huffman), because nghttp2's encoder
uses all of it. Flow control: large receive windows; sending respects the peer's windows.
"""
import socket
import struct
import time
import urllib.parse

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

# ------------------------------------------------------------------------------- HPACK -------

STATIC_TABLE = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
]
assert len(STATIC_TABLE) == 61

# Code lengths of the HPACK Huffman code (RFC 7541, Appendix B), symbols 0..256 (256 = EOS).
# The code is canonical: codes follow from the lengths alone (shorter first, then by symbol).
_HUFF_LENGTHS = (
    [13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
     28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
     6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
     5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
     13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
     7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
     15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
     6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
     20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
     24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
     22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
     21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
     26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
     19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
     20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
     26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
     30])


def _build_huffman():
    lengths = _HUFF_LENGTHS
    assert len(lengths) == 257
    # A complete prefix code: sum of 2^-len == 1 exactly.
    assert sum(1 << (30 - n) for n in lengths) == 1 << 30
    codes = {}
    code, prev = 0, None
    for sym in sorted(range(257), key=lambda s: (lengths[s], s)):
        n = lengths[sym]
        if prev is not None:
            code = (code + 1) << (n - prev)
        prev = n
        codes[(n, code)] = sym
    return codes


_HUFF_DECODE = _build_huffman()


def huffman_decode(data):
    out = bytearray()
    cur = 0
    n = 0
    for byte in data:
        for i in range(7, -1, -1):
            cur = (cur << 1) | ((byte >> i) & 1)
            n += 1
            sym = _HUFF_DECODE.get((n, cur))
            if sym is not None:
                if sym == 256:
                    raise ValueError("HPACK: EOS in a Huffman string")
                out.append(sym)
                cur = 0
                n = 0
            elif n > 30:
                raise ValueError("HPACK: bad Huffman code")
    if n > 7 or cur != (1 << n) - 1:
        raise ValueError("HPACK: bad Huffman padding")
    return bytes(out)


def encode_int(value, prefix_bits, first_byte_flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _enc_str(s):
    b = s.encode("latin-1") if isinstance(s, str) else bytes(s)
    return encode_int(len(b), 7, 0x00) + b  # H = 0: no Huffman


def encode_headers(headers):
    """HPACK block: every field as 'literal without indexing, new name' (0x00 prefix)."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + _enc_str(name) + _enc_str(value)
    return bytes(out)


class HpackDecoder:
    def __init__(self, max_size=4096):
        self.dynamic = []  # newest first
        self.size = 0
        self.max_size = max_size

    def _evict(self):
        while self.size > self.max_size and self.dynamic:
            n, v = self.dynamic.pop()
            self.size -= len(n) + len(v) + 32

    def _add(self, name, value):
        self.dynamic.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def _get(self, idx):
        if idx <= 0:
            raise ValueError("HPACK: index 0")
        if idx <= 61:
            return STATIC_TABLE[idx - 1]
        idx -= 62
        if idx >= len(self.dynamic):
            raise ValueError("HPACK: index %d beyond the dynamic table" % (idx + 62))
        return self.dynamic[idx]

    @staticmethod
    def _int(data, pos, prefix_bits):
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            b = data[pos]
            pos += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    def _str(self, data, pos):
        huff = bool(data[pos] & 0x80)
        length, pos = self._int(data, pos, 7)
        raw = bytes(data[pos:pos + length])
        if len(raw) != length:
            raise ValueError("HPACK: truncated string")
        pos += length
        if huff:
            raw = huffman_decode(raw)
        return raw.decode("latin-1"), pos

    def decode(self, block):
        headers = []
        pos = 0
        while pos < len(block):
            b = block[pos]
            if b & 0x80:  # indexed
                idx, pos = self._int(block, pos, 7)
                headers.append(self._get(idx))
            elif b & 0xC0 == 0x40:  # literal with incremental indexing
                idx, pos = self._int(block, pos, 6)
                name = self._get(idx)[0] if idx else None
                if name is None:
                    name, pos = self._str(block, pos)
                value, pos = self._str(block, pos)
                headers.append((name, value))
                self._add(name, value)
            elif b & 0xE0 == 0x20:  # dynamic table size update
                size, pos = self._int(block, pos, 5)
                self.max_size = size
                self._evict()
            else:  # literal without indexing (0000) / never indexed (0001)
                idx, pos = self._int(block, pos, 4)
                name = self._get(idx)[0] if idx else None
                if name is None:
                    name, pos = self._str(block, pos)
                value, pos = self._str(block, pos)
                headers.append((name, value))
        return headers


# ------------------------------------------------------------------------------- frames ------

class ConnectionClosed(Exception):
    pass


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.headers = None  # list of (name, value)
        self.trailers = None
        self.data = bytearray()
        self.ended = False
        self.rst_code = None
        self.first_response_at = None
        self.ended_at = None

    @property
    def done(self):
        return self.ended or self.rst_code is not None

    def header(self, name, default=None):
        for src in (self.headers or [], self.trailers or []):
            for n, v in src:
                if n == name:
                    return v
        return default

    @property
    def http_status(self):
        for n, v in self.headers or []:
            if n == ":status":
                return int(v)
        return None

    @property
    def grpc_status(self):
        # Trailers-only responses carry grpc-status in the (only) HEADERS block.
        v = None
        for src in (self.headers or [], self.trailers or []):
            for n, val in src:
                if n == "grpc-status":
                    v = int(val)
        return v

    @property
    def grpc_message(self):
        v = None
        for src in (self.headers or [], self.trailers or []):
            for n, val in src:
                if n == "grpc-message":
                    v = urllib.parse.unquote(val, encoding="utf-8", errors="replace")
        return v or ""

    def grpc_messages(self):
        """The length-prefixed messages in the response body: list of (compressed_flag, bytes)."""
        out = []
        buf = bytes(self.data)
        pos = 0
        while pos + 5 <= len(buf):
            flag, length = struct.unpack(">BI", buf[pos:pos + 5])
            out.append((flag, buf[pos + 5:pos + 5 + length]))
            pos += 5 + length
        return out

    def __repr__(self):
        return "Stream(%d, headers=%r, trailers=%r, data=%dB, rst=%r)" % (
            self.sid, self.headers, self.trailers, len(self.data), self.rst_code)


class H2Conn:
    """One HTTP/2 connection. Not thread-safe: one thread drives it."""

    def __init__(self, host, port, timeout=5.0, recv_window=1 << 24, send_preface=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host, self.port = host, port
        self.buf = bytearray()
        self.decoder = HpackDecoder()
        self.next_sid = 1
        self.streams = {}
        self.goaway = None  # (last_stream_id, error_code, debug)
        self.eof = False
        self.peer_settings = {}
        self.peer_settings_seen = False
        self.conn_send_window = 65535
        self.peer_initial_window = 65535
        self.stream_send_window = {}
        self.peer_max_frame = 16384
        self.recv_window = recv_window
        self._hdr_block = None  # (sid, bytearray, flags of first frame)
        if send_preface:
            self.sock.sendall(PREFACE)
            self.send_settings({SETTINGS_ENABLE_PUSH: 0, SETTINGS_INITIAL_WINDOW_SIZE: recv_window})
            self.send_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", recv_window))

    # --- low level
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, ftype, flags, sid, payload=b""):
        hdr = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid & 0x7FFFFFFF)
        self.sock.sendall(hdr + payload)

    def send_settings(self, settings):
        payload = b"".join(struct.pack(">HI", k, v) for k, v in settings.items())
        self.send_frame(SETTINGS, 0, 0, payload)

    def _recv_some(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("h2raw: timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError("h2raw: timed out waiting for the server")
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise ConnectionClosed("h2raw: connection closed by the server")
        self.buf += chunk

    def read_frame(self, deadline):
        while len(self.buf) < 9:
            self._recv_some(deadline)
        length = int.from_bytes(self.buf[0:3], "big")
        ftype, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        while len(self.buf) < 9 + length:
            self._recv_some(deadline)
        payload = bytes(self.buf[9:9 + length])
        del self.buf[:9 + length]
        return ftype, flags, sid, payload

    def _stream(self, sid):
        st = self.streams.get(sid)
        if st is None:
            st = self.streams[sid] = Stream(sid)
        return st

    def process_one(self, deadline):
        ftype, flags, sid, payload = self.read_frame(deadline)
        now = time.monotonic()
        if ftype == SETTINGS:
            if not flags & FLAG_ACK:
                for i in range(0, len(payload) - len(payload) % 6, 6):
                    k, v = struct.unpack(">HI", payload[i:i + 6])
                    self.peer_settings[k] = v
                    if k == SETTINGS_INITIAL_WINDOW_SIZE:
                        delta = v - self.peer_initial_window
                        self.peer_initial_window = v
                        for s in self.stream_send_window:
                            self.stream_send_window[s] += delta
                    elif k == SETTINGS_MAX_FRAME_SIZE:
                        self.peer_max_frame = v
                self.peer_settings_seen = True
                self.send_frame(SETTINGS, FLAG_ACK, 0)
        elif ftype == PING:
            if not flags & FLAG_ACK:
                self.send_frame(PING, FLAG_ACK, 0, payload)
        elif ftype == WINDOW_UPDATE:
            inc = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += inc
            else:
                self.stream_send_window[sid] = self.stream_send_window.get(sid, 0) + inc
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code, payload[8:])
        elif ftype == RST_STREAM:
            st = self._stream(sid)
            st.rst_code = struct.unpack(">I", payload[:4])[0]
            st.ended_at = now
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                pos = 0
                pad = 0
                if flags & FLAG_PADDED:
                    pad = payload[0]
                    pos = 1
                if flags & FLAG_PRIORITY:
                    pos += 5
                frag = payload[pos:len(payload) - pad]
                self._hdr_block = (sid, bytearray(frag), flags)
            else:
                if self._hdr_block is None or self._hdr_block[0] != sid:
                    raise ValueError("h2raw: unexpected CONTINUATION")
                self._hdr_block[1].extend(payload)
            if flags & FLAG_END_HEADERS:
                hsid, block, first_flags = self._hdr_block
                self._hdr_block = None
                fields = self.decoder.decode(bytes(block))
                st = self._stream(hsid)
                if st.first_response_at is None:
                    st.first_response_at = now
                if st.headers is None:
                    st.headers = fields
                else:
                    st.trailers = fields
                if first_flags & FLAG_END_STREAM:
                    st.ended = True
                    st.ended_at = now
        elif ftype == DATA:
            pos = 0
            pad = 0
            if flags & FLAG_PADDED:
                pad = payload[0]
                pos = 1
            st = self._stream(sid)
            if st.first_response_at is None:
                st.first_response_at = now
            st.data += payload[pos:len(payload) - pad]
            if payload:
                # Give the flow-control credit straight back.
                self.send_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))
                if not flags & FLAG_END_STREAM:
                    self.send_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", len(payload)))
            if flags & FLAG_END_STREAM:
                st.ended = True
                st.ended_at = now
        return ftype, flags, sid, payload

    # --- requests
    def new_stream_id(self):
        sid = self.next_sid
        self.next_sid += 2
        self.stream_send_window[sid] = self.peer_initial_window
        self._stream(sid)
        return sid

    def send_headers(self, sid, headers, end_stream=False):
        block = encode_headers(headers)
        flags = FLAG_END_HEADERS | (FLAG_END_STREAM if end_stream else 0)
        # Split into HEADERS + CONTINUATION if the block is larger than a frame.
        maxf = 16384
        if len(block) <= maxf:
            self.send_frame(HEADERS, flags, sid, block)
        else:
            self.send_frame(HEADERS, flags & ~FLAG_END_HEADERS, sid, block[:maxf])
            rest = block[maxf:]
            while rest:
                part, rest = rest[:maxf], rest[maxf:]
                self.send_frame(CONTINUATION, FLAG_END_HEADERS if not rest else 0, sid, part)

    def send_data(self, sid, data, end_stream=True, timeout=10.0):
        deadline = time.monotonic() + timeout
        data = memoryview(bytes(data))
        if not data:
            self.send_frame(DATA, FLAG_END_STREAM if end_stream else 0, sid, b"")
            return
        while data:
            allowed = min(self.conn_send_window, self.stream_send_window.get(sid, 0),
                          self.peer_max_frame, len(data))
            if allowed <= 0:
                self.process_one(deadline)
                st = self.streams.get(sid)
                if st is not None and st.done:
                    return  # the server answered (or reset) before taking the whole body
                continue
            chunk, data = data[:allowed], data[allowed:]
            self.conn_send_window -= allowed
            self.stream_send_window[sid] -= allowed
            last = end_stream and not data
            self.send_frame(DATA, FLAG_END_STREAM if last else 0, sid, bytes(chunk))

    def send_rst(self, sid, code=8):
        self.send_frame(RST_STREAM, 0, sid, struct.pack(">I", code))

    def wait(self, sid, timeout=5.0):
        """Process frames until stream sid has ended (END_STREAM or RST_STREAM)."""
        deadline = time.monotonic() + timeout
        st = self._stream(sid)
        while not st.done:
            try:
                self.process_one(deadline)
            except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
                self.eof = True
                break
        return st

    def wait_closed(self, timeout=5.0):
        """True when the server closes the connection within timeout."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.process_one(deadline)
        except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
            self.eof = True
            return True
        except TimeoutError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------- gRPC --------

def grpc_frame(message, compressed=False, declared_length=None):
    n = len(message) if declared_length is None else declared_length
    return struct.pack(">BI", 1 if compressed else 0, n) + message


def grpc_headers(path, authority, content_type="application/grpc", timeout=None, extra=()):
    h = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority)]
    if content_type is not None:
        h.append(("content-type", content_type))
    h.append(("te", "trailers"))
    if timeout is not None:
        h.append(("grpc-timeout", timeout))
    h.extend(extra)
    return h


def grpc_start(conn, path, content_type="application/grpc", timeout=None, extra=()):
    sid = conn.new_stream_id()
    conn.send_headers(sid, grpc_headers(path, "%s:%d" % (conn.host, conn.port), content_type,
                                        timeout, extra))
    return sid


def grpc_unary(conn, path, body, content_type="application/grpc", timeout=None, extra=(),
               wait_s=5.0):
    """Send one complete request (body already framed) and wait for the whole response."""
    sid = grpc_start(conn, path, content_type, timeout, extra)
    conn.send_data(sid, body, end_stream=True)
    return conn.wait(sid, wait_s)
