#!/usr/bin/python3
"""Split learning with splitserve: bottom and top on the client (PyTorch), trunk on the server.

    client: x -> bottom = Linear(2, 32) + ReLU -> h
    server: h -> trunk  = mlp 32 -> 64 -> 32 (Linear, ReLU, Linear), served by splitserve
    client: y -> top    = Linear(32, 3) -> logits -> cross-entropy

Per batch: bottom forward -> Compute(training_mode=true) -> top forward, loss, backward on the
top -> ComputeBackward(dL/dy, forward_id, learning_rate) -> grad_input = dL/dh -> bottom backward
-> the client's optimizer steps bottom and top (the server steps the trunk itself).

The same model (same seeded init, same data order, same optimizer) is also trained in one
PyTorch process; the two loss curves are printed side by side. Exit code 0 when they match,
1 when they differ by more than --tol (relative, per step) or on any error.

The task: 3 interleaved spirals in 2-D (600 points, generated deterministically from a seed,
no data file needed; --save-data writes them as .npz).

Run from the repository after `make`:  /usr/bin/python3 examples/split_training/train.py
Environment: SS_BIN_DIR (directory with splitserve; default <repo>/build/bin), SS_PY_DIR
(generated compute_service_pb2.py; default <repo>/build/py).
"""
import argparse
import copy
import ctypes
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN_DIR = os.environ.get("SS_BIN_DIR") or os.path.join(REPO, "build", "bin")
PY_DIR = os.environ.get("SS_PY_DIR") or os.path.join(REPO, "build", "py")
SVC = "/splitlearn.comm.ComputeService/"

IN, HID, TRUNK_HID, CLASSES = 2, 32, 64, 3


# ------------------------------------------------------------------------ data ----------

def spirals(n_per_class=200, classes=CLASSES, seed=7):
    """classes interleaved 2-D spirals with a little noise; float32 x [N, 2], int64 y [N]."""
    g = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        t = np.linspace(c * 2 * np.pi / classes, c * 2 * np.pi / classes + 3.0, n_per_class)
        t = t + g.normal(0.0, 0.15, n_per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(n_per_class, c))
    return (np.concatenate(xs).astype(np.float32) * 2.0,
            np.concatenate(ys).astype(np.int64))


# ------------------------------------------------------------------------ model ---------

def build_models(seed):
    torch.manual_seed(seed)
    bottom = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.ReLU())
    trunk = torch.nn.Sequential(torch.nn.Linear(HID, TRUNK_HID), torch.nn.ReLU(),
                                torch.nn.Linear(TRUNK_HID, HID))
    top = torch.nn.Linear(HID, CLASSES)
    return bottom, trunk, top


def make_optimizer(params, kind, lr):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)  # betas (0.9, 0.999), eps 1e-8, weight_decay 0.01


def write_safetensors(path, state):
    """state_dict -> F32 safetensors (keys as in the state_dict: '0.weight' [out, in], ...)."""
    header, blobs, off = {}, [], 0
    for name in sorted(state):
        a = np.ascontiguousarray(state[name].detach().numpy(), dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + lo:8 + n + hi], "<f4").reshape(e["shape"])
    return out


# ------------------------------------------------------------------------ server --------

class Splitserve:
    """build/bin/splitserve on 127.0.0.1:<any port>; output drained by a thread."""

    def __init__(self, model_spec, extra=()):
        exe = os.path.join(BIN_DIR, "splitserve")
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"train.py: {exe} not found: build first (make), or set SS_BIN_DIR")
        self.cmd = [exe, "--listen", "127.0.0.1:0", "--workers", "1", "--log-level", "warn",
                    "--model", model_spec, *extra]

        def die_with_parent():
            try:  # PR_SET_PDEATHSIG = 1: the server dies if this script is killed
                ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
            except Exception:
                pass
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.lines, self.port = [], None
        self.cond = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 20
        with self.cond:
            while self.port is None and self.proc.poll() is None and time.monotonic() < deadline:
                self.cond.wait(0.05)
        if self.port is None:
            self.proc.kill()
            raise SystemExit("train.py: splitserve did not start:\n" + "\n".join(self.lines[-20:]))

    def _drain(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            with self.cond:
                self.lines.append(line)
                m = re.search(r"listening on (\S+):(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(2))
                self.cond.notify_all()

    def stop(self):
        """SIGTERM: the server drains (and writes its save=PATH checkpoint). Returns rc."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Trunk:
    """The remote trunk: forward(h) -> (y, forward_id); backward(grad_y, forward_id, lr)."""

    def __init__(self, target, model_id):
        sys.path.insert(0, PY_DIR)
        try:
            import compute_service_pb2 as pb
        except ImportError as e:
            raise SystemExit(f"train.py: cannot import compute_service_pb2 from {PY_DIR} ({e}): "
                             "build first, or set SS_PY_DIR")
        import grpc
        self.pb, self.grpc, self.model_id = pb, grpc, model_id
        self.channel = grpc.insecure_channel(target)
        self._compute = self.channel.unary_unary(
            SVC + "Compute", request_serializer=pb.ComputeRequest.SerializeToString,
            response_deserializer=pb.ComputeResponse.FromString)
        self._backward = self.channel.unary_unary(
            SVC + "ComputeBackward", request_serializer=pb.BackwardRequest.SerializeToString,
            response_deserializer=pb.BackwardResponse.FromString)
        grpc.channel_ready_future(self.channel).result(timeout=10)

    def forward(self, h):
        a = np.ascontiguousarray(h, dtype="<f4")
        req = self.pb.ComputeRequest(data=a.tobytes(), shape=list(a.shape),
                                     model_id=self.model_id, training_mode=True)
        r = self._compute(req, timeout=30)
        return np.frombuffer(r.data, "<f4").reshape(list(r.shape)), r.forward_id

    def backward(self, grad, forward_id, lr):
        g = np.ascontiguousarray(grad, dtype="<f4")
        req = self.pb.BackwardRequest(grad_output_data=g.tobytes(), grad_output_shape=list(g.shape),
                                      forward_id=forward_id, model_id=self.model_id,
                                      learning_rate=lr)
        r = self._backward(req, timeout=30)
        return np.frombuffer(r.grad_input_data, "<f4").reshape(list(r.grad_input_shape))

    def close(self):
        self.channel.close()


# ------------------------------------------------------------------------ training ------

def batches(n, batch, epochs, seed):
    """The data order both runs use: a fresh permutation per epoch."""
    g = np.random.default_rng(seed)
    for epoch in range(epochs):
        perm = g.permutation(n)
        for i in range(0, n, batch):
            yield epoch, perm[i:i + batch]


def accuracy(bottom, trunk_fn, top, x, y):
    with torch.no_grad():
        logits = top(trunk_fn(bottom(torch.from_numpy(x))))
    return float((logits.argmax(1).numpy() == y).mean())


def train_local(models, x, y, args):
    """The reference: bottom, trunk and top in one PyTorch process."""
    bottom, trunk, top = models
    params = list(bottom.parameters()) + list(trunk.parameters()) + list(top.parameters())
    opt = make_optimizer(params, args.optimizer, args.lr)
    losses = []
    for _, idx in batches(len(x), args.batch, args.epochs, args.seed):
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        loss = torch.nn.functional.cross_entropy(top(trunk(bottom(xb))), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, accuracy(bottom, trunk, top, x, y)


def train_split(models, remote, x, y, args):
    """The split run: bottom and top here, the trunk on splitserve."""
    bottom, _, top = models
    opt = make_optimizer(list(bottom.parameters()) + list(top.parameters()), args.optimizer,
                         args.lr)
    losses = []
    for _, idx in batches(len(x), args.batch, args.epochs, args.seed):
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        h = bottom(xb)                                            # client bottom
        y_np, fid = remote.forward(h.detach().numpy())            # Compute, training_mode
        t = torch.from_numpy(y_np.copy()).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(top(t), yb)      # client top
        opt.zero_grad()
        loss.backward()                                           # dL/dtop, dL/dt
        gin = remote.backward(t.grad.numpy(), fid, args.lr)       # ComputeBackward: dL/dh
        h.backward(torch.from_numpy(gin.copy()))                  # client bottom backward
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate (default 0.2 for sgd, 0.003 for adamw)")
    ap.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="largest allowed per-step relative loss difference (default 1e-4)")
    ap.add_argument("--steps", action="store_true", help="print every step, not only epochs")
    ap.add_argument("--save-data", metavar="PATH", help="write the dataset as .npz and go on")
    args = ap.parse_args()
    if args.lr is None:
        args.lr = 0.2 if args.optimizer == "sgd" else 0.003
    t_start = time.perf_counter()

    x, y = spirals()
    if args.save_data:
        np.savez_compressed(args.save_data, x=x, y=y)
    steps_per_epoch = (len(x) + args.batch - 1) // args.batch
    models = build_models(args.seed)
    local_models = copy.deepcopy(models)

    tmp = tempfile.mkdtemp(prefix="ss-split-")
    wpath = os.path.join(tmp, "trunk.safetensors")
    saved = os.path.join(tmp, "trunk.trained.safetensors")
    write_safetensors(wpath, models[1].state_dict())
    spec = f"trunk=mlp,weights={wpath},optimizer={args.optimizer},save={saved}"
    server = Splitserve(spec)
    print(f"splitserve on 127.0.0.1:{server.port}: --model {spec}")
    print(f"task: 3 spirals, {len(x)} points, batch {args.batch}, {args.epochs} epochs x "
          f"{steps_per_epoch} steps, {args.optimizer} lr {args.lr:g}")
    print(f"model: bottom Linear({IN},{HID})+ReLU [client] -> trunk mlp {HID}->{TRUNK_HID}->{HID} "
          f"[splitserve] -> top Linear({HID},{CLASSES}) [client]")
    try:
        remote = Trunk(f"127.0.0.1:{server.port}", "trunk")
        t0 = time.perf_counter()
        split_losses = train_split(models, remote, x, y, args)
        t_split = time.perf_counter() - t0
        # accuracy of the split model: trunk forward on the server (inference call)
        with torch.no_grad():
            h = models[0](torch.from_numpy(x)).numpy()
        r = remote._compute(remote.pb.ComputeRequest(
            data=np.ascontiguousarray(h, "<f4").tobytes(), shape=list(h.shape),
            model_id="trunk"), timeout=30)
        t_out = torch.from_numpy(np.frombuffer(r.data, "<f4").reshape(list(r.shape)).copy())
        with torch.no_grad():
            split_acc = float((models[2](t_out).argmax(1).numpy() == y).mean())
        remote.close()
    finally:
        rc = server.stop()
    t0 = time.perf_counter()
    local_losses, local_acc = train_local(local_models, x, y, args)
    t_local = time.perf_counter() - t0

    sl, ll = np.array(split_losses), np.array(local_losses)
    rel = np.abs(sl - ll) / np.maximum(np.abs(ll), 1e-12)
    print()
    if args.steps:
        print(f"{'step':>5} {'split (splitserve)':>19} {'local (torch)':>14} {'rel diff':>9}")
        for i in range(len(sl)):
            print(f"{i:5d} {sl[i]:19.6f} {ll[i]:14.6f} {rel[i]:9.1e}")
        print()
    print(f"{'epoch':>5} {'split loss':>11} {'local loss':>11} {'max rel diff':>13}")
    for e in range(args.epochs):
        s = slice(e * steps_per_epoch, (e + 1) * steps_per_epoch)
        print(f"{e + 1:5d} {sl[s].mean():11.6f} {ll[s].mean():11.6f} {rel[s].max():13.2e}")
    print(f"accuracy: split {split_acc:.3f}, local {local_acc:.3f} "
          f"(train set; chance {1 / CLASSES:.3f})")

    # the trained trunk the server wrote on drain vs the local trunk
    wdiff = None
    if os.path.exists(saved):
        got = read_safetensors(saved)
        want = {k: v.detach().numpy() for k, v in local_models[1].state_dict().items()}
        wdiff = max(float(np.max(np.abs(got[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-12))
                    for k in want)
        print(f"trunk weights after training (server checkpoint vs local): max rel diff {wdiff:.2e}")
    else:
        print(f"note: the server wrote no checkpoint at {saved} (exit code {rc})")
    for f in (wpath, saved):
        if os.path.exists(f):
            os.unlink(f)
    os.rmdir(tmp)
    worst = float(rel.max())
    print(f"split {t_split:.2f} s ({1e3 * t_split / len(sl):.2f} ms/step), local {t_local:.2f} s, "
          f"total {time.perf_counter() - t_start:.1f} s")
    learned = sl[-steps_per_epoch:].mean() < 0.7 * sl[:steps_per_epoch].mean()
    ok = worst <= args.tol and (wdiff is None or wdiff <= 10 * args.tol)
    print(f"max per-step relative loss difference {worst:.2e} (tolerance {args.tol:g}): "
          + ("MATCH" if ok else "DIVERGED") + ("" if learned or args.epochs < 3 else
                                               "; warning: the loss did not fall by 30%"))
    if rc != 0:
        print(f"splitserve exited with {rc}:\n" + "\n".join(server.lines[-20:]))
    return 0 if ok and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
