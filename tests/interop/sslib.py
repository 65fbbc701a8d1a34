"""Shared helpers for the splitserve interop tests.

A real gRPC client (Debian's python3-grpcio, always run with /usr/bin/python3) against the real
`splitserve` daemon. The stubs are built on grpc's generic API from the protoc-generated message
modules (compute_service_pb2, health_pb2) that CMake writes into build/py.

Environment (set by ctest, with defaults for running a file by hand from the repository):
  SS_BIN_DIR   directory with the splitserve binaries (default: <repo>/build/bin)
  SS_PY_DIR    directory with compute_service_pb2.py and health_pb2.py (default: <repo>/build/py)
  SS_SANITIZE  "1" when the binaries are ASan/UBSan builds: timeouts scale x3
"""
import ctypes
import faulthandler
import json
import os
import re
import signal
import shutil
import signal as _signal
import struct
import subprocess
import tempfile
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN_DIR = os.environ.get("SS_BIN_DIR") or os.path.join(REPO, "build", "bin")
PY_DIR = os.environ.get("SS_PY_DIR") or os.path.join(REPO, "build", "py")
SANITIZE = os.environ.get("SS_SANITIZE", "0").strip().lower() in ("1", "on", "true", "yes")
SCALE = 3.0 if SANITIZE else 1.0

sys.path.insert(0, PY_DIR)
sys.path.insert(0, HERE)
try:
    import compute_service_pb2 as pb  # noqa: E402
    import health_pb2 as hpb  # noqa: E402
except ImportError as e:  # pragma: no cover
    sys.stderr.write("sslib: cannot import the generated protobuf modules from %s (%s); "
                     "build first (cmake --build build)\n" % (PY_DIR, e))
    raise

import grpc  # noqa: E402
import numpy as np  # noqa: E402

MiB = 1 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 200 * MiB),
    ("grpc.max_send_message_length", 200 * MiB),
]
SVC = "/splitlearn.comm.ComputeService/"
HEALTH = "/grpc.health.v1.Health/"
SC = grpc.StatusCode


def T(seconds):
    """A timeout, scaled for sanitizer builds."""
    return seconds * SCALE


# ------------------------------------------------------------------------------ daemon ------

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


# Daemons die with the test: util-linux's setpriv sets PR_SET_PDEATHSIG and execs the daemon, so
# no Python runs in the forked child (a preexec_fn does: with grpcio's threads alive in this
# process that child can crash before its exec). Without setpriv, the preexec_fn fallback.
_SETPRIV = shutil.which("setpriv")


def _spawn_args(cmd):
    """(argv, preexec_fn) that start cmd tied to this process's life."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--"] + cmd, None
    return cmd, _die_with_parent


_LIVE_SERVERS = []
_ALL_SERVERS = []
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|WARNING: ThreadSanitizer|runtime error:|"
                          r"SUMMARY: UndefinedBehaviorSanitizer")


def binary(name="splitserve"):
    return os.path.join(BIN_DIR, name)


class ServerFailedToStart(AssertionError):
    pass


# SS_IO_THREADS=N runs every test's daemon with --io-threads N (ctest interop.io2.*): the same
# assertions must hold whatever loop a connection lands on. SS_TSAN=1: the daemon is a
# ThreadSanitizer build, which runs one background thread of its own. IO is what the daemon's
# thread count has besides its workers: its I/O loops (+ that thread).
IO_THREADS = int(os.environ.get("SS_IO_THREADS", "1") or "1")
TSAN_THREADS = 1 if os.environ.get("SS_TSAN") == "1" else 0
IO = IO_THREADS + TSAN_THREADS


class Server:
    """A splitserve daemon on 127.0.0.1:<free port>; its stdout+stderr are drained by a thread
    into self.log (so the pipe never fills and the log is there for failure reports)."""

    def __init__(self, *args, start_timeout=10.0, env=None, expect_start=True, prefix=(),
                 test_models=True):
        self.args = [str(a) for a in args]
        # The test-only kinds (scale, sleep, spin) are off by default in the daemon; the tests
        # use them, so they are on here unless a test asks for the default (test_models=False).
        extra = ["--enable-test-models"] if test_models else []
        if IO_THREADS > 1 and "--io-threads" not in self.args:
            extra += ["--io-threads", str(IO_THREADS)]
        self.cmd = list(prefix) + [binary(), "--listen", "127.0.0.1:0"] + extra + self.args
        self._lines = []
        self._cond = threading.Condition()
        self._eof = 0
        self.port = None
        self.rc = None
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        argv, pre = _spawn_args(self.cmd)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env, preexec_fn=pre)
        self.pid = self.proc.pid
        _LIVE_SERVERS.append(self)
        _ALL_SERVERS.append(self)
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._drain, args=(stream,), daemon=True).start()
        if expect_start:
            self._wait_listening(T(start_timeout))

    def _drain(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof += 1
            self._cond.notify_all()

    @property
    def log(self):
        with self._cond:
            return "\n".join(self._lines)

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    m = LISTEN_RE.search(line)
                    if m:
                        self.port = int(m.group(2))
                        return
                if self._eof >= 2 or self.proc.poll() is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
        rc = self.proc.poll()
        self.kill()
        raise ServerFailedToStart("splitserve %s did not print 'listening on' (rc=%r):\n%s"
                                  % (" ".join(self.args), rc, self.log))

    def wait_for_line(self, pattern, timeout=5.0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + T(timeout)
        with self._cond:
            while True:
                for line in self._lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof >= 2:
                    return None
                self._cond.wait(min(left, 0.05))

    @property
    def target(self):
        return "127.0.0.1:%d" % self.port

    def alive(self):
        return self.proc.poll() is None

    def threads(self):
        return proc_threads(self.pid)

    def status_field(self, key):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
        return None

    def rss_kib(self, key="VmRSS"):
        v = self.status_field(key)
        return int(v.split()[0]) if v else 0

    def signal(self, sig=_signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for exit; returns the exit code (negative: killed by that signal) or None."""
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._finish_logs()
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)
        return self.rc

    def _finish_logs(self):
        deadline = time.monotonic() + 2.0
        with self._cond:
            while self._eof < 2 and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def stop(self, timeout=10.0, sig=_signal.SIGTERM):
        """SIGTERM and wait; returns (rc, log). Kills it if it does not exit in time."""
        if self.proc.poll() is None:
            self.signal(sig)
        rc = self.wait(T(timeout))
        if rc is None:
            self.kill()
            raise AssertionError("splitserve did not exit within %.1fs of %s:\n%s"
                                 % (T(timeout), _signal.Signals(sig).name, tail(self.log)))
        return rc, self.log

    def stop_ok(self, timeout=10.0):
        """SIGTERM; assert exit code 0 and no sanitizer report. Returns the log."""
        rc, log = self.stop(timeout)
        check_no_sanitizer_report(log)
        assert rc == 0, "splitserve exited with %r after SIGTERM (expected 0):\n%s" % (rc, tail(log))
        return log

    def checkpoint(self, ids, timeout=30.0):
        """SIGUSR1, then wait for a new 'written' line of each model id (earlier ones don't
        count)."""
        pat = {mid: "checkpoint (SIGUSR1): model '%s' written" % mid for mid in ids}
        with self._cond:
            before = {mid: sum(p in line for line in self._lines) for mid, p in pat.items()}
        self.signal(_signal.SIGUSR1)
        deadline = time.monotonic() + T(timeout)
        while time.monotonic() < deadline:
            with self._cond:
                if all(sum(p in line for line in self._lines) > before[mid]
                       for mid, p in pat.items()):
                    return
            time.sleep(0.05)
        raise AssertionError("no checkpoint lines for %s:\n%s" % (ids, tail(self.log)))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._finish_logs()
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)


def shutdown(client=None, server=None):
    """Teardown helper: close the client, then drain the server (exit 0, no sanitizer report)."""
    if client is not None:
        client.close()
    if server is not None:
        server.stop_ok()


def check_no_sanitizer_report(log):
    m = SANITIZER_RE.search(log)
    assert not m, "sanitizer report in the server log:\n%s" % tail(log, 80)


def run_cli(*args, timeout=10.0, env=None):
    """Run splitserve with args that should make it refuse to start; returns (rc, output).
    env: variables added to the environment."""
    cmd = [binary()] + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        argv, pre = _spawn_args(cmd)
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=T(timeout), preexec_fn=pre,
                           env=full_env)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")
        raise AssertionError("splitserve %s did not exit within %.0fs (it should refuse to start):"
                             "\n%s" % (" ".join(cmd[1:]), T(timeout), tail(out)))
    return p.returncode, p.stdout.decode("utf-8", "replace")


def model_refused(spec, *want):
    """splitserve --model spec must refuse to start (not crash), with a message naming every
    word of want (case-insensitive). Returns the output."""
    rc, out = run_cli("--listen", "127.0.0.1:0", "--model", spec)
    assert rc != 0, "splitserve --model %s started:\n%s" % (spec, out)
    assert rc > 0, "splitserve --model %s crashed (signal %d):\n%s" % (spec, -rc, out)
    assert "listening on" not in out
    check_no_sanitizer_report(out)
    for w in want:
        assert w.lower() in out.lower(), "refusal of --model %s does not name %r:\n%s" % (
            spec, w, out)
    return out


def proc_threads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line for pid %d" % pid)


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def tail(text, n=40):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


# ------------------------------------------------------------------------------ client ------

def channel(target, separate=False, options=()):
    """An insecure channel. separate=True gives it its own TCP connection (local subchannel
    pool), so it does not share a connection with other channels to the same target."""
    if isinstance(target, Server):
        target = target.target
    opts = list(GRPC_OPTIONS)
    if separate:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    opts.extend(options)
    return grpc.insecure_channel(target, options=opts)


class Stubs:
    """ComputeService + grpc.health.v1.Health over grpc's generic API."""

    def __init__(self, ch):
        self.channel = ch
        self.compute = ch.unary_unary(SVC + "Compute",
                                      request_serializer=pb.ComputeRequest.SerializeToString,
                                      response_deserializer=pb.ComputeResponse.FromString)
        self.backward = ch.unary_unary(SVC + "ComputeBackward",
                                       request_serializer=pb.BackwardRequest.SerializeToString,
                                       response_deserializer=pb.BackwardResponse.FromString)
        self.health = ch.unary_unary(SVC + "HealthCheck",
                                     request_serializer=pb.HealthRequest.SerializeToString,
                                     response_deserializer=pb.HealthResponse.FromString)
        self.info = ch.unary_unary(SVC + "GetServiceInfo",
                                   request_serializer=pb.ServiceInfoRequest.SerializeToString,
                                   response_deserializer=pb.ServiceInfoResponse.FromString)
        self.monitoring = ch.unary_stream(
            SVC + "StreamMonitoring",
            request_serializer=pb.MonitoringStreamRequest.SerializeToString,
            response_deserializer=pb.MonitoringSnapshotResponse.FromString)
        self.h_check = ch.unary_unary(HEALTH + "Check",
                                      request_serializer=hpb.HealthCheckRequest.SerializeToString,
                                      response_deserializer=hpb.HealthCheckResponse.FromString)
        self.h_watch = ch.unary_stream(HEALTH + "Watch",
                                       request_serializer=hpb.HealthCheckRequest.SerializeToString,
                                       response_deserializer=hpb.HealthCheckResponse.FromString)

    def raw(self, method):
        """A unary method that sends and returns raw bytes (identity serializers)."""
        return self.channel.unary_unary(method, request_serializer=None,
                                        response_deserializer=None)

    def close(self):
        self.channel.close()


def connect(server, separate=False):
    return Stubs(channel(server, separate=separate))


# ------------------------------------------------------------------------------ tensors -----

def f32_to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(u):
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode(arr, dtype="float32"):
    """numpy array -> little-endian bytes in dtype ('float32' | 'float16' | 'bfloat16')."""
    if dtype == "float32":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if dtype == "float16":
        return np.ascontiguousarray(arr, dtype="<f4").astype("<f2").tobytes()
    if dtype == "bfloat16":
        return f32_to_bf16_bits(arr).astype("<u2").tobytes()
    raise ValueError(dtype)


def decode(data, shape, dtype="float32"):
    """bytes -> float32 numpy array of shape (bf16/f16 widened exactly)."""
    shape = tuple(shape)
    if dtype == "float32":
        return np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
    if dtype == "float16":
        return np.frombuffer(data, dtype="<f2").reshape(shape).astype(np.float32)
    if dtype == "bfloat16":
        return bf16_bits_to_f32(np.frombuffer(data, dtype="<u2")).reshape(shape)
    raise ValueError(dtype)


def rounded(arr, dtype):
    """arr as float32 after a round trip through dtype (what the server sees)."""
    return decode(encode(arr, dtype), np.shape(arr), dtype)


def make_req(arr=None, model="", dtype=None, request_id=None, shape=None, data=None, **meta):
    """A ComputeRequest from a numpy array (or explicit shape/data). dtype sets metadata dtype."""
    r = pb.ComputeRequest()
    if arr is not None:
        arr = np.asarray(arr, dtype=np.float32)
        r.data = encode(arr, dtype or "float32")
        r.shape.extend(arr.shape)
    if shape is not None:
        del r.shape[:]
        r.shape.extend(int(s) for s in shape)
    if data is not None:
        r.data = data
    if model:
        r.model_id = model
    if request_id is not None:
        r.request_id = request_id
    if dtype is not None:
        r.metadata["dtype"] = dtype
    for k, v in meta.items():
        r.metadata[k] = str(v)
    return r


def result(resp, dtype="float32"):
    return decode(resp.data, resp.shape, dtype)


def kv_entries(presents):
    """[(key, value) arrays] -> [KVCacheEntry] (float32, shapes as given): past_key_values."""
    out = []
    for k, v in presents:
        e = pb.KVCacheEntry()
        k = np.ascontiguousarray(k, np.float32)
        v = np.ascontiguousarray(v, np.float32)
        e.key_data, e.value_data = k.tobytes(), v.tobytes()
        e.key_shape.extend(k.shape)
        e.value_shape.extend(v.shape)
        out.append(e)
    return out


def presents(resp):
    """A ComputeResponse's present_key_values as [(key, value)] float32 arrays."""
    return [(np.frombuffer(e.key_data, np.float32).reshape(tuple(e.key_shape)),
             np.frombuffer(e.value_data, np.float32).reshape(tuple(e.value_shape)))
            for e in resp.present_key_values]


def compute_kv(stub, model, x, past=None, use_cache=None, timeout=20.0, **meta):
    """Compute on stub with a client-side KV cache: past [(key, value)] arrays and use_cache."""
    req = make_req(x, model=model, **meta)
    if past is not None:
        req.past_key_values.extend(kv_entries(past))
    if use_cache is not None:
        req.use_cache = use_cache
    return stub.compute(req, timeout=T(timeout))


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ checks ------

def expect_error(fn, code, *substrings):
    """Call fn(); assert it raises grpc.RpcError with code and that the
    details contain every substring. Returns (details, elapsed_seconds)."""
    t0 = time.perf_counter()
    try:
        resp = fn()
    except grpc.RpcError as e:
        elapsed = time.perf_counter() - t0
        details = e.details() or ""
        assert e.code() == code, "expected %s, got %s: %r" % (code.name, e.code().name, details)
        for s in substrings:
            if isinstance(s, (tuple, list)):
                assert any(x.lower() in details.lower() for x in s), \
                    "message %r names none of %r" % (details, s)
            else:
                assert s.lower() in details.lower(), "message %r does not contain %r" % (details, s)
        return details, elapsed
    raise AssertionError("expected %s, but the call succeeded: %r" % (code.name, str(resp)[:200]))


def assert_alive(stubs, timeout=5.0):
    """The server still answers a good call correctly."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    resp = stubs.compute(make_req(x, model="identity", request_id=4242), timeout=T(timeout))
    assert resp.request_id == 4242
    assert list(resp.shape) == [3, 4], resp.shape
    np.testing.assert_array_equal(result(resp), x)


# ------------------------------------------------------------------------------ safetensors -

_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def safetensors_bytes(tensors, metadata=None):
    """tensors: {name: (float32 array, 'F32'|'F16'|'BF16')} (or a bare array: F32).
    Returns (file bytes, {name: float32 array as stored (rounded to the storage dtype)})."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    stored = {}
    offset = 0
    for name in sorted(tensors):
        spec = tensors[name]
        arr, st = (spec, "F32") if isinstance(spec, np.ndarray) else spec
        arr = np.asarray(arr, dtype=np.float32)
        raw = encode(arr, _ST_DTYPES[st])
        header[name] = {"dtype": st, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        stored[name] = decode(raw, arr.shape, _ST_DTYPES[st])
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((-len(hjson)) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs), stored


def write_safetensors(path, tensors, metadata=None):
    data, stored = safetensors_bytes(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)
    return stored


def write_sharded(directory, tensors, shards=3, metadata=None):
    """tensors ({name: (array, storage)}) as a sharded Hugging Face checkpoint in directory:
    model-0000k-of-0000n.safetensors (names in sorted order, dealt round-robin) and
    model.safetensors.index.json. Returns {name: the array as stored}."""
    keys, stored, wmap = sorted(tensors), {}, {}
    for s in range(shards):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {k: tensors[k] for k in keys[s::shards]}
        stored.update(write_safetensors(os.path.join(directory, fn), part, metadata))
        wmap.update({k: fn for k in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, f, indent=1)
    return stored


def random_mlp(widths, seed, storage="F32"):
    """Sequential(Linear, ReLU, Linear, ...) weights like a PyTorch state_dict: keys
    '0.weight' [out,in], '0.bias', '2.weight', ... Returns {name: (array, storage)}."""
    g = np.random.default_rng(seed)
    tensors = {}
    for i in range(len(widths) - 1):
        fan_in, fan_out = widths[i], widths[i + 1]
        bound = 1.0 / np.sqrt(fan_in)
        w = g.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32) * 1.7
        b = g.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
        tensors["%d.weight" % (2 * i)] = (w, storage)
        tensors["%d.bias" % (2 * i)] = (b, storage)
    return tensors


def mlp_reference(x, stored, activation="relu"):
    """float64 reference of Sequential(Linear, act, Linear, act, ..., Linear)."""
    n = len([k for k in stored if k.endswith(".weight")])
    h = np.asarray(x, dtype=np.float64)
    for i in range(n):
        w = stored["%d.weight" % (2 * i)].astype(np.float64)
        b = stored["%d.bias" % (2 * i)].astype(np.float64)
        h = h @ w.T + b
        if i < n - 1:
            if activation == "relu":
                h = np.maximum(h, 0.0)
            elif activation == "gelu":
                from math import erf, sqrt
                verf = np.vectorize(erf)
                h = 0.5 * h * (1.0 + verf(h / sqrt(2.0)))
            else:
                raise ValueError(activation)
    return h


# ------------------------------------------------------------------------------ runner ------

def main(namespace, default_timeout=110.0):
    """Run setup(), every test_* function in definition order, then teardown().
    Prints PASS/FAIL per test and 'N passed, M failed'; exit code 1 on any failure."""
    faulthandler.enable()
    faulthandler.dump_traceback_later(T(default_timeout) if not SANITIZE else 280, exit=True)
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    only = sys.argv[1:]
    if only:
        tests = [(n, f) for n, f in tests if any(o in n for o in only)]
    passed = failed = 0
    file_t0 = time.perf_counter()
    # Every temporary file of the suite (and of the servers it starts) goes under one private
    # directory: whatever a test leaves there is reported as a failure, then removed, so no run
    # leaves /tmp/ss-* behind (SS_KEEP_TMP=1 keeps it for a post-mortem).
    tmp_root = tempfile.mkdtemp(prefix="ss-run-")
    tempfile.tempdir = tmp_root
    os.environ["TMPDIR"] = tmp_root

    def run_one(name, fn):
        nonlocal passed, failed
        before = len(_ALL_SERVERS)
        t0 = time.perf_counter()
        try:
            fn()
        except BaseException as e:  # noqa: B902 - report everything, keep going
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            dt = time.perf_counter() - t0
            if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
                what = "gRPC %s: %s" % (e.code().name, e.details())
            else:
                what = "%s: %s" % (type(e).__name__, e)
            print("FAIL %s (%.2fs): %s" % (name, dt, what), flush=True)
            traceback.print_exc(file=sys.stdout)
            involved = _ALL_SERVERS[before:] + [s for s in _LIVE_SERVERS
                                                if s not in _ALL_SERVERS[before:]]
            for s in involved:
                print("---- server log (pid %d, args %s, rc %r), last lines:\n%s\n----"
                      % (s.pid, " ".join(s.args), s.proc.poll(), tail(s.log, 30)), flush=True)
            return False
        passed += 1
        print("PASS %s (%.2fs)" % (name, time.perf_counter() - t0), flush=True)
        return True

    ok = True
    if "setup" in namespace:
        ok = run_one("setup", namespace["setup"])
    if ok:
        for name, fn in tests:
            run_one(name, fn)
    else:
        failed += len(tests)
        print("(setup failed: %d tests not run)" % len(tests))
    if "teardown" in namespace:
        run_one("teardown", namespace["teardown"])
    for s in list(_LIVE_SERVERS):
        s.kill()
    left = sorted(os.listdir(tmp_root))
    if left:
        failed += 1
        print("FAIL temp-cleanup: the suite left %s in %s (remove what a test creates, in "
              "teardown() or a finally)" % (", ".join(left), tmp_root), flush=True)
    if not os.environ.get("SS_KEEP_TMP"):
        shutil.rmtree(tmp_root, ignore_errors=True)
    tempfile.tempdir = None
    print("%s: %.1fs" % (os.path.basename(sys.argv[0]), time.perf_counter() - file_t0))
    print("%d passed, %d failed" % (passed, failed), flush=True)
    faulthandler.cancel_dump_traceback_later()
    sys.exit(1 if failed else 0)
