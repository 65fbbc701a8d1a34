/*
 * backends_check.h — one architecture's block through both backends (test_gpt2.c, test_llama.c):
 * the same spec served with backend=cpu and backend=reference (nn/backend/), compared on a
 * prefill [2, 6], a decode step with the cache of a 4-token prefill, and a training forward +
 * backward (grad_input). The differences are printed; each must be within tol.
 * On the reference model it also checks the seam's memory contract with that backend's books
 * (nn/backend/reference.c): after an optimizer step (gradients, moments, copies on first write)
 * the backend holds at least the trainable bytes, and once the model is freed exactly what it
 * held before the model was made (every tensor came from the backend and went back to it).
 */
#ifndef SS_TEST_BACKENDS_CHECK_H
#define SS_TEST_BACKENDS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/model.h"
#include "models/nn/backend/backend.h"

/* A float32 [b, s, e] view of data (also the tests' own helper). */
static ss_tensor tensor3(float *data, int64_t b, int64_t s, int64_t e) {
  ss_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = SS_DTYPE_F32;
  t.ndim = 3;
  t.shape[0] = b;
  t.shape[1] = s;
  t.shape[2] = e;
  t.numel = (size_t)(b * s * e);
  t.nbytes = t.numel * sizeof(float);
  t.data = data;
  return t;
}

static double bc_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= m)) m = d; /* NaN: worst */
  }
  return m;
}

/* out[0..2]: prefill, decode step, grad_input of model m on the inputs x [2, 6, E], r. */
static int bc_run(ss_model *m, int E, const float *x, const float *r, float *pre, float *step,
                  float *gin) {
  enum { B = 2, S = 6, P = 4 };
  char err[400];
  ss_tensor in = tensor3((float *)x, B, S, E), out = tensor3(pre, B, S, E);
  float *xs = malloc((size_t)B * P * E * sizeof *xs), *ys = malloc((size_t)B * P * E * sizeof *ys);
  float *x1 = malloc((size_t)B * E * sizeof *x1);
  ss_kv_layer *pres = calloc((size_t)m->n_kv_layers, sizeof *pres);
  ss_kv_layer *pres2 = calloc((size_t)m->n_kv_layers, sizeof *pres2);
  void *saved = NULL;
  size_t sb;
  int rc = m->ops->forward(m, &in, &out, NULL, err, sizeof err);
  for (int b = 0; b < B; b++) { /* the first P tokens, then token P with their cache */
    memcpy(xs + (size_t)b * P * E, x + (size_t)b * S * E, (size_t)P * E * sizeof *xs);
    memcpy(x1 + (size_t)b * E, x + ((size_t)b * S + P) * E, (size_t)E * sizeof *x1);
  }
  if (rc == 0) {
    ss_tensor i2 = tensor3(xs, B, P, E), o2 = tensor3(ys, B, P, E);
    ss_kv_io kv = {m->n_kv_layers, NULL, 1, pres, NULL};
    rc = m->ops->forward_kv(m, &i2, &o2, &kv, NULL, err, sizeof err);
  }
  if (rc == 0) {
    ss_tensor i3 = tensor3(x1, B, 1, E), o3 = tensor3(step, B, 1, E);
    ss_kv_io kv = {m->n_kv_layers, pres, 1, pres2, NULL};
    rc = m->ops->forward_kv(m, &i3, &o3, &kv, NULL, err, sizeof err);
  }
  if (rc == 0) {
    ss_tensor o4 = tensor3(ys, B, S, E), go = tensor3((float *)r, B, S, E);
    ss_tensor gi = tensor3(gin, B, S, E);
    free(ys);
    ys = malloc((size_t)B * S * E * sizeof *ys);
    o4.data = ys;
    rc = m->ops->forward_train(m, &in, &o4, "bc", &saved, &sb, err, sizeof err);
    if (rc == 0) rc = m->ops->backward(m, saved, &go, &gi, err, sizeof err);
    if (saved != NULL) m->ops->free_saved(m, saved);
  }
  if (rc != 0) fprintf(stderr, "%s: %s\n", m->id, err);
  for (int l = 0; l < m->n_kv_layers; l++) {
    ss_kv_release(&pres[l]);
    ss_kv_release(&pres2[l]);
  }
  free(pres), free(pres2), free(xs), free(ys), free(x1);
  return rc;
}

/* spec (without backend=) through both backends; differences printed, each within tol. */
static void check_backends(const char *spec, int E, double tol) {
  enum { B = 2, S = 6 };
  const size_t n = (size_t)B * S * E;
  float *x = malloc(n * sizeof *x), *r = malloc(n * sizeof *r), *o[2][3];
  ss_model *m[2] = {NULL, NULL};
  unsigned st = 99;
  size_t live0 = ss_backend_reference_live_bytes(), live_step = 0;
  for (size_t i = 0; i < n; i++) {
    st = st * 1103515245u + 12345u;
    x[i] = (float)((st >> 8) & 0xffff) / 32768.0f - 1.0f;
    st = st * 1103515245u + 12345u;
    r[i] = (float)((st >> 8) & 0xffff) / 32768.0f - 1.0f;
  }
  for (int k = 0; k < 2; k++) {
    char full[800], err[600];
    snprintf(full, sizeof full, "%s,backend=%s", spec, k ? "reference" : "cpu");
    for (int j = 0; j < 3; j++) o[k][j] = calloc(n, sizeof(float));
    CHECK_EQ_INT(ss_model_create(full, &m[k], err, sizeof err), 0);
    if (m[k] == NULL) fprintf(stderr, "%s: %s\n", full, err);
    if (m[k] != NULL) CHECK_CONTAINS(m[k]->describe, k ? "backend reference" : "backend cpu");
    if (m[k] != NULL) CHECK_EQ_INT(bc_run(m[k], E, x, r, o[k][0], o[k][1], o[k][2]), 0);
  }
  if (m[0] != NULL && m[1] != NULL) {
    double d0 = bc_diff(o[0][0], o[1][0], n), d1 = bc_diff(o[0][1], o[1][1], (size_t)B * E);
    double d2 = bc_diff(o[0][2], o[1][2], n);
    const char *lora = strstr(spec, "lora_rank") ? " + LoRA" : "";
    printf("  cpu vs reference, %.48s%s: prefill %.2e, decode %.2e, grad_input %.2e\n",
           m[0]->describe, lora, d0, d1, d2);
    CHECK(d0 <= tol && d1 <= tol && d2 <= tol);
  }
  if (m[1] != NULL) { /* an AdamW step on the reference model: moments and copies */
    ss_optim opt = {SS_OPT_ADAMW, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f};
    char err[400];
    CHECK_EQ_INT(m[1]->ops->step(m[1], &opt, err, sizeof err), 0);
    live_step = ss_backend_reference_live_bytes() - live0;
  }
  for (int k = 0; k < 2; k++) {
    ss_model_free(m[k]);
    for (int j = 0; j < 3; j++) free(o[k][j]);
  }
  if (m[1] != NULL) {
    size_t live_end = ss_backend_reference_live_bytes();
    printf("  reference backend's books: %zu bytes held after a step, %zd left after free\n",
           live_step, (ssize_t)(live_end - live0));
    CHECK(live_step > 0);
    CHECK(live_end == live0);
  }
  free(x), free(r);
}

#endif
