"""The gpt_neox kind (src/models/gpt_neox.c: Pythia, GPT-NeoX-20B) against an independent float64
PyTorch reference written here from Hugging Face's GPTNeoXLayer (modeling_gpt_neox.py, eval
mode), on small random checkpoints in Hugging Face layout:
    par   Pythia-like: parallel residual, rotary_pct 0.25 (4 of 16 values turn), exact gelu,
          F32, weights under gpt_neox., layers 1:3 of 3
    seq   sequential residual (use_parallel_residual false), rotary_pct 1 (whole heads),
          gelu_new, rotary_emb_base 1000, F16, no prefix, layers 0:3
    nob   attention_bias false, relu, transformers 5's names (partial_rotary_factor 0.5 and
          rope_theta inside rope_parameters), BF16, layers 0:2
The reference's fused query_key_value is read per head as [heads, 3, head_size] (q, k, v of a
head side by side), as HF does. Checked: prefill, client-cache decode (the presents too),
server sessions and batched decode steps, full fine-tuning (3 SGD steps: grad_input, every
weight's change in the checkpoint, the outputs after), LoRA (adapters with B != 0 on
query_key_value, dense, dense_h_to_4h, dense_4h_to_h; 3 AdamW steps: grad_input, the saved PEFT
adapters, the outputs after), PEFT's default target (query_key_value) for a fresh adapter,
compute=bf16 and int8 (loosely), and start-up refusals. Limits 1e-4 as the other suites.

Optional, like test_peft_crosscheck: with SS_PEFT_PYTHON naming a Python that has transformers
and peft, the same checkpoints load into transformers' GPTNeoXForCausalLM (float64), whose hidden
states after the trunk's layers must equal the server's, and an adapter the server trained and
saved must load with peft's PeftModel.from_pretrained and compute what the server computes.
Without it that case says SKIP and passes."""
import json
import math
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch

import sslib
import train_ref
import trunk_checks
from sslib import T, make_req, result, assert_alive

TOL = 1e-4
TMP = None
S = None
C = None
CK = None  # trunk_checks.Checks

SUFFIX = {  # short -> checkpoint module path (the four linear layers: LoRA's targets)
    "query_key_value": "attention.query_key_value", "dense": "attention.dense",
    "dense_h_to_4h": "mlp.dense_h_to_4h", "dense_4h_to_h": "mlp.dense_4h_to_h"}


class Config:
    def __init__(self, hidden, heads, inter, n_layer, max_pos=48, rotary_pct=0.25, base=10000.0,
                 parallel=True, act="gelu", eps=1e-5, attention_bias=True, v5=False):
        self.hidden, self.heads, self.inter, self.n_layer = hidden, heads, inter, n_layer
        self.max_pos, self.rotary_pct, self.base, self.parallel = max_pos, rotary_pct, base, parallel
        self.act, self.eps, self.attention_bias, self.v5 = act, eps, attention_bias, v5
        self.hs = hidden // heads
        self.rot = int(self.hs * rotary_pct)

    def json(self):
        d = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
             "hidden_size": self.hidden, "num_attention_heads": self.heads,
             "num_hidden_layers": self.n_layer, "intermediate_size": self.inter,
             "max_position_embeddings": self.max_pos, "layer_norm_eps": self.eps,
             "use_parallel_residual": self.parallel, "hidden_act": self.act,
             "attention_bias": self.attention_bias, "vocab_size": 50, "rope_scaling": None}
        if self.v5:
            d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.base,
                                    "partial_rotary_factor": self.rotary_pct}
            del d["rope_scaling"]
        else:
            d["rotary_pct"] = self.rotary_pct
            d["rotary_emb_base"] = self.base
        return d


CFGS = {
    "par": Config(64, 4, 128, 3),
    "seq": Config(48, 3, 80, 3, rotary_pct=1.0, base=1000.0, parallel=False, act="gelu_new",
                  eps=1e-6),
    "nob": Config(64, 2, 96, 2, rotary_pct=0.5, base=500.0, act="relu", attention_bias=False,
                  v5=True),
}
LAYOUT = {"par": ("F32", "gpt_neox.", (1, 3)), "seq": ("F16", "", (0, 3)),
          "nob": ("BF16", "gpt_neox.", (0, 2))}
MODELS = {}  # id -> (Trunk, (a, b), cfg)
PATHS = {}   # id -> (weights, config, stored {unprefixed: float32})
LORA = {}
FULL_OPT = train_ref.optim_defaults("sgd")


def tensor_shapes(cfg):
    E, I = cfg.hidden, cfg.inter
    s = {"input_layernorm.weight": (E,), "input_layernorm.bias": (E,),
         "post_attention_layernorm.weight": (E,), "post_attention_layernorm.bias": (E,),
         "attention.query_key_value.weight": (3 * E, E), "attention.dense.weight": (E, E),
         "mlp.dense_h_to_4h.weight": (I, E), "mlp.dense_h_to_4h.bias": (I,),
         "mlp.dense_4h_to_h.weight": (E, I), "mlp.dense_4h_to_h.bias": (E,)}
    if cfg.attention_bias:
        s["attention.query_key_value.bias"] = (3 * E,)
        s["attention.dense.bias"] = (E,)
    return s


def write_checkpoint(name, cfg, seed, storage, prefix, skip=(), override=None):
    g = np.random.default_rng(seed)
    w = {}
    for i in range(cfg.n_layer):
        for s, shp in sorted(tensor_shapes(cfg).items()):
            if s.endswith("layernorm.weight"):
                a = 1.0 + 0.2 * g.standard_normal(shp)
            elif s.endswith("bias"):
                a = 0.1 * g.standard_normal(shp)
            else:
                a = 0.8 / math.sqrt(shp[1]) * g.standard_normal(shp)
            w["layers.%d.%s" % (i, s)] = a.astype(np.float32)
        # buffers of older checkpoints the server ignores
        w["layers.%d.attention.rotary_emb.inv_freq" % i] = np.ones(cfg.rot // 2 or 1, np.float32)
    w["embed_in.weight"] = (0.02 * g.standard_normal((50, cfg.hidden))).astype(np.float32)
    for k in skip:
        w.pop(k)
    wpath = os.path.join(TMP, name + ".safetensors")
    cpath = os.path.join(TMP, name + ".json")
    stored = sslib.write_safetensors(wpath, {prefix + k: (v, storage) for k, v in w.items()},
                                     metadata={"format": "pt"})
    d = cfg.json()
    d.update(override or {})
    with open(cpath, "w") as f:
        json.dump(d, f)
    return wpath, cpath, {k[len(prefix):]: v for k, v in stored.items()}


# ------------------------------------------------------------------ the reference ----

def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(torch.nn.Module):
    """HF GPTNeoXLayer in float64 (eval mode), optionally with LoRA adapters {short: (A, B)}."""

    def __init__(self, cfg, stored, i, lora=None, scale=1.0):
        super().__init__()
        self.cfg, self.scale = cfg, scale
        E, I = cfg.hidden, cfg.inter

        def t(s):
            return torch.from_numpy(np.asarray(stored["layers.%d.%s" % (i, s)], np.float64))

        self.ln1 = torch.nn.LayerNorm(E, eps=cfg.eps).double()
        self.ln2 = torch.nn.LayerNorm(E, eps=cfg.eps).double()
        dims = {"query_key_value": (E, 3 * E), "dense": (E, E), "dense_h_to_4h": (E, I),
                "dense_4h_to_h": (I, E)}
        self.lin = torch.nn.ModuleDict()
        with torch.no_grad():
            for ln, name in ((self.ln1, "input_layernorm"), (self.ln2, "post_attention_layernorm")):
                ln.weight.copy_(t(name + ".weight"))
                ln.bias.copy_(t(name + ".bias"))
            for short, (fin, fout) in dims.items():
                bias = cfg.attention_bias or short.startswith("dense_")
                m = torch.nn.Linear(fin, fout, bias=bias).double()
                m.weight.copy_(t(SUFFIX[short] + ".weight"))
                if bias:
                    m.bias.copy_(t(SUFFIX[short] + ".bias"))
                self.lin[short] = m
        self.lora = torch.nn.ParameterDict()
        for short, (A, B) in (lora or {}).items():
            self.lora[short + "_A"] = torch.nn.Parameter(torch.from_numpy(np.asarray(A, np.float64)))
            self.lora[short + "_B"] = torch.nn.Parameter(torch.from_numpy(np.asarray(B, np.float64)))

    def linear(self, short, x):
        y = self.lin[short](x)
        if short + "_A" in self.lora:
            y = y + self.scale * (x @ self.lora[short + "_A"].T) @ self.lora[short + "_B"].T
        return y

    def act(self, x):
        a = self.cfg.act
        if a == "gelu":
            return torch.nn.functional.gelu(x)
        if a == "relu":
            return torch.relu(x)
        return torch.nn.functional.gelu(x, approximate="tanh")

    def rope(self, x, pos):
        cfg = self.cfg
        r = cfg.rot
        if r == 0:
            return x
        inv = 1.0 / (cfg.base ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
        f = pos[:, None].double() * inv[None, :]
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        xr, xp = x[..., :r], x[..., r:]
        return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)

    def forward(self, x, past=None):
        cfg = self.cfg
        Bn, Tn, E = x.shape
        H, D = cfg.heads, cfg.hs
        qkv = self.linear("query_key_value", self.ln1(x))
        qkv = qkv.view(Bn, Tn, H, 3 * D).transpose(1, 2)  # [B, H, T, 3D]: per head q, k, v
        q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
        P = past[0].shape[2] if past is not None else 0
        pos = torch.arange(P, P + Tn)
        q, k = self.rope(q, pos), self.rope(k, pos)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        s = (q @ k.transpose(-1, -2)) * D ** -0.5
        mask = torch.arange(P + Tn)[None, :] > (P + torch.arange(Tn))[:, None]
        s = s.masked_fill(mask, float("-inf"))
        o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(Bn, Tn, E)
        a = self.linear("dense", o)
        if cfg.parallel:
            y = x + a + self.linear("dense_4h_to_h", self.act(self.linear("dense_h_to_4h",
                                                                           self.ln2(x))))
        else:
            h = x + a
            y = h + self.linear("dense_4h_to_h", self.act(self.linear("dense_h_to_4h",
                                                                       self.ln2(h))))
        return y, (k, v)


class Trunk:
    def __init__(self, cfg, stored, a, b, lora=None, scale=1.0):
        self.blocks = [Block(cfg, stored, i, (lora or {}).get(i), scale) for i in range(a, b)]

    @torch.no_grad()
    def __call__(self, x, past=None):
        h = torch.from_numpy(np.asarray(x, np.float64))
        pres = []
        for i, blk in enumerate(self.blocks):
            p = None
            if past is not None:
                p = tuple(torch.from_numpy(np.asarray(t, np.float64)) for t in past[i])
            h, pr = blk(h, p)
            pres.append((pr[0].numpy(), pr[1].numpy()))
        return h.numpy(), pres


def _trunk_fn(blocks):
    def f(x):
        for blk in blocks:
            x, _ = blk(x)
        return x
    return f


def train_full(cfg, stored, a, b, xs, grads, opt, lr):
    blocks = [Block(cfg, stored, i) for i in range(a, b)]
    keys = []
    for i, blk in zip(range(a, b), blocks):
        for short, path in SUFFIX.items():
            keys.append(("layers.%d.%s.weight" % (i, path), blk.lin[short].weight))
            if blk.lin[short].bias is not None:
                keys.append(("layers.%d.%s.bias" % (i, path), blk.lin[short].bias))
        for ln, name in ((blk.ln1, "input_layernorm"), (blk.ln2, "post_attention_layernorm")):
            keys += [("layers.%d.%s.weight" % (i, name), ln.weight),
                     ("layers.%d.%s.bias" % (i, name), ln.bias)]
    gin = train_ref._run(_trunk_fn(blocks), [p for _, p in keys], xs, grads, opt, lr, 1)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


def train_lora(cfg, stored, a, b, adapters, scale, xs, grads, opt, lr):
    blocks = [Block(cfg, stored, i, adapters.get(i), scale) for i in range(a, b)]
    keys = []
    for i, blk in zip(range(a, b), blocks):
        for p in blk.parameters():
            p.requires_grad_(False)
        for short in SUFFIX:
            if short + "_A" in blk.lora:
                for ab in "AB":
                    prm = blk.lora[short + "_" + ab]
                    prm.requires_grad_(True)
                    keys.append(("base_model.model.gpt_neox.layers.%d.%s.lora_%s.weight"
                                 % (i, SUFFIX[short], ab), prm))
    gin = train_ref._run(_trunk_fn(blocks), [p for _, p in keys], xs, grads, opt, lr, 1)
    return gin, {k: p.detach().numpy().copy() for k, p in keys}


# ------------------------------------------------------------------ the server ----

def setup():
    global TMP, S, C, CK
    TMP = tempfile.mkdtemp(prefix="ss-neox-")
    args = ["--workers", "2"]
    for n, (mid, cfg) in enumerate(CFGS.items()):
        storage, prefix, layers = LAYOUT[mid]
        w, c, stored = write_checkpoint(mid, cfg, 11 + n, storage, prefix)
        PATHS[mid] = (w, c, stored)
        MODELS[mid] = (Trunk(cfg, stored, *layers), layers, cfg)
        spec = "%s=gpt_neox,weights=%s,config=%s,layers=%d:%d" % ((mid, w, c) + layers)
        args += ["--model", spec]
        args += ["--model", spec.replace(mid + "=", mid + "b=", 1)
                 + ",max_batch_rows=64,batch_delay_us=20000"]
        args += ["--model", spec.replace(mid + "=", "t" + mid + "=", 1)
                 + train_ref.spec_keys(FULL_OPT)
                 + ",save=" + os.path.join(TMP, "t" + mid + ".ckpt.safetensors")]
        # LoRA from an adapter written here: all four targets, B != 0
        g = np.random.default_rng(7 + n)
        ad_dir = os.path.join(TMP, mid + ".adapter")
        os.makedirs(ad_dir)
        r, alpha = 4, 8.0
        blk = Block(cfg, stored, layers[0])
        adapters, tensors = {}, {}
        for layer in range(*layers):
            adapters[layer] = {}
            for short in SUFFIX:
                lin = blk.lin[short]
                A = (g.uniform(-1, 1, (r, lin.in_features))
                     / np.sqrt(lin.in_features)).astype(np.float32)
                B = (0.05 * g.standard_normal((lin.out_features, r))).astype(np.float32)
                adapters[layer][short] = (A, B)
                base = "base_model.model.gpt_neox.layers.%d.%s" % (layer, SUFFIX[short])
                tensors[base + ".lora_A.weight"] = A
                tensors[base + ".lora_B.weight"] = B
        sslib.write_safetensors(os.path.join(ad_dir, "adapter_model.safetensors"), tensors)
        with open(os.path.join(ad_dir, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                       "target_modules": list(SUFFIX)}, f)
        LORA[mid] = dict(adapters=adapters, scale=alpha / r,
                         out=os.path.join(TMP, mid + ".lora.out"))
        args += ["--model", spec.replace(mid + "=", "l" + mid + "=", 1)
                 + ",adapter=%s,optimizer=adamw,save=%s" % (ad_dir, LORA[mid]["out"])]
    # the par checkpoint again, sharded (index + 3 shards, config.json beside them), as NeoX-20B
    # and the larger Pythias ship: weights=DIR, no config=
    shard_dir = os.path.join(TMP, "par.sharded")
    os.makedirs(shard_dir)
    sslib.write_sharded(shard_dir, {LAYOUT["par"][1] + k: (v, "F32")
                                    for k, v in PATHS["par"][2].items()})
    shutil.copy(PATHS["par"][1], os.path.join(shard_dir, "config.json"))
    args += ["--model", "spar=gpt_neox,weights=%s,layers=%d:%d" % ((shard_dir,) + LAYOUT["par"][2])]
    # PEFT's default target, fresh adapters; compute=bf16
    w, c, _ = PATHS["par"]
    args += ["--model", "dpar=gpt_neox,weights=%s,config=%s,lora_rank=2,save=%s"
             % (w, c, os.path.join(TMP, "dpar.out"))]
    for dt in ("bf16", "int8"):
        args += ["--model", "%spar=gpt_neox,weights=%s,config=%s,layers=1:3,compute=%s"
                 % (dt[0], w, c, dt)]
    S = sslib.Server(*args)
    C = sslib.connect(S)
    CK = trunk_checks.Checks(C, TOL)


def teardown():
    CK.finish(S, TMP, "max errors")


def _call(*args, **kw):
    return CK.call(*args, **kw)


def _close(*args, **kw):
    return CK.close(*args, **kw)


_x = trunk_checks.x_of


def test_describe_in_info():
    info = C.info(sslib.pb.ServiceInfoRequest(), timeout=T(5))
    blob = " ".join("%s=%s" % kv for kv in info.custom_info.items())
    for w in ("gpt_neox layers 1:3 of 3 (hidden 64, 4 heads, rotary 4 of 16, parallel residual)",
              "rotary 16 of 16, sequential residual", "rotary 16 of 32"):
        assert w in blob, (w, blob)


def test_prefill():
    CK.prefill(MODELS)


def test_sharded_checkpoint():
    """weights=DIR of a sharded checkpoint (index + shards, shared with every trunk through
    models/ckpt.c) serves exactly what the single file does."""
    cfg = MODELS["par"][2]
    x = _x(cfg, 2, 7, seed=5)
    one = result(_call("par", x))
    sharded = result(_call("spar", x))
    assert np.array_equal(one, sharded), float(np.max(np.abs(one - sharded)))
    CK.close(sharded.reshape(2, 7, -1), MODELS["par"][0](x)[0], "sharded", key="par sharded")


def test_partial_rotary_matters():
    """The reference itself: turning all of each head (or none) changes the result, so the
    partial rotary is what the prefill checks pin down."""
    mid = "par"
    ref, (a, b), cfg = MODELS[mid]
    x = _x(cfg, 1, 9, seed=2)
    y, _ = ref(x)
    for pct in (0.0, 1.0):
        other = Config(cfg.hidden, cfg.heads, cfg.inter, cfg.n_layer, rotary_pct=pct)
        y2, _ = Trunk(other, PATHS[mid][2], a, b)(x)
        assert np.max(np.abs(y - y2)) > 1e-3, pct


def test_client_cache_decode():
    CK.client_cache(MODELS)


def test_sessions_and_batched_steps():
    CK.sessions_and_batched(MODELS)


def test_compute_dtypes():
    """compute=bf16 and int8 come through the matmul entry point (ss_op_linear_forward ->
    matmul_w): close to the f32 reference, not exact (the README's bounds: bf16 under 0.4%,
    int8 under 2% of the largest output)."""
    ref, _, cfg = MODELS["par"]
    for dt, bound in (("bf16", 4e-3), ("int8", 2e-2)):
        for batch, seq in ((2, 11), (1, 1)):
            x = _x(cfg, batch, seq, seed=3)
            y, _ = ref(x)
            got = result(_call(dt[0] + "par", x)).reshape(y.shape)
            err = float(np.max(np.abs(got - y)) / np.max(np.abs(y)))
            assert err < bound, (dt, batch, seq, err)
            CK.worst["par %s (rel)" % dt] = max(CK.worst.get("par %s (rel)" % dt, 0.0), err)


def test_train_full():
    """3 SGD steps vs torch autograd: grad_input of every call, every weight's change in the
    checkpoint within 1e-4 relative, and the outputs of the trained trunk."""
    done = {}
    lr = 1e-3
    for mid, (ref, (a, b), cfg) in MODELS.items():
        gins, xs, grads = CK.play("t" + mid, cfg, lr, 3, seed=11, shape=(2, 7))
        rg, rw = train_full(cfg, PATHS[mid][2], a, b, xs, grads, FULL_OPT, lr)
        for i, (got, want) in enumerate(zip(gins, rg)):
            CK.rel(got, want, "%s call %d grad_input" % (mid, i), mid + " train grad_input (rel)")
        done[mid] = rw
        trained = dict(PATHS[mid][2])
        trained.update(rw)
        x = _x(cfg, 1, 9, seed=4)
        want, _ = Trunk(cfg, trained, a, b)(x)
        _close(result(_call("t" + mid, x)).reshape(want.shape), want,
               mid + " output after 3 steps", key=mid + " trained output")
    S.checkpoint(["t" + m for m in done])
    for mid, rw in done.items():
        prefix = LAYOUT[mid][1]
        got = train_ref.read_safetensors(os.path.join(TMP, "t" + mid + ".ckpt.safetensors"))
        assert float(got["optimizer.step"][0]) == 3.0
        names = [k for k in got if not k.startswith("optimizer.")]
        assert sorted(names) == sorted(prefix + k for k in rw), sorted(
            set(names) ^ set(prefix + k for k in rw))
        init = PATHS[mid][2]
        for k, v in rw.items():
            w0 = np.asarray(init[k], np.float64)
            assert np.max(np.abs(v - w0)) > 0, "%s %s did not train" % (mid, k)
            CK.rel(got[prefix + k] - w0, v - w0, "t%s %s change after 3 steps" % (mid, k),
                 mid + " train weight change (rel)")


def test_lora():
    """Adapters on all four linear layers (B != 0) after 3 AdamW steps vs a PyTorch LoRA:
    grad_input, the saved PEFT adapters, the outputs."""
    opt = train_ref.optim_defaults("adamw")
    lr = 1e-2
    for mid, (ref, (a, b), cfg) in MODELS.items():
        case = LORA[mid]
        gins, xs, grads = CK.play("l" + mid, cfg, lr, 3, seed=21)
        rg, rw = train_lora(cfg, PATHS[mid][2], a, b, case["adapters"], case["scale"], xs,
                            grads, opt, lr)
        for i, (got, want) in enumerate(zip(gins, rg)):
            CK.rel(got, want, "l%s call %d grad_input" % (mid, i), mid + " lora grad_input (rel)")
        case["rw"] = rw
    S.checkpoint(["l" + m for m in MODELS])
    for mid, (ref, (a, b), cfg) in MODELS.items():
        case = LORA[mid]
        got = train_ref.read_safetensors(os.path.join(case["out"], "adapter_model.safetensors"))
        assert set(got) == set(case["rw"]), sorted(set(got) ^ set(case["rw"]))
        for k, v in case["rw"].items():
            CK.rel(got[k], v, "l%s %s after 3 steps" % (mid, k), mid + " lora adapters (rel)")
        trained = {layer: {short: (got["base_model.model.gpt_neox.layers.%d.%s.lora_A.weight"
                                       % (layer, SUFFIX[short])],
                                   got["base_model.model.gpt_neox.layers.%d.%s.lora_B.weight"
                                       % (layer, SUFFIX[short])])
                           for short in SUFFIX} for layer in range(a, b)}
        x = _x(cfg, 1, 7, seed=3)
        want, _ = Trunk(cfg, PATHS[mid][2], a, b, trained, case["scale"])(x)
        _close(result(_call("l" + mid, x)).reshape(want.shape), want, "l%s after training" % mid,
               key=mid + " lora output")


def test_lora_default_target():
    """lora_rank alone: PEFT's default target for gpt_neox (query_key_value), fresh adapters
    (B = 0: the trunk's own output); the saved directory names it."""
    ref, _, cfg = MODELS["par"]
    x = _x(cfg, 1, 5, seed=9)
    full = Trunk(cfg, PATHS["par"][2], 0, 3)
    y, _ = full(x)
    _close(result(_call("dpar", x)).reshape(y.shape), y, "dpar (B = 0)")
    S.checkpoint(["dpar"])
    with open(os.path.join(TMP, "dpar.out", "adapter_config.json")) as f:
        ac = json.load(f)
    assert ac["target_modules"] == ["query_key_value"], ac
    got = train_ref.read_safetensors(os.path.join(TMP, "dpar.out", "adapter_model.safetensors"))
    assert sorted(got) == sorted("base_model.model.gpt_neox.layers.%d.attention.query_key_value"
                                 ".lora_%s.weight" % (i, ab) for i in range(3) for ab in "AB"), got


def test_startup_refusals():
    cfg = CFGS["par"]
    w, _, _ = PATHS["par"]
    _, c, _ = write_checkpoint("bad1", cfg, 1, "F32", "", override={"model_type": "gpt2"})
    sslib.model_refused("x=gpt_neox,weights=%s,config=%s" % (w, c), "model_type 'gpt2'",
                        "gpt_neox")
    _, c, _ = write_checkpoint("bad2", cfg, 1, "F32", "", override={"rotary_pct": 0.1875})
    sslib.model_refused("x=gpt_neox,weights=%s,config=%s" % (w, c), "rotary", "even")
    _, c, _ = write_checkpoint("bad3", cfg, 1, "F32", "", override={"hidden_act": "swish"})
    sslib.model_refused("x=gpt_neox,weights=%s,config=%s" % (w, c), "hidden_act 'swish'")
    _, c, _ = write_checkpoint("bad4", cfg, 1, "F32", "",
                               override={"rope_scaling": {"type": "dynamic", "factor": 2.0}})
    sslib.model_refused("x=gpt_neox,weights=%s,config=%s" % (w, c), "rope_scaling")
    w5, c5, _ = write_checkpoint("miss", cfg, 1, "F32", "gpt_neox.",
                                 skip=("layers.1.mlp.dense_4h_to_h.bias",))
    sslib.model_refused("x=gpt_neox,weights=%s,config=%s" % (w5, c5), "missing",
                        "gpt_neox.layers.1.mlp.dense_4h_to_h.bias")
    sslib.model_refused("x=gpt_neox,weights=%s,config=%s,lora_rank=2,lora_targets=c_attn"
                        % (w, PATHS["par"][1]), "c_attn", "query_key_value")
    assert_alive(C)


HF_CHECK = r'''
import json, sys
import numpy as np, torch
from transformers import GPTNeoXForCausalLM
d = json.load(open(sys.argv[1]))
m = GPTNeoXForCausalLM.from_pretrained(d["model_dir"], torch_dtype=torch.float64).eval()
x = torch.tensor(np.load(d["x"]), dtype=torch.float64)
out, n = {}, 0
with torch.no_grad():  # hidden_states[b]: after layer b - 1, before the final norm (b < n_layer)
    out["base"] = m.gpt_neox(inputs_embeds=x, output_hidden_states=True).hidden_states[d["b"]]
    if d["adapter_dir"]:
        from peft import PeftModel
        pm = PeftModel.from_pretrained(m, d["adapter_dir"]).eval()
        n = sum(1 for k in pm.state_dict() if "lora_" in k)
        out["lora"] = pm.base_model.model.gpt_neox(inputs_embeds=x,
                                                   output_hidden_states=True).hidden_states[d["b"]]
np.savez(d["out"], **{k: v.numpy() for k, v in out.items()})
print(json.dumps({"n": n}))
'''


def test_transformers_crosscheck():
    """The par and seq checkpoints in transformers' GPTNeoXForCausalLM (layers 0:2 of 3), and a
    LoRA adapter on all four targets, trained here 3 AdamW steps, through peft."""
    py = os.environ.get("SS_PEFT_PYTHON", "")
    if not py:
        print("  SKIP: set SS_PEFT_PYTHON to a Python with transformers and peft to run it")
        return
    for mid in ("par", "seq"):
        cfg = CFGS[mid]
        d = os.path.join(TMP, "hf-" + mid)
        os.makedirs(d)
        shutil.copy(PATHS[mid][0], os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg.json(), f)
        out = os.path.join(TMP, "hf-" + mid + ".lora")
        srv = sslib.Server("--workers", "1", "--model", "hb=gpt_neox,weights=%s,layers=0:2" % d,
                           "--model", "hl=gpt_neox,weights=%s,layers=0:2,lora_rank=4,"
                           "lora_alpha=8,lora_targets=query_key_value,dense,dense_h_to_4h,"
                           "dense_4h_to_h,optimizer=adamw,save=%s" % (d, out))
        conn = sslib.connect(srv)
        try:
            CK.play("hl", cfg, 1e-2, 3, seed=5, c=conn)
            x = _x(cfg, 2, 9, seed=6)
            base = result(conn.compute(make_req(x, model="hb"), timeout=T(20))).reshape(x.shape)
            lora = result(conn.compute(make_req(x, model="hl"), timeout=T(20))).reshape(x.shape)
        finally:
            conn.close()
            srv.stop_ok()  # drain writes save=DIR
        np.save(os.path.join(TMP, "hf-x.npy"), x)
        job = {"model_dir": d, "adapter_dir": out, "x": os.path.join(TMP, "hf-x.npy"),
               "out": os.path.join(TMP, "hf-y.npz"), "b": 2}
        with open(os.path.join(TMP, "hf-job.json"), "w") as f:
            json.dump(job, f)
        p = subprocess.run([py, "-c", HF_CHECK, os.path.join(TMP, "hf-job.json")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=T(300))
        text = p.stdout.decode("utf-8", "replace")
        assert p.returncode == 0, text[-3000:]
        n = json.loads(text.strip().splitlines()[-1])["n"]
        assert n == 2 * 4 * 2, n  # layers x targets x (A, B)
        want = np.load(job["out"])
        _close(base, want["base"], mid + " vs transformers", key=mid + " vs transformers")
        _close(lora, want["lora"], mid + " LoRA vs peft", key=mid + " LoRA vs peft")
        assert float(np.max(np.abs(want["lora"] - want["base"]))) > 1e-3
        y, _ = Trunk(cfg, PATHS[mid][2], 0, 2)(x)
        _close(want["base"], y, mid + " transformers vs this file's reference")


if __name__ == "__main__":
    sslib.main(globals())
