"""An independent PyTorch reference for the gpt2 trunk, and a writer of random Hugging Face
GPT-2 checkpoints (safetensors + config.json) for the tests.

The block is written here from torch.nn ops (no transformers package): Hugging Face GPT2Block in
eval mode, Conv1D layout (y = x @ W + b, W is [in, out]):
    h = x + c_proj(attn(ln_1(x)));  y = h + c_proj(gelu_new(c_fc(ln_2(h))))
Attention is causal over past + new positions; the cache is [batch, heads, len, head_dim].
Reference numbers are computed in float64 from the weights exactly as stored (F16 rounded).
"""
import json
import math
import os

import numpy as np
import torch

import sslib

SUFFIXES = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
            "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
            "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


def tensor_shapes(n_embd, n_inner):
    E, I = n_embd, n_inner
    return {"ln_1.weight": (E,), "ln_1.bias": (E,), "attn.c_attn.weight": (E, 3 * E),
            "attn.c_attn.bias": (3 * E,), "attn.c_proj.weight": (E, E), "attn.c_proj.bias": (E,),
            "ln_2.weight": (E,), "ln_2.bias": (E,), "mlp.c_fc.weight": (E, I),
            "mlp.c_fc.bias": (I,), "mlp.c_proj.weight": (I, E), "mlp.c_proj.bias": (E,)}


class Config:
    def __init__(self, n_embd=64, n_head=4, n_layer=4, n_positions=48, n_inner=None,
                 eps=1e-5, activation="gelu_new"):
        self.n_embd, self.n_head, self.n_layer = n_embd, n_head, n_layer
        self.n_positions, self.eps, self.activation = n_positions, eps, activation
        self.n_inner = n_inner or 4 * n_embd
        self.head_dim = n_embd // n_head

    def json(self, **override):
        d = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50,
             "n_embd": self.n_embd, "n_head": self.n_head, "n_layer": self.n_layer,
             "n_positions": self.n_positions, "n_ctx": self.n_positions,
             "n_inner": None if self.n_inner == 4 * self.n_embd else self.n_inner,
             "layer_norm_epsilon": self.eps, "activation_function": self.activation,
             "resid_pdrop": 0.1, "attn_pdrop": 0.1, "embd_pdrop": 0.1}
        d.update(override)
        return {k: v for k, v in d.items() if v is not Ellipsis}


def random_weights(cfg, seed):
    """{'h.{i}.<suffix>': float32 array} for every layer, plus wte/wpe/ln_f like a real file."""
    g = np.random.default_rng(seed)
    w = {}
    shapes = tensor_shapes(cfg.n_embd, cfg.n_inner)
    for i in range(cfg.n_layer):
        for s in SUFFIXES:
            shp = shapes[s]
            if s.startswith("ln_") and s.endswith("weight"):
                a = 1.0 + 0.2 * g.standard_normal(shp)
            elif s.endswith("bias"):
                a = 0.05 * g.standard_normal(shp)
            else:
                a = 0.7 / math.sqrt(shp[0]) * g.standard_normal(shp)
            w["h.%d.%s" % (i, s)] = a.astype(np.float32)
    w["wte.weight"] = (0.02 * g.standard_normal((50, cfg.n_embd))).astype(np.float32)
    w["wpe.weight"] = (0.01 * g.standard_normal((cfg.n_positions, cfg.n_embd))).astype(np.float32)
    w["ln_f.weight"] = np.ones(cfg.n_embd, np.float32)
    w["ln_f.bias"] = np.zeros(cfg.n_embd, np.float32)
    return w


def write_checkpoint(directory, name, cfg, seed=0, storage="F32", prefix="", skip=(),
                     reshape=None, config_override=None, weights=None):
    """Write <directory>/<name>.safetensors (keys under prefix, in storage F32|F16|BF16; skip:
    unprefixed names to leave out; reshape: {unprefixed name: array} to replace) and
    <directory>/<name>.json. Returns (weights path, config path, {unprefixed name: float32 as
    stored})."""
    w = dict(weights if weights is not None else random_weights(cfg, seed))
    for k in skip:
        w.pop(k, None)
    if reshape:
        w.update(reshape)
    tensors = {prefix + k: (v, storage) for k, v in w.items()}
    wpath = os.path.join(directory, name + ".safetensors")
    stored = sslib.write_safetensors(wpath, tensors, metadata={"format": "pt"})
    cpath = os.path.join(directory, name + ".json")
    with open(cpath, "w") as f:
        json.dump(cfg.json(**(config_override or {})), f, indent=2)
    return wpath, cpath, {k[len(prefix):]: v for k, v in stored.items()}


# ------------------------------------------------------------------ the reference model ----

class Conv1D(torch.nn.Module):
    """HF Conv1D: weight [in, out], y = x @ W + b."""

    def __init__(self, w, b):
        super().__init__()
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(b)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], self.weight.shape[1])


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Block(torch.nn.Module):
    def __init__(self, cfg, w, layer, dtype=torch.float64):
        super().__init__()
        t = lambda s: torch.from_numpy(np.array(w["h.%d.%s" % (layer, s)])).to(dtype)  # noqa: E731
        E = cfg.n_embd
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.ln_1 = torch.nn.LayerNorm(E, eps=cfg.eps).to(dtype)
        self.ln_2 = torch.nn.LayerNorm(E, eps=cfg.eps).to(dtype)
        with torch.no_grad():
            self.ln_1.weight.copy_(t("ln_1.weight"))
            self.ln_1.bias.copy_(t("ln_1.bias"))
            self.ln_2.weight.copy_(t("ln_2.weight"))
            self.ln_2.bias.copy_(t("ln_2.bias"))
        self.c_attn = Conv1D(t("attn.c_attn.weight"), t("attn.c_attn.bias"))
        self.attn_proj = Conv1D(t("attn.c_proj.weight"), t("attn.c_proj.bias"))
        self.c_fc = Conv1D(t("mlp.c_fc.weight"), t("mlp.c_fc.bias"))
        self.mlp_proj = Conv1D(t("mlp.c_proj.weight"), t("mlp.c_proj.bias"))
        self.eval()

    def _heads(self, x):  # [B, S, E] -> [B, H, S, D]
        B, S, _ = x.shape
        return x.view(B, S, self.n_head, self.head_dim).permute(0, 2, 1, 3)

    def attn(self, x, past):
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        S, T = q.shape[2], k.shape[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        causal = torch.ones(T, T, dtype=torch.bool).tril()[T - S:T, :T]
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)  # [B, H, S, D]
        B = out.shape[0]
        out = out.permute(0, 2, 1, 3).reshape(B, S, self.n_head * self.head_dim)
        return self.attn_proj(out), present

    def forward(self, x, past=None):
        a, present = self.attn(self.ln_1(x), past)
        h = x + a
        y = h + self.mlp_proj(gelu_new(self.c_fc(self.ln_2(h))))
        return y, present


class Trunk:
    """Blocks [a, b) in float64."""

    def __init__(self, cfg, stored, a, b):
        self.blocks = [Block(cfg, stored, i) for i in range(a, b)]

    @torch.no_grad()
    def __call__(self, x, past=None):
        """x: numpy [B, S, E]; past: list of (key, value) numpy arrays or None.
        Returns (y numpy float64, [(key, value) numpy float64])."""
        h = torch.from_numpy(np.asarray(x, np.float64))
        presents = []
        for i, blk in enumerate(self.blocks):
            p = None
            if past is not None:
                p = (torch.from_numpy(np.asarray(past[i][0], np.float64)),
                     torch.from_numpy(np.asarray(past[i][1], np.float64)))
            h, pr = blk(h, p)
            presents.append((pr[0].numpy(), pr[1].numpy()))
        return h.numpy(), presents


# ------------------------------------------------------------------------------- LoRA ----

# PEFT target name -> the Block attributes it adapts ("c_proj" names both c_proj layers: PEFT
# matches a module by the last part of its name), and each one's checkpoint path.
LORA_MODULES = {"c_attn": ("c_attn",), "c_proj": ("attn_proj", "mlp_proj"), "c_fc": ("c_fc",)}
LORA_PATH = {"c_attn": "attn.c_attn", "attn_proj": "attn.c_proj", "c_fc": "mlp.c_fc",
             "mlp_proj": "mlp.c_proj"}


def lora_key(layer, attr):
    """The PEFT key prefix of an adapter over GPT2LMHeadModel."""
    return "base_model.model.transformer.h.%d.%s" % (layer, LORA_PATH[attr])


class LoraConv1D(torch.nn.Module):
    """A frozen Conv1D plus PEFT's LoRA path: y = x W + b + scale (x A^T) B^T, A [r, in],
    B [out, r] (PEFT stores Conv1D adapters like nn.Linear ones; fan_in_fan_out only changes its
    merge). dropout: None, or a function (x) -> x with the dropout mask applied."""

    def __init__(self, base, A, B, scale, dtype=torch.float64):
        super().__init__()
        self.base, self.scale, self.dropout = base, scale, None
        self.A = torch.nn.Parameter(torch.from_numpy(np.asarray(A, np.float64)).to(dtype))
        self.B = torch.nn.Parameter(torch.from_numpy(np.asarray(B, np.float64)).to(dtype))

    def forward(self, x):
        xd = self.dropout(x) if self.dropout is not None else x
        return self.base(x) + self.scale * torch.matmul(torch.matmul(xd, self.A.t()), self.B.t())


def lora_block(cfg, stored, layer, adapters, scale):
    """gpt2 Block with adapters {attr: (A, B)} (attr as in LORA_PATH) around its Conv1Ds."""
    blk = Block(cfg, stored, layer)
    for attr, (A, B) in adapters.items():
        setattr(blk, attr, LoraConv1D(getattr(blk, attr), A, B, scale))
    return blk


class LoraTrunk(Trunk):
    """Blocks [a, b) with adapters {layer: {attr: (A, B)}}, float64, no grad."""

    def __init__(self, cfg, stored, a, b, adapters, scale):
        self.blocks = [lora_block(cfg, stored, i, adapters.get(i, {}), scale) for i in range(a, b)]


def train_lora(cfg, stored, a, b, adapters, scale, xs, grads, run, masks=None):
    """LoRA training: only A, B train. run: train_ref._run bound to its optimizer settings
    (run(fn, params, xs, grads)). masks: None, or a function (call index, layer, attr, x) ->
    dropped x (LoRA dropout). Returns (grad_inputs, {PEFT key: float64 array})."""
    blocks = [lora_block(cfg, stored, i, adapters.get(i, {}), scale) for i in range(a, b)]
    keys = []
    for i, blk in zip(range(a, b), blocks):
        for p in blk.parameters():
            p.requires_grad_(False)
        for attr in ("c_attn", "attn_proj", "c_fc", "mlp_proj"):
            mod = getattr(blk, attr)
            if isinstance(mod, LoraConv1D):
                for ab in "AB":
                    prm = getattr(mod, ab)
                    prm.requires_grad_(True)
                    keys.append(("%s.lora_%s.weight" % (lora_key(i, attr), ab), prm))
    call = [0]

    def trunk(x):
        for i, blk in zip(range(a, b), blocks):
            if masks is not None:
                for attr in ("c_attn", "attn_proj", "c_fc", "mlp_proj"):
                    mod = getattr(blk, attr)
                    if isinstance(mod, LoraConv1D):
                        mod.dropout = (lambda xx, i=i, attr=attr: masks(call[0], i, attr, xx))
            x, _ = blk(x)
        call[0] += 1
        return x

    gin = run(trunk, [p for _, p in keys], xs, grads)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


# -------------------------------------------------------------------- LoRA dropout masks ----
# The server's counter-based generator (src/models/lora.h), written again in numpy.

_U64 = (1 << 64) - 1
_G = 0x9E3779B97F4A7C15
LORA_UNIT = {"c_attn": 0, "attn_proj": 1, "c_fc": 2, "mlp_proj": 3}  # gpt2 module indices


def _mix_int(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def _mix_arr(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def lora_mask_key(seed, forward_id):
    h = 0xCBF29CE484222325
    for b in forward_id.encode():
        h = ((h ^ b) * 0x100000001B3) & _U64
    return _mix_int(seed ^ _mix_int(h))


def lora_keep(seed, forward_id, unit, n, p):
    """The keep mask (bool [n]) of one adapter input: unit = layer * 16 + module."""
    z = _mix_int(lora_mask_key(seed, forward_id) ^ ((unit * _G) & _U64))
    with np.errstate(over="ignore"):
        c = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_G) + np.uint64(z)
    u = _mix_arr(c) >> np.uint64(40)
    return u.astype(np.float64) * 2.0 ** -24 >= float(np.float32(p))
