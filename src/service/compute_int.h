/*
 * compute_int.h — a Compute call's state, shared by compute.c (the handler: decode, validate,
 * dispatch), compute_run.c (admission, the worker job, the reply) and batch.c (calls of one model
 * stacked into one forward). Private to src/service.
 *
 * Thread: loop thread, except the fields the worker writes (marked below; compute_run.c's job).
 */
#ifndef SS_SERVICE_COMPUTE_INT_H
#define SS_SERVICE_COMPUTE_INT_H

#include "compute_service.pb-c.h"
#include "core/arena.h"
#include "service/codec.h"
#include "service/service_int.h"
#include "service/sessions.h"
#include "service/wire.h"

typedef struct compute_state {
  ss_job job; /* the pool hands back &job */
  ss_service *svc;
  uint8_t *reqbuf; /* the call's request message (owned by the call) */
  size_t reqlen;
  ss_waiter waiter;
  ss_tq_entry wake;
  ss_call *call;
  ss_served_model *sm;
  Splitlearn__Comm__ComputeRequest *req;
  ss_tensor in; /* view into reqbuf (the data field) */
  const char **keys, **vals;
  ss_meta meta;
  int64_t out_shape[SS_MAX_DIMS];
  int out_ndim;
  int holds_slot; /* owns an admission slot */
  /* KV cache (models with n_kv_layers > 0) */
  ss_kv_layer *past; /* the request's past (views into the arena) */
  int n_past;
  ss_kv_layer *cache;   /* the session's cache (written in place by the worker), or NULL */
  ss_kv_layer *present; /* filled by the worker when want_present (owned) */
  int want_present;
  ss_wire_view *kv_wire; /* past_key_values, left in the request buffer (not copied) */
  size_t n_kv_wire;
  ss_session *session;          /* busy while this call runs */
  uint8_t owner[SS_KCACHE_TAG]; /* the token's owner tag (sessions, training; access.c) */
  int session_end;
  int present_in_reply; /* the reply's segments point into present: keep it until free */
  /* training forward (training_mode=true) */
  int training;
  int implicit; /* untagged forward of an implicit_training model (train.c) */
  void *saved;  /* the model's record for backward (worker -> cache) */
  size_t saved_bytes;
  char forward_id[128];
  int on_worker;              /* job submitted, done() not yet run */
  uint64_t t_admitted, t_run; /* admission, worker start (uv_hrtime; 0 = never) */
  /* dynamic batching (batch.c): the batch this call rides in, and whether it left it */
  /* wire encoding (codec.h): a zlib payload stays compressed until the worker inflates it */
  ss_wire_enc enc;
  const uint8_t *zdata; /* the compressed data field (view into reqbuf) when enc.zlib */
  size_t zlen;
  void *zbuf; /* the inflated tensor (worker; freed with the call) */
  struct ss_batch *batch;
  atomic_int batch_cancelled; /* set by the loop when the client left */
  int in_batch_skip;          /* the worker's snapshot of it (read by the loop after done) */
  /* written by the worker, read by the loop in done() */
  void *out_data;
  size_t out_nbytes;
  double compute_ms;
  int rc;
  char err[256];
  ss_arena arena; /* the decoded request lives here */
  ProtobufCAllocator pballoc;
  _Alignas(16) char arena_buf[1536];
} compute_state;

/* ---- running and answering a call (compute_run.c; loop thread) ---- */
/* Answer an echo model's call with its own input (INLINE at once; sleep after its timer). */
void ss_compute_reply_echo(compute_state *st);
/* Through the model's admission: run now (worker job or sleep timer), queue, or fail the call
 * RESOURCE_EXHAUSTED. */
void ss_compute_admit(compute_state *st);
/* The client left (cancel hook of a call outside a batch): leave the admission queue, stop the
 * sleep, or flag the job so the worker skips it. */
void ss_compute_stop(compute_state *st);
/* Deliver a finished call: its reply, or its failure; ran: the compute ran. Drops the reference
 * the job held. */
void ss_compute_finish(compute_state *st, int ran);
/* The call's release hook: record its metrics, free what the state holds. */
void ss_compute_free(ss_call *call);

/* ---- dynamic batching (batch.c) ---- */
/* Does this admitted-to-be call go through the model's batcher? (max_batch_rows > 0, a plain
 * forward: no cache, no session, not training.) */
int ss_batch_wants(const compute_state *st);
/* Take the call into the model's open batch (the batch holds a call reference); the batch
 * passes admission as one unit when it is full or its delay expired. */
void ss_batch_add(compute_state *st);
/* The call's client left: it is skipped when the batch computes. */
void ss_batch_cancel(compute_state *st);

#endif
