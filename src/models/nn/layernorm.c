/*
 * layernorm.c — see layernorm.h. Thread: the caller's worker thread (and its OpenMP team).
 */
#include "models/nn/layernorm.h"

#include <math.h>
#include <stddef.h>

#include "models/nn/simd.h"

/* Sums of a row in double over 8 independent lanes (a single accumulator is a chain of
 * dependent adds the compiler may not reorder: the forward spent 5-7% of a prefill there): the
 * mean, then the sum of squared deviations from it. */
SS_CLONES static void row_moments(const float *x, size_t n, double *mean, double *var) {
  double s[8] = {0}, q[8] = {0}, m, v;
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) s[k] += (double)x[j + (size_t)k];
  for (; j < n; j++) s[0] += (double)x[j];
  m = (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) / (double)n;
  for (j = 0; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) {
      double d = (double)x[j + (size_t)k] - m;
      q[k] += d * d;
    }
  for (; j < n; j++) q[0] += ((double)x[j] - m) * ((double)x[j] - m);
  v = (((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]))) / (double)n;
  *mean = m, *var = v;
}

void ss_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                          const float *b, int BT, int C, float eps) {
  const size_t n = (size_t)C;
  /* Rows are independent: split over the worker's intra-op threads for a prefill. */
#pragma omp parallel for schedule(static) if (BT >= 32)
  for (int r = 0; r < BT; r++) {
    const float *xr = x + (size_t)r * n;
    float *yr = out + (size_t)r * n;
    double m, var;
    float inv, mf;
    row_moments(xr, n, &m, &var);
    inv = (float)(1.0 / sqrt(var + (double)eps));
    mf = (float)m;
    if (mean != NULL) mean[r] = mf;
    if (rstd != NULL) rstd[r] = inv;
    for (size_t j = 0; j < n; j++) yr[j] = (xr[j] - mf) * inv * w[j] + b[j];
  }
}

void ss_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                           const float *w, const float *mean, const float *rstd, int BT, int C) {
  const size_t n = (size_t)C;
  for (size_t r = 0; r < (size_t)BT; r++) {
    const float *dyr = dout + r * n, *xr = x + r * n;
    float *dxr = dx + r * n;
    double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
    float a, c;
    for (size_t j = 0; j < n; j++) {
      float xhat = (xr[j] - mean[r]) * rstd[r], dnorm = dyr[j] * w[j];
      dnorm_mean += dnorm;
      dnorm_norm_mean += (double)dnorm * xhat;
    }
    a = (float)(dnorm_mean / (double)n);
    c = (float)(dnorm_norm_mean / (double)n);
    for (size_t j = 0; j < n; j++) {
      float xhat = (xr[j] - mean[r]) * rstd[r], dnorm = dyr[j] * w[j];
      db[j] += dyr[j];
      dw[j] += dyr[j] * xhat;
      dxr[j] += (dnorm - a - xhat * c) * rstd[r];
    }
  }
}
