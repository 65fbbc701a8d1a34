"""The split LoRA example (examples/split_training_lora/train.py) as a test: it writes a random
Qwen2-shaped checkpoint and a PEFT adapter, starts its own splitserve ($SS_BIN_DIR/splitserve,
messages from $SS_PY_DIR) with the trunk as a `llama` model with LoRA (adapter=DIR), trains the
embedding and the top in PyTorch and the adapters over gRPC, trains the same model in one PyTorch
process, and exits 0 only when the two loss curves match within 1e-4 relative per step (and the
adapters the server saves on drain match the local ones)."""
import os
import re
import subprocess
import sys

import sslib
from sslib import T

EXAMPLE = os.path.join(sslib.REPO, "examples", "split_training_lora", "train.py")


def _run(*flags, timeout=90):
    env = dict(os.environ, SS_BIN_DIR=sslib.BIN_DIR, SS_PY_DIR=sslib.PY_DIR)
    p = subprocess.run([sys.executable, EXAMPLE, *flags], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=T(timeout))
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, "train.py %s exited %d:\n%s" % (" ".join(flags), p.returncode,
                                                               sslib.tail(out, 40))
    return out


def _check(out, steps):
    assert "MATCH" in out, sslib.tail(out)
    rows = re.findall(r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.e+-]+)\s*$", out, re.M)
    assert len(rows) == steps, "expected %d step rows:\n%s" % (steps, out)
    first, last = float(rows[0][1]), float(rows[-1][1])
    assert last < first, "the split loss did not fall (%g -> %g):\n%s" % (first, last, out)
    m = re.search(r"adapters after training .* max rel diff ([0-9.e+-]+)", out)
    assert m and float(m.group(1)) < 1e-3, "no or a bad adapter comparison:\n" + out


def test_adamw_short():
    _check(_run("--steps", "12"), 12)


def test_sgd_short():
    _check(_run("--steps", "8", "--optimizer", "sgd"), 8)


if __name__ == "__main__":
    sslib.main(globals())
