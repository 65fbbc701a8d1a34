/*
 * batch.c — dynamic batching: concurrent Compute calls of one model whose shapes match except
 * the first dimension are stacked into one forward (one GEMM per layer instead of one per call),
 * up to the model's max_batch_rows rows (tokens: numel / last dimension), waiting at most
 * batch_delay_us for company. Decode steps (one token of a sequence with a cache: a session or
 * a client cache) batch by default for kinds that have forward_kv_batch (model key
 * decode_batch=1, up to max_batch_rows or SS_DECODE_ROWS steps); stacking other calls needs
 * max_batch_rows. A session's step writes its key and value straight into the session's cache
 * (ss_kv_io.cache, in place), a client cache's step into its present, as when it runs alone.
 *
 * A batch is the unit of admission and of work: the model's open batch collects calls; when it
 * is full, when a call with other trailing dims arrives, or when its delay expires, it enters
 * the model's admission (one slot for the whole batch) and one worker job computes it. A batch
 * that has to wait for a slot (every worker of the model is busy) keeps taking compatible calls
 * until it starts: the steps that arrive while a step computes join the next one, on any worker
 * layout. Each call keeps its own deadline and cancellation: a call whose client leaves is
 * skipped (if it leaves before the compute) or its result dropped (after); the others are
 * unaffected. Each call's result equals what it gets alone, up to float rounding: the same layers
 * run over the same rows, only more rows per GEMM (tests/interop/test_batching.py checks this).
 *
 * Sequences that step in a closed loop would otherwise settle into alternating partial batches:
 * while batch A computes, the steps of the others gather in B, which starts the moment A ends,
 * before A's sequences (answered at that same moment) can send their next steps. So when a decode
 * batch that took at least SS_REGATHER_MIN_MS ends, the next decode batch of the model waits for
 * the ended batch's sequences to join it (their next steps) or for a quarter of the ended step's
 * time (1..10 ms), whichever comes first: the waiting batch B holding the slot it was handed, or,
 * when none was waiting, the first batch opened in that window before it asks for the slot. One
 * batch of all the sequences instead of parts; the wait is a small share of a step.
 *
 * Thread: loop thread, except batch_run (a worker).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/macros.h"
#include "models/safetensors.h"
#include "service/compute_int.h"

typedef struct ss_batch {
  ss_job job;           /* the pool hands back &job */
  ss_waiter waiter;     /* admission of the whole batch */
  ss_tq_entry timer;    /* batch_delay_us >= 1 ms (the timer queue's granularity) */
  int at_iteration_end; /* batch_delay_us < 1 ms: closed after this loop iteration's I/O */
  ss_service *svc;
  ss_served_model *sm; /* holds a reference */
  int holds_slot;
  int submitted;     /* left the open state (admission or worker) */
  compute_state **m; /* members, each holding a call reference */
  int n, cap;
  size_t rows;                /* sum of the members' rows */
  int64_t trail[SS_MAX_DIMS]; /* the dims after the first, shared by every member */
  int ndim;
  int decode;   /* one-token steps with caches: forward_kv_batch (else stacked) */
  int regather; /* waits a moment for the previous batch's sequences (see the top): 1 holding
                 * the slot, 2 before asking for it */
  int expect;   /* ... until it has this many members */
  /* worker results */
  double compute_ms;
  int rc;
  char err[256];
} ss_batch;

static size_t call_rows(const compute_state *st) {
  int64_t last = st->in.shape[st->in.ndim - 1];
  return last > 0 ? st->in.numel / (size_t)last : 0;
}

/* A one-token step of a sequence with a cache (client-side or a session): batched across
 * sequences through forward_kv_batch, each with its own past. */
static int is_decode(const compute_state *st) {
  const ss_model *m = st->sm->model;
  return m->ops->forward_kv_batch && st->in.ndim == 3 && st->in.shape[0] == 1 &&
         st->in.shape[1] == 1 && (st->n_past > 0 || st->want_present || st->session) &&
         !ss_meta_get(&st->meta, "position_offset") && /* batched steps sit at their past */
         !ss_meta_get(&st->meta, "mrope_positions");   /* length, in every rope stream */
}

#define SS_DECODE_ROWS 64      /* decode steps per batch without max_batch_rows */
#define SS_REGATHER_MIN_MS 4.0 /* decode steps this slow are worth a wait for company */
#define SS_REGATHER_SHARE 0.25 /* the longest wait: this share of the step that ended ... */
#define SS_REGATHER_MAX_MS 10  /* ... at most this (at least 1 ms: the timer granularity) */

/* The most rows a batch of this kind of call takes. */
static size_t max_rows(const ss_model *m, int decode) {
  return m->max_batch_rows > 0 ? (size_t)m->max_batch_rows : decode ? SS_DECODE_ROWS : 0;
}

int ss_batch_wants(const compute_state *st) {
  const ss_model *m = st->sm->model;
  if (m->exec != SS_EXEC_WORKER || m->echo || st->training || st->enc.zlib) return 0;
  if (is_decode(st)) return m->decode_batch || m->max_batch_rows > 0;
  return m->max_batch_rows > 0 && st->n_past == 0 && !st->want_present && !st->session &&
         st->in.ndim >= 2;
}

static int same_trail(const ss_batch *b, const compute_state *st) {
  if (st->in.ndim != b->ndim || is_decode(st) != b->decode) return 0;
  for (int i = 1; i < b->ndim; i++)
    if (st->in.shape[i] != b->trail[i]) return 0;
  return 1;
}

/* ----------------------------------------------------------- the worker --- */

/* Worker: the decode steps of the batch through forward_kv_batch (each with its own cache). */
static void batch_run_decode(ss_batch *b, int nlive) {
  const ss_model *m = b->sm->model;
  size_t E = (size_t)b->trail[2];
  ss_tensor *in = calloc((size_t)nlive, sizeof *in), *out = calloc((size_t)nlive, sizeof *out);
  ss_kv_io *kv = calloc((size_t)nlive, sizeof *kv);
  float *buf = malloc(2 * (size_t)nlive * E * sizeof(float));
  compute_state **who = calloc((size_t)nlive, sizeof *who);
  if (!in || !out || !kv || !buf || !who) {
    b->rc = SS_ENOMEM;
    snprintf(b->err, sizeof b->err, "out of memory for a batch of %d decode steps", nlive);
    goto done;
  }
  int k = 0;
  for (int i = 0; i < b->n; i++) {
    compute_state *st = b->m[i];
    if (st->in_batch_skip) continue;
    float *x = buf + (size_t)k * E, *y = buf + ((size_t)nlive + (size_t)k) * E;
    ss_to_f32(st->in.dtype, st->in.data, x, E);
    in[k] = (ss_tensor){SS_DTYPE_F32, 3, {1, 1, (int64_t)E}, E, x, E * sizeof(float)};
    out[k] = (ss_tensor){SS_DTYPE_F32, 3, {1, 1, (int64_t)E}, E, y, E * sizeof(float)};
    kv[k] = (ss_kv_io){m->n_kv_layers, st->n_past ? st->past : NULL, st->want_present, st->present,
                       st->cache}; /* a session's cache: written in place */
    who[k++] = st;
  }
  uv_rwlock_rdlock(&((ss_model *)m)->lock);
  b->rc = m->ops->forward_kv_batch(m, nlive, in, out, kv, b->err, sizeof b->err);
  uv_rwlock_rdunlock(&((ss_model *)m)->lock);
  if (b->rc == 0 && m->weights && ss_st_check(m->weights, b->err, sizeof b->err) != 0)
    b->rc = SS_EPRECONDITION;
  for (int j = 0; j < nlive && b->rc == 0; j++) { /* each step's output in its own dtype */
    compute_state *st = who[j];
    size_t nb = E * ss_dtype_size(st->in.dtype);
    st->out_data = malloc(nb);
    if (!st->out_data) {
      st->rc = SS_ENOMEM;
      snprintf(st->err, sizeof st->err, "out of memory for a %zu-element output", E);
      continue;
    }
    ss_from_f32(st->in.dtype, out[j].data, st->out_data, E);
    st->out_nbytes = nb;
  }
done:
  free(in);
  free(out);
  free(kv);
  free(buf);
  free(who);
}

static void batch_run(ss_job *job) {
  ss_batch *b = ss_container_of(job, ss_batch, job);
  const ss_model *m = b->sm->model;
  uint64_t t0 = uv_hrtime();
  size_t rows = 0;
  int64_t first = 0;
  for (int i = 0; i < b->n; i++) { /* who is still waiting: decided once, here */
    compute_state *st = b->m[i];
    st->in_batch_skip = atomic_load(&st->batch_cancelled);
    if (st->in_batch_skip) continue;
    rows += call_rows(st);
    first += st->in.shape[0];
  }
  b->rc = 0;
  if (rows == 0) return; /* everybody left */
  if (b->decode) {
    int nlive = 0;
    for (int i = 0; i < b->n; i++) nlive += !b->m[i]->in_batch_skip;
    batch_run_decode(b, nlive);
    b->compute_ms = (double)(uv_hrtime() - t0) / 1e6;
    return;
  }
  size_t width = (size_t)b->trail[b->ndim - 1], in_cells = rows * width;
  int64_t out_last = b->m[0]->out_shape[b->m[0]->out_ndim - 1];
  size_t out_cells = rows * (size_t)out_last;
  float *x = malloc(in_cells * sizeof(float)), *y = malloc(out_cells * sizeof(float));
  if (!x || !y) {
    free(x);
    free(y);
    b->rc = SS_ENOMEM;
    snprintf(b->err, sizeof b->err, "out of memory for a batch of %zu rows", rows);
    return;
  }
  size_t off = 0;
  for (int i = 0; i < b->n; i++) { /* stack the inputs (any wire dtype -> f32) */
    compute_state *st = b->m[i];
    if (st->in_batch_skip) continue;
    ss_to_f32(st->in.dtype, st->in.data, x + off, st->in.numel);
    off += st->in.numel;
  }
  ss_tensor in = {SS_DTYPE_F32, b->ndim, {0}, in_cells, x, in_cells * sizeof(float)};
  ss_tensor out = {SS_DTYPE_F32, b->m[0]->out_ndim, {0}, out_cells, y, out_cells * sizeof(float)};
  memcpy(in.shape, b->trail, sizeof in.shape);
  in.shape[0] = first;
  memcpy(out.shape, b->m[0]->out_shape, sizeof out.shape);
  out.shape[0] = first;
  ss_meta none = {0};
  uv_rwlock_rdlock(&((ss_model *)m)->lock);
  if (m->n_kv_layers > 0) {
    ss_kv_io kv = {m->n_kv_layers, NULL, 0, NULL, NULL};
    b->rc = m->ops->forward_kv(m, &in, &out, &kv, &none, b->err, sizeof b->err);
  } else {
    b->rc = m->ops->forward(m, &in, &out, &none, b->err, sizeof b->err);
  }
  uv_rwlock_rdunlock(&((ss_model *)m)->lock);
  if (b->rc == 0 && m->weights && ss_st_check(m->weights, b->err, sizeof b->err) != 0)
    b->rc = SS_EPRECONDITION;
  off = 0;
  for (int i = 0; i < b->n && b->rc == 0; i++) { /* split the outputs (f32 -> the call's dtype) */
    compute_state *st = b->m[i];
    if (st->in_batch_skip) continue;
    size_t cells = call_rows(st) * (size_t)out_last, nb = cells * ss_dtype_size(st->in.dtype);
    st->out_data = malloc(nb ? nb : 1);
    if (!st->out_data) {
      st->rc = SS_ENOMEM;
      snprintf(st->err, sizeof st->err, "out of memory for a %zu-element output", cells);
    } else {
      ss_from_f32(st->in.dtype, y + off, st->out_data, cells);
      st->out_nbytes = nb;
    }
    off += cells;
  }
  free(x);
  free(y);
  b->compute_ms = (double)(uv_hrtime() - t0) / 1e6;
}

/* ------------------------------------------------------------- the loop --- */

static void batch_start(ss_batch *b);

static void batch_free(ss_batch *b) {
  if (b->sm->open_batch == b) b->sm->open_batch = NULL; /* answered while waiting for a slot */
  ss_served_unref(b->sm);
  free(b->m);
  free(b);
}

static void batch_start_waiter(ss_waiter *w);

static void batch_close(ss_batch *b);

/* A regathering batch goes on (its members came back, it filled, or its wait is over): it starts
 * on the slot it holds, or asks for one. */
static void regather_go(ss_batch *b) {
  int held = b->regather == 1;
  ss_tq_cancel(&b->svc->tq, &b->timer);
  b->regather = 0;
  if (!held) {
    batch_close(b);
    return;
  }
  if (b->sm->open_batch == b) b->sm->open_batch = NULL;
  batch_start(b);
}

/* The wait for a decode batch's sequences after it took ms (see the top). */
static uint64_t regather_ns(double ms) {
  ms *= SS_REGATHER_SHARE;
  ms = ms < 1.0 ? 1.0 : ms > SS_REGATHER_MAX_MS ? SS_REGATHER_MAX_MS : ms;
  return (uint64_t)(ms * 1e6);
}

static void on_regather(ss_tq_entry *e) { regather_go(ss_container_of(e, ss_batch, timer)); }

/* The slot passes from decode batch b (just computed) to w: when w is the model's waiting
 * decode batch, still open, with room for b's sequences, it holds the slot for them (see the
 * top). Returns 1 when w now waits, 0 when the caller should start it. */
static int regather(const ss_batch *b, ss_waiter *w) {
  if (w->start != batch_start_waiter || !b->decode || b->rc != 0 ||
      b->compute_ms < SS_REGATHER_MIN_MS)
    return 0;
  ss_batch *nb = ss_container_of(w, ss_batch, waiter);
  int live = 0;
  for (int i = 0; i < b->n; i++) live += !b->m[i]->in_batch_skip;
  if (!nb->decode || nb->sm->open_batch != nb || live == 0 ||
      nb->rows + (size_t)live > max_rows(nb->sm->model, 1))
    return 0;
  if (ss_tq_arm(&nb->svc->tq, &nb->timer, uv_hrtime() + regather_ns(b->compute_ms), on_regather) !=
      0)
    return 0;
  nb->regather = 1;
  nb->expect = nb->n + live;
  return 1;
}

/* Loop thread: the batch computed (or was skipped): answer every member. */
static void batch_done(ss_job *job) {
  ss_batch *b = ss_container_of(job, ss_batch, job);
  if (b->holds_slot) {
    b->holds_slot = 0;
    ss_waiter *w = ss_admit_leave(&b->sm->admit);
    if (w && !(job->ran && regather(b, w)))
      w->start(w); /* a batch or a single call (compute_run.c) */
    if (!w && job->ran && b->decode && b->rc == 0 && b->compute_ms >= SS_REGATHER_MIN_MS) {
      int live = 0; /* nobody waited: the next decode batch waits for these sequences */
      for (int i = 0; i < b->n; i++) live += !b->m[i]->in_batch_skip;
      b->sm->regather_n = live;
      b->sm->regather_until = uv_hrtime() + regather_ns(b->compute_ms);
    }
  }
  int ran = job->ran;
  for (int i = 0; i < b->n; i++) {
    compute_state *st = b->m[i];
    st->batch = NULL;
    st->on_worker = 0;
    st->compute_ms = b->compute_ms;
    if (ran && st->rc == 0 && b->rc != 0) {
      st->rc = b->rc;
      snprintf(st->err, sizeof st->err, "%s", b->err);
    }
    if (ran) st->t_run = st->t_run ? st->t_run : uv_hrtime();
    ss_compute_finish(st, ran && !st->in_batch_skip); /* drops the member's reference */
  }
  b->sm->batches++;
  b->sm->batched_calls += (uint64_t)b->n;
  batch_free(b);
}

/* Admitted: one worker computes the whole batch (it takes no more calls). */
static void batch_start(ss_batch *b) {
  if (b->sm->open_batch == b) b->sm->open_batch = NULL;
  b->holds_slot = 1;
  uint64_t now = uv_hrtime();
  for (int i = 0; i < b->n; i++) b->m[i]->t_run = now;
  b->job.run = batch_run;
  b->job.done = batch_done;
  atomic_store(&b->job.cancelled, 0);
  ss_pool_submit(b->svc->pool, &b->job);
}

/* The open batch asks for admission. If it has to wait for a slot it stays the model's open
 * batch and keeps taking calls until it starts (or fills). */
static void batch_close(ss_batch *b) {
  ss_served_model *sm = b->sm;
  ss_tq_cancel(&b->svc->tq, &b->timer);
  b->regather = 0;
  b->submitted = 1;
  switch (ss_admit_enter(&sm->admit, &b->waiter)) {
    case SS_ADMIT_RUN: batch_start(b); break;
    case SS_ADMIT_QUEUED:
      if (sm->open_batch == b && b->rows >= max_rows(sm->model, b->decode)) sm->open_batch = NULL;
      break;
    default:
      if (sm->open_batch == b) sm->open_batch = NULL;
      for (int i = 0; i < b->n; i++) {
        compute_state *st = b->m[i];
        st->batch = NULL;
        if (!ss_call_answered(st->call))
          ss_call_fail(st->call, SS_GRPC_RESOURCE_EXHAUSTED,
                       "model '%s' is at capacity: %d running, %zu queued (--max-inflight %d, "
                       "--max-queue %d); retry later",
                       sm->model->id, sm->admit.inflight, sm->admit.waiting, sm->admit.limit,
                       sm->admit.max_queue);
        ss_call_unref(st->call);
      }
      batch_free(b);
  }
}

static void batch_start_waiter(ss_waiter *w) { batch_start(ss_container_of(w, ss_batch, waiter)); }

static void on_delay(ss_tq_entry *e) { batch_close(ss_container_of(e, ss_batch, timer)); }

static ss_batch *batch_open(compute_state *st) {
  ss_batch *b = calloc(1, sizeof *b);
  int cap = 8;
  if (b) b->m = calloc((size_t)cap, sizeof *b->m);
  if (!b || !b->m) {
    free(b);
    return NULL;
  }
  b->cap = cap;
  b->waiter.start = batch_start_waiter;
  b->svc = st->svc;
  b->sm = st->sm;
  ss_served_ref(b->sm);
  b->ndim = st->in.ndim;
  b->decode = is_decode(st);
  memcpy(b->trail, st->in.shape, sizeof b->trail);
  b->sm->open_batch = b;
  /* Under a millisecond (the loop timers' granularity) the batch takes the calls that arrived in
   * this loop iteration (one read of a connection carries many requests) and closes right after
   * the iteration's I/O (the service's check handle); longer delays use the timer queue. */
  uint64_t now = uv_hrtime();
  if (b->decode && st->sm->model->batch_delay_us < 1000 && b->sm->regather_n > 1 &&
      now < b->sm->regather_until &&
      ss_tq_arm(&st->svc->tq, &b->timer, b->sm->regather_until, on_regather) == 0) {
    b->regather = 2; /* the sequences a batch just answered are on their way: wait for them */
    b->expect = b->sm->regather_n;
    b->sm->regather_n = 0;
  } else if (st->sm->model->batch_delay_us < 1000) {
    b->at_iteration_end = 1;
    uv_check_start(&st->svc->batch_check, ss_batch_on_check);
  } else if (ss_tq_arm(&st->svc->tq, &b->timer,
                       uv_hrtime() + (uint64_t)st->sm->model->batch_delay_us * 1000u,
                       on_delay) != 0) {
    b->sm->open_batch = NULL;
    batch_free(b);
    return NULL;
  }
  return b;
}

static int batch_push(ss_batch *b, compute_state *st) {
  if (b->n == b->cap) {
    compute_state **m = realloc(b->m, (size_t)b->cap * 2 * sizeof *m);
    if (!m) return SS_ENOMEM;
    b->m = m;
    b->cap *= 2;
  }
  b->m[b->n++] = st;
  b->rows += call_rows(st);
  st->batch = b;
  st->on_worker = 1;
  ss_call_ref(st->call);
  return 0;
}

/* The model's open batch stops taking calls: one still open asks for admission; one already
 * waiting for a slot keeps its place. */
static void batch_detach(ss_batch *b) {
  if (!b->submitted) batch_close(b);
  if (b->sm->open_batch == b) b->sm->open_batch = NULL;
}

void ss_batch_add(compute_state *st) {
  ss_served_model *sm = st->sm;
  size_t max = max_rows(sm->model, is_decode(st)), rows = call_rows(st);
  ss_batch *b = sm->open_batch;
  if (b && (!same_trail(b, st) || b->rows + rows > max)) {
    batch_detach(b); /* it will not take this call: send it on its way */
    b = NULL;
  }
  if (!b) b = batch_open(st);
  if (!b || batch_push(b, st) != 0) {
    ss_call_fail(st->call, SS_GRPC_RESOURCE_EXHAUSTED, "out of memory for a batch");
    return;
  }
  if (b->regather && (b->n >= b->expect || b->rows >= max))
    regather_go(b); /* the sequences it held the slot for are back, or it is full */
  else if (b->rows >= max)
    batch_detach(b); /* full: go now (or keep its place in the queue) */
}

void ss_batch_cancel(compute_state *st) {
  ss_batch *b = st->batch;
  atomic_store(&st->batch_cancelled, 1);
  if (!b->submitted) return;
  /* Queued for admission with nobody left in it: leave the queue and answer nobody. */
  int live = 0;
  for (int i = 0; i < b->n; i++) live += !atomic_load(&b->m[i]->batch_cancelled);
  if (!live && b->waiter.queued) {
    ss_admit_remove(&b->sm->admit, &b->waiter);
    b->job.ran = 0;
    batch_done(&b->job);
  }
}

void ss_batch_flush_all(ss_service *s) {
  for (size_t i = 0; i < s->nmodels; i++)
    if (s->models[i]->open_batch) batch_detach(s->models[i]->open_batch);
}

void ss_batch_on_check(uv_check_t *h) {
  ss_service *s = h->data;
  uv_check_stop(h);
  for (size_t i = 0; i < s->nmodels; i++) {
    ss_batch *b = s->models[i]->open_batch;
    if (b && b->at_iteration_end && !b->submitted) batch_close(b);
  }
}
