/*
 * relu.c — see relu.h. Thread: the caller's worker thread.
 */
#include "models/nn/relu.h"

void ss_relu_forward(float *out, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) out[k] = x[k] > 0.0f ? x[k] : 0.0f;
}

void ss_relu_backward(float *d, const float *x, size_t n) {
  for (size_t k = 0; k < n; k++) d[k] = x[k] > 0.0f ? d[k] : 0.0f;
}
