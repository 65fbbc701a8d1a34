/*
 * scale.c — the "scale" model kind: out = in x factor, factor from request metadata "factor"
 * (a finite double, default 1.0). A minimal real compute on a worker thread.
 * Thread: check() on the loop thread (validates "factor"); forward() on a worker.
 */
#include <float.h>
#include <stdio.h>
#include <string.h>

#include "models/model.h"

static int scale_factor(const ss_meta *meta, double *f, char *err, size_t errlen) {
  return ss_meta_double(meta, "factor", 1.0, -DBL_MAX, DBL_MAX, f, err, errlen);
}

static int scale_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                       int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  double f;
  (void)m;
  if (scale_factor(meta, &f, err, errlen) != 0) return SS_EINVAL;
  memcpy(out_shape, in->shape, sizeof(int64_t) * (size_t)in->ndim);
  *out_ndim = in->ndim;
  return 0;
}

static int scale_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                         const ss_meta *meta, char *err, size_t errlen) {
  const float *x = in->data;
  float *y = out->data;
  double f;
  float ff;
  (void)m;
  if (scale_factor(meta, &f, err, errlen) != 0) return SS_EINVAL;
  ff = (float)f;
  for (size_t i = 0; i < in->numel; i++) y[i] = x[i] * ff;
  return 0;
}

static void scale_destroy(ss_model *m) { (void)m; }

static const ss_model_ops scale_ops = {
    .check = scale_check, .forward = scale_forward, .destroy = scale_destroy};

int ss_model_scale_new(ss_model *m, const char *const *params, size_t n, char *err, size_t errlen) {
  (void)params, (void)n, (void)err, (void)errlen;
  m->kind = "scale";
  m->ops = &scale_ops;
  m->impl = NULL;
  m->exec = SS_EXEC_WORKER;
  m->echo = 0;
  snprintf(m->describe, sizeof m->describe, "scale (out = in x metadata 'factor', default 1)");
  return 0;
}
