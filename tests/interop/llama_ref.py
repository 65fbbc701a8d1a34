"""An independent PyTorch reference for the llama trunk (model_type llama, qwen2, mistral, gemma,
qwen3, gemma2, gemma3_text, qwen2_vl, qwen3_vl) and a writer of random Hugging Face checkpoints (safetensors, single file or sharded with
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
    Qwen3Attention: q_norm / k_norm (Qwen3RMSNorm over head_dim) on each head of q and k before
                    the rotary embedding; attention_bias on q, k, v, o
    Gemma2DecoderLayer: h = x + post_attention_layernorm(attn(input_layernorm(x)));
                    y = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)));
                    scores * query_pre_attn_scalar^-0.5, then attn_logit_softcapping:
                    cap * tanh(scores / cap) before the mask; layer_types (default: even layers
                    "sliding_attention") with sliding_window
    Gemma3 (text):  Gemma2's layer plus q_norm/k_norm (Gemma3RMSNorm, 1 + w); layer_types default
                    from sliding_window_pattern (every pattern-th layer full); sliding layers
                    use a plain rope at rope_local_base_freq, full layers rope_theta with
                    rope_scaling
    Qwen2-VL text:  Qwen2's layer; Qwen2VLRotaryEmbedding with position_ids [3, B, S]: cos/sin
                    per stream, apply_multimodal_rotary_pos_emb takes chunk i of
                    cos.split(mrope_section * 2) from stream i % 3
    Qwen3-VL text:  Qwen3's layer; apply_interleaved_mrope: freqs of stream T, with those at
                    index 1::3 (< 3 mrope_section[1]) from H and 2::3 (< 3 mrope_section[2])
                    from W, then cat(freqs, freqs)
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


GEMMAS = ("gemma", "gemma2", "gemma3_text")


class Config:
    def __init__(self, model_type="llama", hidden=64, heads=4, kv_heads=None, head_dim=None,
                 intermediate=128, n_layer=3, max_pos=64, eps=1e-6, rope_theta=10000.0,
                 rope_scaling=None, attention_bias=False, mlp_bias=False, sliding_window=None,
                 query_pre_attn_scalar=None, softcap=None, layer_types=None,
                 sliding_window_pattern=None, rope_local_base_freq=None,
                 use_sliding_window=False, max_window_layers=None):
        self.model_type, self.hidden, self.heads = model_type, hidden, heads
        self.kv_heads = kv_heads or heads
        self.head_dim = head_dim or hidden // heads
        self.explicit_head_dim = head_dim is not None
        self.intermediate, self.n_layer, self.max_pos, self.eps = intermediate, n_layer, max_pos, eps
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling
        self.attention_bias, self.mlp_bias = attention_bias, mlp_bias
        self.sliding_window = sliding_window
        self.gemma = model_type in GEMMAS
        self.qk_norm = model_type in ("qwen3", "qwen3_vl", "gemma3_text")
        self.sandwich = model_type in ("gemma2", "gemma3_text")
        self.query_pre_attn_scalar, self.softcap = query_pre_attn_scalar, softcap
        self.layer_types, self.sliding_window_pattern = layer_types, sliding_window_pattern
        self.rope_local_base_freq = rope_local_base_freq
        self.use_sliding_window, self.max_window_layers = use_sliding_window, max_window_layers
        self.qwen = model_type in ("qwen2", "qwen3", "qwen2_vl", "qwen3_vl")

    def sliding(self, i):
        """Does layer i use the sliding window (HF's layer_types and their defaults)?"""
        if not self.sliding_window or (self.qwen and not self.use_sliding_window):
            return False
        if self.layer_types is not None:
            return self.layer_types[i] == "sliding_attention"
        if self.model_type == "mistral":
            return True
        if self.model_type == "gemma2":
            return bool((i + 1) % 2)
        if self.model_type == "gemma3_text":
            return bool((i + 1) % (self.sliding_window_pattern or 6))
        if self.qwen:  # Qwen2Config / Qwen3Config layer_types default
            mwl = self.max_window_layers if self.max_window_layers is not None else 28
            return i >= mwl
        return False

    def scale(self):
        if self.sandwich:
            return (self.query_pre_attn_scalar or 256) ** -0.5
        return 1.0 / math.sqrt(self.head_dim)

    def mrope(self):
        """(mrope_section, interleaved) or None."""
        rs = self.rope_scaling or {}
        if self.model_type in ("qwen2_vl", "qwen3_vl") and "mrope_section" in rs:
            return rs["mrope_section"], rs.get("mrope_interleaved",
                                               self.model_type == "qwen3_vl")
        return None

    def biases(self):
        """(q/k/v bias, o bias, mlp bias) as each family's HF modeling file has them."""
        if self.model_type in ("qwen2", "qwen2_vl"):
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
        if self.model_type in ("llama", "gemma", "qwen3", "gemma2", "gemma3_text", "qwen3_vl"):
            d["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            d["mlp_bias"] = self.mlp_bias
        if self.model_type in ("mistral", "gemma2", "gemma3_text"):
            d["sliding_window"] = self.sliding_window
        if self.qwen:
            d["use_sliding_window"] = self.use_sliding_window
            d["sliding_window"] = self.sliding_window if self.use_sliding_window else 4096
            if self.max_window_layers is not None:
                d["max_window_layers"] = self.max_window_layers
        if self.sandwich:
            d["query_pre_attn_scalar"] = self.query_pre_attn_scalar
            d["attn_logit_softcapping"] = self.softcap
        if self.layer_types is not None:
            d["layer_types"] = self.layer_types
        if self.sliding_window_pattern is not None:
            d["sliding_window_pattern"] = self.sliding_window_pattern
        if self.rope_local_base_freq is not None:
            d["rope_local_base_freq"] = self.rope_local_base_freq
        d.update(override)
        d = {k: v for k, v in d.items() if v is not Ellipsis}
        if self.model_type == "qwen3_vl":  # the text settings nested, as Qwen3VLConfig saves them
            d["model_type"] = "qwen3_vl_text"
            return {"model_type": "qwen3_vl", "text_config": d,
                    "vision_config": {"depth": 2, "hidden_size": 32}}
        return d


def tensor_shapes(cfg):
    E, Q, KV, I = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    qkvb, ob, mb = cfg.biases()
    s = {"input_layernorm.weight": (E,), "post_attention_layernorm.weight": (E,),
         **({"pre_feedforward_layernorm.weight": (E,), "post_feedforward_layernorm.weight": (E,)}
            if cfg.sandwich else {}),
         **({"self_attn.q_norm.weight": (cfg.head_dim,), "self_attn.k_norm.weight": (cfg.head_dim,)}
            if cfg.qk_norm else {}),
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
            if s.endswith("layernorm.weight") or s.endswith("_norm.weight"):
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
            stored = sslib.write_sharded(d, {prefix + k: (v, storage) for k, v in w.items()},
                                         shards, metadata={"format": "pt"})
    with open(cpath, "w") as f:
        json.dump(cfgd, f, indent=2)
    return wpath, cpath, {k[len(prefix):]: v for k, v in stored.items()}


# ------------------------------------------------------------------ the reference model ----

def inv_freq(cfg, local=False):
    """LlamaRotaryEmbedding's inverse frequencies with rope_scaling applied (float64); local:
    Gemma 3's sliding layers (rope_local_base_freq, no scaling)."""
    d = cfg.head_dim
    base = (cfg.rope_local_base_freq or 10000.0) if local else cfg.rope_theta
    f = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = cfg.rope_scaling
    if not rs or local:
        return f
    kind = rs.get("rope_type", rs.get("type"))
    if kind in ("default", "mrope"):
        return f
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
        # every RMSNorm under its checkpoint name (dots as '/'): input_layernorm, the MLP's
        # input norm (Gemma 2/3 call it pre_feedforward_layernorm and post_attention_layernorm
        # the norm of the attention output), post_feedforward_layernorm, q_norm, k_norm
        self.norms = torch.nn.ModuleDict({
            n[:-len(".weight")].replace(".", "/"): RMSNorm(t(n), cfg.eps, cfg.gemma)
            for n in names if n.endswith("norm.weight")})
        self.layer = layer
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
        self.sliding = cfg.sliding(layer)
        local = cfg.model_type == "gemma3_text" and self.sliding
        self.register_buffer("inv_freq", inv_freq(cfg, local))
        self.eval()

    def norm(self, name, x):
        return self.norms[name](x)

    def cos_sin(self, pos0, S, B, positions):
        """cos, sin [B or 1, 1, S, head_dim]; positions: M-RoPE [3, B, S] or None."""
        mr = self.cfg.mrope()
        if positions is None:
            pos = torch.arange(pos0, pos0 + S, dtype=torch.float64)
            positions = pos.view(1, 1, S).expand(3, 1, S)
        positions = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
        freqs = positions[..., None] * self.inv_freq  # [3, B, S, d/2]
        if mr is None:
            emb = torch.cat((freqs[0], freqs[0]), dim=-1)
            return emb.cos()[:, None], emb.sin()[:, None]
        section, interleaved = mr
        if interleaved:  # Qwen3-VL apply_interleaved_mrope
            f = freqs[0].clone()
            for dim, offset in ((1, 1), (2, 2)):
                idx = slice(offset, section[dim] * 3, 3)
                f[..., idx] = freqs[dim][..., idx]
            emb = torch.cat((f, f), dim=-1)
            return emb.cos()[:, None], emb.sin()[:, None]
        # Qwen2-VL apply_multimodal_rotary_pos_emb
        emb = torch.cat((freqs, freqs), dim=-1)  # [3, B, S, d]
        cos, sin = emb.cos(), emb.sin()
        sec = list(section) * 2
        cos = torch.cat([m[i % 3] for i, m in enumerate(cos.split(sec, dim=-1))], dim=-1)
        sin = torch.cat([m[i % 3] for i, m in enumerate(sin.split(sec, dim=-1))], dim=-1)
        return cos[:, None], sin[:, None]

    def p(self, short, x):
        y = self.proj[short](x)
        if short + "_A" in self.lora:
            y = y + self.lora_scale * (x @ self.lora[short + "_A"].T) @ self.lora[short + "_B"].T
        return y

    def attn(self, x, past, pos0, positions=None):
        c = self.cfg
        B, S, _ = x.shape
        q = self.p("q_proj", x).view(B, S, c.heads, c.head_dim)
        k = self.p("k_proj", x).view(B, S, c.kv_heads, c.head_dim)
        if c.qk_norm:
            q = self.norm("self_attn/q_norm", q)
            k = self.norm("self_attn/k_norm", k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.p("v_proj", x).view(B, S, c.kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.cos_sin(pos0, S, B, positions)
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
        scores = (q @ kk.transpose(-1, -2)) * c.scale()
        if c.softcap:
            scores = torch.tanh(scores / c.softcap) * c.softcap
        i = torch.arange(P, P + S).view(-1, 1)
        j = torch.arange(T).view(1, -1)
        allowed = j <= i
        if self.sliding:
            allowed = allowed & (j > i - c.sliding_window)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = torch.softmax(scores, dim=-1) @ vv
        out = out.transpose(1, 2).reshape(B, S, c.heads * c.head_dim)
        return self.p("o_proj", out), present

    def act(self, x):
        if self.cfg.gemma:
            return torch.nn.functional.gelu(x, approximate="tanh")
        return torch.nn.functional.silu(x)

    def forward(self, x, past=None, pos0=None, positions=None):
        if pos0 is None:
            pos0 = 0 if past is None else past[0].shape[2]
        a, present = self.attn(self.norm("input_layernorm", x), past, pos0, positions)
        if self.cfg.sandwich:
            h = x + self.norm("post_attention_layernorm", a)
            n2 = self.norm("pre_feedforward_layernorm", h)
        else:
            h = x + a
            n2 = self.norm("post_attention_layernorm", h)
        m = self.p("down_proj", self.act(self.p("gate_proj", n2)) * self.p("up_proj", n2))
        if self.cfg.sandwich:
            m = self.norm("post_feedforward_layernorm", m)
        return h + m, present


class Trunk:
    """Layers [a, b) in float64."""

    def __init__(self, cfg, stored, a, b, lora=None, lora_scale=1.0):
        self.blocks = [Block(cfg, stored, i, (lora or {}).get(i), lora_scale) for i in range(a, b)]

    @torch.no_grad()
    def __call__(self, x, past=None, pos0=None, positions=None):
        h = torch.from_numpy(np.asarray(x, np.float64))
        presents = []
        for i, blk in enumerate(self.blocks):
            p = None
            if past is not None:
                p = (torch.from_numpy(np.asarray(past[i][0], np.float64)),
                     torch.from_numpy(np.asarray(past[i][1], np.float64)))
            h, pr = blk(h, p, pos0, positions)
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
        for name, nm in blk.norms.items():
            keys.append(("layers.%d.%s.weight" % (i, name.replace("/", ".")), nm.weight))
    params = [p for _, p in keys]

    def trunk(x):
        for blk in blocks:
            x, _ = blk(x)
        return x

    gin = train_ref._run(trunk, params, xs, grads, optim, lr, accumulation_step)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


def train_lora(cfg, stored, a, b, adapters, scale, xs, grads, optim, lr, accumulation_step=1,
               prefix="model."):
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
                    keys.append(("base_model.model.%slayers.%d.%s.lora_%s.weight"
                                 % (prefix, i, PROJ[short], ab), prm))

    def trunk(x):
        for blk in blocks:
            x, _ = blk(x)
        return x

    gin = train_ref._run(trunk, [p for _, p in keys], xs, grads, optim, lr, accumulation_step)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}
