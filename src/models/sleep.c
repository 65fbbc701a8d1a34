/*
 * sleep.c — the "sleep" model kind: wait metadata "ms" milliseconds (default 100, 0..600000),
 * then echo the input. The wait is a loop timer (SS_EXEC_TIMER): it never occupies a worker,
 * so it models I/O-bound work (what an asyncio server does with asyncio.sleep).
 * Thread: check() and ss_model_sleep_ms() on the loop thread; forward() is never needed.
 */
#include <stdio.h>
#include <string.h>

#include "models/model.h"

int ss_model_sleep_ms(const ss_meta *meta, double *ms, char *err, size_t errlen) {
  return ss_meta_double(meta, "ms", 100.0, 0.0, 600000.0, ms, err, errlen);
}

static int sleep_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                       int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  double ms;
  (void)m;
  if (ss_model_sleep_ms(meta, &ms, err, errlen) != 0) return SS_EINVAL;
  memcpy(out_shape, in->shape, sizeof(int64_t) * (size_t)in->ndim);
  *out_ndim = in->ndim;
  return 0;
}

/* Echo model: the service does the wait on a timer; nothing to compute, out is not written. */
static int sleep_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                         const ss_meta *meta, char *err, size_t errlen) {
  (void)m, (void)in, (void)out, (void)meta, (void)err, (void)errlen;
  return 0;
}

static void sleep_destroy(ss_model *m) { (void)m; }

static const ss_model_ops sleep_ops = {
    .check = sleep_check, .forward = sleep_forward, .destroy = sleep_destroy};

int ss_model_sleep_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  (void)params, (void)n, (void)err, (void)errlen;
  m->kind = "sleep";
  m->ops = &sleep_ops;
  m->impl = NULL;
  m->exec = SS_EXEC_TIMER;
  m->echo = 1;
  snprintf(m->describe, sizeof m->describe,
           "sleep (loop timer, metadata 'ms' default 100, then echo)");
  return 0;
}
