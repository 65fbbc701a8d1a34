"""Concurrent calls get exactly the answer a lone call gets, on every worker layout and every
oneDNN ISA level this CPU offers.

Why: on AVX-512 CPUs concurrent calls once corrupted each other's matmuls (oneDNN's shared
library scratchpad under brgemm kernels) while every test passed on AVX2 machines. Here N
distinct inputs are computed one at a time, then again from several client threads over several
connections, and compared with the lone answers: bit for bit for models without batching, within
float rounding for their batching twins (a batch stacks rows into other products). Models: the
embedded mlp (768 wide), a GPT-2 trunk (768 wide) and a Qwen2-shaped Llama trunk (hidden 512):
widths where oneDNN's blocked kernels engage. Layouts: --workers 2; --workers 1
--intra-op-threads 2; --workers 2 --io-threads 2. Each layout runs natively and again with
ONEDNN_MAX_CPU_ISA capped at every lower level the CPU offers (tests/isa_levels.py); the output
ends with the levels exercised and those this CPU could not exercise.
"""
import os
import shutil
import sys
import tempfile
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gpt2_ref  # noqa: E402
import isa_levels  # noqa: E402
import llama_ref  # noqa: E402
import sslib  # noqa: E402
from sslib import T, make_req, result  # noqa: E402

N = 12           # distinct inputs per model
CLIENTS = 6      # client threads
CHANNELS = 4     # connections
REPS = 2         # each thread sends each of its inputs this many times
TMP = None
MODELS = {}      # id -> (input shape, bit-exact?)
LAYOUTS = [("--workers", "2"), ("--workers", "1", "--intra-op-threads", "2"),
           ("--workers", "2", "--io-threads", "2")]
RAN = []         # ISA caps exercised (None: native)
TALLY = []       # (layout, cap, wrong, total)


def setup():
    global TMP
    TMP = tempfile.mkdtemp(prefix="ss-conc-")
    g = gpt2_ref.Config(n_embd=768, n_head=12, n_layer=2, n_positions=64)
    gw, gc, _ = gpt2_ref.write_checkpoint(TMP, "g", g, seed=3)
    q = llama_ref.Config("qwen2", hidden=512, heads=8, kv_heads=2, intermediate=1024, n_layer=2,
                         max_pos=64, rope_theta=1000000.0)
    lw, lc, _ = llama_ref.write_checkpoint(TMP, "q", q, seed=4)
    MODELS.update({"mlp": ((1, 10, 768), True), "mlpb": ((1, 10, 768), False),
                   "g": ((1, 16, 768), True), "gb": ((1, 16, 768), False),
                   "q": ((1, 16, 512), True)})
    setup.args = ["--model", "mlp=mlp",
                  "--model", "mlpb=mlp,max_batch_rows=64,batch_delay_us=2000",
                  "--model", "g=gpt2,weights=%s,config=%s,layers=0:2" % (gw, gc),
                  "--model", "gb=gpt2,weights=%s,config=%s,layers=0:2,max_batch_rows=64,"
                  "batch_delay_us=2000" % (gw, gc),
                  "--model", "q=llama,weights=%s,config=%s,layers=0:2" % (lw, lc)]


def teardown():
    shutil.rmtree(TMP, ignore_errors=True)
    print(isa_levels.summary(RAN))
    for layout, cap, wrong, total in TALLY:
        print("  %-44s ISA %-17s %d wrong of %d" % (" ".join(layout), cap or "native", wrong,
                                                    total))


def _matrix(layout, cap):
    env = {"ONEDNN_MAX_CPU_ISA": cap} if cap else {}
    base = dict(os.environ)
    base.pop("ONEDNN_MAX_CPU_ISA", None)
    if not cap and "ONEDNN_MAX_CPU_ISA" in os.environ:
        env = {"ONEDNN_MAX_CPU_ISA": ""}
    srv = sslib.Server(*(list(layout) + setup.args), env=env, start_timeout=30)
    try:
        stubs = [sslib.connect(srv, separate=True) for _ in range(CHANNELS)]
        g = np.random.default_rng(17)
        xs = {m: [g.standard_normal(shape).astype(np.float32) for _ in range(N)]
              for m, (shape, _) in MODELS.items()}
        alone = {m: [result(stubs[0].compute(make_req(x, model=m), timeout=T(30)))
                     for x in xs[m]] for m in MODELS}
        wrong, total, errors = [0], [0], []
        lock = threading.Lock()

        def client(k):
            try:
                for rep in range(REPS):
                    for m, (shape, exact) in MODELS.items():
                        for i in range(k % 3, N, 3):
                            s = stubs[(k + i + rep) % CHANNELS]
                            got = result(s.compute(make_req(xs[m][i], model=m, request_id=i),
                                                   timeout=T(60)))
                            if exact:
                                ok = np.array_equal(got, alone[m][i])
                            else:
                                ok = np.allclose(got, alone[m][i], rtol=1e-4, atol=1e-4)
                            with lock:
                                total[0] += 1
                                if not ok:
                                    wrong[0] += 1
                                    if len(errors) < 3:
                                        errors.append("%s input %d: max err %.3g" % (
                                            m, i, float(np.max(np.abs(got - alone[m][i])))))
            except BaseException as e:  # noqa: B902 - reported by the main thread
                with lock:
                    errors.append(repr(e))

        ts = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for s in stubs:
            s.close()
        TALLY.append((layout, cap, wrong[0], total[0]))
        engine = srv.wait_for_line(r"matmul", timeout=1) or "?"
        print("%s, ISA cap %s: %d wrong of %d (%s)" % (" ".join(layout), cap or "native",
                                                       wrong[0], total[0], engine.strip()))
        assert wrong[0] == 0 and not errors, errors
    finally:
        srv.stop_ok(timeout=30)


def _layout_test(idx):
    def run():
        for cap in isa_levels.caps():
            _matrix(LAYOUTS[idx], cap)
            if idx == 0:
                RAN.append(cap)
    run.__doc__ = "Layout %s under every ISA level." % " ".join(LAYOUTS[idx])
    return run


test_workers_2 = _layout_test(0)
test_workers_1_intra_op_2 = _layout_test(1)
test_workers_2_io_threads_2 = _layout_test(2)


if __name__ == "__main__":
    sslib.main(globals(), default_timeout=280.0)
