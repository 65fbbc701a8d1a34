/*
 * params.c — see params.h. Thread: as documented there; the only lock is the set's gradient
 * mutex.
 */
#include "models/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/nn/backend/backend.h"
#include "models/nn/deferred.h"
#include "models/nn/matmul.h"
#include "models/safetensors.h"

int ss_params_init(ss_params *s, size_t cap, const ss_compute *cc) {
  memset(s, 0, sizeof *s);
  s->cap = cap;
  s->cc = cc;
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
  q->alloc = ss_backend_of(s->cc)->alloc;
  q->release = ss_backend_of(s->cc)->release;
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
  ss_op_linear_backward(s->cc, NULL, s->p[iw].grad, ib >= 0 ? s->p[ib].grad : NULL, dy, x, W, BT, C,
                        OC, layout);
  uv_mutex_unlock(&s->gmu);
  if (dx != NULL) ss_op_linear_backward(s->cc, dx, NULL, NULL, dy, x, W, BT, C, OC, layout);
}

int ss_params_step(ss_params *s, const ss_optim *opt, const char *model_id, char *err,
                   size_t errlen) {
  if (s->n == 0 || s->p[0].grad == NULL) return 0; /* no backward yet: nothing to apply */
  /* Packed copies of the weights (any compute dtype) are stale after the step, and a view copied on
   * its first write moves: drop them now; forwards pack the new values on first use. */
  for (size_t i = 0; i < s->n; i++) ss_matmul_weight_changed(*s->p[i].view);
  const float **was = malloc(s->n * sizeof *was);
  for (size_t i = 0; was != NULL && i < s->n; i++) was[i] = *s->p[i].view;
  int rc = ss_param_array_step(s->p, s->n, opt, &s->t, model_id, err, errlen);
  /* a deferred weight (nn/deferred.h) the step copied to an array of its own: unused now */
  for (size_t i = 0; was != NULL && i < s->n; i++)
    if (*s->p[i].view != was[i]) ss_weight_deferred_moved(was[i]);
  free(was);
  return rc;
}

int ss_params_write(const ss_params *s, const char *path, int what, char *err, size_t errlen) {
  size_t cap = 3 * s->n + 1, n = 0;
  const int64_t **shp = malloc(cap * sizeof *shp);
  const float **data = malloc(cap * sizeof *data);
  const char **names = malloc(cap * sizeof *names);
  char **own_names = calloc(cap, sizeof *own_names);
  int *ndim = malloc(cap * sizeof *ndim);
  static const int64_t one[1] = {1};
  float step = (float)s->t;
  int rc = 0;
  if (shp == NULL || data == NULL || names == NULL || own_names == NULL || ndim == NULL) {
    rc = SS_ENOMEM;
  } else {
    if (what & SS_PARAMS_VALUES)
      for (size_t i = 0; i < s->n; i++) {
        names[n] = s->names[i];
        shp[n] = s->shape[i];
        ndim[n] = s->ndim[i];
        data[n++] = *s->p[i].view;
      }
    if ((what & SS_PARAMS_OPTIM) && s->t > 0) { /* nothing before the first step */
      names[n] = SS_PARAMS_OPTIM_PREFIX "step";
      shp[n] = one;
      ndim[n] = 1;
      data[n++] = &step;
      for (size_t i = 0; i < s->n && rc == 0; i++) {
        for (int f = 0; f < 2 && rc == 0; f++) {
          const float *mv = f ? s->p[i].v : s->p[i].m;
          size_t len;
          if (mv == NULL) continue;
          len = strlen(s->names[i]) + 32;
          if ((own_names[n] = malloc(len)) == NULL) {
            rc = SS_ENOMEM;
            break;
          }
          snprintf(own_names[n], len, "%s%s.%s", SS_PARAMS_OPTIM_PREFIX,
                   f ? "exp_avg_sq" : "exp_avg", s->names[i]);
          names[n] = own_names[n];
          shp[n] = s->shape[i];
          ndim[n] = s->ndim[i];
          data[n++] = mv;
        }
      }
    }
  }
  if (rc == SS_ENOMEM)
    snprintf(err, errlen, "out of memory");
  else
    rc = ss_st_write_f32_atomic(path, n, names, shp, ndim, data, err, errlen);
  for (size_t i = 0; own_names != NULL && i < cap; i++) free(own_names[i]);
  free(own_names);
  free(shp);
  free(data);
  free(names);
  free(ndim);
  return rc;
}

int ss_params_save(const ss_params *s, const char *path, char *err, size_t errlen) {
  return ss_params_write(s, path, SS_PARAMS_VALUES | SS_PARAMS_OPTIM, err, errlen);
}

int ss_params_restore(ss_params *s, const ss_st_file *f, char *err, size_t errlen) {
  const ss_st_tensor *t = ss_st_find(f, SS_PARAMS_OPTIM_PREFIX "step");
  const float *v;
  float *own = NULL;
  char name[400];
  if (t == NULL) return 0;
  if (t->numel != 1 || ss_st_f32(t, &v, &own, NULL) != 0) {
    snprintf(err, errlen, "'%s' must hold one number", t->name);
    return SS_EINVAL;
  }
  if (!(v[0] >= 0.0f) || v[0] > 16777216.0f || v[0] != floorf(v[0])) {
    snprintf(err, errlen, "'%s' must be a whole number of steps, got %g", t->name, (double)v[0]);
    free(own);
    return SS_EINVAL;
  }
  s->t = (int64_t)v[0];
  free(own);
  for (size_t i = 0; i < s->n; i++) {
    for (int k = 0; k < 2; k++) {
      float **dst = k ? &s->p[i].v : &s->p[i].m;
      snprintf(name, sizeof name, "%s%s.%s", SS_PARAMS_OPTIM_PREFIX, k ? "exp_avg_sq" : "exp_avg",
               s->names[i]);
      if ((t = ss_st_find(f, name)) == NULL) continue;
      if (t->numel != s->p[i].numel) {
        snprintf(err, errlen, "'%s' has %zu values, expected %zu like '%s'", name, t->numel,
                 s->p[i].numel, s->names[i]);
        return SS_EINVAL;
      }
      own = NULL;
      if (ss_st_f32(t, &v, &own, s->p[i].alloc) != 0) return SS_ENOMEM;
      if (own == NULL) { /* a view into the file, which closes: a copy of the backend's */
        if ((own = s->p[i].alloc(t->numel ? t->numel * sizeof(float) : 1)) == NULL)
          return SS_ENOMEM;
        memcpy(own, v, t->numel * sizeof(float));
      }
      s->p[i].release(*dst);
      *dst = own;
    }
  }
  return 0;
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
