/*
 * pool.h — the bounded compute worker pool.
 *
 * W worker threads (uv_thread_t, created once, never more) take jobs from one FIFO and run
 * them; finished jobs go to a completion list that the loop thread drains in one uv_async
 * callback (uv_async_send coalesces, so the callback always takes the whole list).
 * With W == 0 jobs run inline on the loop thread at submit time (a one-call-at-a-time baseline).
 *
 * Threads: ss_pool_new/submit/free on the loop thread; job->run on a worker (or the loop
 * when W == 0); job->done always on the loop thread.
 * Cancellation: the loop sets job->cancelled (atomic); a worker that picks up a cancelled job
 * does not run it, and done() still fires exactly once so the owner can release its state.
 */
#ifndef SS_LOOP_POOL_H
#define SS_LOOP_POOL_H

#include <stdatomic.h>
#include <uv.h>

typedef struct ss_job ss_job;
struct ss_job {
  ss_job *next;              /* pool-internal link */
  void (*run)(ss_job *job);  /* worker thread: the compute */
  void (*done)(ss_job *job); /* loop thread: after run (or after it was skipped) */
  atomic_int cancelled;      /* set by the loop: skip run if not started */
  int ran;                   /* written by the worker before completion: 1 if run() ran */
};

typedef struct ss_pool ss_pool;

/* Start `workers` threads. Each runs thread_init(arg) first (the compute engine sizes its
 * intra-op team there); with workers == 0 the loop thread runs it. thread_init may be NULL.
 * *out: free with ss_pool_free. */
int ss_pool_new(uv_loop_t *loop, int workers, void (*thread_init)(void *arg), void *arg,
                ss_pool **out);
/* Queue a job (loop thread). The job memory is borrowed until done() runs. */
void ss_pool_submit(ss_pool *p, ss_job *job);
/* Jobs queued and not yet taken by a worker. */
size_t ss_pool_queued(const ss_pool *p);
int ss_pool_workers(const ss_pool *p);
/* Stop taking jobs (loop thread): queued jobs get done() now, marked cancelled; idle workers
 * exit; the completion handle is closed (uv_close) so the loop can end. Returns the number of
 * workers still inside run() — their results are dropped, and ss_pool_free() will wait for
 * them; 0 when everything has stopped and been joined. */
int ss_pool_shutdown(ss_pool *p);
/* Join every worker (waits for running jobs) and free the pool. Calls ss_pool_shutdown first if
 * it was not called (then runs the loop once, non-blocking, to close the handle). NULL is fine. */
void ss_pool_free(ss_pool *p);

#endif
