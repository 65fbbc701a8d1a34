#!/usr/bin/env python3
"""bench/rss_probe.py — what one trunk model costs in RSS, per compute dtype.

One server per (model, dtype): GPT-2 layers 2..10 and the Qwen2-0.5B-shaped trunk of
bench/compute_bench.py (its checkpoints under bench/.cache/compute/: run that first), RSS right
after loading and after one prefill [1,128,E] (when the packed weight copies are made), and
packed_weight_bytes and deferred_weight_bytes from GetServiceInfo; each from the F32 checkpoint and
from a BF16 copy of it (written once beside it: narrow matrices are used as stored where every
product runs packed, nn/deferred.h).

Run: /usr/bin/python3 bench/rss_probe.py   (SS_BIN_DIR selects the build, as in the tests)
"""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
import sslib  # noqa: E402
from sslib import make_req  # noqa: E402

C = os.path.join(ROOT, "bench", ".cache", "compute")
MODELS = (("GPT-2 2..10", "gpt2", "gpt2", ",layers=2:10", 768),
          ("Qwen2-0.5B-shaped", "llama", "qwen14", "", 896))


def bf16_copy(name):
    """The F32 checkpoint NAME.safetensors as BF16 (round to nearest even), written once beside it
    as NAME-bf16.safetensors: a checkpoint as Hugging Face ships most models."""
    src, dst = os.path.join(C, name + ".safetensors"), os.path.join(C, name + "-bf16.safetensors")
    if not os.path.exists(dst):
        with open(src, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            body = f.read()
        tensors = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            arr = np.frombuffer(body[a:b], dtype="<f4").reshape(v["shape"])
            tensors[k] = (arr, "BF16")
        sslib.write_safetensors(dst, tensors, header.get("__metadata__"))
    return dst


for name, kind, ck, extra, E in MODELS:
    for storage in ("F32", "BF16"):
        w = os.path.join(C, ck + ".safetensors") if storage == "F32" else bf16_copy(ck)
        spec = "%s,weights=%s,config=%s%s" % (kind, w, os.path.join(C, ck + ".json"), extra)
        for dt in ("fp32", "bf16", "int8"):
            srv = sslib.Server("--workers", "1", "--intra-op-threads", "1", "--oversubscribe",
                               "--log-level", "warn", "--model", "m=%s,compute=%s" % (spec, dt),
                               start_timeout=300)
            try:
                cl = sslib.connect(srv)
                r0 = srv.rss_kib() / 1024
                x = np.random.default_rng(0).standard_normal((1, 128, E)).astype(np.float32)
                cl.compute(make_req(x, model="m"), timeout=300)
                info = dict(cl.info(sslib.pb.ServiceInfoRequest(), timeout=30).custom_info)
                print("%-18s %-4s checkpoint, %s: RSS loaded %5.0f MiB, after a prefill %5.0f MiB, "
                      "packed_weight_bytes %4.0f MB, deferred_weight_bytes %4.0f MB"
                      % (name, storage, dt, r0, srv.rss_kib() / 1024,
                         int(info["packed_weight_bytes"]) / 1e6,
                         int(info.get("deferred_weight_bytes", 0)) / 1e6), flush=True)
                cl.close()
            finally:
                srv.stop_ok(timeout=60)
