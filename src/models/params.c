/*
 * params.c — see params.h. Thread: as documented there; the only lock is the set's gradient
 * mutex.
 */
#include "models/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/safetensors.h"

int ss_params_init(ss_params *s, size_t cap) {
  memset(s, 0, sizeof *s);
  s->cap = cap;
  s->p = calloc(cap ? cap : 1, sizeof *s->p);
  s->names = calloc(cap ? cap : 1, sizeof *s->names);
  s->shape = calloc(cap ? cap : 1, sizeof *s->shape);
  s->ndim = calloc(cap ? cap : 1, sizeof *s->ndim);
  if (s->p == NULL || s->names == NULL || s->shape == NULL || s->ndim == NULL) return SS_ENOMEM;
  if (uv_mutex_init(&s->gmu) != 0) return SS_ENOMEM;
  s->gmu_ok = 1;
  return 0;
}

int ss_params_add(ss_params *s, const char *name, const int64_t *shape, int ndim,
                  const float **view, float **own) {
  ss_param *q;
  if (s->n >= s->cap || (s->names[s->n] = strdup(name)) == NULL) return SS_ENOMEM;
  q = &s->p[s->n];
  q->view = view;
  q->own = own;
  q->numel = (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1);
  s->shape[s->n][0] = shape[0];
  s->shape[s->n][1] = ndim == 2 ? shape[1] : 0;
  s->ndim[s->n] = ndim;
  return (int)s->n++;
}

int ss_params_grads(ss_params *s) {
  int rc = 0;
  uv_mutex_lock(&s->gmu);
  for (size_t i = 0; i < s->n && rc == 0; i++) rc = ss_param_grad(&s->p[i]);
  uv_mutex_unlock(&s->gmu);
  return rc;
}

float *ss_params_grad(const ss_params *s, int i) { return s->p[i].grad; }

void ss_params_lock(ss_params *s) { uv_mutex_lock(&s->gmu); }

void ss_params_unlock(ss_params *s) { uv_mutex_unlock(&s->gmu); }

void ss_params_linear_backward(ss_params *s, int iw, int ib, float *dx, const float *dy,
                               const float *x, const float *W, int BT, int C, int OC,
                               ss_w_layout layout) {
  uv_mutex_lock(&s->gmu);
  ss_linear_backward(NULL, s->p[iw].grad, ib >= 0 ? s->p[ib].grad : NULL, dy, x, W, BT, C, OC,
                     layout);
  uv_mutex_unlock(&s->gmu);
  if (dx != NULL) ss_linear_backward(dx, NULL, NULL, dy, x, W, BT, C, OC, layout);
}

int ss_params_step(ss_params *s, const ss_optim *opt, const char *model_id, char *err,
                   size_t errlen) {
  if (s->n == 0 || s->p[0].grad == NULL) return 0; /* no backward yet: nothing to apply */
  return ss_param_array_step(s->p, s->n, opt, &s->t, model_id, err, errlen);
}

int ss_params_save(const ss_params *s, const char *path, char *err, size_t errlen) {
  const int64_t **shp = malloc((s->n ? s->n : 1) * sizeof *shp);
  const float **data = malloc((s->n ? s->n : 1) * sizeof *data);
  int rc;
  if (shp == NULL || data == NULL) {
    snprintf(err, errlen, "out of memory");
    rc = SS_ENOMEM;
  } else {
    for (size_t i = 0; i < s->n; i++) {
      shp[i] = s->shape[i];
      data[i] = *s->p[i].view;
    }
    rc = ss_st_write_f32_atomic(path, s->n, (const char *const *)s->names, shp, s->ndim, data, err,
                                errlen);
  }
  free(shp);
  free(data);
  return rc;
}

void ss_params_free(ss_params *s) {
  for (size_t i = 0; i < s->n; i++) {
    ss_param_free_state(&s->p[i]);
    free(s->names[i]);
  }
  if (s->gmu_ok) uv_mutex_destroy(&s->gmu);
  free(s->p);
  free(s->names);
  free(s->shape);
  free(s->ndim);
  memset(s, 0, sizeof *s);
}
