#!/usr/bin/env python3
"""Write the seed corpora of the fuzz harnesses: tests/fuzz/corpus/<harness>/seed-*.

Run from anywhere with Debian's python3 (python3-protobuf) and protoc on PATH:
    /usr/bin/python3 tests/fuzz/make_corpus.py
The seeds are small well-formed inputs of each harness's format (see the top comment of each
tests/fuzz/fuzz_<name>.c); the fuzzers mutate from them. Crash inputs found later are added to
the same folders by hand (crash-*), never by this script, which only rewrites seed-* files.
"""
import gzip
import os
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
import h2raw  # noqa: E402  (HPACK encoding of request headers)

gen = tempfile.mkdtemp(prefix="ss_corpus_")
subprocess.check_call(["protoc", "--python_out=" + gen, "-I" + os.path.join(ROOT, "src", "proto"),
                       "compute_service.proto", "health.proto"])
sys.path.insert(0, gen)
import compute_service_pb2 as cs  # noqa: E402
import health_pb2 as hp  # noqa: E402


def f32(n, base=0.0):
    return struct.pack("<%df" % n, *[base + 0.01 * i for i in range(n)])


def write(harness, seeds):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    for name, data in seeds.items():
        with open(os.path.join(d, "seed-" + name), "wb") as fp:
            fp.write(data)


def compute(model="", shape=(1, 4), data=None, meta=None, **kw):
    n = 1
    for s in shape:
        n *= s
    r = cs.ComputeRequest(data=f32(n) if data is None else data, shape=list(shape), model_id=model, **kw)
    for k, v in (meta or {}).items():
        r.metadata[k] = v
    return r.SerializeToString()


def kv(past, heads=4, hd=4):
    e = cs.KVCacheEntry(key_data=f32(heads * past * hd), key_shape=[1, heads, past, hd],
                        value_data=f32(heads * past * hd, 1.0), value_shape=[1, heads, past, hd])
    return e


# ---- requests shared by wire, service and conn
REQ = {
    "identity": compute("identity", (2, 3)),
    "scale_f16": compute("scale", (1, 4), data=b"\x00\x3c" * 4, meta={"dtype": "float16"}),
    "mlp": compute("mlp", (1, 1, 768)),
    "gpt2": compute("g", (1, 3, 16), request_id=7, use_cache=True),
    "gpt2_past": cs.ComputeRequest(data=f32(16), shape=[1, 1, 16], model_id="g", use_cache=True,
                                   past_key_values=[kv(3), kv(3)]).SerializeToString(),
    "gpt2_session": compute("g", (1, 2, 16), meta={"session": "s1"}),
    "gpt2_session_end": compute("g", (1, 1, 16), meta={"session": "s1", "session_end": "1"}),
    "train_fwd": compute("g", (1, 2, 16), training_mode=True, forward_id="f1"),
    "sleep": compute("sleep", (1, 2), meta={"ms": "1"}),
    "spin": compute("spin", (1, 2), meta={"ms": "0"}),
    # the zlib wire codec (metadata codec=zlib: the Python CompressedTensorCodec)
    "identity_zlib": compute("identity", (2, 3), data=zlib.compress(f32(6)), meta={"codec": "zlib"}),
    "mlp_zlib_f16": compute("mlp", (1, 768), data=zlib.compress(b"\x00\x3c" * 768),
                            meta={"codec": "zlib", "dtype": "float16"}),
    # an empty data field with codec=zlib: it arrives as a NULL view (crashed the server once)
    "zlib_empty": compute("identity", (2, 3), data=b"", meta={"codec": "zlib"}),
    "zlib_empty_shape0": compute("mlp", (0, 768), data=b"", meta={"codec": "zlib"}),
    "zlib_bad": compute("identity", (2, 3), data=b"\x78\x9c" + b"\xff" * 20, meta={"codec": "zlib"}),
    "zlib_long": compute("identity", (1, 2), data=zlib.compress(f32(64)), meta={"codec": "zlib"}),
    "train_fwd_zlib": compute("g", (1, 2, 16), data=zlib.compress(f32(32)), training_mode=True,
                              forward_id="fz", meta={"codec": "zlib"}),
}
BACKWARD = cs.BackwardRequest(grad_output_data=f32(32), grad_output_shape=[1, 2, 16], forward_id="f1",
                              model_id="g", learning_rate=0.001).SerializeToString()
HEALTH = cs.HealthRequest().SerializeToString()
INFO = cs.ServiceInfoRequest().SerializeToString()
MON = cs.MonitoringStreamRequest(sampling_interval=0.01).SerializeToString()
BACKWARD_ZLIB = cs.BackwardRequest(grad_output_data=zlib.compress(f32(32)), grad_output_shape=[1, 2, 16],
                                   forward_id="fz", model_id="g", learning_rate=0.001).SerializeToString()
GHEALTH = hp.HealthCheckRequest(service="").SerializeToString()

# ---- fuzz_grpc_frame: [limit][8 chunk sizes][stream]
def lpm(msg, flag=0):
    return bytes([flag]) + struct.pack(">I", len(msg)) + msg


write("grpc_frame", {
    "two_messages": bytes([5]) + bytes([1, 3, 0, 7, 22, 5, 2, 9]) + lpm(b"hello") + lpm(b""),
    "compressed": bytes([6]) + bytes([22] * 8) + lpm(REQ["identity"], 1),
    "too_large": bytes([2]) + bytes([4] * 8) + lpm(b"x" * 40),
    "timeout_m": bytes([7]) + bytes([2] * 8) + b"100m",
    "timeout_H": bytes([7]) + bytes([2] * 8) + b"99999999H",
    "timeout_n": bytes([7]) + bytes([2] * 8) + b"1234567n",
    "pct": bytes([200]) + bytes([1] * 8) + b"caf\xc3\xa9 100% \x01\n%41%4",
    # grpc-encoding gzip / deflate messages (compressed flag 1), and a small bomb over the limit
    "gzip": bytes([6]) + bytes([9, 0, 22, 3] * 2) + lpm(gzip.compress(REQ["identity"], mtime=0), 1),
    "deflate": bytes([5]) + bytes([22] * 8) + lpm(zlib.compress(REQ["identity"]), 1),
    "gzip_bomb": bytes([7]) + bytes([22] * 8) + lpm(gzip.compress(b"\0" * (1 << 21), mtime=0), 1),
    "gzip_name": bytes([4]) + bytes([5] * 8) + b"gzip",
})

# ---- fuzz_wire: [type][message]
KV = kv(2).SerializeToString()
write("wire", {
    "compute_" + k: b"\x00" + v for k, v in REQ.items() if k != "mlp"
} | {
    "backward": b"\x01" + BACKWARD,
    "kv": b"\x02" + KV,
    "kv_unpacked": b"\x02" + b"\x10\x01\x10\x04\x10\x02\x10\x04" + b"\x0a\x00",
    "health": b"\x03" + HEALTH,
    "info": b"\x04" + INFO,
    "monitoring": b"\x05" + MON,
    "grpc_health": b"\x06" + hp.HealthCheckRequest(service="splitlearn.comm.ComputeService").SerializeToString(),
    "split": b"\x07" + REQ["gpt2_past"],
    # type 8: the zlib tensor codec, [want u16 le][payload]
    "zlib_codec": b"\x08" + struct.pack("<H", 24) + zlib.compress(f32(6)),
    "zlib_codec_short": b"\x08" + struct.pack("<H", 24) + zlib.compress(f32(5)),
    "zlib_codec_empty": b"\x08" + struct.pack("<H", 24),
    "zlib_codec_bad": b"\x08" + struct.pack("<H", 8) + b"\x78\x9c" + b"\x01" * 12,
})

# ---- fuzz_service: calls of [method][len u16 le][request]
M = {"Compute": 0, "ComputeBackward": 1, "HealthCheck": 2, "GetServiceInfo": 3,
     "StreamMonitoring": 4, "Check": 5, "Watch": 6}


def calls(*cs_):
    out = b""
    for m, req in cs_:
        out += bytes([M[m]]) + struct.pack("<H", len(req)) + req
    return out


write("service", {
    "identity": calls(("Compute", REQ["identity"])),
    "scale_f16": calls(("Compute", REQ["scale_f16"])),
    "identity_zlib": calls(("Compute", compute("identity", (2, 3), data=zlib.compress(f32(6)),
                                               meta={"codec": "zlib"}))),
    "scale_zlib_f16": calls(("Compute", compute("scale", (1, 4), data=zlib.compress(b"\x00\x3c" * 4),
                                                meta={"codec": "zlib", "dtype": "float16"}))),
    "mlp": calls(("Compute", REQ["mlp"])),
    "gpt2_cache": calls(("Compute", REQ["gpt2"]), ("Compute", REQ["gpt2_past"])),
    "gpt2_session": calls(("Compute", REQ["gpt2_session"]), ("Compute", REQ["gpt2_session_end"])),
    "train": calls(("Compute", REQ["train_fwd"]), ("ComputeBackward", BACKWARD)),
    "sleep_spin": calls(("Compute", REQ["sleep"]), ("Compute", REQ["spin"])),
    "info": calls(("HealthCheck", HEALTH), ("GetServiceInfo", INFO), ("Check", GHEALTH)),
    "streams": calls(("StreamMonitoring", MON), ("Watch", GHEALTH)),
    "identity_zlib": calls(("Compute", REQ["identity_zlib"])),
    "mlp_zlib_f16": calls(("Compute", REQ["mlp_zlib_f16"])),
    "zlib_empty": calls(("Compute", REQ["zlib_empty"]), ("Compute", REQ["zlib_empty_shape0"])),
    "zlib_bad": calls(("Compute", REQ["zlib_bad"]), ("Compute", REQ["zlib_long"])),
    "train_zlib": calls(("Compute", REQ["train_fwd_zlib"]), ("ComputeBackward", BACKWARD_ZLIB)),
})

# ---- fuzz_conn: HTTP/2 frames after the preface and an empty SETTINGS (the harness adds those)
def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def grpc_call(sid, method, msg, extra=(), end=True, ctype="application/grpc", flag=0):
    hdrs = [(":method", "POST"), (":scheme", "http"), (":path", method),
            (":authority", "127.0.0.1"), ("content-type", ctype), ("te", "trailers")] + list(extra)
    out = frame(h2raw.HEADERS, h2raw.FLAG_END_HEADERS, sid, h2raw.encode_headers(hdrs))
    if msg is not None:
        out += frame(h2raw.DATA, h2raw.FLAG_END_STREAM if end else 0, sid, lpm(msg, flag))
    return out


CS = "/splitlearn.comm.ComputeService/"
write("conn", {
    "compute": grpc_call(1, CS + "Compute", REQ["identity"]),
    "compute_timeout": grpc_call(1, CS + "Compute", REQ["sleep"], [("grpc-timeout", "1m")]),
    "gpt2_two": grpc_call(1, CS + "Compute", REQ["gpt2"]) + grpc_call(3, CS + "Compute", REQ["gpt2_past"]),
    "train": grpc_call(1, CS + "Compute", REQ["train_fwd"]) + grpc_call(3, CS + "ComputeBackward", BACKWARD),
    "health": grpc_call(1, CS + "HealthCheck", HEALTH) + grpc_call(3, "/grpc.health.v1.Health/Check", GHEALTH),
    "watch_rst": grpc_call(1, "/grpc.health.v1.Health/Watch", GHEALTH) + frame(h2raw.RST_STREAM, 0, 1, struct.pack(">I", 8)),
    "monitor": grpc_call(1, CS + "StreamMonitoring", MON),
    "bad_ctype": grpc_call(1, CS + "HealthCheck", HEALTH, ctype="text/plain"),
    "gzip": grpc_call(1, CS + "HealthCheck", HEALTH, [("grpc-encoding", "gzip")]),
    # compressed requests: inflated a slice per loop iteration, within the buffer budget
    "gzip_compute": grpc_call(1, CS + "Compute", None, [("grpc-encoding", "gzip")]) +
                    frame(h2raw.DATA, h2raw.FLAG_END_STREAM, 1, lpm(gzip.compress(REQ["identity"], mtime=0), 1)),
    "deflate_compute": grpc_call(1, CS + "Compute", None, [("grpc-encoding", "deflate")]) +
                       frame(h2raw.DATA, h2raw.FLAG_END_STREAM, 1, lpm(zlib.compress(REQ["identity"]), 1)),
    "gzip_bomb": grpc_call(1, CS + "Compute", None, [("grpc-encoding", "gzip")]) +
                 frame(h2raw.DATA, h2raw.FLAG_END_STREAM, 1, lpm(gzip.compress(b"\0" * (3 << 20), mtime=0), 1)),
    "gzip_health_two": grpc_call(1, CS + "Compute", None, [("grpc-encoding", "gzip")]) +
                       frame(h2raw.DATA, h2raw.FLAG_END_STREAM, 1, lpm(gzip.compress(REQ["identity"], mtime=0), 1)) +
                       grpc_call(3, CS + "HealthCheck", HEALTH) + frame(h2raw.RST_STREAM, 0, 1, struct.pack(">I", 8)),
    # compressed messages (flag 1) over the zlib wire codec, a stream that is not gzip, an
    # unknown encoding, and a client that accepts gzip responses
    "gzip_zlib_codec": grpc_call(1, CS + "Compute", gzip.compress(REQ["identity_zlib"], mtime=0),
                                 [("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")], flag=1),
    "zlib_empty": grpc_call(1, CS + "Compute", REQ["zlib_empty"]),
    "gzip_bad": grpc_call(1, CS + "Compute", b"\x1f\x8b\x08\x00" + b"\x00" * 12,
                          [("grpc-encoding", "gzip")], flag=1),
    "gzip_unknown": grpc_call(1, CS + "Compute", REQ["identity"], [("grpc-encoding", "snappy")], flag=1),
    "accept_gzip": grpc_call(1, CS + "Compute", REQ["identity"], [("grpc-accept-encoding", "deflate,gzip")]),
    "unknown_path": grpc_call(1, "/no.Such/Method", b""),
    "split_data": grpc_call(1, CS + "Compute", None) +
                  frame(h2raw.DATA, 0, 1, lpm(REQ["identity"])[:7]) +
                  frame(h2raw.DATA, h2raw.FLAG_END_STREAM, 1, lpm(REQ["identity"])[7:]),
    "window_settings": frame(h2raw.SETTINGS, 0, 0, struct.pack(">HI", 4, 16) + struct.pack(">HI", 5, 16384)) +
                       frame(h2raw.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)) +
                       grpc_call(1, CS + "GetServiceInfo", INFO),
    "goaway": grpc_call(1, CS + "HealthCheck", HEALTH) + frame(h2raw.GOAWAY, 0, 0, struct.pack(">II", 1, 0)),
})
# ---- fuzz_compress: [mode][limit / 256][compressed stream]
RAWT = f32(64)
write("compress", {
    "gzip": bytes([0x01, 4]) + gzip.compress(REQ["identity"], mtime=0),
    "deflate": bytes([0x00, 4]) + zlib.compress(REQ["identity"]),
    "deflate_tensor": bytes([0x04, 1]) + zlib.compress(RAWT),
    "gzip_sliced_shrinking": bytes([0x13, 40]) + gzip.compress(b"\0" * 9000, mtime=0),
    "deflate_sliced_growing": bytes([0x22, 2]) + zlib.compress(bytes(range(256)) * 40),
    "bomb": bytes([0x0f, 16]) + gzip.compress(b"\0" * (1 << 20), mtime=0),
    "mapped": bytes([0x0f, 255]) + gzip.compress(b"\1" * (3 << 19), mtime=0),
    "mapped_bomb": bytes([0x00, 255]) + zlib.compress(b"\0" * (3 << 20)),
    "truncated": bytes([0x01, 255]) + gzip.compress(RAWT, mtime=0)[:-6],
    "trailing": bytes([0x00, 255]) + zlib.compress(RAWT) + b"junk",
})
# ---- fuzz_safetensors: the file format itself
def st(tensors, meta=None, pad=b""):
    import json
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, (dtype, shape, raw) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr).encode() + pad
    return struct.pack("<Q", len(h)) + h + data


write("safetensors", {
    "f32": st({"w": ("F32", [2, 3], f32(6)), "b": ("F32", [3], f32(3))}, {"format": "pt"}),
    "f16_bf16": st({"h": ("F16", [4], b"\x00\x3c" * 4), "bf": ("BF16", [2, 2], b"\x80\x3f" * 4)}),
    "scalar_empty": st({"s": ("F32", [], f32(1)), "e": ("F32", [0, 5], b"")}, pad=b"    "),
    "i64": st({"i": ("I64", [1], b"\x01" + b"\x00" * 7)}),
})

# ---- fuzz_config: YAML server files
with open(os.path.join(ROOT, "examples", "server.yaml"), "rb") as fp:
    example = fp.read()
write("config", {
    "example": example,
    "small": b"listen: \"[::1]:0\"\nworkers: 0\nmodels:\n  - {id: a, kind: scale}\n  - id: s\n    kind: spin\n    max_queue: 3\n",
    "all_keys": b"listen: 127.0.0.1:1\nworkers: 1\nintra_op_threads: 1\noversubscribe: yes\nmax_inflight: 2\n"
                b"max_queue: -1\nmax_message_bytes: 1024\ndrain_timeout: 0.5\nsession_memory_mb: 1\n"
                b"session_ttl: 1\nactivation_memory_mb: 1\nactivation_ttl: 2\nsave_weights: /tmp/x\n"
                b"log_level: debug\nmodels:\n  - id: m\n    kind: mlp\n    activation: relu\n"
                b"  - id: g\n    kind: gpt2\n    weights: /nonexistent\n    layers: \"1:2\"\n",
    "anchors": b"base: &b {id: x, kind: identity}\nmodels: [*b]\n",
})

# ---- fuzz_gpt2_config: [layers]\n[config.json]
CFG = (b'{"model_type": "gpt2", "n_embd": 16, "n_head": 4, "n_layer": 2, "n_positions": 32, '
       b'"n_inner": null, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new", '
       b'"scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false}')
write("gpt2_config", {
    "full": b"\n" + CFG,
    "layers": b"1:2\n" + CFG,
    "layers_open": b":1\n" + b'{"n_embd": 16, "n_head": 2, "n_layer": 2, "n_ctx": 8, "n_inner": 64}',
    "no_layers": CFG,
})
print("corpora written under", os.path.join(HERE, "corpus"))
