/*
 * pool.c — worker pool: see pool.h. One mutex + condvar guards the job FIFO; one mutex guards
 * the completion list. Each worker runs the owner's thread_init once at start (the compute engine
 * sizes its intra-op team there: the pool itself knows nothing of BLAS or OpenMP).
 */
#include "loop/pool.h"

#include <stdlib.h>

#include "core/log.h"
#include "splitserve.h"

struct ss_pool {
  uv_loop_t *loop;
  int nworkers;
  void (*thread_init)(void *arg);
  void *thread_arg;
  uv_thread_t *threads;
  uv_mutex_t mu;
  uv_cond_t cv;
  ss_job *head, *tail; /* FIFO of queued jobs */
  size_t queued;
  int busy;              /* workers inside run() (guarded by mu) */
  atomic_size_t pending; /* == queued, readable without the lock (workers' short poll) */
  atomic_int stop_flag;
  int stopping;
  uv_mutex_t done_mu;
  ss_job *done_head, *done_tail;
  int detached; /* async handle closed: completions are dropped (guarded by done_mu) */
  int shut;     /* ss_pool_shutdown ran */
  uv_async_t async;
};

static void complete(ss_pool *p, ss_job *job) {
  job->next = NULL;
  uv_mutex_lock(&p->done_mu);
  if (!p->detached) {
    if (p->done_tail)
      p->done_tail->next = job;
    else
      p->done_head = job;
    p->done_tail = job;
    uv_async_send(&p->async); /* under the lock: the handle cannot be closing */
  }
  uv_mutex_unlock(&p->done_mu);
}

/* After finishing a job a worker polls for the next one this long before it sleeps on the
 * condition variable: a futex wake-up costs tens of microseconds on a busy 2-core box, which is
 * a visible share of a 1 ms model call at low concurrency. Bounded, so an idle server idles. */
#define SS_WORKER_SPIN_NS 150000u

static void worker_main(void *arg) {
  ss_pool *p = arg;
  if (p->thread_init) p->thread_init(p->thread_arg);
  for (;;) {
    uint64_t t0 = uv_hrtime();
    while (atomic_load_explicit(&p->pending, memory_order_acquire) == 0 &&
           !atomic_load_explicit(&p->stop_flag, memory_order_relaxed) &&
           uv_hrtime() - t0 < SS_WORKER_SPIN_NS) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    uv_mutex_lock(&p->mu);
    while (!p->head && !p->stopping) uv_cond_wait(&p->cv, &p->mu);
    ss_job *job = p->head;
    if (!job) { /* stopping and empty */
      uv_mutex_unlock(&p->mu);
      return;
    }
    p->head = job->next;
    if (!p->head) p->tail = NULL;
    p->queued--;
    atomic_fetch_sub_explicit(&p->pending, 1, memory_order_relaxed);
    p->busy++;
    uv_mutex_unlock(&p->mu);
    job->ran = 0;
    if (!atomic_load(&job->cancelled)) {
      job->run(job);
      job->ran = 1;
    }
    complete(p, job);
    uv_mutex_lock(&p->mu);
    p->busy--;
    uv_mutex_unlock(&p->mu);
  }
}

/* Loop thread: take the whole completion list at once and run done() in order. */
static void on_async(uv_async_t *h) {
  ss_pool *p = h->data;
  uv_mutex_lock(&p->done_mu);
  ss_job *job = p->done_head;
  p->done_head = p->done_tail = NULL;
  uv_mutex_unlock(&p->done_mu);
  while (job) {
    ss_job *next = job->next;
    job->done(job);
    job = next;
  }
}

int ss_pool_new(uv_loop_t *loop, int workers, void (*thread_init)(void *arg), void *arg,
                ss_pool **out) {
  ss_pool *p = calloc(1, sizeof *p);
  if (!p) return SS_ENOMEM;
  p->loop = loop;
  p->nworkers = workers;
  p->thread_init = thread_init;
  p->thread_arg = arg;
  uv_mutex_init(&p->mu);
  uv_mutex_init(&p->done_mu);
  uv_cond_init(&p->cv);
  uv_async_init(loop, &p->async, on_async);
  p->async.data = p;
  if (workers > 0) {
    p->threads = calloc((size_t)workers, sizeof *p->threads);
    if (!p->threads) {
      ss_pool_free(p);
      return SS_ENOMEM;
    }
    for (int i = 0; i < workers; i++) {
      if (uv_thread_create(&p->threads[i], worker_main, p) != 0) {
        SS_LOGE("pool: cannot start worker %d", i);
        p->nworkers = i;
        ss_pool_free(p);
        return SS_EIO;
      }
    }
  } else {
    if (thread_init) thread_init(arg); /* inline compute runs on the loop thread */
  }
  *out = p;
  return 0;
}

void ss_pool_submit(ss_pool *p, ss_job *job) {
  job->next = NULL;
  if (p->nworkers == 0) {
    /* Inline: the loop thread computes now (blocking the loop, as a one-thread sync server
     * does); done() still runs from the completion callback, never re-entrantly. */
    job->ran = 0;
    if (!atomic_load(&job->cancelled)) {
      job->run(job);
      job->ran = 1;
    }
    complete(p, job);
    return;
  }
  uv_mutex_lock(&p->mu);
  if (p->tail)
    p->tail->next = job;
  else
    p->head = job;
  p->tail = job;
  p->queued++;
  atomic_fetch_add_explicit(&p->pending, 1, memory_order_release);
  uv_cond_signal(&p->cv);
  uv_mutex_unlock(&p->mu);
}

size_t ss_pool_queued(const ss_pool *p) {
  uv_mutex_lock((uv_mutex_t *)&p->mu);
  size_t n = p->queued;
  uv_mutex_unlock((uv_mutex_t *)&p->mu);
  return n;
}

int ss_pool_workers(const ss_pool *p) { return p->nworkers; }

int ss_pool_shutdown(ss_pool *p) {
  if (!p || p->shut) return 0;
  p->shut = 1;
  uv_mutex_lock(&p->mu);
  p->stopping = 1;
  atomic_store(&p->stop_flag, 1);
  ss_job *left = p->head; /* jobs nobody took: cancelled, done() now */
  p->head = p->tail = NULL;
  p->queued = 0;
  atomic_store(&p->pending, 0);
  int busy = p->busy;
  uv_cond_broadcast(&p->cv);
  uv_mutex_unlock(&p->mu);
  while (left) {
    ss_job *next = left->next;
    atomic_store(&left->cancelled, 1);
    left->ran = 0;
    left->done(left);
    left = next;
  }
  if (!busy) { /* nothing running: join now and deliver the last completions */
    for (int i = 0; i < p->nworkers; i++) uv_thread_join(&p->threads[i]);
    p->nworkers = 0;
    on_async(&p->async);
  }
  uv_mutex_lock(&p->done_mu);
  p->detached = 1;
  uv_mutex_unlock(&p->done_mu);
  uv_close((uv_handle_t *)&p->async, NULL);
  return busy;
}

void ss_pool_free(ss_pool *p) {
  if (!p) return;
  if (!p->shut) {
    ss_pool_shutdown(p);
    uv_run(p->loop, UV_RUN_NOWAIT); /* let the async handle close */
  }
  for (int i = 0; i < p->nworkers; i++) uv_thread_join(&p->threads[i]);
  free(p->threads);
  uv_mutex_destroy(&p->mu);
  uv_mutex_destroy(&p->done_mu);
  uv_cond_destroy(&p->cv);
  free(p);
}
