"""The split-training example (examples/split_training/train.py) as a test: it starts its own
splitserve ($SS_BIN_DIR/splitserve, messages from $SS_PY_DIR), trains bottom/top in PyTorch and
the trunk over gRPC, trains the same model in one PyTorch process, and exits 0 only when the two
loss curves match within 1e-4 relative per step (and the server's trained trunk matches)."""
import os
import re
import subprocess
import sys

import sslib
from sslib import T

EXAMPLE = os.path.join(sslib.REPO, "examples", "split_training", "train.py")


def _run(*flags, timeout=90):
    env = dict(os.environ, SS_BIN_DIR=sslib.BIN_DIR, SS_PY_DIR=sslib.PY_DIR)
    p = subprocess.run([sys.executable, EXAMPLE, *flags], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=T(timeout))
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, "train.py %s exited %d:\n%s" % (" ".join(flags), p.returncode,
                                                               sslib.tail(out, 40))
    return out


def _check(out, epochs):
    assert "MATCH" in out, sslib.tail(out)
    rows = re.findall(r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.e+-]+)\s*$", out, re.M)
    assert len(rows) == epochs, "expected %d epoch rows:\n%s" % (epochs, out)
    first, last = float(rows[0][1]), float(rows[-1][1])
    assert last < first, "the split loss did not fall (%g -> %g):\n%s" % (first, last, out)
    m = re.search(r"trunk weights after training .* max rel diff ([0-9.e+-]+)", out)
    assert m and float(m.group(1)) < 1e-3, "no or a bad trunk checkpoint comparison:\n" + out


def test_sgd_short():
    _check(_run("--epochs", "3"), 3)


def test_adamw_short():
    _check(_run("--epochs", "2", "--optimizer", "adamw"), 2)


if __name__ == "__main__":
    sslib.main(globals())
