"""The checks every trunk family's suite runs the same way (test_families.py, test_gpt_neox.py),
written once: a served trunk against its float64 reference on prefill, client-cache decode,
server sessions and batched decode steps, and the split-training protocol (a training forward,
then ComputeBackward) that the training checks play.

models: {id: (ref, (a, b), cfg)} where ref(x[, past]) returns (y, presents) in float64 and cfg
has .hidden and .max_pos; model id + "b" serves the same trunk with decode batching. Errors are
recorded per key in worst (the largest seen), which the suites print at teardown."""
import shutil

import numpy as np

import sslib
import train_ref
from sslib import T, make_req, result


def x_of(cfg, batch, seq, seed):
    return np.random.default_rng(seed).standard_normal((batch, seq, cfg.hidden)).astype(np.float32)


class Checks:
    def __init__(self, conn, tol=1e-4):
        self.conn, self.tol, self.worst = conn, tol, {}

    def finish(self, server, tmp, label="max errors"):
        """A suite's teardown: the connection closed, the server stopped cleanly, its temporary
        directory removed, and the largest error of each kind printed."""
        self.conn.close()
        server.stop_ok()
        shutil.rmtree(tmp, ignore_errors=True)
        print("  %s: " % label + ", ".join("%s %.3g" % kv for kv in sorted(self.worst.items())))

    def call(self, model, x, past=None, use_cache=None, c=None, **meta):
        return sslib.compute_kv(c or self.conn, model, x, past, use_cache, **meta)

    def close(self, got, ref, what, tol=None, key=None):
        """max |got - ref| <= tol (absolute); recorded under key."""
        tol = self.tol if tol is None else tol
        assert got.shape == ref.shape, "%s: shape %s, expected %s" % (what, got.shape, ref.shape)
        err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
        assert err <= tol, "%s: max abs err %.3g > %.1g (max |ref| %.3g)" % (
            what, err, tol, float(np.max(np.abs(ref))))
        if key:
            self.worst[key] = max(self.worst.get(key, 0.0), err)
        return err

    def rel(self, got, want, what, key):
        """max |got - want| / max |want| < tol; recorded under key."""
        e = train_ref.rel_err(got, want)
        assert e < self.tol, "%s: rel err %.3g" % (what, e)
        self.worst[key] = max(self.worst.get(key, 0.0), e)

    def prefill(self, models):
        for mid, (ref, _, cfg) in models.items():
            for batch in (1, 2):
                for seq in (1, 4, 11, cfg.max_pos):
                    x = x_of(cfg, batch, seq, seed=seq * 10 + batch)
                    y, _ = ref(x)
                    self.close(result(self.call(mid, x)).reshape(y.shape), y,
                               "%s batch %d seq %d" % (mid, batch, seq), key=mid + " prefill")

    def client_cache(self, models):
        """Prefill 4 tokens with use_cache (the presents checked too), then one token at a time
        with the previous call's presents as the past."""
        for mid, (ref, _, cfg) in models.items():
            for batch in (1, 2):
                total, first = 12, 4
                x = x_of(cfg, batch, total, seed=40 + batch)
                y_full, _ = ref(x)
                r = self.call(mid, x[:, :first], use_cache=True)
                past = sslib.presents(r)
                _, pres_first = ref(x[:, :first])
                for i, ((k, v), (rk, rv)) in enumerate(zip(past, pres_first)):
                    self.close(k, rk, "%s present[%d].key" % (mid, i), key=mid + " presents")
                    self.close(v, rv, "%s present[%d].value" % (mid, i), key=mid + " presents")
                for t in range(first, total):
                    r = self.call(mid, x[:, t:t + 1], past=past, use_cache=True)
                    self.close(result(r).reshape(batch, 1, -1), y_full[:, t:t + 1],
                               "%s batch %d decode at %d" % (mid, batch, t), key=mid + " decode")
                    past = sslib.presents(r)

    def sessions_and_batched(self, models):
        """A server session (prefill, steps, session_end), then three sessions' steps sent
        together to the batching twin (one forward_kv_batch)."""
        for mid, (ref, _, cfg) in models.items():
            total, first = 10, 4
            x = x_of(cfg, 2, total, seed=70)
            y_full, _ = ref(x)
            sid = "s-" + mid
            r = self.call(mid, x[:, :first], session=sid)
            self.close(result(r).reshape(2, first, -1), y_full[:, :first], mid + " session prefill")
            for t in range(first, total):
                meta = {"session_end": 1} if t == total - 1 else {}
                r = self.call(mid, x[:, t:t + 1], session=sid, **meta)
                self.close(result(r).reshape(2, 1, -1), y_full[:, t:t + 1],
                           "%s session step at %d" % (mid, t), key=mid + " session")
            n = 3
            xs = [x_of(cfg, 1, 9, seed=90 + i) for i in range(n)]
            ys = [ref(xx)[0] for xx in xs]
            for i in range(n):
                self.call(mid + "b", xs[i][:, :3 + i], session="bs-%s-%d" % (mid, i))
            for step in range(2):
                futs = [(i, 3 + i + step, self.conn.compute.future(
                    make_req(xs[i][:, 3 + i + step:4 + i + step], model=mid + "b",
                             session="bs-%s-%d" % (mid, i)), timeout=T(20))) for i in range(n)]
                for i, t, f in futs:
                    self.close(result(f.result()).reshape(1, 1, -1), ys[i][:, t:t + 1],
                               "%s batched step, session %d position %d" % (mid, i, t),
                               key=mid + " batched")

    def backward(self, grad, forward_id, model, lr, c=None):
        g = np.ascontiguousarray(grad, np.float32)
        req = sslib.pb.BackwardRequest(grad_output_data=g.tobytes(), forward_id=forward_id,
                                       model_id=model, learning_rate=lr)
        req.grad_output_shape.extend(g.shape)
        return (c or self.conn).backward(req, timeout=T(30))

    def play(self, model, cfg, lr, n, seed, shape=(2, 6), c=None):
        """n rounds of (training forward, ComputeBackward with a random grad_output): returns
        (grad_inputs, xs, grad_outputs)."""
        g = sslib.rng(seed)
        xs, grads, gins = [], [], []
        for i in range(n):
            x = g.standard_normal(shape + (cfg.hidden,)).astype(np.float32)
            r = g.standard_normal(shape + (cfg.hidden,)).astype(np.float32)
            req = make_req(x, model=model)
            req.training_mode = True
            req.forward_id = "%s-%d-%d" % (model, seed, i)
            (c or self.conn).compute(req, timeout=T(30))
            b = self.backward(r, req.forward_id, model, lr, c)
            gins.append(np.frombuffer(b.grad_input_data, np.float32).reshape(x.shape))
            xs.append(x)
            grads.append(r)
        return gins, xs, grads
