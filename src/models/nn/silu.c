/*
 * silu.c — see silu.h. sigmoid(x) = 1 / (1 + e^-x): for very negative x, e^-x overflows to inf
 * and s becomes 0 (silu -> -0), which is the correct limit. Thread: the caller's worker thread.
 */
#include "models/nn/silu.h"

#include <math.h>

void ss_silu_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = x[k] / (1.0f + expf(-x[k]));
}

void ss_silu_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) {
    float s = 1.0f / (1.0f + expf(-x[k]));
    d[k] *= s * (1.0f + x[k] * (1.0f - s));
  }
}
