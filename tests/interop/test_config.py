"""--config FILE (YAML) and SIGHUP reload: routing by model_id, per-model limits, models added
and removed live (a removed model finishes its in-flight calls first), a bad file refused while
the old models keep serving, flags overriding the file."""
import os
import shutil
import signal
import tempfile
import time

import grpc
import numpy as np

import sslib
from sslib import T, make_req, expect_error

X = np.arange(8, dtype=np.float32).reshape(1, 8)


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


BASE = """
workers: 2
max_queue: 50
models:
  - id: first
    kind: scale
  - id: slow
    kind: sleep
    max_inflight: 1
    max_queue: 1
"""


_DIRS = []  # this suite's temporary directories: removed in teardown


def _tmpdir():
    d = tempfile.mkdtemp(prefix="ss-config-")
    _DIRS.append(d)
    return d


def teardown():
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


def info(c):
    return dict(c.info(sslib.pb.ServiceInfoRequest(), timeout=T(5)).custom_info)


def test_config_models_and_limits():
    d = _tmpdir()
    path = os.path.join(d, "server.yaml")
    write(path, BASE)
    srv = sslib.Server("--config", path)
    c = sslib.connect(srv)
    # default model = first listed (scale), routing by id, built-ins still present
    r = c.compute(make_req(X, factor="3"), timeout=T(5))
    assert np.allclose(sslib.result(r), 3 * X)
    assert np.allclose(sslib.result(c.compute(make_req(X, model="identity"), timeout=T(5))), X)
    i = info(c)
    assert i["default_model"] == "first", i
    assert "model.slow" in i and "sleep" in i["model.slow"], i
    assert i["max_queue"] == "50", i
    # per-model limits: 1 running + 1 queued, the third refused at once
    futs = [c.compute.future(make_req(X, model="slow", ms="400"), timeout=T(5)) for _ in range(3)]
    codes = sorted((f.exception().code().name if f.exception() else "OK") for f in futs)
    assert codes == ["OK", "OK", "RESOURCE_EXHAUSTED"], codes
    srv.stop_ok()


def test_sighup_reload_adds_removes_and_refuses_bad_files():
    d = _tmpdir()
    path = os.path.join(d, "server.yaml")
    write(path, BASE)
    srv = sslib.Server("--config", path)
    c = sslib.connect(srv)
    # a call in flight on 'slow' while a reload removes it: it still finishes
    inflight = c.compute.future(make_req(X, model="slow", ms="800"), timeout=T(10))
    time.sleep(0.1)
    write(path, """
models:
  - id: added
    kind: identity
  - id: first
    kind: scale
""")
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"config reloaded", timeout=T(10)), srv.log
    assert np.allclose(sslib.result(c.compute(make_req(X, model="added"), timeout=T(5))), X)
    assert info(c)["default_model"] == "added"
    expect_error(lambda: c.compute(make_req(X, model="slow"), timeout=T(5)),
                 grpc.StatusCode.NOT_FOUND, "slow", "added")
    assert np.allclose(sslib.result(inflight.result()), X)  # the retired model's call finished
    assert srv.wait_for_line(r"model 'slow' unloaded", timeout=T(5)), srv.log
    # a broken file is refused; the previous models keep serving
    write(path, "models: [\n")
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"reload of .* refused: .*server.yaml:\d+:\d+", timeout=T(10)), srv.log
    assert np.allclose(sslib.result(c.compute(make_req(X, model="added"), timeout=T(5))), X)
    # a model that fails to load is refused the same way (names the file it could not open)
    write(path, "models:\n  - id: w\n    kind: mlp\n    weights: /nonexistent.safetensors\n")
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"refused: .*nonexistent", timeout=T(10)), srv.log
    assert np.allclose(sslib.result(c.compute(make_req(X, model="added"), timeout=T(5))), X)
    srv.stop_ok()


def test_flags_override_file_and_bad_files_stop_startup():
    d = _tmpdir()
    path = os.path.join(d, "server.yaml")
    write(path, BASE)
    srv = sslib.Server("--config", path, "--max-queue", "7")
    c = sslib.connect(srv)
    assert info(c)["max_queue"] == "7"
    srv.stop_ok()
    write(path, "workers: lots\n")
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--config", path)
    assert rc != 0 and "workers" in out and "lots" in out, out
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--config", path + ".missing")
    assert rc != 0 and ".missing" in out, out
    write(path, BASE)
    rc, out = sslib.run_cli("--listen", "127.0.0.1:0", "--config", path,
                            "--model", "x=identity")
    assert rc != 0 and "--model" in out, out


if __name__ == "__main__":
    sslib.main(globals())
