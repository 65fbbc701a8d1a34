/*
 * compute_run.c — the running and answering of a Compute call once compute.c has decoded and
 * validated it: admission, the sleep timer or the worker job, and the reply (ss_compute_finish,
 * also for the calls of a batch: batch.c).
 *
 * A call's way from here (loop thread unless said otherwise):
 *   1. by the model's exec kind: INLINE (identity) answers at once (ss_compute_reply_echo);
 *      TIMER (sleep) passes per-model admission then waits on the loop's timer queue; WORKER
 *      passes admission (ss_compute_admit), then a job runs forward() on a worker thread
 *      (job_run) and its completion comes back to the loop (ss_compute_finish).
 *   2. the reply carries the output tensor as a borrowed tail (no copy): for echo models that
 *      is the request's own data view; otherwise the worker's output buffer.
 * Copies of tensor bytes: HTTP/2 frames -> request buffer (conn.c, forced by the codec);
 * request -> aligned f32 (worker, only when a computing model gets misaligned or non-f32
 * input); output -> write buffer (conn.c, forced). Echo models: frames -> buffer -> socket.
 *
 * Cancellation and deadlines: ss_compute_stop removes a waiting call from its admission queue,
 * stops a sleep, or flags a queued job so the worker skips it; a result that arrives after the
 * call was answered is dropped. The admission slot is always returned exactly once.
 *
 * Thread: loop thread, except job_run (a worker).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "core/macros.h"
#include "models/safetensors.h"
#include "service/compute_int.h"

static void fill_snapshot_msg(const ss_service *s, Splitlearn__Comm__MonitoringSnapshot *snap) {
  splitlearn__comm__monitoring_snapshot__init(snap);
  ss_fill_snapshot(s, snap);
}

static void release_slot(compute_state *st);
static void present_free(compute_state *st);

/* --------------------------------------------------------------- answers --- */

static void send_reply(compute_state *st, const void *data, size_t nbytes, ss_owned owner) {
  ss_call *call = st->call;
  Splitlearn__Comm__ComputeResponse resp = SPLITLEARN__COMM__COMPUTE_RESPONSE__INIT;
  int32_t shape[SS_MAX_DIMS];
  for (int i = 0; i < st->out_ndim; i++) shape[i] = (int32_t)st->out_shape[i];
  resp.n_shape = (size_t)st->out_ndim;
  resp.shape = shape;
  if (st->req->has_request_id) {
    resp.has_request_id = 1;
    resp.request_id = st->req->request_id;
  }
  resp.has_compute_time_ms = 1;
  resp.compute_time_ms = (float)st->compute_ms;
  Splitlearn__Comm__MonitoringSnapshot snap;
  fill_snapshot_msg(st->svc, &snap);
  resp.monitoring_data = &snap;
  if (st->training)
    resp.forward_id = st->forward_id;
  else if (st->req->forward_id)
    resp.forward_id = st->req->forward_id;
  /* The client-side cache goes back in the response without being copied: each entry is sent
   * as hand-encoded KVCacheEntry headers (arena) between borrowed segments of the present
   * buffers, which live until the call is freed (compute_free). Then field 1, the output. */
  int nl = st->sm->model->n_kv_layers;
  if (st->present && !st->session && nl > 0) {
    size_t nsegs = (size_t)nl * 5 + 2;
    ss_seg *segs = ss_arena_alloc(&st->arena, nsegs * sizeof *segs);
    uint8_t *hdr = ss_arena_alloc(&st->arena, (size_t)nl * 128 + 16);
    if (!segs || !hdr) {
      ss_owned_release(owner);
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    size_t k = 0;
    for (int l = 0; l < nl; l++) {
      const ss_kv_layer *p = &st->present[l];
      uint8_t shp[2][48];
      size_t shl[2] = {0, 0};
      for (int d = 0; d < 4; d++) {
        shl[0] += ss_pb_varint(shp[0] + shl[0], (uint64_t)p->key.shape[d]);
        shl[1] += ss_pb_varint(shp[1] + shl[1], (uint64_t)p->value.shape[d]);
      }
      uint8_t tmp[16];
      size_t entry = ss_pb_field_header(tmp, 1, p->key.nbytes) + p->key.nbytes +
                     ss_pb_field_header(tmp, 2, shl[0]) + shl[0] +
                     ss_pb_field_header(tmp, 3, p->value.nbytes) + p->value.nbytes +
                     ss_pb_field_header(tmp, 4, shl[1]) + shl[1];
      uint8_t *h = hdr + (size_t)l * 128, *q = h;
      q += ss_pb_field_header(q, 7, entry);         /* present_key_values[l] */
      q += ss_pb_field_header(q, 1, p->key.nbytes); /* key_data */
      segs[k++] = (ss_seg){h, (size_t)(q - h)};
      segs[k++] = (ss_seg){p->key.data, p->key.nbytes};
      h = q;
      q += ss_pb_field_header(q, 2, shl[0]); /* key_shape, packed */
      memcpy(q, shp[0], shl[0]), q += shl[0];
      q += ss_pb_field_header(q, 3, p->value.nbytes); /* value_data */
      segs[k++] = (ss_seg){h, (size_t)(q - h)};
      segs[k++] = (ss_seg){p->value.data, p->value.nbytes};
      h = q;
      q += ss_pb_field_header(q, 4, shl[1]); /* value_shape, packed */
      memcpy(q, shp[1], shl[1]), q += shl[1];
      segs[k++] = (ss_seg){h, (size_t)(q - h)};
    }
    uint8_t *d = hdr + (size_t)nl * 128;
    segs[k++] = (ss_seg){d, ss_pb_field_header(d, 1, nbytes)}; /* data */
    segs[k++] = (ss_seg){data, nbytes};
    st->present_in_reply = 1;
    ss_call_reply_segs(call, &resp.base, segs, k, owner);
    return;
  }
  ss_call_reply(call, &resp.base, 1, data, nbytes, owner);
}

void ss_compute_reply_echo(compute_state *st) {
  if (st->enc.zlib)
    send_reply(st, st->zdata, st->zlen, SS_NOT_OWNED); /* echo the payload as it came */
  else
    send_reply(st, st->in.data, st->in.nbytes, SS_NOT_OWNED);
}

/* ----------------------------------------------------------- the worker --- */

static void job_run(ss_job *job) {
  compute_state *st = ss_container_of(job, compute_state, job);
  const ss_model *m = st->sm->model;
  uint64_t t0 = uv_hrtime();
  st->t_run = t0;
  st->rc = 0;
  if (m->echo) { /* spin: burn the CPU, then the reply is the input */
    st->rc = m->ops->forward(m, &st->in, NULL, &st->meta, st->err, sizeof st->err);
    st->compute_ms = (double)(uv_hrtime() - t0) / 1e6;
    return;
  }
  if (st->enc.zlib) { /* wire codec zlib: inflate to exactly the size the shape says */
    st->rc = ss_codec_inflate("data", st->zdata, st->zlen, st->in.nbytes, &st->zbuf, st->err,
                              sizeof st->err);
    if (st->rc == 0) st->in.data = st->zbuf;
    if (st->rc == 0 && st->training &&
        ss_tensor_check_finite("data", &st->in, st->err, sizeof st->err) != 0)
      st->rc = SS_EINVAL;
    if (st->rc != 0) return;
  }
  ss_tensor in = st->in, out = {0};
  float *in32 = NULL;
  if ((uintptr_t)in.data % ss_dtype_size(in.dtype) != 0) {
    /* The protobuf field landed at an odd offset: move it to the (malloc-aligned) start of the
     * request buffer, which nothing else reads any more. */
    memmove(st->reqbuf, in.data, in.nbytes);
    in.data = st->reqbuf;
  }
  if (in.dtype != SS_DTYPE_F32) {
    in32 = malloc(in.numel * sizeof(float));
    if (!in32) goto nomem;
    ss_to_f32(in.dtype, in.data, in32, in.numel);
    in.data = in32;
    in.dtype = SS_DTYPE_F32;
    in.nbytes = in.numel * sizeof(float);
  }
  out.dtype = SS_DTYPE_F32;
  out.ndim = st->out_ndim;
  out.numel = 1;
  for (int i = 0; i < out.ndim; i++) {
    out.shape[i] = st->out_shape[i];
    out.numel *= (size_t)out.shape[i];
  }
  out.nbytes = out.numel * sizeof(float);
  out.data = malloc(out.nbytes ? out.nbytes : 1);
  if (!out.data) goto nomem;
  uv_rwlock_rdlock(&((ss_model *)m)->lock); /* a training step may not run meanwhile */
  if (st->training) {
    st->rc = m->ops->forward_train(m, &in, &out, st->forward_id, &st->saved, &st->saved_bytes,
                                   st->err, sizeof st->err);
  } else if (m->n_kv_layers > 0) {
    ss_kv_io kv = {m->n_kv_layers, st->n_past ? st->past : NULL, st->want_present, st->present,
                   st->cache};
    st->rc = m->ops->forward_kv(m, &in, &out, &kv, &st->meta, st->err, sizeof st->err);
  } else {
    st->rc = m->ops->forward(m, &in, &out, &st->meta, st->err, sizeof st->err);
  }
  uv_rwlock_rdunlock(&((ss_model *)m)->lock);
  if (st->rc == 0 && m->weights && ss_st_check(m->weights, st->err, sizeof st->err) != 0)
    st->rc = SS_EPRECONDITION; /* the weights file changed under the mapping: result is void */
  free(in32);
  in32 = NULL;
  if (st->rc == 0 && st->in.dtype != SS_DTYPE_F32) {
    size_t nb = out.numel * ss_dtype_size(st->in.dtype);
    void *conv = malloc(nb ? nb : 1);
    if (!conv) {
      free(out.data);
      goto nomem;
    }
    ss_from_f32(st->in.dtype, out.data, conv, out.numel);
    free(out.data);
    out.data = conv;
    out.nbytes = nb;
  }
  if (st->rc == 0 && st->enc.zlib) { /* the reply travels as it came: zlib */
    void *z;
    size_t zn;
    if (ss_codec_deflate(out.data, out.nbytes, &z, &zn) != 0) {
      free(out.data);
      goto nomem;
    }
    free(out.data);
    out.data = z;
    out.nbytes = zn;
  }
  if (st->rc == 0) {
    st->out_data = out.data;
    st->out_nbytes = out.nbytes;
  } else {
    free(out.data);
  }
  st->compute_ms = (double)(uv_hrtime() - t0) / 1e6;
  return;
nomem:
  free(in32);
  st->rc = SS_ENOMEM;
  snprintf(st->err, sizeof st->err, "out of memory for a %zu-element tensor", st->in.numel);
}

/* Loop thread: the worker finished (or skipped) the job. */
static void job_done(ss_job *job) {
  compute_state *st = ss_container_of(job, compute_state, job);
  st->on_worker = 0;
  release_slot(st);
  ss_compute_finish(st, job->ran);
}

void ss_compute_finish(compute_state *st, int ran) {
  ss_call *call = st->call;
  if (st->session) { /* the step stays in the session's cache, even if the client went away */
    ss_session_release(st->svc->sessions, st->session, st->session_end);
    st->session = NULL;
    st->cache = NULL;
  }
  if (st->saved) { /* keep what backward needs, even if the client went away meanwhile */
    void *saved = st->saved;
    st->saved = NULL;
    int src = ss_train_store(st->svc, st->forward_id, st->owner, st->sm, saved, st->saved_bytes,
                             &st->in, st->out_shape, st->out_ndim, &st->enc);
    if (src == 0 && st->implicit)
      src = ss_train_implicit_add(st->svc, st->forward_id, ss_call_conn_id(call));
    if (src != 0 && !ss_call_answered(call)) {
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED,
                   "cannot keep the activations of forward '%s' (%zu bytes)", st->forward_id,
                   st->saved_bytes);
    }
  }
  if (!ss_call_answered(call)) {
    if (!ran) {
      ss_call_fail(call, SS_GRPC_CANCELLED, "call cancelled before it was computed");
    } else if (st->rc != 0) {
      int code = st->rc == SS_EINVAL ? SS_GRPC_INVALID_ARGUMENT : (int)ss_error_to_grpc(st->rc);
      ss_call_fail(call, code, "model '%s': %s", st->sm->model->id,
                   st->err[0] ? st->err : ss_strerror(st->rc));
    } else if (st->sm->model->echo) {
      ss_compute_reply_echo(st);
    } else {
      void *data = st->out_data;
      st->out_data = NULL; /* the call owns it now (heap memory: free) */
      send_reply(st, data, st->out_nbytes, (ss_owned){data, free});
    }
  }
  if (!st->present_in_reply) present_free(st); /* else sent from these buffers: compute_free */
  ss_call_unref(call);                         /* the job's reference */
}

static void present_free(compute_state *st) {
  if (!st->present) return;
  ss_kv_free(st->present, st->sm->model->n_kv_layers);
  st->present = NULL;
}

static void on_wake(ss_tq_entry *e) {
  compute_state *st = ss_container_of(e, compute_state, wake);
  release_slot(st);
  if (!ss_call_answered(st->call)) ss_compute_reply_echo(st);
}

/* Admitted: run it. */
static void start(compute_state *st) {
  ss_service *s = st->svc;
  const ss_model *m = st->sm->model;
  st->holds_slot = 1;
  if (m->exec == SS_EXEC_TIMER) {
    double ms = 100;
    ss_model_sleep_ms(&st->meta, &ms, st->err, sizeof st->err);
    st->compute_ms = ms;
    if (ss_tq_arm(&s->tq, &st->wake, uv_hrtime() + (uint64_t)(ms * 1e6), on_wake) != 0) {
      release_slot(st);
      ss_call_fail(st->call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory for a timer");
    }
    return;
  }
  st->on_worker = 1;
  ss_call_ref(st->call);
  st->job.run = job_run;
  st->job.done = job_done;
  atomic_store(&st->job.cancelled, 0);
  ss_pool_submit(s->pool, &st->job);
}

static void release_slot(compute_state *st) {
  if (!st->holds_slot) return;
  st->holds_slot = 0;
  ss_waiter *w = ss_admit_leave(&st->sm->admit);
  if (w) w->start(w); /* a call or a batch (service/batch.c) */
}

static void start_waiter(ss_waiter *w) { start(ss_container_of(w, compute_state, waiter)); }

void ss_compute_admit(compute_state *st) {
  const ss_model *m = st->sm->model;
  st->waiter.start = start_waiter;
  switch (ss_admit_enter(&st->sm->admit, &st->waiter)) {
    case SS_ADMIT_RUN: start(st); break;
    case SS_ADMIT_QUEUED: break;
    default:
      ss_call_fail(st->call, SS_GRPC_RESOURCE_EXHAUSTED,
                   "model '%s' is at capacity: %d running, %zu queued (--max-inflight %d, "
                   "--max-queue %d); retry later",
                   m->id, st->sm->admit.inflight, st->sm->admit.waiting, st->sm->admit.limit,
                   st->sm->admit.max_queue);
  }
}

void ss_compute_stop(compute_state *st) {
  ss_admit_remove(&st->sm->admit, &st->waiter);
  if (ss_tq_armed(&st->wake)) {
    ss_tq_cancel(&st->svc->tq, &st->wake);
    release_slot(st);
  }
  if (st->on_worker) atomic_store(&st->job.cancelled, 1);
}

void ss_compute_free(ss_call *call) {
  compute_state *st = ss_call_state(call);
  uint64_t now = uv_hrtime();
  double queue_s = st->t_run && st->t_admitted ? (double)(st->t_run - st->t_admitted) / 1e9 : -1;
  ss_metrics_observe(st->svc, st->sm ? st->sm->model->id : "", "Compute", ss_call_status(call),
                     queue_s, st->t_run ? st->compute_ms / 1e3 : -1,
                     (double)(now - ss_call_start_ns(call)) / 1e9);
  if (st->session) { /* never started: give the session back unchanged */
    ss_session_release(st->svc->sessions, st->session, 0);
    st->session = NULL;
    st->cache = NULL;
  }
  present_free(st);
  if (st->saved) st->sm->model->ops->free_saved(st->sm->model, st->saved);
  free(st->out_data);
  free(st->zbuf);
  ss_arena_release(&st->arena); /* the unpacked request, metadata views */
  if (st->sm) ss_served_unref(st->sm);
}
