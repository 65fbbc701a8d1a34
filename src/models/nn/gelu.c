/*
 * gelu.c — see gelu.h. The tanh form is nn/vmath.c's vectorized kernel; the erf form uses libm
 * (mlp only, small). Thread: the caller's worker thread.
 */
#include "models/nn/gelu.h"

#include <math.h>
#include <string.h>

#include "models/nn/vmath.h"

void ss_gelu_tanh_forward(float *out, const float *x, size_t n) {
  if (out != x) memcpy(out, x, n * sizeof(float));
  ss_gelu_new(out, n);
}

void ss_gelu_tanh_backward(float *d, const float *x, size_t n) { ss_gelu_new_backward(d, x, n); }

void ss_gelu_erf_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = 0.5f * x[k] * (1.0f + erff(x[k] * 0.70710678118654752f));
}

void ss_gelu_erf_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    float cdf = 0.5f * (1.0f + erff(x[k] * 0.70710678118654752f));
    float pdf = expf(-0.5f * x[k] * x[k]) * 0.39894228040143268f;
    d[k] *= cdf + x[k] * pdf;
  }
}
