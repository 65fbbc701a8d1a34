#!/usr/bin/python3
"""bench/train_bench.py: one split-training step of the GPT-2 trunk (layers 2..10 of GPT-2 small,
8 blocks, 56.7M parameters) at batch 1, seq 128 -- Compute(training_mode=true), then
ComputeBackward(grad_output, forward_id, learning_rate): forward, backward and an SGD update of
the served weights -- on splitserve vs the PyTorch peer (bench/peers/peer_server.py), same
weights, same OpenBLAS (0.3.21 OpenMP; the peer runs with LD_LIBRARY_PATH pointing torch's libblas
at it, like bench/gpt2_bench.sh), same 2-thread budget, same Python client loop (one channel,
one step at a time).

    splitserve --workers 1 --intra-op-threads 2 --model trunk=gpt2,weights=W,config=C,layers=2:10
    peer_server.py --mode aio --workers 1 --torch-threads 2 --gpt2-weights W --gpt2-layers 2:10

Reports per step p50/mean (and the forward / backward calls' own p50), then the activation
memory one pending forward_id holds: GetServiceInfo custom_info "activation_bytes" /
"activations" where the server has them, and the RSS growth over 4 pending forwards (both
servers). --perf: perf record -g splitserve during the timed steps, top symbols printed.

The checkpoint is bench/.cache/gpt2-small/ (written by bench/gpt2_bench.sh's generator, which
this script runs if the file is missing). Results: bench/.cache/train.json; bench/results/train.md
is written by hand from the output.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
CACHE = os.path.join(ROOT, "bench", ".cache")
CK = os.path.join(CACHE, "gpt2-small")
W = os.path.join(CK, "model.safetensors")
C = os.path.join(CK, "config.json")
OBLAS = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
PY = "/usr/bin/python3"
BIN = os.environ.get("SS_BIN_DIR") or os.path.join(ROOT, "build", "bin")
PY_DIR = os.environ.get("SS_PY_DIR") or os.path.join(ROOT, "build", "py")
SVC = "/splitlearn.comm.ComputeService/"


def ensure_checkpoint():
    if os.path.exists(W) and os.path.getsize(W) > 0 and os.path.exists(C):
        return
    os.makedirs(CK, exist_ok=True)
    with open(os.path.join(ROOT, "bench", "gpt2_bench.sh")) as f:
        sh = f.read()
    m = re.search(r"<<'EOF'\n(.*?)\nEOF\n", sh, re.S)
    if not m:
        sys.exit("cannot find the checkpoint generator in bench/gpt2_bench.sh")
    print(f"=== writing the GPT-2-small checkpoint to {CK} (once)", flush=True)
    subprocess.run([PY, "-", W, C], input=m.group(1).encode(), check=True)


class Proc:
    def __init__(self, name, cmd, env=None):
        self.name = name
        full = dict(os.environ)
        full.update(env or {})
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=full)
        self.lines, self.port = [], None
        self.cond = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 120
        with self.cond:
            while self.port is None and self.p.poll() is None and time.monotonic() < deadline:
                self.cond.wait(0.1)
        if self.port is None:
            self.stop()
            sys.exit(f"{name} did not start:\n" + "\n".join(self.lines[-30:]))

    def _drain(self):
        for raw in iter(self.p.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            with self.cond:
                self.lines.append(line)
                m = re.search(r"listening on [0-9.]+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                self.cond.notify_all()

    def rss_mib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Client:
    def __init__(self, port):
        sys.path.insert(0, PY_DIR)
        import grpc
        import compute_service_pb2 as pb
        self.pb = pb
        opts = [("grpc.max_receive_message_length", 200 << 20),
                ("grpc.max_send_message_length", 200 << 20)]
        self.ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
        grpc.channel_ready_future(self.ch).result(timeout=30)
        self.compute = self.ch.unary_unary(
            SVC + "Compute", request_serializer=pb.ComputeRequest.SerializeToString,
            response_deserializer=pb.ComputeResponse.FromString)
        self.backward = self.ch.unary_unary(
            SVC + "ComputeBackward", request_serializer=pb.BackwardRequest.SerializeToString,
            response_deserializer=pb.BackwardResponse.FromString)
        self.info = self.ch.unary_unary(
            SVC + "GetServiceInfo", request_serializer=pb.ServiceInfoRequest.SerializeToString,
            response_deserializer=pb.ServiceInfoResponse.FromString)

    def fwd(self, x):
        r = self.compute(self.pb.ComputeRequest(data=x.tobytes(), shape=list(x.shape),
                                                model_id="trunk", training_mode=True),
                         timeout=120)
        assert list(r.shape) == list(x.shape), r.shape
        return r.forward_id

    def bwd(self, g, fid, lr):
        req = self.pb.BackwardRequest(grad_output_data=g.tobytes(), grad_output_shape=list(g.shape),
                                      forward_id=fid, model_id="trunk")
        if lr is not None:
            req.learning_rate = lr
        r = self.backward(req, timeout=120)
        assert list(r.grad_input_shape) == list(g.shape), r.grad_input_shape
        return r

    def custom_info(self):
        return dict(self.info(self.pb.ServiceInfoRequest(), timeout=10).custom_info)


def run(name, proc, args, x, g):
    c = Client(proc.port)
    steps, fwd_t, bwd_t = [], [], []
    perf = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup and args.perf and name == "splitserve":
            data = os.path.join(CACHE, "perf-train.data")
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "499", "-o", data,
                                     "-p", str(proc.p.pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        t0 = time.perf_counter()
        fid = c.fwd(x)
        t1 = time.perf_counter()
        c.bwd(g, fid, args.lr)
        t2 = time.perf_counter()
        if i >= args.warmup:
            steps.append(t2 - t0)
            fwd_t.append(t1 - t0)
            bwd_t.append(t2 - t1)
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    # activation memory per pending forward
    time.sleep(0.3)
    info0 = c.custom_info()
    rss0 = proc.rss_mib()
    fids = [c.fwd(x) for _ in range(4)]
    time.sleep(0.3)
    info4 = c.custom_info()
    rss4 = proc.rss_mib()
    for fid in fids:  # release them (no learning_rate: gradients only, no step)
        c.bwd(g, fid, None)
    mem = {"rss_before_mib": rss0, "rss_4_pending_mib": rss4,
           "rss_growth_per_forward_mib": (rss4 - rss0) / 4}
    if "activation_bytes" in info4 and "activations" in info4:
        n = int(info4["activations"])
        b = int(info4["activation_bytes"])
        mem["activations"] = n
        mem["activation_bytes"] = b
        mem["activation_mib_per_forward"] = b / n / 2 ** 20 if n else None
    mem["custom_info_4_pending"] = {k: v for k, v in info4.items()
                                    if "activ" in k or k in ("optimizer",)}
    c.ch.close()
    ms = np.array(steps) * 1e3
    res = {"name": name, "steps": args.steps, "warmup": args.warmup,
           "step_p50_ms": float(np.median(ms)), "step_mean_ms": float(ms.mean()),
           "step_min_ms": float(ms.min()), "step_max_ms": float(ms.max()),
           "fwd_p50_ms": float(np.median(fwd_t) * 1e3), "bwd_p50_ms": float(np.median(bwd_t) * 1e3),
           "steps_ms": [round(v, 1) for v in ms.tolist()],
           "fwd_ms": [round(v * 1e3, 1) for v in fwd_t], "bwd_ms": [round(v * 1e3, 1) for v in bwd_t],
           "memory": mem}
    print(f"--- {name}: step p50 {res['step_p50_ms']:.1f} ms, mean {res['step_mean_ms']:.1f} ms "
          f"(min {res['step_min_ms']:.1f}, max {res['step_max_ms']:.1f}); forward call p50 "
          f"{res['fwd_p50_ms']:.1f} ms, backward+step call p50 {res['bwd_p50_ms']:.1f} ms",
          flush=True)
    line = (f"    memory: RSS {rss0:.0f} MiB -> {rss4:.0f} MiB with 4 pending forwards "
            f"({(rss4 - rss0) / 4:.1f} MiB per forward_id)")
    if "activation_mib_per_forward" in mem and mem["activation_mib_per_forward"] is not None:
        line += (f"; activation_bytes {mem['activation_bytes']} / activations "
                 f"{mem['activations']} = {mem['activation_mib_per_forward']:.1f} MiB per forward_id")
    elif name == "splitserve":
        line += "; GetServiceInfo has no activation_bytes/activations keys"
    print(line, flush=True)
    if perf is not None:
        print("--- perf report (splitserve, timed steps): top symbols, children excluded")
        rep = subprocess.run(["perf", "report", "-i", os.path.join(CACHE, "perf-train.data"),
                              "--no-children", "--sort", "dso,symbol", "--stdio"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        rows = [ln for ln in rep.stdout.decode("utf-8", "replace").splitlines()
                if re.match(r"^ +[0-9]", ln)]
        print("\n".join(rows[:30]), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate of each step")
    ap.add_argument("--only", choices=["splitserve", "peer"])
    ap.add_argument("--perf", action="store_true", help="perf record -g splitserve's timed steps")
    args = ap.parse_args()
    ensure_checkpoint()
    os.makedirs(CACHE, exist_ok=True)
    g = np.random.default_rng(0)
    x = (g.standard_normal((1, args.seq, 768)) * 0.5).astype("<f4")
    grad = (g.standard_normal((1, args.seq, 768)) * 1e-3).astype("<f4")
    spec = f"trunk=gpt2,weights={W},config={C},layers=2:10,optimizer=sgd"
    results = []
    print(f"=== split-training step, GPT-2 trunk 2..10, batch 1, seq {args.seq}, SGD lr {args.lr:g}; "
          f"{args.warmup} warmup + {args.steps} timed steps, one client, one step at a time",
          flush=True)
    if args.only in (None, "splitserve"):
        cmd = [os.path.join(BIN, "splitserve"), "--listen", "127.0.0.1:0", "--workers", "1",
               "--intra-op-threads", "2", "--model", spec, "--log-level", "warn"]
        print("$ " + " ".join(cmd), flush=True)
        p = Proc("splitserve", cmd)
        try:
            results.append(run("splitserve", p, args, x, grad))
        finally:
            p.stop()
    if args.only in (None, "peer"):
        cmd = [PY, os.path.join(ROOT, "bench", "peers", "peer_server.py"), "--mode", "aio",
               "--workers", "1", "--torch-threads", "2", "--listen", "127.0.0.1:0",
               "--gpt2-weights", W, "--gpt2-config", C, "--gpt2-layers", "2:10",
               "--optimizer", "sgd"]
        env = {"LD_LIBRARY_PATH": OBLAS, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
        print("$ " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(cmd),
              flush=True)
        p = Proc("peer", cmd, env)
        try:
            with open(f"/proc/{p.p.pid}/maps") as f:
                blas = sorted({ln.split()[-1] for ln in f if "blas" in ln.split()[-1]})
            print("    peer BLAS mapped: " + " ".join(blas), flush=True)
            results.append(run("peer", p, args, x, grad))
        finally:
            p.stop()
    if len(results) == 2:
        s, q = results
        r50 = q["step_p50_ms"] / s["step_p50_ms"]
        rmean = q["step_mean_ms"] / s["step_mean_ms"]
        print(f"=== splitserve vs peer: {r50:.2f}x (p50), {rmean:.2f}x (mean); goal >= 1.2x: "
              + ("MET" if min(r50, rmean) >= 1.2 else "NOT MET"), flush=True)
    with open(os.path.join(CACHE, "train.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
