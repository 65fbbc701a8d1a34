#!/usr/bin/python3
"""peer_server.py — the Python servers a user would pick instead of splitserve.

Implements the same splitlearn.comm.ComputeService contract as splitserve (Compute,
ComputeBackward, HealthCheck, GetServiceInfo, StreamMonitoring) and grpc.health.v1.Health/Check,
with the same built-in models chosen by model_id:

  identity   out = in
  scale      out = in * metadata "factor" (default 1)
  sleep      wait metadata "ms" milliseconds (default 100), out = in
  spin       busy-loop metadata "ms" milliseconds (default 10), out = in
  mlp        torch.nn.Sequential(Linear(768,768), ReLU, Linear(768,768)); weights from
             --weights FILE.safetensors (keys "[prefix.]<idx>.weight|bias"), else the same
             deterministic seeded weights as splitserve's embedded default (splitmix64, seed 42)
  trunk      (with --llama-weights W --llama-config C --llama-layers A:B: Llama/Qwen2 decoder
             layers [A, B), class LlamaTrunk; or:)
             (with --gpt2-weights W --gpt2-config C --gpt2-layers A:B) GPT-2 blocks [A, B) of a
             Hugging Face checkpoint: the HF GPT2Block in eval mode written with torch ops
             (Conv1D y = x @ W + b, LayerNorm with the config's eps, causal attention over
             past + new, gelu_new), hidden states [batch, seq, n_embd] in and out; KV cache as
             the wire contract has it: past_key_values (one entry per trunk layer, float32
             [batch, heads, past, head_dim]) and use_cache=true -> present_key_values

Split training (mlp and trunk, as splitserve does it, with torch autograd): Compute with
training_mode=true runs the forward with autograd (input and parameters require grad) and keeps
(input, output) under forward_id (the request's, or a fresh one returned in the response);
ComputeBackward does output.backward(grad_output), returns input.grad, and with learning_rate
steps a torch optimizer (--optimizer sgd|adamw, --weight-decay) after every accumulation_step-th
backward call of that model (the gradients in between are summed). Training calls of a model run
under one lock per model (inference calls take none). Unknown or used forward_id: NOT_FOUND;
other models: UNIMPLEMENTED; at most --max-pending forwards are kept (oldest dropped).
GetServiceInfo custom_info "activations" / "activation_bytes": pending forwards and the bytes
autograd saved for them (saved_tensors_hooks; parameters excluded, each storage counted once).

in the two architectures of the seed documents:

  --mode sync  grpc.server(futures.ThreadPoolExecutor(max_workers=10)): each RPC runs on a
               pool thread, compute included (time.sleep for "sleep").
  --mode aio   grpc.aio server on one asyncio loop: "sleep" is asyncio.sleep, blocking compute
               goes to loop.run_in_executor (a ThreadPoolExecutor of --workers threads).

Messages come from protoc --python_out (CMake writes them into build/py; --py-dir overrides);
handlers are registered with grpc's generic handler API (no grpc_tools needed).
Prints "listening on HOST:PORT" to stderr when ready. Run with Debian's /usr/bin/python3.
"""
import argparse
import asyncio
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from concurrent import futures

import numpy as np

VERSION = "0.1.0"
SERVICE = "splitlearn.comm.ComputeService"
MAX_MSG = 100 * 1024 * 1024


# ------------------------------------------------------------------ tensors --------

def dtype_of(metadata):
    """Wire dtype from request metadata: float32 (default), float16, bfloat16."""
    d = metadata.get("dtype", "float32").lower()
    if d in ("float32", "fp32", "f32"):
        return "float32"
    if d in ("float16", "fp16", "f16", "half"):
        return "float16"
    if d in ("bfloat16", "bf16"):
        return "bfloat16"
    raise ValueError(f"metadata 'dtype' must be float32, float16 or bfloat16, got '{d}'")


ESIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def decode_tensor(data, shape, dt):
    """Wire bytes -> float32 numpy array of shape (validated like splitserve)."""
    if not (1 <= len(shape) <= 8) or any(s < 0 for s in shape):
        raise ValueError(f"shape {list(shape)} must have 1..8 non-negative dims")
    numel = int(np.prod(shape, dtype=np.int64))
    need = numel * ESIZE[dt]
    if len(data) != need:
        raise ValueError(f"data has {len(data)} bytes but shape {list(shape)} x {dt} "
                         f"needs {need}")
    if dt == "float32":
        a = np.frombuffer(data, dtype="<f4")
    elif dt == "float16":
        a = np.frombuffer(data, dtype="<f2").astype(np.float32)
    else:
        a = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return a.reshape(shape)


def encode_tensor(a, dt):
    """float32 array -> wire bytes in dtype dt (bfloat16: round to nearest even)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dt == "float32":
        return a.astype("<f4", copy=False).tobytes()
    if dt == "float16":
        return a.astype("<f2").tobytes()
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r.astype("<u2").tobytes()


# ------------------------------------------------------------------ models ---------

def meta_ms(metadata, default, hi=600000.0):
    v = metadata.get("ms")
    if v is None:
        return default
    try:
        ms = float(v)
    except ValueError:
        ms = float("nan")
    if not (0.0 <= ms <= hi):
        raise ValueError(f"metadata 'ms' must be a number in [0, {hi:g}], got '{v}'")
    return ms


def spin(ms):
    end = time.perf_counter() + ms / 1e3
    x = 0
    while time.perf_counter() < end:
        x += 1
    return x


def splitmix_uniform(n, seed=42):
    """The first n values of splitserve's splitmix64 stream, as u in [0, 1) (float64)."""
    c = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + c * np.arange(1, n + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) * 2.0 ** -24


def default_mlp_state():
    """State dict equal to splitserve's embedded default mlp (768 -> 768 -> 768, relu)."""
    widths = [768, 768, 768]
    sizes = []
    for i in range(2):
        sizes += [widths[i] * widths[i + 1], widths[i + 1]]
    u = splitmix_uniform(sum(sizes))
    state, off = {}, 0
    for i in range(2):
        fan_in, out = widths[i], widths[i + 1]
        bound = 1.0 / np.sqrt(fan_in)
        w = ((2.0 * u[off:off + fan_in * out] - 1.0) * bound).astype(np.float32)
        off += fan_in * out
        b = ((2.0 * u[off:off + out] - 1.0) * bound).astype(np.float32)
        off += out
        state[f"{2 * i}.weight"] = w.reshape(out, fan_in)
        state[f"{2 * i}.bias"] = b
    return state


def load_safetensors(path):
    """Parse a .safetensors file by hand: u64 header length, JSON header, raw data."""
    st_dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "bf16"}
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in st_dtypes:
            raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {dt}")
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        if dt == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, dtype=st_dtypes[dt]).astype(np.float32)
        out[name] = a.reshape(info["shape"])
    return out


def build_mlp(weights_path):
    import torch
    if weights_path:
        tensors = load_safetensors(weights_path)
        layers = {}
        for name, a in tensors.items():
            parts = name.split(".")
            if len(parts) < 2 or parts[-1] not in ("weight", "bias") or not parts[-2].isdigit():
                raise ValueError(f"{weights_path}: tensor '{name}' is not [prefix.]<idx>.weight|bias")
            layers.setdefault(int(parts[-2]), {})[parts[-1]] = a
        state = {}
        for new_idx, idx in enumerate(sorted(layers)):
            state[f"{2 * new_idx}.weight"] = layers[idx]["weight"]
            if "bias" in layers[idx]:
                state[f"{2 * new_idx}.bias"] = layers[idx]["bias"]
    else:
        state = default_mlp_state()
    n = len([k for k in state if k.endswith(".weight")])
    mods = []
    for i in range(n):
        w = state[f"{2 * i}.weight"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=f"{2 * i}.bias" in state)
        mods.append(lin)
        if i + 1 < n:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    with torch.no_grad():
        for i in range(n):
            model[2 * i].weight.copy_(torch.from_numpy(np.array(state[f"{2 * i}.weight"])))
            if f"{2 * i}.bias" in state:
                model[2 * i].bias.copy_(torch.from_numpy(np.array(state[f"{2 * i}.bias"])))
    model.eval()
    in_width = state["0.weight"].shape[1]

    def forward(x):
        if x.shape[-1] != in_width:
            raise ValueError(f"model 'mlp' expects last dimension {in_width}, got {x.shape[-1]}")
        with torch.no_grad():
            return model(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()
    forward.module = model
    forward.in_width = in_width
    return forward


# ------------------------------------------------------------------ gpt2 trunk -----

def read_safetensors_subset(path, want):
    """{name: float32 array} for the names in want (others are not read). Hand-parsed."""
    st_dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
    out = {}
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        base = 8 + hlen
        for name in want:
            info = header.get(name)
            if info is None:
                continue
            b, e = info["data_offsets"]
            f.seek(base + b)
            buf = f.read(e - b)
            dt = info["dtype"]
            if dt == "BF16":
                a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dt in st_dtypes:
                a = np.frombuffer(buf, dtype=st_dtypes[dt]).astype(np.float32)
            else:
                raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {dt}")
            out[name] = a.reshape(info["shape"])
    return out


GPT2_SUFFIXES = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")


class Gpt2Trunk:
    """GPT-2 blocks [a, b) (HF GPT2Block, eval mode) in float32 torch ops, with a KV cache."""

    def __init__(self, weights, config, layers):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F
        with open(config) as f:
            cfg = json.load(f)
        self.E = int(cfg["n_embd"])
        self.H = int(cfg["n_head"])
        self.D = self.E // self.H
        self.n_positions = int(cfg.get("n_positions", cfg.get("n_ctx", 1024)))
        self.eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        n_layer = int(cfg["n_layer"])
        act = cfg.get("activation_function", "gelu_new")
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = lambda t: F.gelu(t, approximate="tanh")  # == HF NewGELU's formula
        elif act == "gelu":
            self.act = F.gelu
        elif act == "relu":
            self.act = F.relu
        else:
            raise ValueError(f"{config}: activation_function '{act}' is not supported")
        a, _, b = layers.partition(":")
        a = int(a) if a else 0
        b = int(b) if b else n_layer
        if not (0 <= a < b <= n_layer):
            raise ValueError(f"--gpt2-layers {layers}: need 0 <= a < b <= n_layer ({n_layer})")
        self.a, self.b = a, b
        with open(weights, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            names = json.loads(f.read(hlen)).keys()
        prefix = "transformer." if any(k.startswith("transformer.h.") for k in names) else ""
        want = [f"{prefix}h.{i}.{s}" for i in range(a, b) for s in GPT2_SUFFIXES]
        got = read_safetensors_subset(weights, want)
        missing = [k for k in want if k not in got]
        if missing:
            raise ValueError(f"{weights}: missing tensors: {', '.join(missing[:6])}"
                             + (" ..." if len(missing) > 6 else ""))
        self.blocks = []
        for i in range(a, b):
            # leaf tensors that require grad (for training); the inference path runs under
            # no_grad, so it does not pay for it
            self.blocks.append({s: torch.from_numpy(np.array(got[f"{prefix}h.{i}.{s}"]))
                                .requires_grad_(True) for s in GPT2_SUFFIXES})
        self.n_params = sum(t.numel() for blk in self.blocks for t in blk.values())

    def check(self, x_shape, past, use_cache):
        if len(x_shape) != 3 or x_shape[2] != self.E:
            raise ValueError(f"model 'trunk' expects [batch, seq, {self.E}], got {list(x_shape)}")
        L = self.b - self.a
        if past and len(past) != L:
            raise ValueError(f"model 'trunk' expects {L} past_key_values entries, got {len(past)}")
        plen = 0
        for i, e in enumerate(past):
            want = [x_shape[0], self.H, None, self.D]
            for nm, shp in (("key", list(e.key_shape)), ("value", list(e.value_shape))):
                if len(shp) != 4 or shp[0] != want[0] or shp[1] != self.H or shp[3] != self.D:
                    raise ValueError(f"past_key_values[{i}].{nm}_shape is {shp}, expected "
                                     f"[{x_shape[0]},{self.H},past,{self.D}]")
                if i == 0 and nm == "key":
                    plen = shp[2]
                if shp[2] != plen:
                    raise ValueError(f"past_key_values[{i}].{nm}_shape {shp}: past length differs")
        if plen + x_shape[1] > self.n_positions:
            raise ValueError(f"past {plen} + seq {x_shape[1]} exceeds n_positions {self.n_positions}")

    def _block(self, p, x, past_k, past_v):
        torch, F = self.torch, self.F
        B, S, E = x.shape
        H, D = self.H, self.D
        h = F.layer_norm(x, (E,), p["ln_1.weight"], p["ln_1.bias"], self.eps)
        qkv = torch.addmm(p["attn.c_attn.bias"], h.view(-1, E), p["attn.c_attn.weight"])
        q, k, v = qkv.view(B, S, 3, H, D).permute(2, 0, 3, 1, 4)  # each [B, H, S, D]
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        T = k.shape[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        if S > 1:
            causal = torch.ones(S, T, dtype=torch.bool).tril(diagonal=T - S)
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)
        a = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(B * S, E)
        x = torch.addmm(p["attn.c_proj.bias"], a, p["attn.c_proj.weight"]).view(B, S, E).add_(x)
        h = F.layer_norm(x, (E,), p["ln_2.weight"], p["ln_2.bias"], self.eps)
        m = self.act(torch.addmm(p["mlp.c_fc.bias"], h.view(-1, E), p["mlp.c_fc.weight"]))
        x = torch.addmm(p["mlp.c_proj.bias"], m, p["mlp.c_proj.weight"]).view(B, S, E).add_(x)
        return x, k, v

    def forward(self, x, past, use_cache):
        """x: float32 numpy [B, S, E]; past: list of KVCacheEntry (wire). Returns
        (y numpy, [(key bytes, key shape, value bytes, value shape)] or None)."""
        torch = self.torch
        presents = [] if use_cache else None
        with torch.no_grad():
            h = torch.from_numpy(np.array(x, dtype=np.float32))
            for i, p in enumerate(self.blocks):
                pk = pv = None
                if past:
                    e = past[i]
                    pk = torch.from_numpy(np.frombuffer(e.key_data, "<f4").reshape(
                        list(e.key_shape)).copy())
                    pv = torch.from_numpy(np.frombuffer(e.value_data, "<f4").reshape(
                        list(e.value_shape)).copy())
                h, k, v = self._block(p, h, pk, pv)
                if presents is not None:
                    presents.append((k.contiguous().numpy().tobytes(), list(k.shape),
                                     v.contiguous().numpy().tobytes(), list(v.shape)))
            return h.numpy(), presents

    def parameters(self):
        return [t for blk in self.blocks for t in blk.values()]

    def forward_train(self, x):
        """Autograd forward (no KV cache): (input leaf tensor, output tensor)."""
        torch = self.torch
        with torch.enable_grad():
            xin = torch.from_numpy(np.array(x, dtype=np.float32)).requires_grad_(True)
            h = xin
            for p in self.blocks:
                h, _, _ = self._block(p, h, None, None)
        return xin, h


class LlamaTrunk:
    """Llama-family decoder layers [a, b) (HF LlamaDecoderLayer, eval mode; model_type llama,
    qwen2, mistral without sliding window, plain rotary embedding) in float32 torch ops, with a
    KV cache [batch, kv_heads, past, head_dim]; the same interface as Gpt2Trunk."""

    SUFFIXES = ("input_layernorm.weight", "post_attention_layernorm.weight",
                "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                "mlp.down_proj.weight")

    def __init__(self, weights, config, layers):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F
        with open(config) as f:
            cfg = json.load(f)
        self.E, self.H = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        self.KV = int(cfg.get("num_key_value_heads") or self.H)
        self.D = int(cfg.get("head_dim") or self.E // self.H)
        self.n_positions = int(cfg.get("max_position_embeddings", 2048))
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        theta = float(cfg.get("rope_theta", 10000.0))
        self.qkv_bias = cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias"))
        n_layer = int(cfg["num_hidden_layers"])
        a, _, b = layers.partition(":")
        a = int(a) if a else 0
        b = int(b) if b else n_layer
        if not (0 <= a < b <= n_layer):
            raise ValueError(f"--llama-layers {layers}: need 0 <= a < b <= n_layer ({n_layer})")
        self.a, self.b = a, b
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.D, 2, dtype=torch.float32) / self.D))
        with open(weights, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            names = json.loads(f.read(hlen)).keys()
        prefix = "model." if any(k.startswith("model.layers.") for k in names) else ""
        sufs = list(self.SUFFIXES)
        if self.qkv_bias:
            sufs += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
        want = [f"{prefix}layers.{i}.{s}" for i in range(a, b) for s in sufs]
        got = read_safetensors_subset(weights, want)
        missing = [k for k in want if k not in got]
        if missing:
            raise ValueError(f"{weights}: missing tensors: {', '.join(missing[:6])}")
        self.blocks = [{s: torch.from_numpy(np.array(got[f"{prefix}layers.{i}.{s}"]))
                        .requires_grad_(True) for s in sufs} for i in range(a, b)]
        self.n_params = sum(t.numel() for blk in self.blocks for t in blk.values())

    def check(self, x_shape, past, use_cache):
        if len(x_shape) != 3 or x_shape[2] != self.E:
            raise ValueError(f"model 'trunk' expects [batch, seq, {self.E}], got {list(x_shape)}")
        L = self.b - self.a
        if past and len(past) != L:
            raise ValueError(f"model 'trunk' expects {L} past_key_values entries, got {len(past)}")
        plen = list(past[0].key_shape)[2] if past else 0
        for i, e in enumerate(past):
            for nm, shp in (("key", list(e.key_shape)), ("value", list(e.value_shape))):
                if shp != [x_shape[0], self.KV, plen, self.D]:
                    raise ValueError(f"past_key_values[{i}].{nm}_shape is {shp}, expected "
                                     f"[{x_shape[0]},{self.KV},{plen},{self.D}]")
        if plen + x_shape[1] > self.n_positions:
            raise ValueError(f"past {plen} + seq {x_shape[1]} exceeds {self.n_positions}")

    def _rms(self, x, w):
        return x * self.torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _block(self, p, x, past_k, past_v):
        torch, F = self.torch, self.F
        B, S, E = x.shape
        H, KV, D = self.H, self.KV, self.D
        P = past_k.shape[2] if past_k is not None else 0
        h = self._rms(x, p["input_layernorm.weight"])
        q = F.linear(h, p["self_attn.q_proj.weight"], p.get("self_attn.q_proj.bias"))
        k = F.linear(h, p["self_attn.k_proj.weight"], p.get("self_attn.k_proj.bias"))
        v = F.linear(h, p["self_attn.v_proj.weight"], p.get("self_attn.v_proj.bias"))
        q = q.view(B, S, H, D).transpose(1, 2)
        k = k.view(B, S, KV, D).transpose(1, 2)
        v = v.view(B, S, KV, D).transpose(1, 2)
        freqs = torch.outer(torch.arange(P, P + S, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()

        def rot(t):
            return torch.cat((-t[..., D // 2:], t[..., :D // 2]), dim=-1)
        q = q * cos + rot(q) * sin
        k = k * cos + rot(k) * sin
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        T = k.shape[2]
        kk = k.repeat_interleave(H // KV, dim=1)
        vv = v.repeat_interleave(H // KV, dim=1)
        scores = torch.matmul(q, kk.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        if S > 1:
            causal = torch.ones(S, T, dtype=torch.bool).tril(diagonal=T - S)
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        a = torch.matmul(torch.softmax(scores, dim=-1), vv).transpose(1, 2).reshape(B, S, H * D)
        x = F.linear(a, p["self_attn.o_proj.weight"]) + x
        h = self._rms(x, p["post_attention_layernorm.weight"])
        m = F.silu(F.linear(h, p["mlp.gate_proj.weight"])) * F.linear(h, p["mlp.up_proj.weight"])
        return F.linear(m, p["mlp.down_proj.weight"]) + x, k, v

    forward = Gpt2Trunk.forward
    parameters = Gpt2Trunk.parameters
    forward_train = Gpt2Trunk.forward_train


class Trainer:
    """Split training of one model: pending forwards and a torch optimizer."""

    def __init__(self, name, params, forward_train, optimizer, weight_decay):
        import torch
        self.torch, self.name, self.params = torch, name, list(params)
        self.forward_train = forward_train
        self.kind = optimizer
        if optimizer == "adamw":
            wd = 0.01 if weight_decay is None else weight_decay
            self.opt = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=wd)
        else:
            self.opt = torch.optim.SGD(self.params, lr=1e-3, weight_decay=weight_decay or 0.0)
        self.lock = threading.Lock()
        self.backwards = 0  # backward calls with a learning_rate since the last step
        self.param_storages = {p.storage().data_ptr() for p in self.params}

    def run_forward(self, x):
        """forward_train(x) -> (input, output, bytes of the tensors autograd saved for the
        backward, parameters excluded, each storage once, input and output included)."""
        saved = {}

        def pack(t):
            try:
                st = t.storage()
                if st.data_ptr() not in self.param_storages:
                    saved[st.data_ptr()] = st.nbytes()
            except Exception:  # noqa: BLE001 - accounting only
                pass
            return t
        with self.torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            xin, out = self.forward_train(x)
        for t in (xin, out):
            saved[t.storage().data_ptr()] = t.storage().nbytes()
        return xin, out, sum(saved.values())


class Models:
    """model_id -> compute. run() is blocking; kind() says how the aio server schedules it."""

    def __init__(self, weights, gpt2=None, optimizer="sgd", weight_decay=None, max_pending=64):
        self.mlp = build_mlp(weights)
        self.ids = ["identity", "scale", "sleep", "spin", "mlp"]
        self.trunk = gpt2
        if gpt2 is not None:
            self.ids.append("trunk")
        mlp_mod = self.mlp.module

        def mlp_train(x):
            import torch
            if x.shape[-1] != self.mlp.in_width:
                raise ValueError(f"model 'mlp' expects last dimension {self.mlp.in_width}, "
                                 f"got {x.shape[-1]}")
            with torch.enable_grad():
                xin = torch.from_numpy(np.array(x, dtype=np.float32)).requires_grad_(True)
                return xin, mlp_mod(xin)
        self.trainers = {"mlp": Trainer("mlp", mlp_mod.parameters(), mlp_train, optimizer,
                                        weight_decay)}
        if gpt2 is not None:
            self.trainers["trunk"] = Trainer("trunk", gpt2.parameters(), gpt2.forward_train,
                                             optimizer, weight_decay)
        self.pending = {}  # forward_id -> (model id, input leaf, output, saved bytes), in order
        self.pending_lock = threading.Lock()
        self.max_pending = max_pending
        self.next_id = 0

    def forward_train(self, mid, x, req):
        """Compute with training_mode=true -> (output numpy, forward_id)."""
        tr = self.trainers.get(mid)
        if tr is None:
            raise NotImplementedError(f"model '{mid}' has no backward: training_mode needs "
                                      f"one of {', '.join(self.trainers)}")
        if len(req.past_key_values) > 0 or (req.HasField("use_cache") and req.use_cache):
            raise ValueError("training_mode=true takes no past_key_values / use_cache")
        if mid == "trunk":
            self.trunk.check(x.shape, [], False)
        with tr.lock:
            xin, out, nbytes = tr.run_forward(x)
        with self.pending_lock:
            if req.HasField("forward_id") and req.forward_id:
                fid = req.forward_id
            else:
                self.next_id += 1
                fid = f"peer-{os.getpid()}-{self.next_id}"
            self.pending.pop(fid, None)
            self.pending[fid] = (mid, xin, out, nbytes)
            while len(self.pending) > self.max_pending:
                self.pending.pop(next(iter(self.pending)))
        return out.detach().numpy(), fid

    def backward(self, req):
        """ComputeBackward -> (grad_input numpy, forward_id)."""
        torch = self.trainers["mlp"].torch
        if req.HasField("model_id") and req.model_id and req.model_id not in self.trainers:
            if req.model_id not in self.ids:
                raise LookupError(f"unknown model '{req.model_id}'")
            raise NotImplementedError(f"model '{req.model_id}' has no backward")
        lr = req.learning_rate if req.HasField("learning_rate") else None
        if lr is not None and not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning_rate must be > 0 and finite, got {lr}")
        acc = req.accumulation_step if req.HasField("accumulation_step") else 1
        if acc < 1:
            raise ValueError(f"accumulation_step must be >= 1, got {acc}")
        with self.pending_lock:  # a refused request leaves the forward pending
            entry = self.pending.get(req.forward_id)
            if entry is None:
                raise LookupError(f"forward_id '{req.forward_id}' is unknown, expired or "
                                  "already used")
            mid, xin, out, _ = entry
            if req.HasField("model_id") and req.model_id and req.model_id != mid:
                raise ValueError(f"forward_id '{req.forward_id}' belongs to model '{mid}', "
                                 f"not '{req.model_id}'")
            shape = list(req.grad_output_shape)
            if shape != list(out.shape):
                raise ValueError(f"grad_output_shape {shape} does not match the forward's "
                                 f"output shape {list(out.shape)}")
            g = torch.from_numpy(decode_tensor(req.grad_output_data, shape, "float32").copy())
            del self.pending[req.forward_id]
        tr = self.trainers[mid]
        with tr.lock:
            out.backward(g)
            if lr is not None:
                tr.backwards += 1
                if tr.backwards >= acc:
                    for grp in tr.opt.param_groups:
                        grp["lr"] = lr
                    tr.opt.step()
                    tr.opt.zero_grad(set_to_none=True)
                    tr.backwards = 0
        return xin.grad.numpy(), req.forward_id

    def check(self, model_id, metadata):
        mid = model_id or "identity"
        if mid not in self.ids:
            raise LookupError(f"unknown model '{mid}' (have: {', '.join(self.ids)})")
        if mid == "scale":
            v = metadata.get("factor", "1")
            try:
                f = float(v)
            except ValueError:
                f = float("nan")
            if not np.isfinite(f):
                raise ValueError(f"metadata 'factor' must be a finite number, got '{v}'")
        if mid == "sleep":
            meta_ms(metadata, 100.0)
        if mid == "spin":
            meta_ms(metadata, 10.0)
        return mid

    def run(self, mid, x, metadata):
        if mid == "identity":
            return x
        if mid == "scale":
            return x * np.float32(float(metadata.get("factor", "1")))
        if mid == "sleep":
            time.sleep(meta_ms(metadata, 100.0) / 1e3)
            return x
        if mid == "spin":
            spin(meta_ms(metadata, 10.0))
            return x
        return self.mlp(x)

    def run_req(self, mid, x, metadata, req):
        """run() plus the KV cache: returns (output, presents or None)."""
        if req.HasField("training_mode") and req.training_mode:
            return self.forward_train(mid, x, req)
        if mid == "trunk":
            past = list(req.past_key_values)
            use_cache = req.HasField("use_cache") and req.use_cache
            self.trunk.check(x.shape, past, use_cache)
            return self.trunk.forward(x, past, use_cache)
        if len(req.past_key_values) > 0:
            raise ValueError(f"model '{mid}' keeps no KV cache: past_key_values must be empty")
        return self.run(mid, x, metadata), None


# ------------------------------------------------------------------ monitoring -----

class Monitor:
    def __init__(self):
        self.last_wall = time.monotonic()
        self.last_cpu = sum(os.times()[:2])
        self.lock = threading.Lock()

    def snapshot(self, pb):
        with self.lock:
            now, cpu = time.monotonic(), sum(os.times()[:2])
            dt = now - self.last_wall
            pct = 100.0 * (cpu - self.last_cpu) / dt if dt > 0 else 0.0
            self.last_wall, self.last_cpu = now, cpu
        rss_mb, total_mb = 0.0, 0.0
        try:
            with open("/proc/self/statm") as f:
                rss_mb = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
            total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        except (OSError, ValueError):
            pass
        return pb.MonitoringSnapshot(
            timestamp=time.time(), cpu_percent=pct, memory_mb=rss_mb,
            memory_percent=100.0 * rss_mb / total_mb if total_mb else 0.0, gpu_available=False)


# ------------------------------------------------------------------ service --------

class Service:
    """The RPC logic shared by both modes; each mode wraps it in its own handlers."""

    def __init__(self, args, pb, hpb):
        self.args, self.pb, self.hpb = args, pb, hpb
        gpt2 = None
        if args.gpt2_weights:
            gpt2 = Gpt2Trunk(args.gpt2_weights, args.gpt2_config, args.gpt2_layers)
            print(f"peer: trunk = gpt2 layers {gpt2.a}:{gpt2.b}, {gpt2.n_params} parameters",
                  file=sys.stderr, flush=True)
        elif args.llama_weights:
            gpt2 = LlamaTrunk(args.llama_weights, args.llama_config, args.llama_layers)
            print(f"peer: trunk = llama layers {gpt2.a}:{gpt2.b}, {gpt2.n_params} parameters",
                  file=sys.stderr, flush=True)
        self.models = Models(args.weights, gpt2, args.optimizer, args.weight_decay,
                             args.max_pending)
        self.monitor = Monitor()
        self.start = time.time()
        self.total = 0
        self.count_lock = threading.Lock()

    def count(self):
        with self.count_lock:
            self.total += 1

    def prepare(self, req):
        """Validate a ComputeRequest -> (model id, float32 input, metadata, dtype)."""
        md = dict(req.metadata)
        mid = self.models.check(req.model_id, md)
        dt = dtype_of(md)
        return mid, decode_tensor(req.data, list(req.shape), dt), md, dt

    def reply(self, req, out, dt, t0, presents=None):
        fid = None
        if isinstance(presents, str):  # a training forward: run_req returned its forward_id
            fid, presents = presents, None
        r = self.pb.ComputeResponse(data=encode_tensor(out, dt), shape=list(out.shape),
                                    compute_time_ms=(time.perf_counter() - t0) * 1e3)
        for kd, ks, vd, vs in presents or ():
            r.present_key_values.add(key_data=kd, key_shape=ks, value_data=vd, value_shape=vs)
        if req.HasField("request_id"):
            r.request_id = req.request_id
        if fid is not None:
            r.forward_id = fid
        elif req.HasField("forward_id"):
            r.forward_id = req.forward_id
        return r

    def backward(self, req):
        t0 = time.perf_counter()
        gin, fid = self.models.backward(req)
        return self.pb.BackwardResponse(grad_input_data=encode_tensor(gin, "float32"),
                                        grad_input_shape=list(gin.shape), forward_id=fid,
                                        backward_time_ms=(time.perf_counter() - t0) * 1e3)

    def health(self):
        return self.pb.HealthResponse(status="ok", message=f"peer-{self.args.mode} serving",
                                      version=VERSION, uptime_seconds=time.time() - self.start)

    def info(self):
        import torch
        r = self.pb.ServiceInfoResponse(
            service_name=f"splitserve-peer-{self.args.mode}", version=VERSION, device="cpu",
            uptime_seconds=time.time() - self.start, total_requests=self.total)
        r.custom_info["mode"] = self.args.mode
        r.custom_info["workers"] = str(self.args.workers)
        r.custom_info["torch_threads"] = str(torch.get_num_threads())
        r.custom_info["models"] = ",".join(self.models.ids)
        r.custom_info["optimizer"] = self.args.optimizer
        with self.models.pending_lock:
            r.custom_info["activations"] = str(len(self.models.pending))
            r.custom_info["activation_bytes"] = str(sum(e[3] for e in self.models.pending.values()))
        r.custom_info["threads"] = str(threading.active_count())
        r.custom_info["python"] = sys.version.split()[0]
        return r

    def interval(self, req):
        v = req.sampling_interval if req.HasField("sampling_interval") else 1.0
        return min(5.0, max(0.1, v))

    def grpc_health(self, req):
        H = self.hpb.HealthCheckResponse
        if req.service in ("", SERVICE):
            return H(status=H.SERVING)
        return None


def error_code(grpc, e):
    if isinstance(e, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(e, LookupError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def handlers(grpc, svc, mode):
    pb, hpb = svc.pb, svc.hpb
    uu = grpc.unary_unary_rpc_method_handler
    us = grpc.unary_stream_rpc_method_handler

    def ser(msg):
        return msg.SerializeToString()

    if mode == "sync":
        def compute(req, ctx):
            svc.count()
            t0 = time.perf_counter()
            try:
                mid, x, md, dt = svc.prepare(req)
                out, presents = svc.models.run_req(mid, x, md, req)
            except Exception as e:  # noqa: BLE001 - every failure becomes a status
                ctx.abort(error_code(grpc, e), str(e))
            return svc.reply(req, out, dt, t0, presents)

        def backward(req, ctx):
            svc.count()
            try:
                return svc.backward(req)
            except Exception as e:  # noqa: BLE001
                ctx.abort(error_code(grpc, e), str(e))

        def health(req, ctx):
            svc.count()
            return svc.health()

        def info(req, ctx):
            svc.count()
            return svc.info()

        def monitoring(req, ctx):
            iv = svc.interval(req)
            while ctx.is_active():
                yield pb.MonitoringSnapshotResponse(snapshot=svc.monitor.snapshot(pb))
                time.sleep(iv)

        def check(req, ctx):
            r = svc.grpc_health(req)
            if r is None:
                ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{req.service}'")
            return r
    else:
        pool = futures.ThreadPoolExecutor(max_workers=svc.args.workers)

        async def compute(req, ctx):
            svc.count()
            t0 = time.perf_counter()
            try:
                mid, x, md, dt = svc.prepare(req)
                presents = None
                training = req.HasField("training_mode") and req.training_mode
                if mid == "sleep" and not training:
                    await asyncio.sleep(meta_ms(md, 100.0) / 1e3)
                    out = x
                elif mid == "identity" and not training:
                    out = x
                else:
                    loop = asyncio.get_running_loop()
                    out, presents = await loop.run_in_executor(pool, svc.models.run_req,
                                                               mid, x, md, req)
            except Exception as e:  # noqa: BLE001
                await ctx.abort(error_code(grpc, e), str(e))
            return svc.reply(req, out, dt, t0, presents)

        async def backward(req, ctx):
            svc.count()
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(pool, svc.backward, req)
            except Exception as e:  # noqa: BLE001
                await ctx.abort(error_code(grpc, e), str(e))

        async def health(req, ctx):
            svc.count()
            return svc.health()

        async def info(req, ctx):
            svc.count()
            return svc.info()

        async def monitoring(req, ctx):
            iv = svc.interval(req)
            while True:
                yield pb.MonitoringSnapshotResponse(snapshot=svc.monitor.snapshot(pb))
                await asyncio.sleep(iv)

        async def check(req, ctx):
            r = svc.grpc_health(req)
            if r is None:
                await ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{req.service}'")
            return r

    compute_svc = grpc.method_handlers_generic_handler(SERVICE, {
        "Compute": uu(compute, request_deserializer=pb.ComputeRequest.FromString,
                      response_serializer=ser),
        "ComputeBackward": uu(backward, request_deserializer=pb.BackwardRequest.FromString,
                              response_serializer=ser),
        "HealthCheck": uu(health, request_deserializer=pb.HealthRequest.FromString,
                          response_serializer=ser),
        "GetServiceInfo": uu(info, request_deserializer=pb.ServiceInfoRequest.FromString,
                             response_serializer=ser),
        "StreamMonitoring": us(monitoring,
                               request_deserializer=pb.MonitoringStreamRequest.FromString,
                               response_serializer=ser),
    })
    health_svc = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": uu(check, request_deserializer=hpb.HealthCheckRequest.FromString,
                    response_serializer=ser),
    })
    return [compute_svc, health_svc]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["sync", "aio"], default="sync")
    ap.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (port 0: any)")
    ap.add_argument("--workers", type=int, default=10,
                    help="sync: gRPC thread pool size; aio: run_in_executor pool size (default 10)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--weights", help="mlp weights (.safetensors)")
    ap.add_argument("--gpt2-weights", help="serve model id 'trunk': a Hugging Face GPT-2 "
                    "checkpoint (.safetensors, keys [transformer.]h.{i}.*)")
    ap.add_argument("--gpt2-config", help="its config.json (default: config.json beside it)")
    ap.add_argument("--gpt2-layers", default="", help="trunk layers A:B (default: all)")
    ap.add_argument("--llama-weights", help="serve model id 'trunk': a Llama-family (llama, "
                    "qwen2) model.safetensors (keys [model.]layers.{i}.*; single file)")
    ap.add_argument("--llama-config", help="its config.json (default: config.json beside it)")
    ap.add_argument("--llama-layers", default="", help="trunk layers A:B (default: all)")
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                    help="split training: optimizer of ComputeBackward with learning_rate "
                    "(adamw: betas 0.9/0.999, eps 1e-8 as torch.optim.AdamW)")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="optimizer weight decay (default 0 for sgd, 0.01 for adamw)")
    ap.add_argument("--max-pending", type=int, default=64,
                    help="training forwards kept for their backward (oldest dropped; default 64)")
    ap.add_argument("--py-dir", default=os.environ.get(
        "SS_PY_DIR", os.path.join(here, "..", "..", "build", "py")),
        help="directory with compute_service_pb2.py and health_pb2.py (default: build/py)")
    args = ap.parse_args()
    if args.llama_weights and not args.llama_config:
        args.llama_config = os.path.join(os.path.dirname(os.path.abspath(args.llama_weights)),
                                         "config.json")
    if args.gpt2_weights and not args.gpt2_config:
        args.gpt2_config = os.path.join(os.path.dirname(os.path.abspath(args.gpt2_weights)),
                                        "config.json")

    sys.path.insert(0, os.path.abspath(args.py_dir))
    import grpc
    import compute_service_pb2 as pb
    import health_pb2 as hpb
    import torch
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    svc = Service(args, pb, hpb)
    opts = [("grpc.max_receive_message_length", MAX_MSG),
            ("grpc.max_send_message_length", MAX_MSG)]

    if args.mode == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=opts,
                             handlers=handlers(grpc, svc, "sync"))
        port = server.add_insecure_port(args.listen)
        if port == 0:
            sys.exit(f"cannot listen on {args.listen}")
        server.start()
        host = args.listen.rsplit(":", 1)[0]
        print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
        done = threading.Event()

        def stop(signum, frame):
            done.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not done.wait(0.5):
            pass
        server.stop(grace=2).wait()
        print(f"stopped; {svc.total} requests", file=sys.stderr, flush=True)
    else:
        async def serve():
            server = grpc.aio.server(options=opts, handlers=handlers(grpc, svc, "aio"))
            port = server.add_insecure_port(args.listen)
            if port == 0:
                sys.exit(f"cannot listen on {args.listen}")
            await server.start()
            host = args.listen.rsplit(":", 1)[0]
            print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for s in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(s, stop.set)
            await stop.wait()
            await server.stop(grace=2)
            print(f"stopped; {svc.total} requests", file=sys.stderr, flush=True)
        asyncio.run(serve())


if __name__ == "__main__":
    main()
