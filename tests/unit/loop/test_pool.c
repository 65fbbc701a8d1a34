/*
 * test_exec.c — the worker pool (every job runs once, done() on the loop thread, cancelled
 * jobs skipped, inline mode), admission (limit, bounded queue, FIFO hand-over, removal) and
 * the timer queue (order, cancel, re-arm).
 */
#include <stdlib.h>
#include <uv.h>

#include "check.h"
#include "loop/admission.h"
#include "loop/pool.h"
#include "loop/timerq.h"

typedef struct tjob {
  ss_job job;
  int value;
  int ran_on_loop_thread;
  int done_count;
  uv_thread_t loop_thread;
} tjob;

static int done_total;

static void run_square(ss_job *j) {
  tjob *t = (tjob *)j;
  uv_thread_t self = uv_thread_self();
  t->ran_on_loop_thread = uv_thread_equal(&self, &t->loop_thread);
  t->value = t->value * t->value;
}

static void on_done(ss_job *j) {
  tjob *t = (tjob *)j;
  t->done_count++;
  done_total++;
}

static void test_pool(int workers, int ncancel) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  ss_pool *p;
  CHECK_EQ_INT(ss_pool_new(&loop, workers, NULL, NULL, &p), 0);
  enum { N = 200 };
  tjob *jobs = calloc(N, sizeof *jobs);
  done_total = 0;
  for (int i = 0; i < N; i++) {
    jobs[i].value = i;
    jobs[i].loop_thread = uv_thread_self();
    jobs[i].job.run = run_square;
    jobs[i].job.done = on_done;
    atomic_store(&jobs[i].job.cancelled, i < ncancel);
    ss_pool_submit(p, &jobs[i].job);
  }
  while (done_total < N) uv_run(&loop, UV_RUN_ONCE);
  int ok = 1;
  for (int i = 0; i < N; i++) {
    if (jobs[i].done_count != 1) ok = 0;
    if (i < ncancel && (jobs[i].job.ran || jobs[i].value != i)) ok = 0;
    if (i >= ncancel && (!jobs[i].job.ran || jobs[i].value != i * i)) ok = 0;
    if (i >= ncancel && (workers > 0) == jobs[i].ran_on_loop_thread) ok = 0;
  }
  CHECK(ok);
  CHECK_EQ_INT(ss_pool_queued(p), 0);
  ss_pool_free(p);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
  free(jobs);
}

static void test_admission(void) {
  ss_admit a;
  ss_waiter w[6] = {0};
  ss_admit_init(&a, 2, 3);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[0]), SS_ADMIT_RUN);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[1]), SS_ADMIT_RUN);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[2]), SS_ADMIT_QUEUED);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[3]), SS_ADMIT_QUEUED);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[4]), SS_ADMIT_QUEUED);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[5]), SS_ADMIT_FULL);
  CHECK_EQ_INT(a.rejected, 1);
  CHECK_EQ_INT(a.waiting, 3);
  ss_admit_remove(&a, &w[3]); /* cancelled while waiting */
  ss_admit_remove(&a, &w[3]); /* twice is a no-op */
  CHECK_EQ_INT(a.waiting, 2);
  CHECK(ss_admit_leave(&a) == &w[2]); /* FIFO hand-over keeps inflight at 2 */
  CHECK_EQ_INT(a.inflight, 2);
  CHECK(ss_admit_leave(&a) == &w[4]);
  CHECK(ss_admit_leave(&a) == NULL);
  CHECK_EQ_INT(a.inflight, 1);
  CHECK(ss_admit_leave(&a) == NULL);
  CHECK_EQ_INT(a.inflight, 0);
  /* unlimited, and a zero-length queue */
  ss_admit_init(&a, 0, 0);
  for (int i = 0; i < 1000; i++) CHECK_EQ_INT(ss_admit_enter(&a, &w[0]), SS_ADMIT_RUN);
  ss_admit_init(&a, 1, 0);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[0]), SS_ADMIT_RUN);
  CHECK_EQ_INT(ss_admit_enter(&a, &w[1]), SS_ADMIT_FULL);
}

typedef struct tent {
  ss_tq_entry e;
  int id;
} tent;
static int fired[16], nfired;
static void on_fire(ss_tq_entry *e) { fired[nfired++] = ((tent *)e)->id; }

static void test_timerq(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  ss_timerq q;
  ss_tq_init(&loop, &q);
  tent t[8];
  uint64_t now = uv_hrtime();
  int order[8] = {5, 3, 7, 1, 6, 2, 4, 0}; /* ms offsets x 3 */
  for (int i = 0; i < 8; i++) {
    t[i].e = (ss_tq_entry){0};
    t[i].id = i;
    ss_tq_arm(&q, &t[i].e, now + (uint64_t)order[i] * 3000000u, on_fire);
  }
  ss_tq_cancel(&q, &t[4].e);                       /* offset 6: never fires */
  ss_tq_arm(&q, &t[2].e, now + 1000000u, on_fire); /* re-armed earlier: offset 7 -> 1 ms */
  CHECK(!ss_tq_armed(&t[4].e));
  nfired = 0;
  while (nfired < 7) uv_run(&loop, UV_RUN_ONCE);
  int expect[7] = {7, 2, 3, 5, 1, 6, 0};
  int ok = 1;
  for (int i = 0; i < 7; i++)
    if (fired[i] != expect[i]) ok = 0;
  CHECK(ok);
  ss_tq_close(&q);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void) {
  test_pool(2, 0);
  test_pool(2, 50);
  test_pool(0, 10);
  test_admission();
  test_timerq();
  TEST_MAIN_END();
}
