/*
 * compute.c — ComputeService.Compute, the handler: decode, validate, and choose the way of the
 * call (ComputeBackward is in train.c; running and answering it is compute_run.c).
 *
 * A Compute call's way here (loop thread):
 *   1. the request message is split: the `data` field (the tensor, usually almost all the
 *      bytes) stays where it is in the call's request buffer and becomes a borrowed view; the
 *      few remaining bytes are unpacked by protobuf-c. (protobuf-c would copy `data`: this
 *      saves that copy.)
 *   2. validation: model (by model_id; empty = default), dtype (metadata "dtype"), shape vs
 *      byte length, the model's own check (widths), the KV cache or session; each failure is
 *      INVALID_ARGUMENT or NOT_FOUND with a message naming the field, the expected and the
 *      received value.
 *   3. dispatch: an INLINE model (identity) is answered at once; a call the model's batcher
 *      takes goes into its open batch (batch.c); any other passes admission and runs
 *      (compute_run.c).
 *
 * Cancellation: compute_cancel takes a batched call out of its batch, or stops the call where
 * compute_run.c has it (queued, sleeping, on a worker).
 *
 * Thread: loop thread.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "core/log.h"
#include "core/macros.h"
#include "service/compute_int.h"

static void compute_cancel(ss_call *call) {
  compute_state *st = ss_call_state(call);
  if (st->batch)
    ss_batch_cancel(st);
  else
    ss_compute_stop(st);
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
                 "empty, got %zu entries",
                 sid, st->n_kv_wire);
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
                     "created it may use it",
                     sid, m->id);
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
        ss_call_fail(
            call, SS_GRPC_ABORTED,
            "session '%s' of model '%s' is busy with another call; send decode steps of one "
            "session one at a time",
            sid, m->id);
        return -1;
      default: ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory"); return -1;
    }
    /* the session's cache, checked like a past; the worker writes it in place (ss_kv_io) */
    st->cache = ss_session_cache(st->session, m->n_kv_layers);
    if (!st->cache) {
      ss_call_fail(call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
      return -1;
    }
  }
  int rv = st->cache
               ? m->ops->check_kv(m, &st->in, st->cache,
                                  ss_kv_len(&st->cache[0]) > 0 ? m->n_kv_layers : 0, err, errlen)
               : m->ops->check_kv(m, &st->in, st->past, st->n_past, err, errlen);
  if (rv != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s%s%s", err, sid ? " (session " : "",
                 sid ? "cache)" : "");
    return -1;
  }
  st->want_present = req->has_use_cache && req->use_cache && st->session == NULL;
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
                   "send one of them, or the same id in both",
                   sid, hsid);
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
                   "of them, or the same id in both",
                   req->forward_id, hfid);
      return -1;
    }
    req->forward_id = (char *)hfid; /* lives as long as the call */
  }
  if (sid && strlen(sid) > s->cfg.max_session_id_bytes) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "metadata session is %zu bytes long; session ids are at most %zu bytes "
                 "(--max-session-id-bytes)",
                 strlen(sid), s->cfg.max_session_id_bytes);
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
                   "(--max-message-bytes)",
                   st->in.nbytes, s->cfg.max_message_bytes);
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
                   "sessions",
                   m->id, m->kind);
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
                   "train: mlp, gpt2, llama",
                   m->id, m->kind);
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
  const ss_model *m = st->sm->model;
  if (m->exec == SS_EXEC_INLINE) {
    ss_compute_reply_echo(st);
    return;
  }
  st->t_admitted = uv_hrtime();
  if (ss_batch_wants(st))
    ss_batch_add(st);
  else
    ss_compute_admit(st);
}

void ss_h_compute(ss_call *call, void *app) {
  ss_service *s = app;
  compute_state *st = ss_call_state(call);
  memset(st, 0, offsetof(compute_state, arena_buf));
  st->call = call;
  st->svc = s;
  st->reqbuf = ss_call_request(call, &st->reqlen);
  ss_call_set_hooks(call, compute_cancel, ss_compute_free);
  ss_arena_init(&st->arena, st->arena_buf, sizeof st->arena_buf);
  const uint8_t *data;
  size_t dlen;
  int tok = ss_access_authenticate(s, call);
  if (tok == -1 || decode_request(st, &data, &dlen) != 0 || read_metadata(st) != 0 ||
      find_model(st, tok) != 0 || read_tensor(st, data, dlen) != 0 || check_mode(st) != 0)
    return;
  dispatch(st);
}
