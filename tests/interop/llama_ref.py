"""An independent PyTorch reference for the llama trunk (model_type llama, qwen2, mistral, gemma)
and a writer of random Hugging Face checkpoints (safetensors, single file or sharded with
model.safetensors.index.json, config.json) for the tests.

Written here from torch ops (no transformers package), after Hugging Face's published
definitions, eval mode, float64:
    LlamaRMSNorm:   x * rsqrt(mean(x^2) + eps) * w          (GemmaRMSNorm: * (1 + w))
    LlamaRotaryEmbedding: inv_freq = 1 / theta^(2i/d); rope_scaling "linear" divides it by
                    factor; "llama3" (_compute_llama3_parameters) rescales it by wavelength band;
                    cos/sin of cat(freqs, freqs); q' = q cos + rotate_half(q) sin
    repeat_kv:      each kv head serves num_attention_heads / num_key_value_heads query heads
    LlamaAttention: q, k, v projections (Qwen2: biases on q, k, v; llama/gemma attention_bias on
                    q, k, v, o), softmax(q k^T / sqrt(head_dim) + causal mask) v, o_proj;
                    Mistral's sliding window masks keys j <= i - sliding_window
    LlamaMLP:       down(act(gate(x)) * up(x)); act silu, or gelu tanh (Gemma's GeGLU)
    LlamaDecoderLayer: h = x + attn(norm1(x)); y = h + mlp(norm2(h))
The cache is [batch, num_key_value_heads, len, head_dim], keys after the rotary embedding.
Reference numbers come from the weights exactly as stored (F16/BF16 rounded).

Training references (torch autograd + torch.optim) for full fine-tuning and PEFT-style LoRA
(y += (alpha / r) x A^T B^T on the targeted projections, the trunk frozen) play the split
protocol like train_ref.py.
"""
import json
import math
import os

import numpy as np
import torch

import sslib
import train_ref

PROJ = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj"}


class Config:
    def __init__(self, model_type="llama", hidden=64, heads=4, kv_heads=None, head_dim=None,
                 intermediate=128, n_layer=3, max_pos=64, eps=1e-6, rope_theta=10000.0,
                 rope_scaling=None, attention_bias=False, mlp_bias=False, sliding_window=None):
        self.model_type, self.hidden, self.heads = model_type, hidden, heads
        self.kv_heads = kv_heads or heads
        self.head_dim = head_dim or hidden // heads
        self.explicit_head_dim = head_dim is not None
        self.intermediate, self.n_layer, self.max_pos, self.eps = intermediate, n_layer, max_pos, eps
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling
        self.attention_bias, self.mlp_bias = attention_bias, mlp_bias
        self.sliding_window = sliding_window
        self.gemma = model_type == "gemma"

    def biases(self):
        """(q/k/v bias, o bias, mlp bias) as each family's HF modeling file has them."""
        if self.model_type == "qwen2":
            return True, False, False
        if self.model_type == "mistral":
            return False, False, False
        return self.attention_bias, self.attention_bias, (self.mlp_bias and
                                                          self.model_type == "llama")

    def json(self, **override):
        d = {"model_type": self.model_type, "vocab_size": 50, "hidden_size": self.hidden,
             "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
             "intermediate_size": self.intermediate, "num_hidden_layers": self.n_layer,
             "max_position_embeddings": self.max_pos, "rms_norm_eps": self.eps,
             "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling,
             "torch_dtype": "float32", "tie_word_embeddings": False}
        if self.explicit_head_dim:
            d["head_dim"] = self.head_dim
        if self.gemma:
            d["hidden_activation"] = "gelu_pytorch_tanh"
            d["hidden_act"] = "gelu"  # ignored by HF for gemma (hidden_activation wins)
        else:
            d["hidden_act"] = "silu"
        if self.model_type in ("llama", "gemma"):
            d["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            d["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        if self.model_type == "qwen2":
            d["use_sliding_window"] = False
            d["sliding_window"] = 4096
        d.update(override)
        return {k: v for k, v in d.items() if v is not Ellipsis}


def tensor_shapes(cfg):
    E, Q, KV, I = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    qkvb, ob, mb = cfg.biases()
    s = {"input_layernorm.weight": (E,), "post_attention_layernorm.weight": (E,),
         "self_attn.q_proj.weight": (Q, E), "self_attn.k_proj.weight": (KV, E),
         "self_attn.v_proj.weight": (KV, E), "self_attn.o_proj.weight": (E, Q),
         "mlp.gate_proj.weight": (I, E), "mlp.up_proj.weight": (I, E),
         "mlp.down_proj.weight": (E, I)}
    if qkvb:
        s.update({"self_attn.q_proj.bias": (Q,), "self_attn.k_proj.bias": (KV,),
                  "self_attn.v_proj.bias": (KV,)})
    if ob:
        s["self_attn.o_proj.bias"] = (E,)
    if mb:
        s.update({"mlp.gate_proj.bias": (I,), "mlp.up_proj.bias": (I,), "mlp.down_proj.bias": (E,)})
    return s


def random_weights(cfg, seed):
    """{'layers.{i}.<suffix>': float32} for every layer, plus embed_tokens and norm."""
    g = np.random.default_rng(seed)
    w = {}
    for i in range(cfg.n_layer):
        for s, shp in sorted(tensor_shapes(cfg).items()):
            if s.endswith("layernorm.weight"):
                a = (0.2 * g.standard_normal(shp)) if cfg.gemma else 1.0 + 0.2 * g.standard_normal(shp)
            elif s.endswith("bias"):
                a = 0.1 * g.standard_normal(shp)
            else:
                a = 0.8 / math.sqrt(shp[1]) * g.standard_normal(shp)
            w["layers.%d.%s" % (i, s)] = a.astype(np.float32)
    w["embed_tokens.weight"] = (0.02 * g.standard_normal((50, cfg.hidden))).astype(np.float32)
    w["norm.weight"] = np.ones(cfg.hidden, np.float32)
    return w


def write_checkpoint(directory, name, cfg, seed=0, storage="F32", prefix="model.", layout="file",
                     skip=(), weights=None, config_override=None, shards=3):
    """layout 'file': <dir>/<name>.safetensors + <dir>/<name>.json (weights path: the file);
    'dir': <dir>/<name>/model.safetensors + config.json (weights path: the directory);
    'sharded': <dir>/<name>/model-0000k-of-0000n.safetensors + model.safetensors.index.json +
    config.json (weights path: the directory). Returns (weights path, config path,
    {unprefixed name: float32 as stored})."""
    w = dict(weights if weights is not None else random_weights(cfg, seed))
    for k in skip:
        w.pop(k, None)
    cfgd = cfg.json(**(config_override or {}))
    if layout == "file":
        wpath = os.path.join(directory, name + ".safetensors")
        cpath = os.path.join(directory, name + ".json")
        stored = sslib.write_safetensors(wpath, {prefix + k: (v, storage) for k, v in w.items()},
                                         metadata={"format": "pt"})
    else:
        d = os.path.join(directory, name)
        os.makedirs(d, exist_ok=True)
        wpath, cpath = d, os.path.join(d, "config.json")
        if layout == "dir":
            stored = sslib.write_safetensors(os.path.join(d, "model.safetensors"),
                                             {prefix + k: (v, storage) for k, v in w.items()},
                                             metadata={"format": "pt"})
        else:
            keys = sorted(w)
            stored, wmap = {}, {}
            for s in range(shards):
                fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
                part = {prefix + k: (w[k], storage) for k in keys[s::shards]}
                stored.update(sslib.write_safetensors(os.path.join(d, fn), part,
                                                      metadata={"format": "pt"}))
                wmap.update({k: fn for k in part})
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, f, indent=1)
    with open(cpath, "w") as f:
        json.dump(cfgd, f, indent=2)
    return wpath, cpath, {k[len(prefix):]: v for k, v in stored.items()}


# ------------------------------------------------------------------ the reference model ----

def inv_freq(cfg):
    """LlamaRotaryEmbedding's inverse frequencies with rope_scaling applied (float64)."""
    d = cfg.head_dim
    f = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = cfg.rope_scaling
    if not rs:
        return f
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return f / rs["factor"]
    assert kind == "llama3", kind
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wavelen = 2 * math.pi / f
    out = torch.where(wavelen > low_wl, f / factor, f)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
    return torch.where(medium, smoothed, out)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class RMSNorm(torch.nn.Module):
    def __init__(self, w, eps, one_plus):
        super().__init__()
        self.weight = torch.nn.Parameter(w)
        self.eps, self.one_plus = eps, one_plus

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * ((1.0 + self.weight) if self.one_plus else self.weight)


class Block(torch.nn.Module):
    """One decoder layer; lora: {'q_proj': (A [r,in], B [out,r]), ...} numpy, with scale."""

    def __init__(self, cfg, w, layer, lora=None, lora_scale=1.0, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        t = lambda s: torch.from_numpy(np.array(w["layers.%d.%s" % (layer, s)])).to(dtype)  # noqa
        names = set(tensor_shapes(cfg))
        self.norm1 = RMSNorm(t("input_layernorm.weight"), cfg.eps, cfg.gemma)
        self.norm2 = RMSNorm(t("post_attention_layernorm.weight"), cfg.eps, cfg.gemma)
        self.proj = torch.nn.ModuleDict()
        for short, path in PROJ.items():
            W = t(path + ".weight")
            lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=path + ".bias" in names).to(dtype)
            with torch.no_grad():
                lin.weight.copy_(W)
                if lin.bias is not None:
                    lin.bias.copy_(t(path + ".bias"))
            self.proj[short] = lin
        self.lora = torch.nn.ParameterDict()
        self.lora_scale = lora_scale
        for short, (A, B) in (lora or {}).items():
            self.lora[short + "_A"] = torch.nn.Parameter(torch.from_numpy(np.array(A, np.float64)))
            self.lora[short + "_B"] = torch.nn.Parameter(torch.from_numpy(np.array(B, np.float64)))
        self.register_buffer("inv_freq", inv_freq(cfg))
        self.eval()

    def p(self, short, x):
        y = self.proj[short](x)
        if short + "_A" in self.lora:
            y = y + self.lora_scale * (x @ self.lora[short + "_A"].T) @ self.lora[short + "_B"].T
        return y

    def attn(self, x, past, pos0):
        c = self.cfg
        B, S, _ = x.shape
        q = self.p("q_proj", x).view(B, S, c.heads, c.head_dim).transpose(1, 2)
        k = self.p("k_proj", x).view(B, S, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.p("v_proj", x).view(B, S, c.kv_heads, c.head_dim).transpose(1, 2)
        pos = torch.arange(pos0, pos0 + S, dtype=torch.float64)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        P = 0
        if past is not None:
            P = past[0].shape[2]
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        rep = c.heads // c.kv_heads  # repeat_kv
        kk = k.repeat_interleave(rep, dim=1)
        vv = v.repeat_interleave(rep, dim=1)
        T = kk.shape[2]
        scores = q @ kk.transpose(-1, -2) / math.sqrt(c.head_dim)
        i = torch.arange(P, P + S).view(-1, 1)
        j = torch.arange(T).view(1, -1)
        allowed = j <= i
        if c.model_type == "mistral" and c.sliding_window:
            allowed = allowed & (j > i - c.sliding_window)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ vv
        out = out.transpose(1, 2).reshape(B, S, c.heads * c.head_dim)
        return self.p("o_proj", out), present

    def act(self, x):
        if self.cfg.gemma:
            return torch.nn.functional.gelu(x, approximate="tanh")
        return torch.nn.functional.silu(x)

    def forward(self, x, past=None, pos0=None):
        if pos0 is None:
            pos0 = 0 if past is None else past[0].shape[2]
        a, present = self.attn(self.norm1(x), past, pos0)
        h = x + a
        n2 = self.norm2(h)
        y = h + self.p("down_proj", self.act(self.p("gate_proj", n2)) * self.p("up_proj", n2))
        return y, present


class Trunk:
    """Layers [a, b) in float64."""

    def __init__(self, cfg, stored, a, b, lora=None, lora_scale=1.0):
        self.blocks = [Block(cfg, stored, i, (lora or {}).get(i), lora_scale) for i in range(a, b)]

    @torch.no_grad()
    def __call__(self, x, past=None, pos0=None):
        h = torch.from_numpy(np.asarray(x, np.float64))
        presents = []
        for i, blk in enumerate(self.blocks):
            p = None
            if past is not None:
                p = (torch.from_numpy(np.asarray(past[i][0], np.float64)),
                     torch.from_numpy(np.asarray(past[i][1], np.float64)))
            h, pr = blk(h, p, pos0)
            presents.append((pr[0].numpy(), pr[1].numpy()))
        return h.numpy(), presents


# ------------------------------------------------------------------ training ----

def train_full(cfg, stored, a, b, xs, grads, optim, lr, accumulation_step=1, steps_done=None):
    """Full fine-tuning of layers [a, b). Returns (grad_inputs, {'layers.{i}.<suffix>': f64})."""
    blocks = [Block(cfg, stored, i) for i in range(a, b)]
    params, keys = [], []
    for i, blk in zip(range(a, b), blocks):
        for short, path in PROJ.items():
            lin = blk.proj[short]
            keys.append(("layers.%d.%s.weight" % (i, path), lin.weight))
            if lin.bias is not None:
                keys.append(("layers.%d.%s.bias" % (i, path), lin.bias))
        keys.append(("layers.%d.input_layernorm.weight" % i, blk.norm1.weight))
        keys.append(("layers.%d.post_attention_layernorm.weight" % i, blk.norm2.weight))
    params = [p for _, p in keys]

    def trunk(x):
        for blk in blocks:
            x, _ = blk(x)
        return x

    gin = train_ref._run(trunk, params, xs, grads, optim, lr, accumulation_step)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


def train_lora(cfg, stored, a, b, adapters, scale, xs, grads, optim, lr, accumulation_step=1):
    """LoRA: adapters {layer: {'q_proj': (A, B), ...}}; only A, B train. Returns (grad_inputs,
    {PEFT key: f64 array})."""
    blocks = [Block(cfg, stored, i, adapters.get(i), scale) for i in range(a, b)]
    keys = []
    for i, blk in zip(range(a, b), blocks):
        for p in blk.parameters():
            p.requires_grad_(False)
        for short in PROJ:
            if short + "_A" in blk.lora:
                for ab in "AB":
                    prm = blk.lora[short + "_" + ab]
                    prm.requires_grad_(True)
                    keys.append(("base_model.model.model.layers.%d.%s.lora_%s.weight"
                                 % (i, PROJ[short], ab), prm))

    def trunk(x):
        for blk in blocks:
            x, _ = blk(x)
        return x

    gin = train_ref._run(trunk, [p for _, p in keys], xs, grads, optim, lr, accumulation_step)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}
