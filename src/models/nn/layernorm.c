/*
 * layernorm.c — see layernorm.h. Thread: the caller's worker thread (and its OpenMP team).
 */
#include "models/nn/layernorm.h"

#include <math.h>
#include <stddef.h>

void ss_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                          const float *b, int BT, int C, float eps) {
  const size_t n = (size_t)C;
  /* Rows are independent: split over the worker's intra-op threads for a prefill. */
#pragma omp parallel for schedule(static) if (BT >= 32)
  for (int r = 0; r < BT; r++) {
    const float *xr = x + (size_t)r * n;
    float *yr = out + (size_t)r * n;
    double m = 0.0, var = 0.0;
    float inv, mf;
    for (size_t j = 0; j < n; j++) m += xr[j];
    m /= (double)n;
    for (size_t j = 0; j < n; j++) {
      double d = xr[j] - m;
      var += d * d;
    }
    var /= (double)n;
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
