"""Token authentication (--auth-tokens FILE): bearer tokens in the `authorization` request
header, per-token model lists, open health checks, SIGHUP reload (a bad file keeps the old
tokens), no token in the server's log; training forwards and decode sessions bound to the token
that created them; the C tools' --token / --token-file; and the proxy affinity headers
x-session-id / x-forward-id read directly (without a proxy)."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np

import sslib
from sslib import SC, T, make_req, pb, hpb

FULL = "full-tok.en_1234567890"
MLP_ONLY = "mlp+only/TOKEN=="
IDENT = "Zq~"  # a short token: lengths differ widely across the table
NEW = "new-token-after-reload"
SECRETS = [FULL, MLP_ONLY, IDENT, NEW]
X = np.ones((1, 768), dtype=np.float32)


_DIRS = []  # temporary directories of this suite (they hold token files): removed in teardown


def _tmpdir():
    d = tempfile.mkdtemp(prefix="ss-auth-")
    _DIRS.append(d)
    return d


def teardown():
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


def bearer(tok):
    return [("authorization", "Bearer " + tok)]


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", 0o600)
    os.replace(path + ".tmp", path)


def start(tokfile, *extra):
    write(tokfile, "# test tokens\n%s\n\n%s mlp   # mlp only\n%s identity\n" % (FULL, MLP_ONLY, IDENT))
    srv = sslib.Server("--auth-tokens", tokfile, "--log-level", "debug", *extra)
    return srv, sslib.connect(srv)


def test_tokens_models_and_open_health():
    tmp = _tmpdir()
    tok = os.path.join(tmp, "tokens")
    srv, c = start(tok)
    ident = make_req(np.ones((2, 3), np.float32), model="identity")
    mlp = make_req(X, model="mlp")
    # health checks need no token
    assert c.health(pb.HealthRequest(), timeout=T(5)).status == "ok"
    assert c.h_check(hpb.HealthCheckRequest(), timeout=T(5)).status == hpb.HealthCheckResponse.SERVING
    # no token, another scheme, an unknown token, a prefix of a token
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5)), SC.UNAUTHENTICATED, "authorization")
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=[("authorization", "Basic " + FULL)]),
                       SC.UNAUTHENTICATED, "bearer")
    for bad in ("nope", FULL[:-1], FULL + "x", IDENT + IDENT, IDENT[:1]):
        sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=bearer(bad)),
                           SC.UNAUTHENTICATED)
    sslib.expect_error(lambda: c.info(pb.ServiceInfoRequest(), timeout=T(5)), SC.UNAUTHENTICATED)
    sslib.expect_error(lambda: next(c.monitoring(pb.MonitoringStreamRequest(), timeout=T(5))),
                       SC.UNAUTHENTICATED)
    sslib.expect_error(lambda: c.backward(pb.BackwardRequest(forward_id="x"), timeout=T(5)),
                       SC.UNAUTHENTICATED)
    # the full token: everything
    assert list(c.compute(ident, timeout=T(5), metadata=bearer(FULL)).shape) == [2, 3]
    assert list(c.compute(mlp, timeout=T(10), metadata=bearer(FULL)).shape) == [1, 768]
    info = c.info(pb.ServiceInfoRequest(), timeout=T(5), metadata=bearer(MLP_ONLY))
    assert info.custom_info["auth_tokens"] == "3", info.custom_info
    snap = next(c.monitoring(pb.MonitoringStreamRequest(sampling_interval=0.1), timeout=T(5),
                             metadata=bearer(IDENT)))
    assert snap.snapshot.timestamp > 0
    # model lists: PERMISSION_DENIED, also for a model that does not exist (no listing leaks)
    assert list(c.compute(mlp, timeout=T(10), metadata=bearer(MLP_ONLY)).shape) == [1, 768]
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=bearer(MLP_ONLY)),
                       SC.PERMISSION_DENIED, "identity", "mlp")
    sslib.expect_error(lambda: c.compute(make_req(X, model="secretmodel"), timeout=T(5),
                                         metadata=bearer(MLP_ONLY)), SC.PERMISSION_DENIED)
    sslib.expect_error(lambda: c.compute(make_req(X, model="secretmodel"), timeout=T(5),
                                         metadata=bearer(FULL)), SC.NOT_FOUND)
    sslib.expect_error(lambda: c.compute(mlp, timeout=T(5), metadata=bearer(IDENT)),
                       SC.PERMISSION_DENIED, "mlp")
    # ComputeBackward: the forward belongs to its token (another one learns nothing about it:
    # not even its model), and the model must be the token's (test_owners)
    fwd = make_req(X, model="mlp")
    fwd.training_mode = True
    r = c.compute(fwd, timeout=T(10), metadata=bearer(MLP_ONLY))
    g = pb.BackwardRequest(grad_output_data=X.tobytes(), grad_output_shape=[1, 768],
                           forward_id=r.forward_id)
    d, _ = sslib.expect_error(lambda: c.backward(g, timeout=T(5), metadata=bearer(IDENT)),
                              SC.PERMISSION_DENIED, "another token")
    assert "mlp" not in d, d
    b = c.backward(g, timeout=T(10), metadata=bearer(MLP_ONLY))
    assert list(b.grad_input_shape) == [1, 768]
    # an authorization value over the kept-header bound: refused, not quoted
    long_tok = "L" * 2000
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=bearer(long_tok)),
                       SC.INVALID_ARGUMENT, "authorization", "1024")
    sslib.shutdown(c, srv)
    for s in SECRETS + [long_tok]:
        assert s not in srv.log, "a token appears in the server log"


def test_sighup_reload():
    tmp = _tmpdir()
    tok = os.path.join(tmp, "tokens")
    srv, c = start(tok)
    ident = make_req(np.ones((2, 3), np.float32), model="identity")
    assert c.compute(ident, timeout=T(5), metadata=bearer(FULL)).shape
    write(tok, "%s identity\n" % NEW)
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"SIGHUP: 1 auth tokens", T(5)), sslib.tail(srv.log)
    assert c.compute(ident, timeout=T(5), metadata=bearer(NEW)).shape
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=bearer(FULL)),
                       SC.UNAUTHENTICATED)
    # a bad file: an error in the log, the old tokens stay
    write(tok, "%s\nbad\"token\n" % FULL)
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"auth tokens not reloaded, keeping the 1 old ones", T(5)), sslib.tail(srv.log)
    assert c.compute(ident, timeout=T(5), metadata=bearer(NEW)).shape
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=bearer(FULL)),
                       SC.UNAUTHENTICATED)
    os.unlink(tok)  # a missing file too
    srv.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert c.compute(ident, timeout=T(5), metadata=bearer(NEW)).shape
    sslib.shutdown(c, srv)
    for s in SECRETS:
        assert s not in srv.log, "a token appears in the server log"


def test_bad_file_at_start():
    tmp = _tmpdir()
    tok = os.path.join(tmp, "tokens")
    write(tok, "# nothing\n")
    srv = sslib.Server("--auth-tokens", tok, expect_start=False)
    rc = srv.wait(T(10))
    assert rc not in (0, None) and "no tokens" in srv.log, (rc, srv.log)


def test_fifo_tokens_refused():
    """A FIFO as --auth-tokens: refused at start-up at once; put there before a SIGHUP, it is
    logged as not a regular file and the old tokens stay; the loop never blocks on it (calls are
    answered, SIGTERM stops the server)."""
    tmp = _tmpdir()
    try:
        tok = os.path.join(tmp, "tokens")
        fifo = os.path.join(tmp, "tokens.fifo")
        os.mkfifo(fifo)
        rc, out = sslib.run_cli("--auth-tokens", fifo, timeout=T(10))
        assert rc not in (0, None) and "FIFO, not a regular file" in out, (rc, out)
        srv, c = start(tok)
        ident = make_req(np.ones((2, 3), np.float32), model="identity")
        assert c.compute(ident, timeout=T(5), metadata=bearer(FULL)).shape
        os.unlink(tok)
        os.mkfifo(tok)
        srv.signal(signal.SIGHUP)
        assert srv.wait_for_line(r"auth tokens not reloaded, keeping the 3 old ones", T(5)), \
            sslib.tail(srv.log)
        assert "FIFO, not a regular file" in srv.log, sslib.tail(srv.log)
        assert c.compute(ident, timeout=T(5), metadata=bearer(FULL)).shape
        sslib.shutdown(c, srv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_service_info_lists_only_the_tokens_models():
    """GetServiceInfo with a model-scoped token names only that token's models (the list, the
    per-model entries, the default model); a token for every model sees them all."""
    tmp = _tmpdir()
    try:
        srv, c = start(os.path.join(tmp, "tokens"))
        full = c.info(pb.ServiceInfoRequest(), timeout=T(5), metadata=bearer(FULL)).custom_info
        every = full["models"].split(",")
        assert "mlp" in every and "identity" in every and len(every) > 2, full["models"]
        for tok, mine in ((MLP_ONLY, "mlp"), (IDENT, "identity")):
            info = c.info(pb.ServiceInfoRequest(), timeout=T(5), metadata=bearer(tok)).custom_info
            assert info["models"] == mine, (tok, info["models"])
            keys = sorted(k for k in info if k.startswith("model."))
            assert keys == ["model." + mine], keys
            if "default_model" in info:
                assert info["default_model"] == mine, info["default_model"]
            for other in every:
                if other != mine:
                    assert not any(v == other or k == "model." + other for k, v in info.items()), \
                        (tok, other)
        sslib.shutdown(c, srv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_token_file_typos():
    """Issue 20.15: a token with blanks is refused naming the line (not loaded as a shorter
    token with model names); a model id the server does not serve is warned about at start and
    on SIGHUP, and the token still loads."""
    tmp = tempfile.mkdtemp(prefix="ss-auth-")
    tok = os.path.join(tmp, "tokens")
    write(tok, "# tokens\n%s\nbad token with spaces!! x y\n" % FULL)
    srv = sslib.Server("--auth-tokens", tok, expect_start=False)
    rc = srv.wait(T(10))
    assert rc not in (0, None) and "tokens:3:" in srv.log and "blanks" in srv.log, (rc, srv.log)
    assert "spaces" not in srv.log, "a word of the token line was quoted"
    write(tok, "%s mlpp\n%s identity\n" % (FULL, IDENT))
    srv = sslib.Server("--auth-tokens", tok)
    c = sslib.connect(srv)
    assert srv.wait_for_line(r"tokens:1: model 'mlpp' is not served", T(5)), sslib.tail(srv.log)
    assert "'identity' is not served" not in srv.log
    ident = make_req(np.ones((2, 3), np.float32), model="identity")
    assert c.compute(ident, timeout=T(5), metadata=bearer(IDENT)).shape
    write(tok, "%s identity\n%s mlp,identty\n" % (FULL, IDENT))
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"tokens:2: model 'identty' is not served", T(5)), sslib.tail(srv.log)
    sslib.shutdown(c, srv)
    shutil.rmtree(tmp, ignore_errors=True)
    for s in SECRETS:
        assert s not in srv.log, "a token appears in the server log"


def test_config_key_and_sighup_with_config():
    """auth_tokens in a --config file; SIGHUP re-reads both the tokens and the models."""
    tmp = _tmpdir()
    tok = os.path.join(tmp, "tokens")
    write(tok, "%s\n" % FULL)
    conf = os.path.join(tmp, "server.yaml")
    write(conf, "auth_tokens: %s\nmodels:\n  - id: a\n    kind: identity\n" % tok)
    srv = sslib.Server("--config", conf)
    c = sslib.connect(srv)
    ident = make_req(np.ones((2, 3), np.float32), model="a")
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5)), SC.UNAUTHENTICATED)
    assert c.compute(ident, timeout=T(5), metadata=bearer(FULL)).shape
    write(tok, "%s a\n" % NEW)
    write(conf, "auth_tokens: %s\nmodels:\n  - id: a\n    kind: identity\n  - id: b\n    kind: identity\n" % tok)
    srv.signal(signal.SIGHUP)
    assert srv.wait_for_line(r"SIGHUP: 1 auth tokens", T(5)), sslib.tail(srv.log)
    assert srv.wait_for_line(r"config reloaded from .*: 7 models", T(5)), sslib.tail(srv.log)
    # NEW may use only 'a': GetServiceInfo does not show it 'b' (test_service_info_lists_...)
    info = c.info(pb.ServiceInfoRequest(), timeout=T(5), metadata=bearer(NEW)).custom_info
    assert info["models"] == "a", info["models"]
    sslib.expect_error(lambda: c.compute(make_req(np.ones((1, 2), np.float32), model="b"), timeout=T(5),
                                         metadata=bearer(NEW)), SC.PERMISSION_DENIED, "'b'")
    sslib.shutdown(c, srv)
    assert FULL not in srv.log and NEW not in srv.log


A_TOK = "owner-A.token_0001"
B_TOK = "owner-B.token_0002"


def _owner_server(tmp, *extra):
    tok = os.path.join(tmp, "tokens")
    write(tok, "%s\n%s\n" % (A_TOK, B_TOK))
    srv = sslib.Server("--auth-tokens", tok, "--log-level", "debug", *extra)
    return srv, sslib.connect(srv)


def _denied(fn, *want):
    """PERMISSION_DENIED saying the id is another token's, quoting neither token."""
    d, _ = sslib.expect_error(fn, SC.PERMISSION_DENIED, "belongs to another token", *want)
    assert A_TOK not in d and B_TOK not in d, d
    return d


def test_forward_owners():
    """A training forward is its token's: another token can neither run its backward, nor
    learn whether it exists or was used, nor replace it with a forward of its own."""
    tmp = _tmpdir()
    srv, c = _owner_server(tmp)
    try:
        g = pb.BackwardRequest(grad_output_data=X.tobytes(), grad_output_shape=[1, 768],
                               forward_id="fa")
        fwd = make_req(X, model="mlp")
        fwd.training_mode = True
        fwd.forward_id = "fa"
        assert c.compute(fwd, timeout=T(10), metadata=bearer(A_TOK)).forward_id == "fa"
        _denied(lambda: c.backward(g, timeout=T(5), metadata=bearer(B_TOK)), "forward_id 'fa'")
        _denied(lambda: c.compute(fwd, timeout=T(10), metadata=bearer(B_TOK)), "'fa'")
        # the same through the proxy affinity header
        g_hdr = pb.BackwardRequest(grad_output_data=X.tobytes(), grad_output_shape=[1, 768])
        _denied(lambda: c.backward(g_hdr, timeout=T(5),
                                   metadata=bearer(B_TOK) + [("x-forward-id", "fa")]))
        # A's record is intact: its backward works, once
        b = c.backward(g, timeout=T(10), metadata=bearer(A_TOK))
        assert b.forward_id == "fa" and list(b.grad_input_shape) == [1, 768]
        _denied(lambda: c.backward(g, timeout=T(5), metadata=bearer(B_TOK)))  # not "used"
        sslib.expect_error(lambda: c.backward(g, timeout=T(5), metadata=bearer(A_TOK)),
                           SC.NOT_FOUND, "already used")
        # a forward_id the server made up
        fwd.ClearField("forward_id")
        r = c.compute(fwd, timeout=T(10), metadata=bearer(A_TOK))
        g.forward_id = r.forward_id
        _denied(lambda: c.backward(g, timeout=T(5), metadata=bearer(B_TOK)))
        assert list(c.backward(g, timeout=T(10), metadata=bearer(A_TOK)).grad_input_shape) == [1, 768]
    finally:
        sslib.shutdown(c, srv)
        shutil.rmtree(tmp, ignore_errors=True)
    for s in (A_TOK, B_TOK):
        assert s not in srv.log, "a token appears in the server log"


def test_session_owners():
    """A decode session is its token's: another token can neither step it, end it, nor read or
    consume the notice of its eviction; the owner's cache stays intact."""
    import gpt2_ref
    tmp = _tmpdir()
    cfg = gpt2_ref.Config(n_embd=64, n_head=4, n_layer=2, n_positions=48)
    wpath, cpath, _ = gpt2_ref.write_checkpoint(tmp, "t", cfg, seed=3)
    srv, c = _owner_server(tmp, "--workers", "1", "--session-memory-mb", "1", "--model",
                           "t=gpt2,weights=%s,config=%s,layers=0:2" % (wpath, cpath))
    x = np.random.default_rng(5).standard_normal((1, 40, 64)).astype(np.float32)

    def call(tok, xs, **meta):
        return c.compute(make_req(xs, model="t", **meta), timeout=T(20), metadata=bearer(tok))

    try:
        call(A_TOK, x[:, :4], session="sa")
        _denied(lambda: call(B_TOK, x[:, 4:5], session="sa"), "session 'sa'")
        _denied(lambda: call(B_TOK, x[:, 4:5], session="sa", session_end=1))
        _denied(lambda: c.compute(make_req(x[:, 4:5], model="t"), timeout=T(20),
                                  metadata=bearer(B_TOK) + [("x-session-id", "sa")]))
        # A's next step sees exactly its own cache: the same as a fresh session of A's
        got = sslib.result(call(A_TOK, x[:, 4:5], session="sa"))
        call(A_TOK, x[:, :4], session="ref")
        ref = sslib.result(call(A_TOK, x[:, 4:5], session="ref", session_end=1))
        np.testing.assert_array_equal(got, ref)
        call(A_TOK, x[:, 5:6], session="sa", session_end=1)
        # an ended id stays A's while remembered: B is refused as for a live one (and learns
        # nothing more), A is told it ended (test_gpt2 test_decode_server_session)
        _denied(lambda: call(B_TOK, x[:, :2], session="sa"))
        sslib.expect_error(lambda: call(A_TOK, x[:, :2], session="sa"), SC.FAILED_PRECONDITION,
                           "ended")
        call(B_TOK, x[:, :2], session="sb")
        _denied(lambda: call(A_TOK, x[:, 2:3], session="sb"))
        # eviction (40 KiB per 40-token session, 1 MiB budget): B is refused, A gets the notice
        call(A_TOK, x, session="se")
        for k in range(30):
            call(A_TOK, x, session="fill%d" % k)
        _denied(lambda: call(B_TOK, x[:, :1], session="se"))
        sslib.expect_error(lambda: call(A_TOK, x[:, :1], session="se"), SC.FAILED_PRECONDITION,
                           "session 'se'", "evicted")
    finally:
        sslib.shutdown(c, srv)
        shutil.rmtree(tmp, ignore_errors=True)
    for s in (A_TOK, B_TOK):
        assert s not in srv.log, "a token appears in the server log"


def _tool(name, *args, timeout=30):
    return subprocess.run([sslib.binary(name)] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=T(timeout))


def test_tools_token():
    """splitserve-call and splitserve-bench with --token / --token-file: every call carries
    `authorization: Bearer TOKEN`; a wrong token is UNAUTHENTICATED; no token is ever printed."""
    tmp = _tmpdir()
    srv, c = _owner_server(tmp)
    tfile = os.path.join(tmp, "a.token")
    write(tfile, A_TOK + "\n")
    wrong = "wrong-token_0003"
    outputs = []
    try:
        def call(*args):
            out = _tool("splitserve-call", "--addr", srv.target, *args)
            outputs.append(out.stdout + out.stderr)
            return out
        compute = ("compute", "--model", "identity", "--shape", "2,2")
        out = call("--token", A_TOK, *compute)
        assert out.returncode == 0 and "output shape:" in out.stdout, (out.stdout, out.stderr)
        out = call("--token-file", tfile, *compute)
        assert out.returncode == 0, (out.stdout, out.stderr)
        out = call("--token-file", tfile, "info")
        assert out.returncode == 0 and "auth_tokens: 2" in out.stdout, (out.stdout, out.stderr)
        out = call("--token", wrong, *compute)
        assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr, (out.stdout, out.stderr)
        out = call(*compute)  # no token at all
        assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr, (out.stdout, out.stderr)
        # every error shows the server's message (issue 20.13): it names the header to send
        for cmd in (compute, ("info",)):
            out = call(*cmd)
            assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr, (out.stdout, out.stderr)
            assert "authorization" in out.stderr, (cmd, out.stderr)
        # local refusals: both options, a missing file, an empty first line
        out = call("--token", A_TOK, "--token-file", tfile, *compute)
        assert out.returncode == 2 and "not both" in out.stderr, out.stderr
        out = call("--token-file", os.path.join(tmp, "missing"), *compute)
        assert out.returncode == 2 and "missing" in out.stderr, out.stderr
        empty = os.path.join(tmp, "empty.token")
        write(empty, "\n" + A_TOK + "\n")
        out = call("--token-file", empty, *compute)
        assert out.returncode == 2 and "empty" in out.stderr, out.stderr
        assert "--token-file" in _tool("splitserve-call", "--help").stdout
        # the bench: a short bounded load, every call authenticated
        bench = ("--addr", srv.target, "--model", "identity", "--shape", "4", "--concurrency",
                 "4", "--duration", "1", "--warmup", "0.2", "--no-progress", "--fail-on-error")
        out = _tool("splitserve-bench", "--token-file", tfile, *bench)
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == 0 and "errors 0" in out.stdout, (out.stdout, out.stderr)
        out = _tool("splitserve-bench", "--token", A_TOK, *bench)
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == 0 and "errors 0" in out.stdout, (out.stdout, out.stderr)
        out = _tool("splitserve-bench", "--token", wrong, *bench)
        outputs.append(out.stdout + out.stderr)
        assert out.returncode != 0 and "UNAUTHENTICATED" in out.stderr, (out.stdout, out.stderr)
        assert "--token-file" in _tool("splitserve-bench", "--help").stdout
    finally:
        sslib.shutdown(c, srv)
        shutil.rmtree(tmp, ignore_errors=True)
    for text in outputs + [srv.log]:
        for s in (A_TOK, B_TOK, wrong):
            assert s not in text, "a token was printed:\n%s" % text


def test_affinity_headers_direct():
    """x-session-id is metadata session=ID, x-forward-id the forward_id field (no auth here)."""
    srv = sslib.Server()
    c = sslib.connect(srv)
    ident = make_req(np.ones((2, 3), np.float32), model="identity", session="a")
    sslib.expect_error(lambda: c.compute(ident, timeout=T(5), metadata=[("x-session-id", "b")]),
                       SC.INVALID_ARGUMENT, "session='a'", "x-session-id 'b'")
    sslib.expect_error(lambda: c.compute(make_req(np.ones((2, 3), np.float32), model="identity"),
                                         timeout=T(5), metadata=[("x-session-id", "a"), ("x-session-id", "b")]),
                       SC.INVALID_ARGUMENT, "x-session-id", "more than once")
    fwd = make_req(X, model="mlp")
    fwd.training_mode = True
    r = c.compute(fwd, timeout=T(10), metadata=[("x-forward-id", "hdr-fwd-1")])
    assert r.forward_id == "hdr-fwd-1", r.forward_id
    fwd.forward_id = "field-id"
    sslib.expect_error(lambda: c.compute(fwd, timeout=T(5), metadata=[("x-forward-id", "other")]),
                       SC.INVALID_ARGUMENT, "x-forward-id 'other'")
    g = pb.BackwardRequest(grad_output_data=X.tobytes(), grad_output_shape=[1, 768])
    b = c.backward(g, timeout=T(10), metadata=[("x-forward-id", "hdr-fwd-1")])
    assert b.forward_id == "hdr-fwd-1" and list(b.grad_input_shape) == [1, 768]
    sslib.shutdown(c, srv)


if __name__ == "__main__":
    sslib.main(globals())
