/*
 * spin.c — the "spin" model kind: burn CPU for metadata "ms" milliseconds (default 10,
 * 0..600000), measured with CLOCK_MONOTONIC, then the service echoes the input. A real busy
 * loop, not a sleep: it models CPU-bound work that holds a worker (what a thread-pool server does
 * with blocking work). The busy loop polls the call's cancel flag (ss_meta_cancelled) every ~1000
 * iterations: a call whose deadline passed or whose client went away stops within microseconds and
 * frees its worker. Thread: check() on the loop thread; forward() on a worker (never writes out:
 * echo).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "models/model.h"
#include "splitserve.h"

static int spin_ms(const ss_meta *meta, double *ms, char *err, size_t errlen) {
  return ss_meta_double(meta, "ms", 10.0, 0.0, 600000.0, ms, err, errlen);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int spin_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                      int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  double ms;
  (void)m;
  if (spin_ms(meta, &ms, err, errlen) != 0) return SS_EINVAL;
  memcpy(out_shape, in->shape, sizeof(int64_t) * (size_t)in->ndim);
  *out_ndim = in->ndim;
  return 0;
}

static int spin_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out, const ss_meta *meta,
                        char *err, size_t errlen) {
  volatile double acc = 0.0; /* keeps the loop from being optimised away */
  double ms, deadline;
  (void)m, (void)in, (void)out;
  if (spin_ms(meta, &ms, err, errlen) != 0) return SS_EINVAL;
  deadline = now_ms() + ms;
  while (now_ms() < deadline) {
    for (int i = 0; i < 1000; i++) acc = acc * 0.999999 + 1.0;
    if (ss_meta_cancelled(meta)) { /* nobody waits for it: free the worker */
      snprintf(err, errlen, "cancelled after %.0f of %.0f ms", ms - (deadline - now_ms()), ms);
      return SS_ECANCELLED;
    }
  }
  return 0;
}

static void spin_destroy(ss_model *m) { (void)m; }

static const ss_model_ops spin_ops = {
    .check = spin_check, .forward = spin_forward, .destroy = spin_destroy};

int ss_model_spin_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  (void)params, (void)n, (void)err, (void)errlen;
  m->kind = "spin";
  m->ops = &spin_ops;
  m->impl = NULL;
  m->exec = SS_EXEC_WORKER;
  m->echo = 1;
  snprintf(m->describe, sizeof m->describe,
           "spin (CPU busy loop on a worker, metadata 'ms' default 10, then echo)");
  return 0;
}
