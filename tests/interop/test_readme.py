"""The README as a new user reads it (issue 20.17): the Python client snippet runs as written
(with the generated modules of build/py/ and Debian's /usr/bin/python3, and with the protoc
command the README gives for a tree without a build); the Bad-input table agrees with the flags
table and the server on compressed messages; the nginx config's placeholders are explained;
examples/server.yaml starts as it is; the GPT-2 section says where a checkpoint comes from."""
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

import sslib
from sslib import T, make_req

README = os.path.join(sslib.REPO, "README.md")


def _readme():
    with open(README) as f:
        return f.read()


def _section(text, title):
    """The text of the section whose heading is `title` (up to the next heading of any level)."""
    m = re.search(r"^#+ %s[^\n]*\n(.*?)(?=^#+ )" % re.escape(title), text, re.S | re.M)
    assert m, "README has no section '%s'" % title
    return m.group(1)


def _python_snippet():
    sec = _section(_readme(), "A Python client")
    m = re.search(r"```python\n(.*?)```", sec, re.S)
    assert m, "no python block in 'A Python client'"
    return sec, m.group(1)


def _run_client(code, srv, cwd, env_extra):
    """Run the snippet pointed at srv (the only change: its address) as client.py in cwd."""
    assert "127.0.0.1:50051" in code
    path = os.path.join(cwd, "client.py")
    with open(path, "w") as f:
        f.write(code.replace("127.0.0.1:50051", srv.target))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra)
    return subprocess.run(["/usr/bin/python3", path], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=T(60))


def test_python_client_as_written():
    sec, code = _python_snippet()
    # the documented command: Debian's python, the modules the build wrote to build/py/
    assert "PYTHONPATH=build/py /usr/bin/python3 client.py" in sec, sec
    assert "build/py/compute_service_pb2.py" in sec, sec
    srv = sslib.Server(test_models=False)
    tmp = tempfile.mkdtemp(prefix="ss-readme-")
    try:
        out = _run_client(code, srv, tmp, {"PYTHONPATH": sslib.PY_DIR})
        assert out.returncode == 0 and "(1, 10, 768)" in out.stdout, (out.stdout, out.stderr)
        # without a build: every protoc command the section gives, run as written in a copy of
        # the tree's protos, must leave an importable module beside client.py
        cmds = re.findall(r"`(protoc [^`]+)`", sec) + re.findall(r"#\s*(protoc [^\n]+)", code)
        assert cmds, "the README names no protoc command for a tree without a build"
        for cmd in cmds:
            work = tempfile.mkdtemp(dir=tmp)
            shutil.copytree(os.path.join(sslib.REPO, "src", "proto"),
                            os.path.join(work, "src", "proto"))
            gen = subprocess.run(cmd, shell=True, cwd=work, capture_output=True, text=True,
                                 timeout=T(60))
            assert gen.returncode == 0, (cmd, gen.stderr)
            out = _run_client(code, srv, work, {})
            assert out.returncode == 0 and "(1, 10, 768)" in out.stdout, (cmd, out.stderr)
    finally:
        srv.stop_ok()
        shutil.rmtree(tmp, ignore_errors=True)


def test_bad_input_table_on_compression():
    text = _readme()
    rows = [ln for ln in _section(text, "Bad input").splitlines()
            if ln.startswith("| compressed message")]
    assert rows, "the Bad-input table has no compressed-message row"
    for row in rows:
        if "UNIMPLEMENTED" in row:  # only for encodings the server does not inflate
            assert "other than gzip" in row and "deflate" in row, row
    # the encodings it names are the ones the server advertises
    src = open(os.path.join(sslib.REPO, "src", "grpc", "call.c")).read()
    accept = re.search(r'#define SS_ACCEPT_ENC "([^"]+)"', src).group(1)
    assert "grpc-accept-encoding: %s" % accept in text, accept
    assert "gzip" in _section(text, "Flags").split("--compress-responses")[1][:600]
    # and the server does accept a gzip-compressed request
    import grpc
    srv = sslib.Server(test_models=False)
    try:
        st = sslib.connect(srv)
        r = st.compute(make_req(np.ones((2, 3), np.float32), model="identity"), timeout=T(5),
                       compression=grpc.Compression.Gzip)
        assert list(r.shape) == [2, 3]
        st.close()
    finally:
        srv.stop_ok()


def test_nginx_placeholders_explained():
    conf = open(os.path.join(sslib.REPO, "deploy", "nginx", "splitserve.conf")).read()
    names = sorted(set(re.findall(r"@[A-Z0-9]+@", conf)))
    assert names, "no placeholders in the nginx config?"
    scale = _section(_readme(), "Scale-out")
    missing = [n for n in names if n not in scale]
    assert not missing, "placeholders not explained in the README's Scale-out: %s" % missing


def test_example_config_starts():
    """examples/server.yaml starts as it is (no test-only kind without enable_test_models) and
    serves the models the README names for it."""
    path = os.path.join(sslib.REPO, "examples", "server.yaml")
    srv = sslib.Server("--config", path, "--workers", "1", test_models=False)
    try:
        st = sslib.connect(srv)
        for model, shape in (("mlp", (1, 768)), ("echo", (2, 2))):
            r = st.compute(make_req(np.ones(shape, np.float32), model=model), timeout=T(10))
            assert tuple(r.shape) == shape, (model, r.shape)
        st.close()
    finally:
        srv.stop_ok()
    sec = _section(_readme(), "Config file and live reload")
    assert "examples/server.yaml" in sec and "`mlp` and `echo`" in sec, sec


def test_gpt2_checkpoint_explained():
    sec = _section(_readme(), "GPT-2 trunk and decode sessions")
    assert "huggingface.co" in sec and "CHECKPOINT_ONLY=1 bash bench/gpt2_bench.sh" in sec, sec
    script = open(os.path.join(sslib.REPO, "bench", "gpt2_bench.sh")).read()
    stop = script.index('"${CHECKPOINT_ONLY:-0}" = 1')
    assert script.index("1. checkpoint") < stop < script.index("2. sgemm peak"), \
        "CHECKPOINT_ONLY must stop right after the checkpoint is written"


if __name__ == "__main__":
    sslib.main(globals())
