/*
 * compute.c — ComputeService.Compute (ComputeBackward is in train.c).
 *
 * A Compute call's way (loop thread unless said otherwise):
 *   1. the request message is split: the `data` field (the tensor, usually almost all the
 *      bytes) stays where it is in the call's request buffer and becomes a borrowed view; the
 *      few remaining bytes are unpacked by protobuf-c. (protobuf-c would copy `data`: this
 *      saves that copy.)
 *   2. validation: model (by model_id; empty = default), dtype (metadata "dtype"), shape vs
 *      byte length, the model's own check (widths); each failure is INVALID_ARGUMENT or
 *      NOT_FOUND with a message naming the field, the expected and the received value.
 *   3. by the model's exec kind: INLINE (identity) answers now; TIMER (sleep) passes per-model
 *      admission then waits on the loop's timer queue; WORKER passes admission, then a job runs
 *      forward() on a worker thread and its completion comes back to the loop.
 *   4. the reply carries the output tensor as a borrowed tail (no copy): for echo models that
 *      is the request's own data view; otherwise the worker's output buffer.
 * Copies of tensor bytes: HTTP/2 frames -> request buffer (conn.c, forced by the codec);
 * request -> aligned f32 (worker, only when a computing model gets misaligned or non-f32
 * input); output -> write buffer (conn.c, forced). Echo models: frames -> buffer -> socket.
 *
 * Cancellation and deadlines: svc_cancel removes a waiting call from its admission queue, stops
 * a sleep, or flags a queued job so the worker skips it; a result that arrives after the call
 * was answered is dropped. The admission slot is always returned exactly once.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "core/log.h"
#include "models/safetensors.h"
#include "core/macros.h"
#include "service/compute_int.h"


const size_t ss_compute_state_size = sizeof(compute_state);

static void fill_snapshot_msg(const ss_service *s, Splitlearn__Comm__MonitoringSnapshot *snap) {
  splitlearn__comm__monitoring_snapshot__init(snap);
  ss_fill_snapshot(s, snap);
}

/* --------------------------------------------------------------- answers --- */

static void send_reply(compute_state *st, const void *data, size_t nbytes, void *owner) {
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
  if (st->training) resp.forward_id = st->forward_id;
  else if (st->req->forward_id) resp.forward_id = st->req->forward_id;
  /* The client-side cache goes back in the response without being copied: each entry is sent
   * as hand-encoded KVCacheEntry headers (arena) between borrowed segments of the present
   * buffers, which live until the call is freed (compute_free). Then field 1, the output. */
  int nl = st->sm->model->n_kv_layers;
  if (st->present && !st->session && nl > 0) {
    size_t nsegs = (size_t)nl * 5 + 2;
    ss_seg *segs = ss_arena_alloc(&st->arena, nsegs * sizeof *segs);
    uint8_t *hdr = ss_arena_alloc(&st->arena, (size_t)nl * 128 + 16);
    if (!segs || !hdr) {
      free(owner);
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
      q += ss_pb_field_header(q, 7, entry);          /* present_key_values[l] */
      q += ss_pb_field_header(q, 1, p->key.nbytes);  /* key_data */
      segs[k++] = (ss_seg){h, (size_t)(q - h)};
      segs[k++] = (ss_seg){p->key.data, p->key.nbytes};
      h = q;
      q += ss_pb_field_header(q, 2, shl[0]);         /* key_shape, packed */
      memcpy(q, shp[0], shl[0]), q += shl[0];
      q += ss_pb_field_header(q, 3, p->value.nbytes); /* value_data */
      segs[k++] = (ss_seg){h, (size_t)(q - h)};
      segs[k++] = (ss_seg){p->value.data, p->value.nbytes};
      h = q;
      q += ss_pb_field_header(q, 4, shl[1]);         /* value_shape, packed */
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

static void release_slot(compute_state *st);
static void present_free(compute_state *st);

static void reply_echo(compute_state *st) {
  if (st->enc.zlib) send_reply(st, st->zdata, st->zlen, NULL); /* echo the payload as it came */
  else send_reply(st, st->in.data, st->in.nbytes, NULL);
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
    ss_kv_io kv = {m->n_kv_layers, st->n_past ? st->past : NULL, st->want_present, st->present};
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
  if (st->session) { /* the new cache becomes the session's, even if the client went away */
    int ok = ran && st->rc == 0;
    ss_session_release(st->svc->sessions, st->session, ok ? st->present : NULL,
                       st->sm->model->n_kv_layers, st->session_end);
    if (ok) st->present = NULL;
    else present_free(st);
    st->session = NULL;
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
      reply_echo(st);
    } else {
      void *data = st->out_data;
      st->out_data = NULL; /* the call owns it now */
      send_reply(st, data, st->out_nbytes, data);
    }
  }
  if (!st->present_in_reply) present_free(st); /* else sent from these buffers: compute_free */
  ss_call_unref(call); /* the job's reference */
}

static void present_free(compute_state *st) {
  if (!st->present) return;
  ss_kv_free(st->present, st->sm->model->n_kv_layers);
  st->present = NULL;
}

static void on_wake(ss_tq_entry *e) {
  compute_state *st = ss_container_of(e, compute_state, wake);
  release_slot(st);
  if (!ss_call_answered(st->call)) reply_echo(st);
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

static void compute_cancel(ss_call *call) {
  compute_state *st = ss_call_state(call);
  if (st->batch) {
    ss_batch_cancel(st);
    return;
  }
  ss_admit_remove(&st->sm->admit, &st->waiter);
  if (ss_tq_armed(&st->wake)) {
    ss_tq_cancel(&st->svc->tq, &st->wake);
    release_slot(st);
  }
  if (st->on_worker) atomic_store(&st->job.cancelled, 1);
}

static void compute_free(ss_call *call) {
  compute_state *st = ss_call_state(call);
  uint64_t now = uv_hrtime();
  double queue_s = st->t_run && st->t_admitted ? (double)(st->t_run - st->t_admitted) / 1e9 : -1;
  ss_metrics_observe(st->svc, st->sm ? st->sm->model->id : "", "Compute", ss_call_status(call),
                     queue_s, st->t_run ? st->compute_ms / 1e3 : -1,
                     (double)(now - ss_call_start_ns(call)) / 1e9);
  if (st->session) { /* never started: give the session back unchanged */
    ss_session_release(st->svc->sessions, st->session, NULL, 0, 0);
    st->session = NULL;
  }
  present_free(st);
  if (st->saved) st->sm->model->ops->free_saved(st->sm->model, st->saved);
  free(st->out_data);
  free(st->zbuf);
  ss_arena_release(&st->arena); /* the unpacked request, metadata views */
  if (st->sm) ss_served_unref(st->sm);
}

/* ------------------------------------------------------------- KV cache --- */

/* Validate and attach the cache: the request's past_key_values (client-side cache) or a
 * server-side session (metadata session=ID; session_end=1 frees it after this call).
 * Answers the call on failure and returns -1. */
static int setup_kv(compute_state *st, char *err, size_t errlen) {
  ss_call *call = st->call;
  const ss_model *m = st->sm->model;
  Splitlearn__Comm__ComputeRequest *req = st->req;
  const char *sid = ss_meta_get(&st->meta, "session");
  const char *end = ss_meta_get(&st->meta, "session_end");
  st->session_end = end && strcmp(end, "0") != 0 && strcmp(end, "false") != 0;
  if (sid && !*sid) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "metadata session is empty: give a session id");
    return -1;
  }
  if (sid && st->n_kv_wire > 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "metadata session='%s' keeps the cache on the server: past_key_values must be "
                 "empty, got %zu entries", sid, st->n_kv_wire);
    return -1;
  }
  int n = (int)st->n_kv_wire;
  if (n > 0) {
    st->past = ss_arena_alloc(&st->arena, (size_t)n * sizeof *st->past);
    if (!st->past) {
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return -1;
    }
    for (int i = 0; i < n; i++) {
      ss_wire_kv e;
      char what[64];
      if (ss_parse_kv_entry(st->kv_wire[i].p, st->kv_wire[i].len, &e) != 0) {
        ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                     "past_key_values[%d] is not a valid KVCacheEntry protobuf", i);
        return -1;
      }
      if (e.n_key_shape > SS_WIRE_MAX_DIMS || e.n_value_shape > SS_WIRE_MAX_DIMS) {
        ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                     "past_key_values[%d] has a shape of %zu dims; at most %d", i,
                     e.n_key_shape > e.n_value_shape ? e.n_key_shape : e.n_value_shape,
                     SS_WIRE_MAX_DIMS);
        return -1;
      }
      snprintf(what, sizeof what, "past_key_values[%d].key_data", i);
      int rv = ss_tensor_from_wire(what, e.key_shape, e.n_key_shape, e.key.p, e.key.len,
                                   SS_DTYPE_F32, &st->past[i].key, err, errlen);
      if (rv == 0) {
        snprintf(what, sizeof what, "past_key_values[%d].value_data", i);
        rv = ss_tensor_from_wire(what, e.value_shape, e.n_value_shape, e.value.p, e.value.len,
                                 SS_DTYPE_F32, &st->past[i].value, err, errlen);
      }
      if (rv != 0) {
        ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s (KV caches are float32)", err);
        return -1;
      }
    }
    st->n_past = n;
  }
  if (sid) {
    char why[128] = "";
    ss_access_owner(st->svc, call, st->owner);
    switch (ss_session_acquire(st->svc->sessions, m->id, sid, st->owner, &st->session, why,
                               sizeof why)) {
    case SS_SESSION_OK: break;
    case SS_SESSION_FOREIGN: /* before anything about it (busy, evicted) is told */
      ss_call_fail(call, SS_GRPC_PERMISSION_DENIED,
                   "session '%s' of model '%s' belongs to another token: only the token that "
                   "created it may use it", sid, m->id);
      return -1;
    case SS_SESSION_EVICTED:
      ss_call_fail(call, SS_GRPC_FAILED_PRECONDITION,
                   "session '%s' of model '%s' was %s (--session-ttl / --session-memory-mb); its "
                   "KV cache is gone: start it again with the full prefix",
                   sid, m->id, why);
      return -1;
    case SS_SESSION_ENDED:
      ss_call_fail(call, SS_GRPC_FAILED_PRECONDITION,
                   "session '%s' of model '%s' was ended (session_end=1); a session id names one "
                   "session and is not reused while the server remembers it: start a new session "
                   "with a new id",
                   sid, m->id);
      return -1;
    case SS_SESSION_BUSY:
      ss_call_fail(call, SS_GRPC_ABORTED,
                   "session '%s' of model '%s' is busy with another call; send decode steps of one "
                   "session one at a time", sid, m->id);
      return -1;
    default: ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory"); return -1;
    }
    st->past = st->session->past;
    st->n_past = st->session->past ? st->session->n_layers : 0;
  }
  int rv = m->ops->check_kv(m, &st->in, st->past, st->n_past, err, errlen);
  if (rv != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s%s%s", err, sid ? " (session " : "",
                 sid ? "cache)" : "");
    return -1;
  }
  st->want_present = (req->has_use_cache && req->use_cache) || st->session != NULL;
  if (st->want_present) {
    st->present = calloc((size_t)m->n_kv_layers, sizeof *st->present);
    if (!st->present) {
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return -1;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- handler --- */

/* The stages of a Compute call on the loop thread. Each returns 0 to go on, or -1 after it
 * answered the call (the message names the field, the expected and the received value). */

/* The wire checks that run before protobuf-c allocates anything, then the decode: the data field
 * (and the KV cache entries) stay in the request buffer as views. */
static int decode_request(compute_state *st, const uint8_t **data, size_t *dlen) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  {
    /* Before protobuf-c allocates anything: metadata entry count and sizes; no NUL in ids;
     * unknown fields, repeated entries (shape) and repeats of singular fields bounded. */
    static const uint32_t str_fields[] = {5, 6};
    static const char *const str_names[] = {"model_id", "forward_id"};
    ss_wire_limits lim = {4,
                          (size_t)s->cfg.max_metadata_entries,
                          s->cfg.max_metadata_key_bytes,
                          s->cfg.max_metadata_value_bytes,
                          str_fields,
                          str_names,
                          2,
                          &splitlearn__comm__compute_request__descriptor};
    char why[256];
    int rv = ss_wire_check(st->reqbuf, st->reqlen, &lim, why, sizeof why);
    if (rv != 0) {
      ss_call_fail(call, rv == SS_EBUSY ? SS_GRPC_RESOURCE_EXHAUSTED : SS_GRPC_INVALID_ARGUMENT,
                   "%s", why);
      return -1;
    }
  }
  st->req = (Splitlearn__Comm__ComputeRequest *)ss_decode_tensor_request(
      &splitlearn__comm__compute_request__descriptor, st->reqbuf, st->reqlen, &st->arena,
      &st->pballoc, data, dlen, 8, &st->kv_wire, &st->n_kv_wire);
  if (!st->req) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "request (%zu bytes) is not a valid splitlearn.comm.ComputeRequest protobuf",
                 st->reqlen);
    return -1;
  }
  return 0;
}

/* Metadata views, the proxy affinity headers, the session id bound. */
static int read_metadata(compute_state *st) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  Splitlearn__Comm__ComputeRequest *req = st->req;
  size_t nm = req->n_metadata;
  st->keys = ss_arena_alloc(&st->arena, (nm + 1) * sizeof *st->keys);
  st->vals = ss_arena_alloc(&st->arena, (nm + 1) * sizeof *st->vals);
  if (!st->keys || !st->vals) {
    ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < nm; i++) {
    st->keys[i] = req->metadata[i]->key;
    st->vals[i] = req->metadata[i]->value;
  }
  st->meta = (ss_meta){st->keys, st->vals, nm, &st->job.cancelled}; /* models poll it */
  /* The proxy affinity headers (deploy/): x-session-id is metadata session=ID, x-forward-id
   * the forward_id field; both given and different is an error. */
  const char *hsid = ss_call_header(call, "x-session-id");
  const char *sid = ss_meta_get(&st->meta, "session");
  if (hsid && *hsid) {
    if (sid && strcmp(sid, hsid) != 0) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                   "metadata session='%.300s' and request header x-session-id '%.300s' differ: "
                   "send one of them, or the same id in both", sid, hsid);
      return -1;
    }
    if (!sid) {
      st->keys[nm] = "session";
      st->vals[nm] = hsid;
      st->meta.n = nm + 1;
      sid = hsid;
    }
  }
  const char *hfid = ss_call_header(call, "x-forward-id");
  if (hfid && *hfid) {
    if (req->forward_id && *req->forward_id && strcmp(req->forward_id, hfid) != 0) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                   "forward_id '%.300s' and request header x-forward-id '%.300s' differ: send one "
                   "of them, or the same id in both", req->forward_id, hfid);
      return -1;
    }
    req->forward_id = (char *)hfid; /* lives as long as the call */
  }
  if (sid && strlen(sid) > s->cfg.max_session_id_bytes) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "metadata session is %zu bytes long; session ids are at most %zu bytes "
                 "(--max-session-id-bytes)", strlen(sid), s->cfg.max_session_id_bytes);
    return -1;
  }

  return 0;
}

/* The served model (takes a reference), after the token's permission. */
static int find_model(compute_state *st, int tok) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  Splitlearn__Comm__ComputeRequest *req = st->req;
  /* model (a token limited to some models learns nothing about the others: PERMISSION_DENIED
   * comes before NOT_FOUND) */
  st->sm = ss_service_find_model(s, req->model_id);
  if (ss_access_authorize(s, call, tok, st->sm ? st->sm->model->id : req->model_id) != 0) {
    st->sm = NULL;
    return -1;
  }
  if (!st->sm && ss_models_test_disabled(s, req->model_id)) {
    ss_call_fail(call, SS_GRPC_NOT_FOUND,
                 "model '%s' exists but is disabled: it is a test model; start the server with "
                 "--enable-test-models (config enable_test_models: true) to serve it",
                 req->model_id);
    return -1;
  }
  if (!st->sm) {
    char known[512];
    ss_models_list(s, known, sizeof known);
    ss_call_fail(call, SS_GRPC_NOT_FOUND, "unknown model_id '%s'; this server has: %s",
                 req->model_id, known);
    return -1;
  }
  st->sm->calls++;
  ss_served_ref(st->sm); /* released in compute_free */
  return 0;
}

/* How the tensor travels (metadata dtype/codec, else the model's wire keys, else the server's)
 * and its shape against its bytes. */
static int read_tensor(compute_state *st, const uint8_t *data, size_t dlen) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  Splitlearn__Comm__ComputeRequest *req = st->req;
  const ss_model *m = st->sm->model;
  char err[512];
  if (ss_wire_enc_resolve(s, m, &st->meta, &st->enc, err, sizeof err) != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s", err);
    return -1;
  }
  int rv;
  if (st->enc.zlib) {
    rv = ss_tensor_shape_from_wire("data", req->shape, req->n_shape, st->enc.dtype, &st->in, err,
                                   sizeof err);
    if (rv == 0 && st->in.nbytes > s->cfg.max_message_bytes) {
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED,
                   "data inflates to %zu bytes (shape x dtype), over the limit of %zu bytes "
                   "(--max-message-bytes)", st->in.nbytes, s->cfg.max_message_bytes);
      return -1;
    }
    if (rv == 0 && ss_codec_check_stream("data", dlen, err, sizeof err) != 0) rv = SS_EINVAL;
    st->zdata = data;
    st->zlen = dlen;
  } else {
    rv = ss_tensor_from_wire("data", req->shape, req->n_shape, data, dlen, st->enc.dtype, &st->in,
                             err, sizeof err);
  }
  if (rv != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s", err);
    return -1;
  }
  return 0;
}

/* What the call asks of the model: cache or session, training, the model's own shape checks,
 * the training input's values and activation budget, the sleep time. */
static int check_mode(compute_state *st) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  Splitlearn__Comm__ComputeRequest *req = st->req;
  const ss_model *m = st->sm->model;
  char err[512];
  int rv;
  if (m->n_kv_layers == 0) {
    if (st->n_kv_wire > 0) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                   "model '%s' (kind %s) keeps no KV cache: past_key_values must be empty, got %zu "
                   "entries",
                   m->id, m->kind, st->n_kv_wire);
      return -1;
    }
    if (ss_meta_get(&st->meta, "session")) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                   "metadata session: model '%s' (kind %s) keeps no KV cache, so it has no decode "
                   "sessions", m->id, m->kind);
      return -1;
    }
  }
  /* implicit_training=1 (the Split-Learning trainer's flow, train.c): a plain forward without
   * training_mode, forward_id or any cache is a training forward */
  st->implicit = m->implicit_training && m->ops->forward_train && !req->has_training_mode &&
                 !(req->forward_id && *req->forward_id) && st->n_kv_wire == 0 &&
                 !ss_meta_get(&st->meta, "session") && !req->has_use_cache;
  if ((req->has_training_mode && req->training_mode) || st->implicit) {
    if (!m->ops->forward_train) {
      ss_call_fail(call, SS_GRPC_UNIMPLEMENTED,
                   "training_mode=true: model '%s' (kind %s) has no backward pass; models that "
                   "train: mlp, gpt2, llama", m->id, m->kind);
      return -1;
    }
    if (st->n_kv_wire > 0 || ss_meta_get(&st->meta, "session") ||
        ss_meta_get(&st->meta, "mrope_positions") || (req->has_use_cache && req->use_cache)) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                   "training_mode=true runs the full sequence at text positions: "
                   "past_key_values, use_cache and metadata session, mrope_positions are for "
                   "inference only");
      return -1;
    }
    ss_access_owner(s, call, st->owner);
    if (ss_train_forward_id(s, call, st->owner, req->forward_id, st->forward_id,
                            sizeof st->forward_id) != 0)
      return -1;
    st->training = 1;
  }
  rv = m->ops->check(m, &st->in, &st->meta, st->out_shape, &st->out_ndim, err, sizeof err);
  if (rv != 0) {
    ss_call_fail(call, rv == SS_EINVAL ? SS_GRPC_INVALID_ARGUMENT : (int)ss_error_to_grpc(rv), "%s",
                 err);
    return -1;
  }
  if (st->training) {
    /* A NaN in a training input poisons every weight at the next step: refuse it here (a zlib
     * payload is checked on the worker once inflated). */
    if (!st->enc.zlib && ss_tensor_check_finite("data", &st->in, err, sizeof err) != 0) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s", err);
      return -1;
    }
    /* Over the activation budget on its own: refused before the worker allocates anything. */
    if (m->ops->train_bytes &&
        ss_train_check_budget(s, st->forward_id, m->ops->train_bytes(m, &st->in), err,
                              sizeof err) != 0) {
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "%s", err);
      return -1;
    }
  }
  if (m->n_kv_layers > 0 && !st->training && setup_kv(st, err, sizeof err) != 0) return -1;
  if (m->exec == SS_EXEC_TIMER) {
    double ms;
    if (ss_model_sleep_ms(&st->meta, &ms, err, sizeof err) != 0) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s", err);
      return -1;
    }
  }
  return 0;
}

/* Answer at once (echo), or into the model's batcher, or through admission to a worker. */
static void dispatch(compute_state *st) {
  ss_call *call = st->call;
  const ss_model *m = st->sm->model;
  if (m->exec == SS_EXEC_INLINE) {
    reply_echo(st);
    return;
  }
  st->t_admitted = uv_hrtime();
  if (ss_batch_wants(st)) {
    ss_batch_add(st);
    return;
  }
  st->waiter.start = start_waiter;
  switch (ss_admit_enter(&st->sm->admit, &st->waiter)) {
  case SS_ADMIT_RUN: start(st); break;
  case SS_ADMIT_QUEUED: break;
  default:
    ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED,
                 "model '%s' is at capacity: %d running, %zu queued (--max-inflight %d, "
                 "--max-queue %d); retry later",
                 m->id, st->sm->admit.inflight, st->sm->admit.waiting, st->sm->admit.limit,
                 st->sm->admit.max_queue);
  }
}

void ss_h_compute(ss_call *call, void *app) {
  ss_service *s = app;
  compute_state *st = ss_call_state(call);
  memset(st, 0, offsetof(compute_state, arena_buf));
  st->call = call;
  st->svc = s;
  st->reqbuf = ss_call_request(call, &st->reqlen);
  ss_call_set_hooks(call, compute_cancel, compute_free);
  ss_arena_init(&st->arena, st->arena_buf, sizeof st->arena_buf);
  const uint8_t *data;
  size_t dlen;
  int tok = ss_access_authenticate(s, call);
  if (tok == -1 || decode_request(st, &data, &dlen) != 0 || read_metadata(st) != 0 ||
      find_model(st, tok) != 0 || read_tensor(st, data, dlen) != 0 || check_mode(st) != 0)
    return;
  dispatch(st);
}
