"""PyTorch autograd references for split training (ComputeBackward + optimizer steps).

An independent implementation: torch.nn modules, loss.backward() and torch.optim.SGD / AdamW,
in float64 from the float32 weights as stored. It plays the split-learning protocol the server
sees, call by call:

    for each call i:  y = trunk(x_i)                       (Compute, training_mode=true)
                      y.backward(grad_output_i)            (ComputeBackward)
                      grad_input_i = x_i.grad
                      after every accumulation_step backward calls: opt.step(); opt.zero_grad()

so gradients of the calls between two steps are summed (not averaged), and every forward uses
the weights as they are at that moment (a forward between two steps of an accumulation window
sees the old weights). Returns the grad_inputs and the weights at the end, under the keys the
server's checkpoint uses.

    mlp:  nn.Sequential(Linear, act, Linear, ...) from '<prefix><idx>.weight' [out, in], '.bias'
    gpt2: blocks [a, b) of gpt2_ref.Block (HF GPT2Block, Conv1D weights [in, out]),
          keys 'h.{i}.ln_1.weight', ... (the caller adds 'transformer.' when the file had it)

optim: {'kind': 'sgd'|'adamw', 'beta1', 'beta2', 'eps', 'weight_decay'} with the server's spec
defaults (optim_defaults): SGD weight_decay 0; AdamW 0.9, 0.999, 1e-8, weight_decay 0.01.

Run as a script for a self-check (finite differences of the references themselves).
"""
import json
import math
import struct

import numpy as np
import torch

import gpt2_ref

GPT2_PARAM = {  # checkpoint suffix -> attribute path in gpt2_ref.Block
    "ln_1.weight": ("ln_1", "weight"), "ln_1.bias": ("ln_1", "bias"),
    "attn.c_attn.weight": ("c_attn", "weight"), "attn.c_attn.bias": ("c_attn", "bias"),
    "attn.c_proj.weight": ("attn_proj", "weight"), "attn.c_proj.bias": ("attn_proj", "bias"),
    "ln_2.weight": ("ln_2", "weight"), "ln_2.bias": ("ln_2", "bias"),
    "mlp.c_fc.weight": ("c_fc", "weight"), "mlp.c_fc.bias": ("c_fc", "bias"),
    "mlp.c_proj.weight": ("mlp_proj", "weight"), "mlp.c_proj.bias": ("mlp_proj", "bias"),
}


def optim_defaults(kind="sgd", **kw):
    """The server's defaults for a model spec optimizer=kind[,beta1=..,...]."""
    o = {"kind": kind, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
         "weight_decay": 0.01 if kind == "adamw" else 0.0}
    o.update(kw)
    return o


def spec_keys(optim):
    """The model spec keys (",optimizer=adamw,beta1=...") for an optim dict."""
    s = ",optimizer=%s,weight_decay=%r" % (optim["kind"], optim["weight_decay"])
    if optim["kind"] == "adamw":
        s += ",beta1=%r,beta2=%r,eps=%r" % (optim["beta1"], optim["beta2"], optim["eps"])
    return s


def make_optimizer(params, optim, lr):
    if optim["kind"] == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=optim["weight_decay"])
    if optim["kind"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(optim["beta1"], optim["beta2"]),
                                 eps=optim["eps"], weight_decay=optim["weight_decay"])
    raise ValueError(optim["kind"])


def _run(module_fn, params, xs, grads, optim, lr, accumulation_step):
    opt = make_optimizer(params, optim, lr)
    opt.zero_grad()
    grad_inputs = []
    for i, (x, g) in enumerate(zip(xs, grads)):
        xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
        y = module_fn(xt)
        y.backward(torch.from_numpy(np.asarray(g, np.float64)))
        grad_inputs.append(xt.grad.numpy().copy())
        if (i + 1) % accumulation_step == 0:
            opt.step()
            opt.zero_grad()
    return grad_inputs


def train_mlp(stored, xs, grads, optim, lr, accumulation_step=1, activation="relu", prefix=""):
    """stored: {'<prefix><idx>.weight': float32 [out, in], '<prefix><idx>.bias': [out]} (a layer
    may lack its bias). xs, grads: lists of float arrays [..., in] / [..., out].
    Returns (grad_inputs [float64 arrays], {key: float64 array} weights at the end)."""
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in stored})
    layers, keys = [], []
    for n, i in enumerate(idx):
        w = np.asarray(stored["%s%d.weight" % (prefix, i)], np.float64)
        bkey = "%s%d.bias" % (prefix, i)
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bkey in stored).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            keys.append(("%s%d.weight" % (prefix, i), lin.weight))
            if bkey in stored:
                lin.bias.copy_(torch.from_numpy(np.asarray(stored[bkey], np.float64)))
                keys.append((bkey, lin.bias))
        layers.append(lin)
        if n < len(idx) - 1:
            layers.append(torch.nn.ReLU() if activation == "relu" else torch.nn.GELU())
    seq = torch.nn.Sequential(*layers)
    gin = _run(seq, list(seq.parameters()), xs, grads, optim, lr, accumulation_step)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


def train_gpt2(cfg, stored, a, b, xs, grads, optim, lr, accumulation_step=1):
    """cfg: gpt2_ref.Config; stored: {'h.{i}.<suffix>': float32} (unprefixed, as
    gpt2_ref.write_checkpoint returns); blocks [a, b). xs, grads: lists of [batch, seq, n_embd].
    Returns (grad_inputs, {'h.{i}.<suffix>': float64 array} for the trunk's layers)."""
    blocks = [gpt2_ref.Block(cfg, stored, i) for i in range(a, b)]
    params, keys = [], []
    for i, blk in zip(range(a, b), blocks):
        for suffix in gpt2_ref.SUFFIXES:
            mod, attr = GPT2_PARAM[suffix]
            p = getattr(getattr(blk, mod), attr)
            p.requires_grad_(True)
            params.append(p)
            keys.append(("h.%d.%s" % (i, suffix), p))

    def trunk(x):
        for blk in blocks:
            x, _ = blk(x)
        return x

    gin = _run(trunk, params, xs, grads, optim, lr, accumulation_step)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


def read_safetensors(path):
    """{name: float32 array} of an F32 safetensors file (the server's checkpoints)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    base = 8 + n
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] != "F32":
            raise ValueError("%s: dtype %s (expected F32)" % (name, e["dtype"]))
        lo, hi = e["data_offsets"]
        out[name] = np.frombuffer(data[base + lo:base + hi], np.float32).reshape(e["shape"]).copy()
    return out


def rel_err(got, want):
    """max |got - want| / max |want| (a norm-relative error, as the issue's 1e-4 means it)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


# ------------------------------------------------------------------------------ self-check ----

def _selfcheck():
    torch.manual_seed(0)
    g = np.random.default_rng(1)
    # mlp: grad_input against central differences; SGD lr 1 step == w - grad
    stored = {"0.weight": g.standard_normal((6, 5)).astype(np.float32) * 0.5,
              "0.bias": g.standard_normal(6).astype(np.float32) * 0.1,
              "2.weight": g.standard_normal((3, 6)).astype(np.float32) * 0.5}
    x = g.standard_normal((2, 4, 5))
    r = g.standard_normal((2, 4, 3))
    for act in ("relu", "gelu"):
        gin, w = train_mlp(stored, [x], [r], optim_defaults("sgd"), 1.0, 1, act)

        def loss(xx, w0=stored, act=act):
            h = xx
            h = h @ w0["0.weight"].astype(np.float64).T + w0["0.bias"]
            h = np.maximum(h, 0) if act == "relu" else 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
            return float(np.sum((h @ w0["2.weight"].astype(np.float64).T) * r))
        num = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[i] += 1e-6
            xm[i] -= 1e-6
            num[i] = (loss(xp) - loss(xm)) / 2e-6
        assert rel_err(gin[0], num) < 1e-6, rel_err(gin[0], num)
        assert set(w) == {"0.weight", "0.bias", "2.weight"}
    # gpt2: a 2-layer trunk of a 3-layer model runs, AdamW moves the weights by about lr
    cfg = gpt2_ref.Config(n_embd=16, n_head=4, n_layer=3, n_positions=16)
    st = {k: v for k, v in gpt2_ref.random_weights(cfg, 3).items()}
    xs = [g.standard_normal((2, 5, 16)) for _ in range(4)]
    gs = [g.standard_normal((2, 5, 16)) for _ in range(4)]
    gin, w = train_gpt2(cfg, st, 1, 3, xs, gs, optim_defaults("adamw"), 1e-3, 2)
    assert len(gin) == 4 and sorted(w)[0].startswith("h.1.")
    d = max(float(np.max(np.abs(w[k] - st[k]))) for k in w)
    assert 1e-3 < d < 3e-3, d
    print("train_ref self-check ok")


if __name__ == "__main__":
    _selfcheck()
