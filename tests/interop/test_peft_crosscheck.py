"""Cross-check with PyPI's peft and transformers: a GPT-2 LoRA adapter the server trained and
saved (save=DIR: adapter_model.safetensors + adapter_config.json, fan_in_fan_out=true) loads
into transformers' GPT2LMHeadModel with peft's PeftModel.from_pretrained, every tensor finds its
module (no missing or unexpected LoRA keys), and the adapted blocks compute what the server
computes. The same for the llama kind's adapters (LlamaForCausalLM).

peft and transformers are not Debian packages: this test needs a Python that has them, named by
SS_PEFT_PYTHON (e.g. a venv made with --system-site-packages and `pip install peft==0.7.1
transformers==4.36.2`). Without it the test is skipped with a message saying so (and passes).
"""
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np

import gpt2_ref
import llama_ref
import sslib
from sslib import T, make_req, result

PEFT_PY = os.environ.get("SS_PEFT_PYTHON", "")

CHECK = r'''
import json, sys
import numpy as np, torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM
from peft import PeftModel
d = json.load(open(sys.argv[1]))
cls = GPT2LMHeadModel if d["kind"] == "gpt2" else LlamaForCausalLM
base = cls.from_pretrained(d["model_dir"], torch_dtype=torch.float64).eval()
m = PeftModel.from_pretrained(base, d["adapter_dir"]).eval()
sd = m.state_dict()
lora = sorted(k for k in sd if "lora_" in k)
x = torch.tensor(np.load(d["x"]), dtype=torch.float64)
with torch.no_grad():
    if d["kind"] == "gpt2":
        h = x
        for i in range(d["a"], d["b"]):
            h = m.base_model.model.transformer.h[i](h)[0]
    else:  # layers 0..b-1 of a deeper model: the hidden state after layer b-1 (before the norm)
        h = m.base_model.model.model(inputs_embeds=x, output_hidden_states=True).hidden_states[d["b"]]
np.save(d["out"], h.numpy())
print(json.dumps({"lora_keys": lora, "n": len(lora)}))
'''


def _train_and_peft(tmp, spec, mid, hidden, kind, a, b, mdir):
    """Train mid 3 AdamW steps, save it on drain, load the adapter with peft in SS_PEFT_PYTHON.
    Returns (the server's output for x, peft's, x, the adapter_config, peft's LoRA key count)."""
    srv = sslib.Server("--workers", "1", "--model", spec)
    conn = sslib.connect(srv)
    g = sslib.rng(5)
    for i in range(3):  # train a little so that B != 0
        x = g.standard_normal((2, 6, hidden)).astype(np.float32)
        req = make_req(x, model=mid)
        req.training_mode = True
        req.forward_id = "p-%d" % i
        conn.compute(req, timeout=T(20))
        gr = g.standard_normal(x.shape).astype(np.float32)
        bw = sslib.pb.BackwardRequest(grad_output_data=gr.tobytes(), forward_id=req.forward_id,
                                      model_id=mid, learning_rate=1e-2)
        bw.grad_output_shape.extend(gr.shape)
        conn.backward(bw, timeout=T(20))
    x = g.standard_normal((1, 7, hidden)).astype(np.float32)
    got = result(conn.compute(make_req(x, model=mid), timeout=T(20))).reshape(x.shape)
    conn.close()
    srv.stop_ok()  # drain writes save=DIR
    out = os.path.join(tmp, mid + ".out")
    with open(os.path.join(out, "adapter_config.json")) as f:
        ac = json.load(f)
    np.save(os.path.join(tmp, "x.npy"), x)
    job = {"kind": kind, "model_dir": mdir, "adapter_dir": out, "x": os.path.join(tmp, "x.npy"),
           "out": os.path.join(tmp, "y.npy"), "a": a, "b": b}
    with open(os.path.join(tmp, "job.json"), "w") as f:
        json.dump(job, f)
    p = subprocess.run([PEFT_PY, "-c", CHECK, os.path.join(tmp, "job.json")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=T(300))
    text = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, text[-3000:]
    info = json.loads(text.strip().splitlines()[-1])
    return got, np.load(job["out"]), x, ac, info["n"]


def test_peft_loads_llama_adapter():
    """The llama kind's adapters (q, v, down) the same way, through LlamaForCausalLM."""
    if not PEFT_PY:
        print("  SKIP: set SS_PEFT_PYTHON to a Python with peft and transformers to run it")
        return
    tmp = tempfile.mkdtemp(prefix="ss-peft-")
    try:
        cfg = llama_ref.Config("llama", hidden=64, heads=4, kv_heads=2, intermediate=96,
                               n_layer=3, max_pos=48, attention_bias=True)
        w, c, stored = llama_ref.write_checkpoint(tmp, "llama", cfg, seed=4, layout="dir")
        spec = ("ll=llama,weights=%s,layers=0:2,lora_rank=4,lora_alpha=8,"
                "lora_targets=q_proj,v_proj,down_proj,optimizer=adamw,save=%s"
                % (w, os.path.join(tmp, "ll.out")))
        got, want, x, ac, n = _train_and_peft(tmp, spec, "ll", cfg.hidden, "llama", 0, 2, w)
        assert ac["peft_type"] == "LORA" and ac["fan_in_fan_out"] is False, ac
        assert n == 2 * 3 * 2, n
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        print("  llama: %d LoRA tensors loaded by peft; server vs peft layers 0:2 max abs err %.3g"
              % (n, err))
        assert err < 1e-4, err
        base, _ = llama_ref.Trunk(cfg, stored, 0, 2)(x)
        assert float(np.max(np.abs(base - want))) > 1e-3, "peft output == the base model's"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_peft_loads_gpt2_adapter():
    if not PEFT_PY:
        print("  SKIP: set SS_PEFT_PYTHON to a Python with peft and transformers to run it")
        return
    tmp = tempfile.mkdtemp(prefix="ss-peft-")
    try:
        cfg = gpt2_ref.Config(n_embd=32, n_head=4, n_layer=3, n_positions=16)
        mdir = os.path.join(tmp, "gpt2")
        os.makedirs(mdir)
        w, c, stored = gpt2_ref.write_checkpoint(mdir, "model", cfg, seed=9,
                                                 prefix="transformer.")
        os.rename(c, os.path.join(mdir, "config.json"))
        spec = ("lo=gpt2,weights=%s,layers=1:3,lora_rank=4,lora_alpha=8,"
                "lora_targets=c_attn,c_proj,c_fc,optimizer=adamw,save=%s"
                % (w, os.path.join(tmp, "lo.out")))
        got, want, x, ac, n = _train_and_peft(tmp, spec, "lo", cfg.n_embd, "gpt2", 1, 3, mdir)
        assert ac["fan_in_fan_out"] is True and ac["peft_type"] == "LORA", ac
        assert n == 16, n  # 2 layers x 4 modules (c_attn, attn.c_proj, c_fc, mlp.c_proj) x A, B
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        print("  gpt2: %d LoRA tensors loaded by peft (%s); server vs peft blocks 1:3 max abs "
              "err %.3g" % (n, PEFT_PY, err))
        assert err < 1e-4, err
        base, _ = gpt2_ref.Trunk(cfg, stored, 1, 3)(x)  # the adapters do change the output
        assert float(np.max(np.abs(base - want))) > 1e-3, "peft output == the base model's"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sslib.main(globals())
