#!/usr/bin/python3
"""Split LoRA fine-tuning with splitserve: a Qwen2-shaped trunk, its LoRA adapters trained there.

    client: tokens [B,S] -> bottom = embedding (V -> 64)                    -> h [B,S,64]
    server: h -> trunk  = 2 Qwen2 decoder layers (hidden 64, 4 heads, 2 KV heads, frozen)
                          + LoRA (r 4, alpha 8) on q_proj and v_proj, served by splitserve's
                          `llama` kind                                       -> y [B,S,64]
    client: y -> top    = final RMSNorm + lm_head (64 -> V) -> logits -> next-token cross-entropy

Per batch: bottom forward -> Compute(training_mode=true) -> top forward, loss, backward on the
top -> ComputeBackward(dL/dy, forward_id, learning_rate) -> grad_input = dL/dh -> bottom backward
-> the client's optimizer steps bottom and top (the server steps the adapters itself; the trunk's
own weights stay frozen).

The trunk is a random Qwen2-shaped checkpoint written by this script in Hugging Face layout
(DIR/model.safetensors + DIR/config.json, model_type qwen2). Both sides start from the same
adapters: the script writes a PEFT adapter (adapter_model.safetensors + adapter_config.json; A
seeded uniform(-1/sqrt(in), 1/sqrt(in)) as PEFT's kaiming init, B zero) and the server loads it
with adapter=DIR. The same model is trained in one PyTorch process (float32, same init, same
batches, same optimizer); both loss curves are printed side by side. Exit code 0 when they match
within --tol (relative, per step) and the adapters the server saves on drain match the local ones,
1 otherwise or on any error.

The task: learn the next token of a fixed random sequence (vocab 16, length 64, cyclic), from
windows of 16 tokens at seeded random offsets.

Run from the repository after the build:  /usr/bin/python3 examples/split_training_lora/train.py
Environment: SS_BIN_DIR (directory with splitserve; default <repo>/build/bin), SS_PY_DIR
(generated compute_service_pb2.py; default <repo>/build/py).
"""
import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# the server wrapper, the gRPC trunk client and the safetensors helpers of the MLP example
# (examples/split_training/train.py), loaded under their own module name
_spec = importlib.util.spec_from_file_location(
    "split_training_example", os.path.join(HERE, "..", "split_training", "train.py"))
_mlp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mlp)
Splitserve, Trunk = _mlp.Splitserve, _mlp.Trunk
read_safetensors, write_safetensors = _mlp.read_safetensors, _mlp.write_safetensors

VOCAB, HIDDEN, HEADS, KV_HEADS, INTER, LAYERS = 16, 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // HEADS
EPS, THETA = 1e-6, 10000.0
SEQ_LEN, WINDOW = 64, 16
RANK, ALPHA, TARGETS = 4, 8.0, ("q_proj", "v_proj")
PROJ = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj"}


# ------------------------------------------------------------------------ checkpoint ----

def random_checkpoint(seed):
    """A random Qwen2-shaped checkpoint {HF key: float32} (q/k/v biases, untied lm_head)."""
    g = np.random.default_rng(seed)
    Q, KV = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = {"self_attn.q_proj": (Q, HIDDEN), "self_attn.k_proj": (KV, HIDDEN),
              "self_attn.v_proj": (KV, HIDDEN), "self_attn.o_proj": (HIDDEN, Q),
              "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
              "mlp.down_proj": (HIDDEN, INTER)}
    w = {}
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        for name, shp in shapes.items():
            w[p + name + ".weight"] = 0.8 / math.sqrt(shp[1]) * g.standard_normal(shp)
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                w[p + name + ".bias"] = 0.1 * g.standard_normal(shp[0])
        w[p + "input_layernorm.weight"] = 1.0 + 0.1 * g.standard_normal(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = 1.0 + 0.1 * g.standard_normal(HIDDEN)
    w["model.embed_tokens.weight"] = g.standard_normal((VOCAB, HIDDEN))
    w["model.norm.weight"] = np.ones(HIDDEN)
    w["lm_head.weight"] = 1.0 / math.sqrt(HIDDEN) * g.standard_normal((VOCAB, HIDDEN))
    return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in w.items()}


def write_checkpoint(d, w):
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "model.safetensors"), w)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": VOCAB,
           "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
           "intermediate_size": INTER, "num_hidden_layers": LAYERS,
           "max_position_embeddings": 128, "rms_norm_eps": EPS, "rope_theta": THETA,
           "hidden_act": "silu", "use_sliding_window": False, "sliding_window": 4096,
           "tie_word_embeddings": False, "torch_dtype": "float32"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return os.path.join(d, "config.json")


def lora_key(layer, short, ab):
    return "base_model.model.model.layers.%d.%s.lora_%s.weight" % (layer, PROJ[short], ab)


def initial_adapters(w, seed):
    """{PEFT key: tensor}: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5))),
    B = 0."""
    g = np.random.default_rng(seed)
    ad = {}
    for i in range(LAYERS):
        for short in TARGETS:
            out, inp = w["model.layers.%d.%s.weight" % (i, PROJ[short])].shape
            A = g.uniform(-1.0, 1.0, (RANK, inp)) / math.sqrt(inp)
            ad[lora_key(i, short, "A")] = torch.from_numpy(A.astype(np.float32))
            ad[lora_key(i, short, "B")] = torch.zeros(out, RANK)
    return ad


def write_adapter(d, ad):
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), ad)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
                   "lora_dropout": 0.0, "bias": "none", "target_modules": list(TARGETS)}, f,
                  indent=2)


# ------------------------------------------------------------------------ model ---------

class RMSNorm(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.weight = torch.nn.Parameter(w.clone())

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Qwen2Layer(torch.nn.Module):
    """One Qwen2 decoder layer (HF Qwen2DecoderLayer, eval mode), frozen, + LoRA on TARGETS."""

    def __init__(self, w, ad, i):
        super().__init__()
        t = lambda k: w["model.layers.%d.%s" % (i, k)].clone()  # noqa: E731
        self.norm1 = RMSNorm(t("input_layernorm.weight"))
        self.norm2 = RMSNorm(t("post_attention_layernorm.weight"))
        self.proj = torch.nn.ModuleDict()
        for short, path in PROJ.items():
            W = t(path + ".weight")
            bias = short in ("q_proj", "k_proj", "v_proj")
            lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=bias)
            with torch.no_grad():
                lin.weight.copy_(W)
                if bias:
                    lin.bias.copy_(t(path + ".bias"))
            self.proj[short] = lin
        for p in self.parameters():
            p.requires_grad_(False)  # the trunk is frozen: only the adapters train
        self.lora = torch.nn.ParameterDict()
        for short in TARGETS:
            for ab in "AB":
                self.lora[short + "_" + ab] = torch.nn.Parameter(ad[lora_key(i, short, ab)].clone())
        inv = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
        self.register_buffer("inv_freq", inv)

    def p(self, short, x):
        y = self.proj[short](x)
        if short + "_A" in self.lora:
            y = y + (ALPHA / RANK) * (x @ self.lora[short + "_A"].T) @ self.lora[short + "_B"].T
        return y

    def forward(self, x):
        B, S, _ = x.shape
        n1 = self.norm1(x)
        q = self.p("q_proj", n1).view(B, S, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.p("k_proj", n1).view(B, S, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.p("v_proj", n1).view(B, S, KV_HEADS, HEAD_DIM).transpose(1, 2)
        freqs = torch.outer(torch.arange(S, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = HEADS // KV_HEADS  # GQA: repeat_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        a = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, S, HEADS * HEAD_DIM)
        h = x + self.p("o_proj", a)
        n2 = self.norm2(h)
        return h + self.p("down_proj", torch.nn.functional.silu(self.p("gate_proj", n2))
                          * self.p("up_proj", n2))


class Top(torch.nn.Module):
    """Final RMSNorm + lm_head."""

    def __init__(self, w):
        super().__init__()
        self.norm = RMSNorm(w["model.norm.weight"])
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(w["lm_head.weight"])

    def forward(self, y):
        return self.lm_head(self.norm(y))


def build_client(w):
    bottom = torch.nn.Embedding(VOCAB, HIDDEN)
    with torch.no_grad():
        bottom.weight.copy_(w["model.embed_tokens.weight"])
    return bottom, Top(w)


def make_optimizer(params, kind, lr):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)  # betas (0.9, 0.999), eps 1e-8, weight_decay 0.01


# ------------------------------------------------------------------------ training ------

def batches(seq, steps, batch, seed):
    """(inputs [batch, WINDOW], targets [batch, WINDOW]) per step: windows of the cyclic sequence
    at seeded random offsets; the target is the next token."""
    g = np.random.default_rng(seed)
    ext = np.concatenate([seq, seq])
    for _ in range(steps):
        off = g.integers(0, len(seq), batch)
        win = np.stack([ext[o:o + WINDOW + 1] for o in off])
        yield torch.from_numpy(win[:, :-1].copy()), torch.from_numpy(win[:, 1:].copy())


def ce(logits, y):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))


def train_local(w, ad, seq, args):
    """The reference: embedding, the LoRA trunk and the top in one PyTorch process."""
    bottom, top = build_client(w)
    layers = torch.nn.ModuleList([Qwen2Layer(w, ad, i) for i in range(LAYERS)])
    opt_client = make_optimizer(list(bottom.parameters()) + list(top.parameters()),
                                args.optimizer, args.lr)
    opt_trunk = make_optimizer([p for p in layers.parameters() if p.requires_grad],
                               args.optimizer, args.lr)
    losses = []
    for x, y in batches(seq, args.steps, args.batch, args.seed):
        h = bottom(x)
        for layer in layers:
            h = layer(h)
        loss = ce(top(h), y)
        opt_client.zero_grad()
        opt_trunk.zero_grad()
        loss.backward()
        opt_client.step()
        opt_trunk.step()
        losses.append(loss.item())
    trained = {}
    for i, layer in enumerate(layers):
        for short in TARGETS:
            for ab in "AB":
                trained[lora_key(i, short, ab)] = layer.lora[short + "_" + ab].detach().numpy()
    return losses, trained


def train_split(w, remote, seq, args):
    """The split run: embedding and top here, the trunk (and its adapters) on splitserve."""
    bottom, top = build_client(w)
    opt = make_optimizer(list(bottom.parameters()) + list(top.parameters()), args.optimizer,
                         args.lr)
    losses = []
    for x, y in batches(seq, args.steps, args.batch, args.seed):
        h = bottom(x)                                             # client bottom
        y_np, fid = remote.forward(h.detach().numpy())            # Compute, training_mode
        t = torch.from_numpy(y_np.copy()).requires_grad_(True)
        loss = ce(top(t), y)                                      # client top
        opt.zero_grad()
        loss.backward()                                           # dL/dtop, dL/dt
        gin = remote.backward(t.grad.numpy(), fid, args.lr)       # ComputeBackward: dL/dh
        h.backward(torch.from_numpy(gin.copy()))                  # client bottom backward
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate (default 0.01 for adamw, 0.1 for sgd)")
    ap.add_argument("--seed", type=int, default=0, help="weights, adapters, data seed")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="largest allowed per-step relative loss difference (default 1e-4)")
    args = ap.parse_args()
    if args.lr is None:
        args.lr = 0.01 if args.optimizer == "adamw" else 0.1
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)

    seq = np.random.default_rng(args.seed + 1).integers(0, VOCAB, SEQ_LEN)
    w = random_checkpoint(args.seed)
    ad = initial_adapters(w, args.seed + 2)

    tmp = tempfile.mkdtemp(prefix="ss-lora-")
    ckpt, adir, saved = (os.path.join(tmp, d) for d in ("qwen2", "adapter0", "adapter.trained"))
    cfg = write_checkpoint(ckpt, w)
    write_adapter(adir, ad)
    spec = (f"ql=llama,weights={ckpt},config={cfg},layers=0:{LAYERS},lora_rank={RANK},"
            f"lora_alpha={ALPHA:g},lora_targets={','.join(TARGETS)},adapter={adir},"
            f"optimizer={args.optimizer},save={saved}")
    try:
        server = Splitserve(spec)
        print(f"splitserve on 127.0.0.1:{server.port}: --model {spec}")
        print(f"task: next token of a fixed random sequence (vocab {VOCAB}, length {SEQ_LEN}, "
              f"cyclic), windows of {WINDOW}, batch {args.batch}, {args.steps} steps, "
              f"{args.optimizer} lr {args.lr:g}")
        print(f"model: embedding {VOCAB}->{HIDDEN} [client] -> {LAYERS} Qwen2 layers (hidden "
              f"{HIDDEN}, {HEADS} heads, {KV_HEADS} KV heads, frozen) + LoRA r {RANK} alpha "
              f"{ALPHA:g} on {'+'.join(TARGETS)} [splitserve] -> RMSNorm + lm_head [client]")
        try:
            remote = Trunk(f"127.0.0.1:{server.port}", "ql")
            t0 = time.perf_counter()
            split_losses = train_split(w, remote, seq, args)
            t_split = time.perf_counter() - t0
            remote.close()
        finally:
            rc = server.stop()
        t0 = time.perf_counter()
        local_losses, local_ad = train_local(w, ad, seq, args)
        t_local = time.perf_counter() - t0

        sl, ll = np.array(split_losses), np.array(local_losses)
        rel = np.abs(sl - ll) / np.maximum(np.abs(ll), 1e-12)
        print()
        print(f"{'step':>5} {'split (splitserve)':>19} {'local (torch)':>14} {'rel diff':>9}")
        for i in range(len(sl)):
            print(f"{i + 1:5d} {sl[i]:19.6f} {ll[i]:14.6f} {rel[i]:9.2e}")

        # the adapters the server wrote on drain (save=DIR, PEFT layout) vs the local ones
        adiff = None
        path = os.path.join(saved, "adapter_model.safetensors")
        if os.path.exists(path):
            got = read_safetensors(path)
            adiff = max(float(np.max(np.abs(got[k] - v)) / max(np.max(np.abs(v)), 1e-12))
                        for k, v in local_ad.items())
            print(f"adapters after training (server's save=DIR vs local): max rel diff {adiff:.2e}")
        else:
            print(f"note: the server wrote no adapter at {saved} (exit code {rc})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    worst = float(rel.max())
    print(f"split {t_split:.2f} s ({1e3 * t_split / len(sl):.2f} ms/step), local {t_local:.2f} s, "
          f"total {time.perf_counter() - t_start:.1f} s")
    learned = sl[-3:].mean() < 0.7 * sl[:3].mean()
    ok = worst <= args.tol and (adiff is None or adiff <= 10 * args.tol)
    print(f"max per-step relative loss difference {worst:.2e} (tolerance {args.tol:g}): "
          + ("MATCH" if ok else "DIVERGED") + ("" if learned or args.steps < 10 else
                                               "; warning: the loss did not fall by 30%"))
    if rc != 0:
        print(f"splitserve exited with {rc}:\n" + "\n".join(server.lines[-20:]))
    return 0 if ok and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
