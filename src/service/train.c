/*
 * train.c — split training on the server: the activation cache of training forwards
 * (forward_id -> what backward needs), ComputeBackward, gradient accumulation and optimizer
 * steps, and the ids' bookkeeping.
 *
 * Semantics (documented for clients in the README):
 *  - Compute with training_mode=true runs forward_train and keeps its record under forward_id
 *    (the client's, or a fresh one returned in the response). Records live in a keyed cache with
 *    a TTL and a byte budget (oldest idle first); a backward for an evicted, used or unknown id
 *    gets NOT_FOUND saying which.
 *  - ComputeBackward consumes the record (a second backward for the same id: NOT_FOUND, "already
 *    used"), returns grad_input and adds the weight gradients to the model's accumulators. A
 *    refused grad_output keeps the record for a corrected retry: a raw one is checked on the loop
 *    before the record is taken; a zlib one is checked on the worker once inflated, and bw_done
 *    puts the record back (bw_put_back).
 *  - Backward calls of one model run one at a time in arrival order (a FIFO admission of
 *    limit 1), so several clients training one model see their gradients accumulate in the order
 *    the server received their backward calls. With learning_rate set, every accumulation_step-th
 *    backward call (counted per model, default 1) applies an optimizer step right after its own
 *    backward, to the sum of the gradients accumulated since the previous step.
 *  - Weights: forwards and backwards hold the model's read lock on the worker; a step takes the
 *    write lock, so a racing forward sees the old or the new weights, never a mix. No lock is
 *    ever taken on the loop thread.
 *  - implicit_training=1 (a model key, for the Split-Learning trainer, whose loop sends the
 *    trunk forward as a plain Compute and then calls ComputeBackward with an id of its own
 *    that the server never saw): a Compute on such a model without training_mode (absent, not
 *    false), forward_id, past_key_values, use_cache or session is a training forward under a
 *    fresh id, remembered with its connection. A ComputeBackward whose forward_id is unknown
 *    (never produced here) then takes the one untagged forward outstanding on its own
 *    connection (of its model_id's model when it names one). Ambiguity is refused with
 *    FAILED_PRECONDITION naming the key: two or more untagged forwards outstanding on the
 *    connection (all of them are discarded, so the next forward/backward pair works), or none
 *    there but some on another connection. Evaluation calls on such a model keep activations
 *    too: send them with training_mode=false, or to a second model id. A ComputeBackward
 *    without learning_rate / accumulation_step uses the model keys learning_rate /
 *    accumulation_step (any model; without learning_rate such calls only accumulate).
 *  - Owners (--auth-tokens): a record is tagged with its forward's token (ss_access_owner);
 *    a backward, or a training forward reusing the id, with another token is refused
 *    (PERMISSION_DENIED) before anything about the record is told or changed, and so is a
 *    backward for a remembered (used, evicted) id of another token.
 *
 * Thread: handlers and the cache on the loop thread; the job's run() on a worker.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "core/kcache.h"
#include "core/log.h"
#include "core/macros.h"
#include "models/safetensors.h"
#include "service/codec.h"
#include "service/train_int.h"
#include "service/wire.h"

/* One training forward's record (train_int.h names it). */
struct act_rec {
  ss_served_model *sm; /* holds a reference */
  void *saved;         /* the model's record (free_saved) */
  int64_t in_shape[SS_MAX_DIMS], out_shape[SS_MAX_DIMS];
  int in_ndim, out_ndim;
  size_t in_numel;
  ss_wire_enc enc; /* the forward's wire encoding: the gradients use it too */
};

/* An untagged forward of an implicit_training model: its id in the activation cache and its
 * connection. A list, pruned of ids the cache no longer holds whenever it is walked. */
typedef struct ss_implicit {
  struct ss_implicit *next;
  uint64_t conn;
  char id[128];
} ss_implicit;

static void act_free(void *v, void *user) {
  (void)user;
  act_rec *r = v;
  if (r->saved) r->sm->model->ops->free_saved(r->sm->model, r->saved);
  ss_served_unref(r->sm);
  free(r);
}

int ss_train_init(ss_service *s) {
  return ss_kcache_new(s->cfg.activation_max_bytes, s->cfg.activation_ttl_s, act_free, NULL,
                       &s->acts);
}

static void implicit_prune(ss_service *s) {
  for (ss_implicit **pp = &s->implicit; *pp;) {
    ss_implicit *i = *pp;
    if (ss_kcache_get(s->acts, i->id, 0, NULL) == NULL) {
      *pp = i->next;
      free(i);
    } else {
      pp = &i->next;
    }
  }
}

int ss_train_implicit_add(ss_service *s, const char *forward_id, uint64_t conn) {
  ss_implicit *i = calloc(1, sizeof *i), **tail;
  if (i == NULL) return SS_ENOMEM;
  implicit_prune(s);
  i->conn = conn;
  snprintf(i->id, sizeof i->id, "%s", forward_id);
  for (tail = &s->implicit; *tail; tail = &(*tail)->next) {
  }
  *tail = i;
  return 0;
}

/* A backward whose forward_id the server never produced, on an implicit_training model: the
 * one untagged forward outstanding on its connection (*out), none (*out NULL: NOT_FOUND as
 * usual), or -1 after refusing an ambiguous call. model_id: the request's, or NULL/"". */
static int implicit_resolve(ss_service *s, ss_call *call, const char *forward_id,
                            const char *model_id, ss_kentry **out) {
  uint64_t conn = ss_call_conn_id(call);
  size_t mine = 0, others = 0;
  ss_kentry *found = NULL;
  const char *mid = NULL;
  *out = NULL;
  implicit_prune(s);
  for (ss_implicit *i = s->implicit; i; i = i->next) {
    ss_kentry *e = ss_kcache_get(s->acts, i->id, 0, NULL);
    const act_rec *r = e->value;
    if (model_id && *model_id && strcmp(model_id, r->sm->model->id) != 0) continue;
    mid = r->sm->model->id;
    if (i->conn == conn) {
      mine++;
      found = e;
    } else {
      others++;
    }
  }
  if (mine == 1) {
    *out = found;
    return 0;
  }
  if (mine > 1) {
    ss_call_fail(call, SS_GRPC_FAILED_PRECONDITION,
                 "forward_id '%s' is unknown and %zu forwards without forward_id are outstanding "
                 "on this connection for model '%s' (implicit_training=1 pairs one untagged "
                 "Compute with the next ComputeBackward of its connection): ambiguous, all %zu "
                 "are discarded; send one Compute per ComputeBackward, or training_mode=true "
                 "with a forward_id",
                 forward_id, mine, mid, mine);
    for (ss_implicit *i = s->implicit; i; i = i->next) {
      ss_kentry *e = ss_kcache_get(s->acts, i->id, 0, NULL);
      if (i->conn == conn && e &&
          !(model_id && *model_id && strcmp(model_id, ((act_rec *)e->value)->sm->model->id)))
        ss_kcache_remove(s->acts, e, "discarded: ambiguous implicit_training backward", 0);
    }
    implicit_prune(s);
    return -1;
  }
  if (others > 0) {
    ss_call_fail(call, SS_GRPC_FAILED_PRECONDITION,
                 "forward_id '%s' is unknown and this connection has no forward without "
                 "forward_id outstanding; %zu of model '%s' (implicit_training=1) %s on another "
                 "connection: a ComputeBackward must come on the connection of its Compute",
                 forward_id, others, mid, others == 1 ? "is" : "are");
    return -1;
  }
  return 0;
}

void ss_train_free(ss_service *s) {
  while (s->implicit) {
    ss_implicit *i = s->implicit;
    s->implicit = i->next;
    free(i);
  }
  ss_kcache_free(s->acts);
  s->acts = NULL;
}

void ss_train_sweep(ss_service *s) { ss_kcache_sweep(s->acts); }

int ss_train_forward_id(ss_service *s, ss_call *call, const uint8_t *owner, const char *client_id,
                        char *out, size_t outlen) {
  if (client_id && *client_id) {
    if (strlen(client_id) >= outlen) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "forward_id is %zu bytes long; at most %zu",
                   strlen(client_id), outlen - 1);
      return -1;
    }
    ss_kentry *e = ss_kcache_get(s->acts, client_id, 0, NULL);
    if (e && ss_access_check_owner(s, call, owner, e->tag, "forward_id", client_id) != 0) return -1;
    if (e) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                   "forward_id '%s' already holds a training forward that has not had its "
                   "backward call; use a new id per forward",
                   client_id);
      return -1;
    }
    ss_kcache_forget(s->acts, client_id); /* reused after its backward: a fresh meaning */
    snprintf(out, outlen, "%s", client_id);
    return 0;
  }
  s->forward_seq++;
  snprintf(out, outlen, "fwd-%llx-%llu", (unsigned long long)(s->start_ns & 0xffffffffffull),
           (unsigned long long)s->forward_seq);
  return 0;
}

int ss_train_check_budget(ss_service *s, const char *forward_id, size_t saved_bytes, char *err,
                          size_t errlen) {
  size_t budget = s->cfg.activation_max_bytes, need = saved_bytes;
  if (__builtin_add_overflow(need, sizeof(act_rec) + ss_kcache_overhead(forward_id), &need))
    need = SIZE_MAX;
  if (budget == 0 || need <= budget) return 0;
  snprintf(err, errlen,
           "training forward '%s' would keep %zu bytes (%.1f MiB) of activations until its "
           "backward call; the whole activation budget is %zu bytes (--activation-memory-mb %zu): "
           "send smaller batches",
           forward_id, need, (double)need / 1048576.0, budget, budget >> 20);
  return SS_EBUSY;
}

int ss_train_store(ss_service *s, const char *forward_id, const uint8_t *owner, ss_served_model *sm,
                   void *saved, size_t saved_bytes, const ss_tensor *in, const int64_t *out_shape,
                   int out_ndim, const ss_wire_enc *enc) {
  act_rec *r = calloc(1, sizeof *r);
  if (!r) {
    sm->model->ops->free_saved(sm->model, saved);
    return SS_ENOMEM;
  }
  r->sm = sm;
  ss_served_ref(sm);
  r->saved = saved;
  r->in_ndim = in->ndim;
  r->in_numel = in->numel;
  r->enc = *enc;
  memcpy(r->in_shape, in->shape, sizeof r->in_shape);
  r->out_ndim = out_ndim;
  memcpy(r->out_shape, out_shape, (size_t)out_ndim * sizeof *out_shape);
  ss_kentry *e = ss_kcache_put(s->acts, forward_id, r, saved_bytes + sizeof *r);
  if (!e) return SS_ENOMEM;
  memcpy(e->tag, owner, SS_KCACHE_TAG);
  return 0;
}

/* ------------------------------------------------------------- backward --- */

static void bw_run(ss_job *job) {
  backward_state *st = ss_container_of(job, backward_state, job);
  ss_model *m = st->rec->sm->model;
  uint64_t t0 = uv_hrtime();
  ss_tensor go = st->grad_out, gi = {0};
  const ss_wire_enc *enc = &st->rec->enc;
  if (enc->zlib) {
    st->rc = ss_codec_inflate("grad_output_data", st->zdata, st->zlen, go.nbytes, &st->gbuf,
                              st->err, sizeof st->err);
    if (st->rc == SS_EINVAL) st->input_bad = 1; /* a bad stream, not a lack of memory */
    if (st->rc != 0) return;
    go.data = st->gbuf;
    /* Checked here, once inflated (raw payloads are checked on the loop). */
    if (ss_tensor_check_finite("grad_output_data", &go, st->err, sizeof st->err) != 0) {
      st->rc = SS_EINVAL;
      st->input_bad = 1;
      return;
    }
  }
  if (enc->dtype != SS_DTYPE_F32) {
    float *f = malloc(go.numel * sizeof(float) + 1);
    if (!f) {
      st->rc = SS_ENOMEM;
      snprintf(st->err, sizeof st->err, "out of memory for grad_output");
      return;
    }
    ss_to_f32(go.dtype, go.data, f, go.numel);
    free(st->gbuf);
    st->gbuf = f;
    go.data = f;
    go.dtype = SS_DTYPE_F32;
    go.nbytes = go.numel * sizeof(float);
  } else if ((uintptr_t)go.data % sizeof(float) != 0) { /* see compute_run.c: realign in place */
    memmove(st->reqbuf, go.data, go.nbytes);
    go.data = st->reqbuf;
  }
  gi.dtype = SS_DTYPE_F32;
  gi.ndim = st->rec->in_ndim;
  memcpy(gi.shape, st->rec->in_shape, sizeof gi.shape);
  gi.numel = st->rec->in_numel;
  gi.nbytes = gi.numel * sizeof(float);
  st->grad_in = malloc(gi.nbytes ? gi.nbytes : 1);
  if (!st->grad_in) {
    st->rc = SS_ENOMEM;
    snprintf(st->err, sizeof st->err, "out of memory for grad_input");
    return;
  }
  gi.data = st->grad_in;
  uv_rwlock_rdlock(&m->lock);
  st->rc = m->ops->backward(m, st->rec->saved, &go, &gi, st->err, sizeof st->err);
  if (st->rc == 0 && m->weights && ss_st_check(m->weights, st->err, sizeof st->err) != 0)
    st->rc = SS_EPRECONDITION;
  uv_rwlock_rdunlock(&m->lock);
  if (st->rc == 0 && st->do_step) {
    uv_rwlock_wrlock(&m->lock);
    st->rc = m->ops->step(m, &st->opt, st->err, sizeof st->err);
    uv_rwlock_wrunlock(&m->lock);
  }
  if (st->rc == 0) { /* grad_input travels as the forward's tensors did */
    size_t n = gi.numel, nb = n * ss_dtype_size(enc->dtype);
    void *out = st->grad_in;
    if (enc->dtype != SS_DTYPE_F32) {
      out = malloc(nb + 1);
      if (out) ss_from_f32(enc->dtype, st->grad_in, out, n);
    }
    if (out && enc->zlib) {
      void *z;
      size_t zn;
      if (ss_codec_deflate(out, nb, &z, &zn) == 0) {
        if (out != st->grad_in) free(out);
        out = z;
        nb = zn;
      } else {
        if (out != st->grad_in) free(out);
        out = NULL;
      }
    }
    if (!out) {
      st->rc = SS_ENOMEM;
      snprintf(st->err, sizeof st->err, "out of memory for grad_input");
    } else {
      if (out == st->grad_in) st->grad_in = NULL;
      st->reply = out;
      st->reply_len = nb;
    }
  }
  st->ms = (double)(uv_hrtime() - t0) / 1e6;
}

static void bw_start(backward_state *st);

static void bw_release(backward_state *st) {
  if (!st->holds_slot) return;
  st->holds_slot = 0;
  ss_waiter *w = ss_admit_leave(&st->rec->sm->train_admit);
  if (w) {
    bw_start(ss_container_of(w, backward_state, waiter));
  }
}

/* The worker refused the gradient before the model's backward ran: the record goes back under
 * its id with its owner (unless a new training forward took the id meanwhile), as a raw gradient
 * refused on the loop never took it (bw_done also takes the call out of accumulation_step). */
static void bw_put_back(backward_state *st) {
  ss_service *s = st->svc;
  const char *fid = st->req->forward_id;
  act_rec *r = st->rec;
  st->rec = NULL;
  if (ss_kcache_get(s->acts, fid, 0, NULL)) {
    act_free(r, NULL); /* the id means a newer forward now */
    return;
  }
  ss_kcache_forget(s->acts, fid);                               /* "already used" was premature */
  ss_kentry *e = ss_kcache_put(s->acts, fid, r, st->rec_bytes); /* frees r on failure */
  if (e) memcpy(e->tag, st->rec_tag, SS_KCACHE_TAG);
}

static void bw_done(ss_job *job) {
  backward_state *st = ss_container_of(job, backward_state, job);
  ss_call *call = st->call;
  st->on_worker = 0;
  int put_back = job->ran && st->rc != 0 && st->input_bad;
  if (put_back) st->rec->sm->accum = st->accum_before; /* before the next call starts */
  bw_release(st);
  if (!ss_call_answered(call)) {
    if (!job->ran) {
      ss_call_fail(call, SS_GRPC_CANCELLED, "backward call cancelled before it ran");
    } else if (st->rc != 0) {
      ss_call_fail(call,
                   st->rc == SS_EINVAL ? SS_GRPC_INVALID_ARGUMENT : (int)ss_error_to_grpc(st->rc),
                   "model '%s' backward: %s", st->rec->sm->model->id,
                   st->err[0] ? st->err : ss_strerror(st->rc));
    } else {
      Splitlearn__Comm__BackwardResponse r = SPLITLEARN__COMM__BACKWARD_RESPONSE__INIT;
      int32_t shape[SS_MAX_DIMS];
      for (int i = 0; i < st->rec->in_ndim; i++) shape[i] = (int32_t)st->rec->in_shape[i];
      r.n_grad_input_shape = (size_t)st->rec->in_ndim;
      r.grad_input_shape = shape;
      r.forward_id = st->req->forward_id;
      r.has_backward_time_ms = 1;
      r.backward_time_ms = (float)st->ms;
      Splitlearn__Comm__MonitoringSnapshot snap;
      splitlearn__comm__monitoring_snapshot__init(&snap);
      ss_fill_snapshot(st->svc, &snap);
      r.monitoring_data = &snap;
      void *gi = st->reply;
      st->reply = NULL; /* the call owns it now */
      ss_call_reply(call, &r.base, 1, gi, st->reply_len, (ss_owned){gi, free});
    }
  }
  if (put_back) bw_put_back(st);
  ss_call_unref(call);
}

/* Admitted (this model's backward calls run one at a time, in arrival order). */
static void bw_start(backward_state *st) {
  ss_served_model *sm = st->rec->sm;
  st->holds_slot = 1;
  Splitlearn__Comm__BackwardRequest *req = st->req;
  /* Step decisions are made here, in execution order = arrival order. */
  st->accum_before = sm->accum;
  sm->accum++;
  /* learning_rate / accumulation_step: the request's, else the model keys' */
  const ss_model *m = sm->model;
  int every = req->has_accumulation_step ? req->accumulation_step
              : m->accumulation_step > 0 ? m->accumulation_step
                                         : 1;
  float lr = req->has_learning_rate ? req->learning_rate : m->learning_rate;
  if (lr > 0.0f && sm->accum >= every) {
    st->do_step = 1;
    sm->accum = 0;
    st->opt = m->optim;
    st->opt.lr = lr;
  }
  st->on_worker = 1;
  ss_call_ref(st->call);
  st->job.run = bw_run;
  st->job.done = bw_done;
  atomic_store(&st->job.cancelled, 0);
  ss_pool_submit(st->svc->pool, &st->job);
}

static void bw_cancel(ss_call *call) {
  backward_state *st = ss_call_state(call);
  if (!st->rec) return;
  ss_admit_remove(&st->rec->sm->train_admit, &st->waiter);
  if (st->on_worker) atomic_store(&st->job.cancelled, 1);
}

static void bw_free(ss_call *call) {
  backward_state *st = ss_call_state(call);
  ss_metrics_observe(st->svc, st->rec ? st->rec->sm->model->id : "", "ComputeBackward",
                     ss_call_status(call), -1, st->ms > 0 ? st->ms / 1e3 : -1,
                     (double)(uv_hrtime() - ss_call_start_ns(call)) / 1e9);
  if (st->rec) act_free(st->rec, NULL);
  free(st->grad_in);
  free(st->gbuf);
  free(st->reply);
  ss_arena_release(&st->arena);
}

/* ------------------------------------------------------------- handler --- */

/* The stages of a ComputeBackward call on the loop thread. Each returns 0 to go on, or -1 after
 * it answered the call (the message names the field, the expected and the received value). */

/* The wire checks that run before protobuf-c allocates anything, then the decode: the gradient
 * stays in the request buffer as a view (*data, *dlen). */
static int bw_decode(backward_state *st, const uint8_t **data, size_t *dlen) {
  ss_call *call = st->call;
  {
    static const uint32_t str_fields[] = {3, 4};
    static const char *const str_names[] = {"forward_id", "model_id"};
    ss_wire_limits lim = {
        0, 0, 0, 0, str_fields, str_names, 2, &splitlearn__comm__backward_request__descriptor};
    char why[256];
    if (ss_wire_check(st->reqbuf, st->reqlen, &lim, why, sizeof why) != 0) {
      ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s", why);
      return -1;
    }
  }
  st->req = (Splitlearn__Comm__BackwardRequest *)ss_decode_tensor_request(
      &splitlearn__comm__backward_request__descriptor, st->reqbuf, st->reqlen, &st->arena,
      &st->pballoc, data, dlen, 0, NULL, NULL);
  if (!st->req) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "request (%zu bytes) is not a valid splitlearn.comm.BackwardRequest protobuf",
                 st->reqlen);
    return -1;
  }
  return 0;
}

/* The request's own fields: forward_id (or the x-forward-id proxy header), the model_id it
 * names (the token's permission first), learning_rate, accumulation_step. */
static int bw_check_request(backward_state *st, int tok) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  Splitlearn__Comm__BackwardRequest *req = st->req;
  const char *hfid = ss_call_header(call, "x-forward-id"); /* the proxy affinity header */
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
  if (req->model_id && *req->model_id && ss_access_authorize(s, call, tok, req->model_id) != 0)
    return -1;
  if (req->model_id && *req->model_id && !ss_service_find_model(s, req->model_id)) {
    char known[512];
    ss_models_list(s, known, sizeof known);
    ss_call_fail(call, SS_GRPC_NOT_FOUND, "unknown model_id '%s'; this server has: %s",
                 req->model_id, known);
    return -1;
  }
  if (req->has_learning_rate && !(req->learning_rate > 0.0f && isfinite(req->learning_rate))) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "learning_rate must be a finite number > 0, got %g", (double)req->learning_rate);
    return -1;
  }
  if (req->has_accumulation_step && req->accumulation_step < 1) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "accumulation_step must be >= 1, got %d",
                 req->accumulation_step);
    return -1;
  }
  if (!req->forward_id || !*req->forward_id) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "forward_id is empty: ComputeBackward needs the forward_id of a Compute call made "
                 "with training_mode=true");
    return -1;
  }
  return 0;
}

/* The forward's record (*out, still in the cache): by forward_id, or the connection's untagged
 * forward (implicit_training); its owner before anything about it is told; then the token's
 * permission for the forward's model, and the model_id the request names. */
static int bw_find_record(backward_state *st, int tok, ss_kentry **out) {
  ss_service *s = st->svc;
  ss_call *call = st->call;
  Splitlearn__Comm__BackwardRequest *req = st->req;
  const char *why = NULL;
  ss_kentry *e = ss_kcache_get(s->acts, req->forward_id, 0, &why);
  if (!e && !why && s->implicit &&
      implicit_resolve(s, call, req->forward_id, req->model_id, &e) != 0)
    return -1;
  const uint8_t *tag = e ? e->tag : NULL;
  if (!e && why) ss_kcache_gone(s->acts, req->forward_id, &tag);
  uint8_t owner[SS_KCACHE_TAG];
  ss_access_owner(s, call, owner);
  if (tag && ss_access_check_owner(s, call, owner, tag, "forward_id", req->forward_id) != 0)
    return -1; /* before anything about it (model, shape, used) is told */
  if (!e) {
    ss_call_fail(
        call, SS_GRPC_NOT_FOUND, "forward_id '%s': %s", req->forward_id,
        why ? why : "unknown: no Compute with training_mode=true produced it on this server");
    return -1;
  }
  const ss_model *m = ((act_rec *)e->value)->sm->model;
  if (ss_access_authorize(s, call, tok, m->id) != 0) return -1; /* the forward's model */
  if (req->model_id && *req->model_id && strcmp(req->model_id, m->id) != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "model_id '%s' does not match forward_id '%s', which ran on model '%s'",
                 req->model_id, req->forward_id, m->id);
    return -1;
  }
  *out = e;
  return 0;
}

/* grad_output against the record: it travels as the forward's tensors did (dtype, zlib), has
 * the forward's output shape, and (raw) holds no NaN/Inf. */
static int bw_read_gradient(backward_state *st, const act_rec *rec, const uint8_t *data,
                            size_t dlen) {
  ss_call *call = st->call;
  Splitlearn__Comm__BackwardRequest *req = st->req;
  char err[512];
  const ss_wire_enc *enc = &rec->enc; /* gradients travel as their forward's tensors did */
  int wrv = enc->zlib ? ss_tensor_shape_from_wire("grad_output_data", req->grad_output_shape,
                                                  req->n_grad_output_shape, enc->dtype,
                                                  &st->grad_out, err, sizeof err)
                      : ss_tensor_from_wire("grad_output_data", req->grad_output_shape,
                                            req->n_grad_output_shape, data, dlen, enc->dtype,
                                            &st->grad_out, err, sizeof err);
  if (wrv == 0 && enc->zlib && ss_codec_check_stream("grad_output_data", dlen, err, sizeof err))
    wrv = SS_EINVAL;
  if (wrv != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "%s (gradients travel as the forward's tensors: %s%s)", err,
                 ss_dtype_name(enc->dtype), enc->zlib ? ", zlib" : "");
    return -1;
  }
  if (enc->zlib) {
    st->zdata = data;
    st->zlen = dlen;
  }
  int same = st->grad_out.ndim == rec->out_ndim;
  for (int i = 0; same && i < rec->out_ndim; i++) same = st->grad_out.shape[i] == rec->out_shape[i];
  if (!same) {
    char got[96], want[96];
    ss_shape_str(st->grad_out.shape, st->grad_out.ndim, got, sizeof got);
    ss_shape_str(rec->out_shape, rec->out_ndim, want, sizeof want);
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT,
                 "grad_output_shape %s does not match the output shape %s of forward '%s'", got,
                 want, req->forward_id);
    return -1;
  }
  /* NaN/Inf in the gradient would poison the weights: refused, and the record is kept (the
   * client may send a corrected gradient for the same forward_id). */
  if (!enc->zlib &&
      ss_tensor_check_finite("grad_output_data", &st->grad_out, err, sizeof err) != 0) {
    ss_call_fail(call, SS_GRPC_INVALID_ARGUMENT, "%s", err);
    return -1;
  }
  return 0;
}

/* Consume the record (a second backward for this id is told it was used; zlib: put back by
 * bw_done when the worker refuses the inflated gradient) and enter the model's backward
 * admission (one at a time, arrival order). */
static void bw_take(backward_state *st, ss_kentry *e) {
  ss_service *s = st->svc;
  memcpy(st->rec_tag, e->tag, SS_KCACHE_TAG);
  st->rec_bytes = e->bytes - ss_kcache_overhead(e->key);
  st->rec = ss_kcache_remove(s->acts, e, "already used by an earlier ComputeBackward call", 1);
  switch (ss_admit_enter(&st->rec->sm->train_admit, &st->waiter)) {
    case SS_ADMIT_RUN: bw_start(st); break;
    case SS_ADMIT_QUEUED: break;
    default:
      ss_call_fail(st->call, SS_GRPC_RESOURCE_EXHAUSTED,
                   "model '%s' has %zu backward calls queued (--max-queue); retry later",
                   st->rec->sm->model->id, st->rec->sm->train_admit.waiting);
  }
}

void ss_h_backward(ss_call *call, void *app) {
  ss_service *s = app;
  backward_state *st = ss_call_state(call);
  memset(st, 0, offsetof(backward_state, arena_buf));
  st->call = call;
  st->svc = s;
  st->reqbuf = ss_call_request(call, &st->reqlen);
  ss_call_set_hooks(call, bw_cancel, bw_free);
  ss_arena_init(&st->arena, st->arena_buf, sizeof st->arena_buf);
  const uint8_t *data;
  size_t dlen;
  ss_kentry *e;
  int tok = ss_access_authenticate(s, call);
  if (tok == -1 || bw_decode(st, &data, &dlen) != 0 || bw_check_request(st, tok) != 0 ||
      bw_find_record(st, tok, &e) != 0 || bw_read_gradient(st, e->value, data, dlen) != 0)
    return;
  bw_take(st, e);
}
