/*
 * identity.c — the "identity" model kind: the output is the input, byte for byte.
 * Thread: check() on the loop thread; exec = SS_EXEC_INLINE, so the service answers on the
 * loop thread without calling forward() (echo). Any dtype, any shape.
 */
#include <stdio.h>
#include <string.h>

#include "models/model.h"

static int identity_check(const ss_model *m, const ss_tensor *in, const ss_meta *meta,
                          int64_t *out_shape, int *out_ndim, char *err, size_t errlen) {
  (void)m, (void)meta, (void)err, (void)errlen;
  memcpy(out_shape, in->shape, sizeof(int64_t) * (size_t)in->ndim);
  *out_ndim = in->ndim;
  return 0;
}

/* Echo model: out may have no data; nothing to compute. */
static int identity_forward(const ss_model *m, const ss_tensor *in, ss_tensor *out,
                            const ss_meta *meta, char *err, size_t errlen) {
  (void)m, (void)in, (void)out, (void)meta, (void)err, (void)errlen;
  return 0;
}

static void identity_destroy(ss_model *m) { (void)m; }

static const ss_model_ops identity_ops = {
    .check = identity_check, .forward = identity_forward, .destroy = identity_destroy};

int ss_model_identity_new(ss_model *m, const char *const *params, size_t n, char *err,
                          size_t errlen) {
  (void)params, (void)n, (void)err, (void)errlen;
  m->kind = "identity";
  m->ops = &identity_ops;
  m->impl = NULL;
  m->exec = SS_EXEC_INLINE;
  m->echo = 1;
  snprintf(m->describe, sizeof m->describe, "identity (echo, inline on the loop)");
  return 0;
}
