/*
 * rmsnorm.c — see rmsnorm.h. With r = rstd, g the effective gain and y_j = x_j r g_j:
 *   dL/dx_k = r g_k dy_k - (r^3 / C) x_k sum_j dy_j g_j x_j,   dL/dw_j = dy_j x_j r.
 * Sums in double. Thread: the caller's worker thread (and its OpenMP team for the forward).
 */
#include "models/nn/rmsnorm.h"

#include <math.h>
#include <stddef.h>

#include "models/nn/simd.h"

/* The sum of squares of a row in double over 8 independent lanes (one accumulator is a chain of
 * dependent adds the compiler may not reorder). */
SS_CLONES static double row_sumsq(const float *x, size_t n) {
  double q[8] = {0};
  size_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; k++) q[k] += (double)x[j + (size_t)k] * (double)x[j + (size_t)k];
  for (; j < n; j++) q[0] += (double)x[j] * (double)x[j];
  return ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]));
}

void ss_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int BT, int C,
                        float eps, int one_plus) {
  const size_t n = (size_t)C;
  const float add = one_plus ? 1.0f : 0.0f;
#pragma omp parallel for schedule(static) if (BT >= 32)
  for (int r = 0; r < BT; r++) {
    const float *xr = x + (size_t)r * n;
    float *yr = out + (size_t)r * n;
    double ss = row_sumsq(xr, n);
    float inv;
    inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    if (rstd != NULL) rstd[r] = inv;
    for (size_t j = 0; j < n; j++) yr[j] = xr[j] * inv * (add + w[j]);
  }
}

void ss_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int BT, int C, int one_plus) {
  const size_t n = (size_t)C;
  const float add = one_plus ? 1.0f : 0.0f;
  for (size_t r = 0; r < (size_t)BT; r++) {
    const float *dyr = dout + r * n, *xr = x + r * n;
    float *dxr = dx + r * n, inv = rstd[r], c;
    double dot = 0.0;
    for (size_t j = 0; j < n; j++) dot += (double)dyr[j] * (add + w[j]) * xr[j];
    c = (float)(dot * (double)inv * inv * inv / (double)n);
    for (size_t j = 0; j < n; j++) {
      dxr[j] += inv * (add + w[j]) * dyr[j] - c * xr[j];
      dw[j] += dyr[j] * xr[j] * inv;
    }
  }
}
