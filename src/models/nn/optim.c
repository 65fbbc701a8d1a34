/*
 * optim.c — SGD and AdamW over one parameter array (see optim.h for the formulas), and copy on
 * first write. The arithmetic is float32 like torch's CPU kernels, with the per-step scalars
 * (bias corrections, step size) computed in double. Thread: the caller's (write lock held).
 */
#include "models/nn/optim.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* n floats from p's allocator; zeroed when zero is set. */
static float *param_alloc(const ss_param *p, size_t n, int zero) {
  size_t bytes = n ? n * sizeof(float) : 1;
  float *a = p->alloc != NULL ? p->alloc(bytes) : malloc(bytes);
  if (a != NULL && zero) memset(a, 0, bytes);
  return a;
}

static void param_release(const ss_param *p, float *a) {
  if (p->release != NULL)
    p->release(a);
  else
    free(a);
}

float *ss_param_writable(ss_param *p) {
  float *own;
  if (*p->own != NULL) return *p->own;
  own = param_alloc(p, p->numel, 0);
  if (own == NULL) return NULL;
  if (p->numel) memcpy(own, *p->view, p->numel * sizeof(float));
  *p->own = own;
  *p->view = own;
  return own;
}

int ss_param_grad(ss_param *p) {
  if (p->grad != NULL) return 0;
  p->grad = param_alloc(p, p->numel, 1);
  return p->grad != NULL ? 0 : SS_ENOMEM;
}

int ss_param_step(ss_param *p, const ss_optim *opt, int64_t t) {
  const float lr = opt->lr, wd = opt->weight_decay;
  float *w, *g = p->grad;
  size_t n = p->numel;

  if (g == NULL) return 0;
  if ((w = ss_param_writable(p)) == NULL) return SS_ENOMEM;
  if (opt->kind == SS_OPT_ADAMW) {
    const float b1 = opt->beta1, b2 = opt->beta2, eps = opt->eps;
    double bc1 = 1.0 - pow((double)b1, (double)t), bc2 = 1.0 - pow((double)b2, (double)t);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float decay = 1.0f - lr * wd;
    if (p->m == NULL) p->m = param_alloc(p, n, 1);
    if (p->v == NULL) p->v = param_alloc(p, n, 1);
    if (p->m == NULL || p->v == NULL) return SS_ENOMEM;
    float *m = p->m, *v = p->v;
    /* One pass per parameter, split over the worker's intra-op threads; the gradient is
     * cleared in the same pass. */
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) {
      float gi = g[i], mi, vi;
      w[i] *= decay;
      mi = m[i] = b1 * m[i] + (1.0f - b1) * gi;
      vi = v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      w[i] -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
      g[i] = 0.0f;
    }
  } else {
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) {
      float gi = wd != 0.0f ? g[i] + wd * w[i] : g[i];
      w[i] -= lr * gi;
      g[i] = 0.0f;
    }
  }
  return 0;
}

/* Would the step write a non-finite value into p? Reads only. Returns the first bad element's
 * index, or SIZE_MAX. Mirrors ss_param_step's arithmetic exactly (same float operations). */
static size_t first_nonfinite(const ss_param *p, const ss_optim *opt, int64_t t) {
  const float lr = opt->lr, wd = opt->weight_decay;
  const float *w = *p->view, *g = p->grad;
  size_t n = p->numel, bad = SIZE_MAX;
  if (g == NULL || n == 0) return SIZE_MAX;
  if (opt->kind == SS_OPT_ADAMW) {
    const float b1 = opt->beta1, b2 = opt->beta2, eps = opt->eps;
    double bc1 = 1.0 - pow((double)b1, (double)t), bc2 = 1.0 - pow((double)b2, (double)t);
    float step_size = (float)((double)lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float decay = 1.0f - lr * wd;
    for (size_t i = 0; i < n && bad == SIZE_MAX; i++) {
      float gi = g[i], mo = p->m ? p->m[i] : 0.0f, vo = p->v ? p->v[i] : 0.0f;
      float wi = w[i] * decay;
      float mi = b1 * mo + (1.0f - b1) * gi;
      float vi = b2 * vo + (1.0f - b2) * gi * gi;
      wi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
      if (!isfinite(wi) || !isfinite(mi) || !isfinite(vi)) bad = i;
    }
  } else {
    for (size_t i = 0; i < n && bad == SIZE_MAX; i++) {
      float gi = wd != 0.0f ? g[i] + wd * w[i] : g[i];
      if (!isfinite(w[i] - lr * gi)) bad = i;
    }
  }
  return bad;
}

int ss_param_array_step(ss_param *prm, size_t n, const ss_optim *opt, int64_t *t,
                        const char *model_id, char *err, size_t errlen) {
  for (size_t k = 0; k < n; k++) {
    size_t bad = first_nonfinite(&prm[k], opt, *t + 1);
    if (bad == SIZE_MAX) continue;
    snprintf(err, errlen,
             "model '%s': optimizer step refused: parameter %zu element %zu would become NaN or "
             "infinite (gradient %g, learning rate %g); the weights are unchanged and the "
             "accumulated gradients were dropped",
             model_id, k, bad, (double)prm[k].grad[bad], (double)opt->lr);
    for (size_t j = 0; j < n; j++)
      if (prm[j].grad) memset(prm[j].grad, 0, prm[j].numel * sizeof(float));
    return SS_EINVAL;
  }
  ++*t;
  for (size_t k = 0; k < n; k++) {
    if (prm[k].numel == 0) continue;
    if (ss_param_step(&prm[k], opt, *t) != 0) {
      snprintf(err, errlen, "model '%s': out of memory for the optimizer step", model_id);
      return SS_ENOMEM;
    }
  }
  return 0;
}

void ss_param_free_state(ss_param *p) {
  param_release(p, p->grad);
  param_release(p, p->m);
  param_release(p, p->v);
  p->grad = p->m = p->v = NULL;
}
