#!/usr/bin/env python3
"""bench/rss_probe.py — what one trunk model costs in RSS, per compute dtype.

One server per (model, dtype): GPT-2 layers 2..10 and the Qwen2-0.5B-shaped trunk of
bench/compute_bench.py (its checkpoints under bench/.cache/compute/: run that first), RSS right
after loading and after one prefill [1,128,E] (when the packed weight copies are made), and
packed_weight_bytes from GetServiceInfo.

Run: /usr/bin/python3 bench/rss_probe.py   (SS_BIN_DIR selects the build, as in the tests)
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
import sslib  # noqa: E402
from sslib import make_req  # noqa: E402

C = os.path.join(ROOT, "bench", ".cache", "compute")
MODELS = (("GPT-2 2..10", "gpt2,weights=%s/gpt2.safetensors,config=%s/gpt2.json,layers=2:10"
           % (C, C), 768),
          ("Qwen2-0.5B-shaped", "llama,weights=%s/qwen14.safetensors,config=%s/qwen14.json"
           % (C, C), 896))

for name, spec, E in MODELS:
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
            print("%-18s %s: RSS loaded %5.0f MiB, after a prefill %5.0f MiB, "
                  "packed_weight_bytes %4.0f MB" % (name, dt, r0, srv.rss_kib() / 1024,
                                                    int(info["packed_weight_bytes"]) / 1e6),
                  flush=True)
            cl.close()
        finally:
            srv.stop_ok(timeout=60)
